"""Ecosystem conventions: comfy-test's lint, the registry archive's contents, where the models are published."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
# The official README (github.com/mapooon/Face2Diffusion, "2. Download checkpoints") links these.
OFFICIAL_WEIGHTS = {
    "/face2diffusion/msid.pt": "https://drive.google.com/file/d/1DjUf-ib612SDDt86TRlsDkHqXTeYx030/view?usp=sharing",
    "/face2diffusion/mapping.pt": "https://drive.google.com/file/d/1Lf_mwMgme_HVYJCkViGr4TfGOfKw9PhE/view?usp=sharing",
}
# The one SYNTAX finding the design asks for: the arrow in the node name "Encode Face -> S*" (see the README).
NODE_NAME_LINE = 'display_name="Encode Face \u2192 S*",'


def comfy_test() -> str | None:
    """comfy-test (PyPI `comfy-test`, kept in its own virtualenv): F2D_COMFY_TEST, else on PATH."""
    return os.environ.get("F2D_COMFY_TEST") or shutil.which("comfy-test")


@pytest.mark.skipif(comfy_test() is None, reason="comfy-test not found: set F2D_COMFY_TEST (see .ci/run)")
def test_comfy_test_lint() -> None:
    done = subprocess.run(
        [comfy_test(), "lint", str(REPO), "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    report = json.loads(done.stdout)["results"]
    javascript = report["javascript"]
    assert javascript["passed"] and javascript["namespaces"] == ["face2diffusion"], javascript["findings"]
    assert javascript["summary"] == {"errors": 0, "warnings": 0}
    source = (REPO / "nodes" / "encode_face.py").read_text().splitlines()
    line = next(n for n, text in enumerate(source, start=1) if NODE_NAME_LINE in text)
    column = source[line - 1].index("\u2192") + 1
    finding = (
        f"nodes/encode_face.py:\n  Line {line}, col {column}: RIGHTWARDS ARROW ('\u2192') - not encodable in cp1252"
    )
    assert report["syntax"]["details"].split("\n\n", 1)[1] == finding


MIRRORS = {  # docs/models.md, "Mirrors": saved under the names the nodes default to
    "/face2diffusion/epoch_20.pth": "https://github.com/OpenTalker/SadTalker/releases/download/v0.0.2/epoch_20.pth",
    "/face2diffusion/79999_iter.pth": "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
}


def test_models_point_at_the_official_downloads_and_the_mirrors() -> None:
    models = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["Models"]
    assert {m["location"]: m["model_url"] for m in models} == {**OFFICIAL_WEIGHTS, **MIRRORS}
    docs = (REPO / "docs" / "models.md").read_text(encoding="utf-8")
    assert all(url in docs for url in MIRRORS.values())


def _ignored(paths: list[str]) -> set[str]:
    """Which of `paths` .comfyignore excludes (gitignore syntax, matched by git itself)."""
    done = subprocess.run(
        ["git", "-c", f"core.excludesFile={REPO / '.comfyignore'}", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO,
        input="\n".join(paths),
        capture_output=True,
        text=True,
        check=False,
    )
    return set(done.stdout.splitlines())  # one path a line: template file names have spaces


def test_comfyignore_keeps_tests_benchmarks_and_ci_out_of_the_archive() -> None:
    shipped = [  # bytecode is left out: Python writes it wherever the tests import from, and git ignores it
        str(p.relative_to(REPO))
        for p in REPO.rglob("*")
        if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts
    ]
    kept_out = _ignored(shipped)
    assert {p for p in shipped if p.split("/")[0] in ("tests", "bench", ".ci")} <= kept_out
    needed = [p for p in shipped if p.split("/")[0] in ("nodes", "f2d_core", "js", "workflows", "cli", "docs")]
    needed += ["__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE"]
    assert not kept_out & set(needed)
    assert any(p.startswith("js/docs/") for p in needed)
    assert "docs/troubleshooting.md" in needed  # the README's deep pages ship with it
