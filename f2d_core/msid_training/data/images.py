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
from PIL import Image, UnidentifiedImageError

from ...errors import DatasetError
from .record_file import BadRecord, map_file, read_record, unpack_record

log = logging.getLogger(__name__)

CROP_SIZE = 112  # the ArcFace / MSID input: aligned by the 5-point template (f2d_core/faces/alignment.py)
SUBSTITUTE_TRIES = 16  # records tried after one that does not decode
# The encodings face datasets use (MS1M/Glint360K records and insightface's .bin sets: JPEG; aligned crops
# also PNG, WebP, BMP). Pillow is asked to identify these alone, so untrusted bytes never reach another
# decoder (EPS would start Ghostscript; TIFF, ICO, PSD... decoders are attack surface no face set needs).
# A phone's MPO JPEG opens through the JPEG plugin.
FACE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
MAX_PHOTO_PIXELS = 100_000_000  # a 100 MP camera photo; a header claiming more is refused before decoding


class UndecodableFace(ValueError):
    """Bytes that are no usable face image (another format, too many pixels, damaged, another size)."""


def open_face_image(data: bytes, max_pixels: int = MAX_PHOTO_PIXELS) -> Image.Image:
    """A Pillow image of `data` whose header was read (nothing decoded yet), in one of FACE_FORMATS.

    The pixel count the header claims is checked here, before any decoding (`Image.open` is lazy):
    a few bytes claiming 60000x60000 pixels never allocate them. The caller decodes (`.convert`,
    `.load`) and closes it.

    Raises:
        UndecodableFace: another format (EPS, TIFF, ...: its first bytes are named), an unreadable
            header, or more than `max_pixels` pixels.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=FACE_FORMATS)
    except UnidentifiedImageError:
        raise UndecodableFace(
            f"not a {', '.join(FACE_FORMATS)} image (it starts with {bytes(data[:8])!r}); other formats are not read"
        ) from None
    except Exception as exc:  # header parsers of untrusted bytes raise many kinds of errors
        raise UndecodableFace(f"an unreadable image header ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise UndecodableFace(f"its header claims {width}x{height} pixels, more than the {max_pixels} allowed")
    return image


def decode_rgb(data: bytes, max_pixels: int = MAX_PHOTO_PIXELS, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of encoded bytes (see `open_face_image`); `size` (width, height): required before decoding.

    Raises UndecodableFace for another format, too many pixels, another size, or damaged data.
    """
    with open_face_image(data, max_pixels) as image:
        if size is not None and image.size != size:
            width, height = image.size
            raise UndecodableFace(f"an image of {width}x{height}, not {size[0]}x{size[1]}")
        try:
            return np.array(image.convert("RGB"))
        except Exception as exc:  # decoders of untrusted bytes raise many kinds of errors
            raise UndecodableFace(f"{type(exc).__name__}: {exc}") from None


class ImageSource(Protocol):
    """Aligned crops by index.

    `item(i)` -> (uint8 [3, 112, 112], label); `batch(indices)` -> (uint8 [B, 3, 112, 112], int64 [B]).
    """

    def item(self, index: int) -> tuple[torch.Tensor, int]: ...

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]: ...


def decode_crop(data: bytes) -> np.ndarray:
    """RGB uint8 [112, 112, 3] of an encoded image (PIL, as insightface's reader decodes to RGB).

    Raises UndecodableFace for another format than FACE_FORMATS, damaged bytes or an image of another
    size (checked from the header, before decoding).
    """
    return decode_rgb(data, CROP_SIZE * CROP_SIZE, (CROP_SIZE, CROP_SIZE))


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
    """JPEG crops in memory-mapped record files (`train.rec`, or several parts), decoded with PIL in whichever
    process asks.

    `rec_path`: one file, or the parts in order with `parts` int [N] giving each image's part. A record
    that fails to decode (damaged JPEG, another size or format) is named in a warning and replaced by the
    next one that decodes, with that one's label, so a run of days does not stop at one bad image;
    SUBSTITUTE_TRIES bad ones in a row raise DatasetError naming the file and key.
    """

    def __init__(
        self,
        rec_path: Path | Sequence[Path],
        offsets: np.ndarray,
        keys: np.ndarray,
        labels: torch.Tensor,
        parts: np.ndarray | None = None,
    ) -> None:
        self.rec_paths = [Path(rec_path)] if isinstance(rec_path, (str, Path)) else [Path(p) for p in rec_path]
        self.rec_path = self.rec_paths[0]
        self.offsets, self.keys, self.labels = offsets, keys, labels
        self.parts = np.zeros(len(offsets), np.int32) if parts is None else parts
        self._maps: list[mmap.mmap | None] = [None] * len(self.rec_paths)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = [None] * len(self.rec_paths)  # a worker maps the files itself
        return state

    def _buffer(self, part: int) -> mmap.mmap:
        if self._maps[part] is None:
            self._maps[part] = map_file(self.rec_paths[part])
        return self._maps[part]

    def _decode(self, index: int) -> np.ndarray:
        _, data = unpack_record(read_record(self._buffer(int(self.parts[index])), int(self.offsets[index])))
        return decode_crop(data)

    def _rgb(self, index: int) -> tuple[np.ndarray, int]:
        for step in range(SUBSTITUTE_TRIES):
            at = (index + step) % len(self.offsets)
            try:
                return self._decode(at), int(self.labels[at])
            except (BadRecord, UndecodableFace) as exc:
                log.warning(
                    "%s: record %d does not decode (%s); using the next record",
                    self.rec_paths[int(self.parts[at])],
                    self.keys[at],
                    exc,
                )
        raise DatasetError(
            f"{SUBSTITUTE_TRIES} records in a row from key {self.keys[index]} of "
            f"{self.rec_paths[int(self.parts[index])]} do not decode: the file is damaged; download it again."
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
