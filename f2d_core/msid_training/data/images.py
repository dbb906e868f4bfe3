"""Where a face-recognition dataset's aligned 112x112 crops come from: a record file, or crops in memory.

Each source gives one image, or a batch, as uint8 RGB [3, 112, 112] tensors with its identity label.
A record file is pickled without its memory map (a decode worker maps the file again on first use),
so DataLoader workers share the operating system's page cache instead of copying the data.
"""

from __future__ import annotations

import io
import logging
import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from .record_file import BadRecord, map_file, read_record, unpack_record

log = logging.getLogger(__name__)

CROP_SIZE = 112  # the ArcFace / MSID input: aligned by the 5-point template (f2d_core/faces/alignment.py)
SUBSTITUTE_TRIES = 16  # records tried after one that does not decode


class UndecodableFace(ValueError):
    """Bytes that are no 112x112 image."""


class ImageSource(Protocol):
    """Aligned crops by index.

    `item(i)` -> (uint8 [3, 112, 112], label); `batch(indices)` -> (uint8 [B, 3, 112, 112], int64 [B]).
    """

    def item(self, index: int) -> tuple[torch.Tensor, int]: ...

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]: ...


def decode_crop(data: bytes) -> np.ndarray:
    """RGB uint8 [112, 112, 3] of an encoded image (PIL, as insightface's reader decodes to RGB).

    Raises UndecodableFace for bytes PIL cannot decode or an image of another size.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.array(image.convert("RGB"))
    except Exception as exc:  # decoders of untrusted bytes raise many kinds of errors
        raise UndecodableFace(f"{type(exc).__name__}: {exc}") from None
    if rgb.shape[:2] != (CROP_SIZE, CROP_SIZE):
        raise UndecodableFace(f"an image of {rgb.shape[1]}x{rgb.shape[0]}, not {CROP_SIZE}x{CROP_SIZE}")
    return rgb


class CropImages:
    """Crops already decoded in memory: uint8 [N, 3, 112, 112] and labels [N] (a small folder without a cache)."""

    def __init__(self, crops: torch.Tensor, labels: torch.Tensor) -> None:
        self.crops, self.labels = crops, labels

    def item(self, index: int) -> tuple[torch.Tensor, int]:
        return self.crops[index], int(self.labels[index])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One gather from the map, rows read in file order (fewer seeks), returned in the asked order."""
        wanted = torch.as_tensor(indices, dtype=torch.long)
        order = torch.argsort(wanted)
        out = torch.empty((len(wanted), *self.crops.shape[1:]), dtype=torch.uint8)
        out[order] = self.crops[wanted[order]]
        return out, self.labels[wanted].clone()


class RecordImages:
    """JPEG crops in a memory-mapped `train.rec`, decoded with PIL in whichever process asks.

    A record that fails to decode (damaged JPEG, another size) is named in a warning and replaced by
    the next one that decodes, with that one's label, so a run of days does not stop at one bad image.
    """

    def __init__(self, rec_path: Path, offsets: np.ndarray, keys: np.ndarray, labels: torch.Tensor) -> None:
        self.rec_path, self.offsets, self.keys, self.labels = rec_path, offsets, keys, labels
        self._map: mmap.mmap | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_map"] = None  # a worker maps the file itself
        return state

    def _buffer(self) -> mmap.mmap:
        if self._map is None:
            self._map = map_file(self.rec_path)
        return self._map

    def _decode(self, index: int) -> np.ndarray:
        _, data = unpack_record(read_record(self._buffer(), int(self.offsets[index])))
        return decode_crop(data)

    def _rgb(self, index: int) -> tuple[np.ndarray, int]:
        for step in range(SUBSTITUTE_TRIES):
            at = (index + step) % len(self.offsets)
            try:
                return self._decode(at), int(self.labels[at])
            except (BadRecord, UndecodableFace) as exc:
                log.warning(
                    "%s: record %d does not decode (%s); using the next record", self.rec_path, self.keys[at], exc
                )
        raise UndecodableFace(
            f"{SUBSTITUTE_TRIES} records in a row from key {self.keys[index]} of {self.rec_path} do not decode: "
            "the file is damaged; download it again."
        )

    def item(self, index: int) -> tuple[torch.Tensor, int]:
        rgb, label = self._rgb(index)
        return torch.from_numpy(rgb).permute(2, 0, 1), label

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        out = np.empty((len(indices), CROP_SIZE, CROP_SIZE, 3), np.uint8)
        labels = torch.empty(len(indices), dtype=torch.long)
        for row, index in enumerate(indices):
            out[row], labels[row] = self._rgb(int(index))
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), labels
