"""The fixture's weight formula: official-format tensors anyone can regenerate.

See tests/data/f2d_official/README.md. Tensor number j (row in the manifest) with n elements
gets a splitmix64-derived sequence in [-1, 1), scaled by a rule chosen from the key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "f2d_official"

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def formula_values(j: int, n: int) -> np.ndarray:
    """The float64 sequence v[0..n) for tensor number j."""
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) + (np.uint64(j) << np.uint64(32))
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return 2.0 * ((z >> np.uint64(11)).astype(np.float64) * 2.0**-53) - 1.0


def formula_tensor(j: int, key: str, shape: list[int]) -> torch.Tensor:
    """Tensor number j of a manifest, by the README's table of rules."""
    n = int(np.prod(shape)) if shape else 1
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    v = formula_values(j, n)
    if key.endswith("running_var"):
        v = 1 + 0.5 * v
    elif key.endswith("running_mean"):
        v = 0.1 * v
    elif key.endswith(".bias"):
        v = 0.02 * v
    elif key.endswith(".weight") and len(shape) == 1:
        v = 1 + 0.1 * v
    elif key.endswith("null_exp"):
        v = 0.5 * v
    elif key.endswith(".weight"):
        v = v * math.sqrt(3) / math.sqrt(int(np.prod(shape[1:])))
    else:
        v = 0.02 * math.sqrt(3) * v
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def manifest(name: str) -> dict[str, list]:
    """`manifest.json` (msid.pt, mapping.pt) or `clip_manifest.json` (text_encoder)."""
    return json.loads((DATA_DIR / name).read_text())


def formula_state_dict(rows: list) -> dict[str, torch.Tensor]:
    """A state dict in manifest order from `[key, shape, dtype]` rows."""
    return {key: formula_tensor(j, key, shape) for j, (key, shape, _dtype) in enumerate(rows)}


def official_state_dicts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(msid, mapping) state dicts with the formula weights, in the official key order."""
    m = manifest("manifest.json")
    return formula_state_dict(m["msid.pt"]), formula_state_dict(m["mapping.pt"])


def write_official_checkpoints(directory: Path) -> tuple[Path, Path]:
    """Write `msid.pt` and `mapping.pt` exactly as the official release stores them."""
    directory.mkdir(parents=True, exist_ok=True)
    msid, mapping = official_state_dicts()
    msid_path, mapping_path = directory / "msid.pt", directory / "mapping.pt"
    torch.save(msid, msid_path)
    torch.save(mapping, mapping_path)
    return msid_path, mapping_path


def clip_text_state_dict() -> dict[str, torch.Tensor]:
    """The SD1.x CLIP-L text encoder (`text_model.*` keys) on the formula weights."""
    return formula_state_dict(manifest("clip_manifest.json")["text_encoder"])


def expected() -> dict[str, np.ndarray]:
    """The official code's outputs on the formula weights."""
    with np.load(DATA_DIR / "expected.npz") as data:
        return {k: data[k] for k in data.files}
