"""Headless servers (ComfyUI Desktop, API launchers) close or redirect stdout: the pack only logs (issue 13).

The session server of the integration tests already runs with stdout redirected to a file; this pins
that no code of the pack writes to stdout itself, where a closed stream would raise.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_CODE = ["__init__.py", "f2d_core", "nodes", "cli"]


def _stdout_writes(path: Path) -> list[str]:
    """`print(...)` calls, and `sys.stdout` uses outside the command lines (which run in a terminal and
    may send their log there), in one file, as "file:line"."""
    in_cli = path.relative_to(REPO).parts[0] == "cli"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        is_print = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
        is_stdout = not in_cli and isinstance(node, ast.Attribute) and node.attr in ("stdout", "__stdout__")
        if is_print or is_stdout:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_the_pack_never_prints_or_writes_to_stdout():
    files = [REPO / "__init__.py"] + [p for d in PACK_CODE[1:] for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 50
    writes = [w for path in files for w in _stdout_writes(path)]
    assert writes == [], f"use logging instead: {writes}"
