"""The on-disk cache of prepared training samples, keyed by content: one small `.safetensors` per photo.

Layout: `<cache_dir>/<settings digest>/<photo key>.safetensors`, plus a `settings.json` per settings
folder saying what produced it (so an old folder can be recognised and deleted). The settings digest
hashes every setting that changes a result (models by their weights, not their file names); the photo
key hashes the photo's bytes (and its mask's, when masks are given per photo). So a changed setting
starts a new folder, an edited photo gets a new key, and nothing else is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ...atomic_io import atomic_write

log = logging.getLogger(__name__)

CACHE_FORMAT = "f2d-training-sample"
CACHE_VERSION = "1"  # bump when a cached sample's meaning changes
OK = "ok"
SKIPPED = "skipped"
Shape = tuple[int | None, ...]  # None: any size in that dimension


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of a tensor's shape, dtype and values (on the CPU)."""
    t = tensor.detach().cpu().contiguous()
    head = f"{t.dtype}{tuple(t.shape)}".encode()
    return sha256_hex(head + t.flatten().view(torch.uint8).numpy().tobytes())


def module_fingerprint(module: nn.Module) -> str:
    """Hex SHA-256 over a module's state dict (names, shapes, dtypes, values): the identity of its weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        digest.update(memoryview(t.flatten().view(torch.uint8).numpy()))
    return digest.hexdigest()


def settings_digest(settings: Mapping[str, object]) -> str:
    """Hex SHA-256 of settings as canonical JSON."""
    return sha256_hex(json.dumps(settings, sort_keys=True, default=str).encode())


@dataclass
class CachedSample:
    """One photo's result: tensors when usable, else the reason it was skipped; `face` is the detection (JSON-able)."""

    status: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    reason: str = ""
    detail: str = ""
    face: dict[str, object] = field(default_factory=dict)


def _shape_ok(tensor: torch.Tensor, shape: Shape) -> bool:
    return tensor.ndim == len(shape) and all(w is None or w == s for s, w in zip(tensor.shape, shape, strict=True))


class SampleCache:
    """Read and write cached samples under one settings folder; with no root it stores nothing."""

    def __init__(self, root: Path | None, settings: Mapping[str, object]) -> None:
        self.settings = dict(settings)
        self.digest = settings_digest(self.settings)
        self.dir = None if root is None else Path(root) / self.digest[:24]
        self._settings_written = False

    def path(self, key: str) -> Path | None:
        """Where the sample of a photo key lives (None without a cache)."""
        return None if self.dir is None else self.dir / f"{key}.safetensors"

    def load(self, key: str, shapes: Mapping[str, Shape]) -> tuple[CachedSample | None, bool]:
        """(sample, damaged): the cached sample or None; damaged when a file exists but cannot be used."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None, False
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
            if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
                raise ValueError(f"not a version {CACHE_VERSION} {CACHE_FORMAT} file")
            sample = CachedSample(
                status=meta["status"],
                tensors=tensors,
                reason=meta.get("reason", ""),
                detail=meta.get("detail", ""),
                face=json.loads(meta.get("face", "{}")),
            )
            if sample.status == OK:
                bad = [k for k, s in shapes.items() if k not in tensors or not _shape_ok(tensors[k], s)]
                if bad:
                    raise ValueError(f"tensors {bad} missing or of the wrong shape")
            elif sample.status != SKIPPED:
                raise ValueError(f"unknown status {sample.status!r}")
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            log.warning("Cache file %s is damaged (%s); computing it again.", path, exc)
            return None, True
        return sample, False

    def save(self, key: str, sample: CachedSample) -> bool:
        """Write a sample atomically; whether it is on disk now (a failed write is logged, never fatal)."""
        path = self.path(key)
        if path is None:
            return False
        meta = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "status": sample.status,
            "reason": sample.reason,
            "detail": sample.detail,
            "face": json.dumps(sample.face),
            "settings": self.digest,
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in sample.tensors.items()}
        try:
            self._write_settings()
            atomic_write(path, lambda tmp: save_file(tensors, str(tmp), meta))
        except OSError as exc:
            log.warning(
                "Could not write the cache file %s (%s): this photo will be computed again next time.", path, exc
            )
            return False
        return True

    def _write_settings(self) -> None:
        """`settings.json` of this folder: what its samples were made with."""
        if self._settings_written or self.dir is None:
            return
        text = json.dumps(self.settings, indent=1, sort_keys=True, default=str)
        atomic_write(self.dir / "settings.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self._settings_written = True
