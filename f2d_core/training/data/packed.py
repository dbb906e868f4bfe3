"""A prepared training set as one `.safetensors` file, written row by row and read memory-mapped.

Every training process (every DDP rank) maps the same file, so the operating system keeps one copy
of the data in its page cache for all of them instead of one copy per process. Tensors, one row per
usable photo in sorted file order: `idvec` float32 [N, V, 1536], `expression` float32 [N, V, 64]
(only with an expression model), `latents` float16 [N, V, C, h, w], `masks` uint8 [N, V, 1, h, w]
in {0, 1}, `source_side` float32 [N, V] (the face's FFHQ quad side in photo pixels, SDXL's size
conditioning). The metadata carries the file names, persons, settings and report as JSON.

The file is plain safetensors (https://github.com/huggingface/safetensors: an 8-byte little-endian
header length, a JSON header with each tensor's dtype, shape and byte range, then the raw data), so
`safetensors.torch.load_file` reads it too; it is written here directly so that no more than one
row is ever in memory, and mapped with `mmap` because safetensors copies what it loads.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from ...atomic_io import atomic_write

SET_FORMAT = "f2d-training-set"
SET_VERSION = "3"  # bump when the layout or the metadata changes: old files are then rebuilt (3: source_side)
ROW_DTYPES = {
    "idvec": torch.float32,
    "expression": torch.float32,
    "latents": torch.float16,
    "masks": torch.uint8,
    "source_side": torch.float32,
}
_SAFETENSORS_DTYPES = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.uint8: ("U8", np.uint8),
}
_NUMPY_OF = {code: numpy for code, numpy in _SAFETENSORS_DTYPES.values()}
_ALIGN = 8  # the header is padded so the data (and every float32 row) starts 8-byte aligned


class PackedSetError(ValueError):
    """A packed-set file that cannot be used (damaged, another format or version): it is built again."""


def compact_row(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A sample's tensors [V, ...] in the packed dtypes: float32 idvec and expression, float16 latents, uint8 masks.

    Raises PackedSetError when a latent does not fit float16 (|x| > 65504), which no SD VAE gives.
    """
    row = {n: tensors[n].detach().cpu().to(ROW_DTYPES[n]).contiguous() for n in ROW_DTYPES if n in tensors}
    if not torch.isfinite(row["latents"]).all() and torch.isfinite(tensors["latents"]).all():
        raise PackedSetError("a VAE latent is too large for float16")
    return row


def _header(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> tuple[bytes, dict[str, int]]:
    """The safetensors header bytes (length prefix included) and each tensor's offset from the file start."""
    entries: dict[str, object] = {"__metadata__": dict(metadata)}
    offsets, start = {}, 0
    for name, shape in shapes.items():
        code, numpy_dtype = _SAFETENSORS_DTYPES[ROW_DTYPES[name]]
        size = int(np.prod(shape)) * np.dtype(numpy_dtype).itemsize
        entries[name] = {"dtype": code, "shape": list(shape), "data_offsets": [start, start + size]}
        offsets[name] = start
        start += size
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _ALIGN)
    head = struct.pack("<Q", len(text)) + text
    return head, {name: len(head) + offset for name, offset in offsets.items()}


def write_packed_set(
    path: Path, rows: Iterable[dict[str, torch.Tensor]], count: int, metadata: Mapping[str, str]
) -> Path:
    """Write `count` rows (dicts of compact tensors [V, ...], see `compact_row`) atomically to `path`.

    The first row fixes every tensor's shape; a later row of another shape raises PackedSetError
    (the partial file is removed). `metadata` values are strings. Returns `path`.
    """
    iterator = iter(rows)

    def write(tmp: Path) -> None:
        first = next(iterator)
        shapes = {name: (count, *first[name].shape) for name in ROW_DTYPES if name in first}
        head, offsets = _header(shapes, {"format": SET_FORMAT, "version": SET_VERSION, **metadata})
        total = max(offsets[n] + int(np.prod(s)) * first[n].element_size() for n, s in shapes.items())
        with open(tmp, "wb") as f:
            f.write(head)
            f.truncate(total)
        arrays = {n: np.memmap(tmp, _numpy(n), "r+", offsets[n], shapes[n]) for n in shapes}
        for i, row in enumerate(_chain(first, iterator)):
            if i >= count:
                raise PackedSetError(f"more than the {count} announced rows")
            for name, array in arrays.items():
                if name not in row or tuple(row[name].shape) != shapes[name][1:]:
                    got = None if name not in row else tuple(row[name].shape)
                    raise PackedSetError(f"row {i}: {name} is {got}, the first row's is {shapes[name][1:]}")
                array[i] = row[name].numpy()
        for array in arrays.values():
            array.flush()
        del arrays

    return atomic_write(path, write)


def _numpy(name: str) -> type:
    return _SAFETENSORS_DTYPES[ROW_DTYPES[name]][1]


def _chain(first: dict[str, torch.Tensor], rest: Iterable[dict[str, torch.Tensor]]):
    yield first
    yield from rest


def _map(path: Path) -> mmap.mmap:
    """The whole file mapped copy-on-write (writable for torch, never written back), for random reads.

    MADV_RANDOM turns off the kernel's read-ahead around each page fault (the disk's read_ahead_kb),
    so a batch read from a file that is not in the page cache reads its rows, not their neighbourhoods.
    Linux may still map a whole large page-cache folio per fault, so a process's RSS grows faster
    than the rows it reads; those pages are the shared page cache, counted once however many ranks map them.
    """
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return mapped


def open_packed_set(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a packed set; the tensors are views of one copy-on-write memory map of the file.

    Reading a row touches only that row's pages, shared with every other process mapping the file.
    Raises PackedSetError when the file is not a complete packed set of this version.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise PackedSetError(f"header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
        metadata = header.pop("__metadata__", {}) or {}
        if metadata.get("format") != SET_FORMAT or metadata.get("version") != SET_VERSION:
            raise PackedSetError(f"not a version {SET_VERSION} {SET_FORMAT} file")
        mapped = _map(path)
        tensors = {}
        for name, entry in header.items():
            start, end = entry["data_offsets"]
            dtype, shape = _NUMPY_OF.get(entry["dtype"]), tuple(entry["shape"])
            if name not in ROW_DTYPES or dtype is not _numpy(name):
                raise PackedSetError(f"unexpected tensor {name} of {entry['dtype']}")
            count = int(np.prod(shape))
            if 8 + length + end > size or end - start != count * np.dtype(dtype).itemsize:
                raise PackedSetError(f"{name}: its bytes {start}..{end} do not fit the file or its shape")
            array = np.frombuffer(mapped, dtype, count, 8 + length + start).reshape(shape)
            tensors[name] = torch.from_numpy(array)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        if isinstance(exc, PackedSetError):
            raise
        raise PackedSetError(f"{type(exc).__name__}: {exc}") from None
    if {"idvec", "latents", "masks"} - set(tensors):
        raise PackedSetError(f"tensors {sorted(tensors)} lack idvec, latents or masks")
    return tensors, metadata
