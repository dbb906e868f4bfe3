"""The install rule `.ci/install_check.sh` applies (`.ci/install_rule.py`), on pip lists of known outcomes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RULE = Path(__file__).resolve().parent.parent / ".ci" / "install_rule.py"
BASE = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "pip": "23.2.1"}
OURS = {"onnx": "1.23.2", "onnx2torch": "1.5.15", "timm": "1.0.31"}


def _check(tmp_path: Path, start: str, before: dict[str, str], after: dict[str, str]) -> tuple[int, str]:
    paths = []
    for name, packages in (("before", before), ("after", after)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps([{"name": n, "version": v} for n, v in packages.items()]))
        paths.append(str(path))
    done = subprocess.run([sys.executable, str(RULE), start, *paths], capture_output=True, text=True, check=False)
    return done.returncode, done.stdout


@pytest.mark.parametrize("start", ["fresh", "onnxruntime-gpu", "onnxruntime"])
def test_this_packs_install_keeps_the_rule(tmp_path: Path, start: str) -> None:
    before = BASE if start == "fresh" else {**BASE, start: "1.31.1"}
    code, out = _check(tmp_path, start, before, {**before, **OURS})
    assert code == 0 and "RULE BROKEN" not in out


def test_the_old_requirements_break_it(tmp_path: Path) -> None:
    """insightface + onnxruntime-gpu, as this pack once listed them: the CPU build lands beside the GPU one."""
    before = {**BASE, "onnxruntime-gpu": "1.31.1"}
    after = {**before, "insightface": "2.1", "onnxruntime": "1.32.0", "opencv-python": "5.0.0", "numpy": "2.3.0"}
    code, out = _check(tmp_path, "onnxruntime-gpu", {**before, "opencv-python-headless": "4.14.0"}, after)
    assert code == 1
    assert "onnxruntime builds" in out and "numpy changed: 2.4.6 -> 2.3.0" in out and "OpenCV distributions" in out
    code, out = _check(tmp_path, "fresh", BASE, {**BASE, "onnxruntime": "1.32.0"})
    assert code == 1 and "expected {}" in out
