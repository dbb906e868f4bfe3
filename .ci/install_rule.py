"""CI: check one install of the pack's requirements against the rule of the README's *Install* section.

    python .ci/install_rule.py START BEFORE.json AFTER.json

START is fresh, onnxruntime-gpu or onnxruntime (what the venv held); BEFORE/AFTER are `pip list
--format=json` of the venv around `pip install -r requirements.txt`. The rule: at most one onnxruntime
build, the one the venv held kept as it was, torch, torchvision and numpy unchanged, no second OpenCV
distribution.
Exits non-zero naming what broke it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OPENCV = {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"}


def versions(path: str) -> dict[str, str]:
    """Distribution name (lowercase, '-' for '_') -> version."""
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(Path(path).read_text())}


def runtimes(installed: dict[str, str]) -> dict[str, str]:
    """The onnxruntime builds among the installed distributions."""
    return {n: v for n, v in installed.items() if n == "onnxruntime" or n.startswith("onnxruntime-")}


def main() -> int:
    start, before_path, after_path = sys.argv[1:4]
    before, after = versions(before_path), versions(after_path)
    problems = []
    expected = {} if start == "fresh" else {start: before.get(start)}
    if runtimes(after) != expected:
        problems.append(f"onnxruntime builds {runtimes(before)} before, {runtimes(after)} after; expected {expected}")
    for name in ("torch", "torchvision", "numpy"):
        if before.get(name) != after.get(name):
            problems.append(f"{name} changed: {before.get(name)} -> {after.get(name)}")
    opencv_before, opencv_after = OPENCV & set(before), OPENCV & set(after)
    if len(opencv_after) > 1 or opencv_after - opencv_before:
        problems.append(f"OpenCV distributions {sorted(opencv_before)} before, {sorted(opencv_after)} after")
    added = sorted(set(after) - set(before))
    print(f"{start}: onnxruntime {runtimes(after) or 'none'}; torch {after.get('torch')}, numpy {after.get('numpy')}")
    print(f"{start}: added {', '.join(added)}")
    for problem in problems:
        print(f"{start}: RULE BROKEN: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
