"""Spot the classic face-pack install problem: onnxruntime and onnxruntime-gpu installed side by side."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"


def installed_onnxruntimes(names: Iterable[str] | None = None) -> list[str]:
    """The onnxruntime distributions installed (all distribution names can be passed in instead)."""
    if names is None:
        names = (dist.metadata["Name"] or "" for dist in metadata.distributions())
    found = {name.lower().replace("_", "-") for name in names}
    return sorted(n for n in found if n == "onnxruntime" or n.startswith("onnxruntime-"))


def onnxruntime_conflict(names: Iterable[str] | None = None) -> str | None:
    """A message when more than one onnxruntime build is installed (they overwrite each other's files)."""
    runtimes = installed_onnxruntimes(names)
    if len(runtimes) < 2:
        return None
    return (
        f"Several onnxruntime builds are installed ({', '.join(runtimes)}). They share one folder and overwrite "
        f"each other, so face detection may silently fall back to the CPU or fail to load. Keep one: {FIX}"
    )
