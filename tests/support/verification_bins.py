"""insightface verification `.bin` files written at test time, in the byte layout Python 2 gave them.

insightface's lfw.bin / cfp_fp.bin / agedb_30.bin were pickled by Python 2 (`pickle.dump((bins,
issame_list), f, protocol=pickle.HIGHEST_PROTOCOL)`, i.e. protocol 2) with `bins` a list of `str` (the
encoded image bytes) and `issame_list` a list of bools. Python 3 cannot write that: it pickles bytes at
protocol 2 as a call to `_codecs.encode`, which a safe reader must refuse. So this writer emits the
opcodes Python 2's pickler emitted, by hand: protocol 2 (PROTO, EMPTY_LIST, MARK ... APPENDS in batches
of 1000, SHORT_BINSTRING / BINSTRING, NEWTRUE / NEWFALSE, TUPLE2, BINPUT memo entries) and protocol 0
(MARK LIST, S'...' strings, I01 / I00 bools, APPEND, MARK TUPLE, PUT). Protocol 3 and 4 files are what
Python 3's own pickler writes from bytes (as after re-saving a set in Python 3).
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class _Python2Pickler:
    """The opcodes of Python 2's pickler for a tuple of two lists of str and bool (protocols 0 and 2)."""

    def __init__(self, protocol: int) -> None:
        assert protocol in (0, 2)
        self.protocol = protocol
        self.out = bytearray(b"\x80\x02" if protocol == 2 else b"")
        self.memo = 0

    def _put(self) -> None:
        if self.protocol == 0:
            self.out += b"p%d\n" % self.memo
        elif self.memo < 256:
            self.out += b"q" + bytes([self.memo])
        else:
            self.out += b"r" + struct.pack("<I", self.memo)
        self.memo += 1

    def _item(self, item) -> None:
        if isinstance(item, bool):
            if self.protocol == 2:
                self.out += b"\x88" if item else b"\x89"
            else:
                self.out += b"I01\n" if item else b"I00\n"
            return
        assert isinstance(item, bytes)
        if self.protocol == 0:
            self.out += b"S" + repr(item)[1:].encode("ascii") + b"\n"  # Python 2's repr(str): '...' escaped
        elif len(item) < 256:
            self.out += b"U" + bytes([len(item)]) + item
        else:
            self.out += b"T" + struct.pack("<i", len(item)) + item
        self._put()

    def _list(self, items: list) -> None:
        if self.protocol == 0:
            self.out += b"(l"
            self._put()
            for item in items:
                self._item(item)
                self.out += b"a"
            return
        self.out += b"]"
        self._put()
        for start in range(0, len(items), 1000):
            batch = items[start : start + 1000]
            if len(batch) == 1:
                self._item(batch[0])
                self.out += b"a"
            else:
                self.out += b"("
                for item in batch:
                    self._item(item)
                self.out += b"e"

    def dumps(self, bins: list[bytes], same: list[bool]) -> bytes:
        if self.protocol == 0:
            self.out += b"("
        self._list(bins)
        self._list(same)
        self.out += b"t" if self.protocol == 0 else b"\x86"
        self._put()
        self.out += b"."
        return bytes(self.out)


def encode_faces(faces: torch.Tensor, image_format: str = "JPEG") -> list[bytes]:
    """uint8 [M, 3, H, W] RGB -> M encoded images (JPEG quality 95, or PNG)."""
    blobs = []
    for face in faces:
        buffer = io.BytesIO()
        Image.fromarray(face.permute(1, 2, 0).numpy()).save(buffer, format=image_format, quality=95)
        blobs.append(buffer.getvalue())
    return blobs


def verification_bin_bytes(blobs: list[bytes], same: list[bool], protocol: int = 2) -> bytes:
    """The pickle of (blobs, same): protocols 0 and 2 as Python 2 wrote them, 3+ by Python 3's pickler."""
    if protocol in (0, 2):
        return _Python2Pickler(protocol).dumps(blobs, same)
    return pickle.dumps((blobs, same), protocol=protocol)


def write_verification_bin(
    path: Path, faces: torch.Tensor, same: torch.Tensor, protocol: int = 2, image_format: str = "JPEG"
) -> Path:
    """A .bin of faces uint8 [2N, 3, H, W] (pair i = faces 2i, 2i+1) and same bool [N]."""
    blob = verification_bin_bytes(encode_faces(faces, image_format), [bool(s) for s in same], protocol)
    Path(path).write_bytes(blob)
    return Path(path)


def numpy_array_bin_bytes(faces: torch.Tensor, same: list[bool]) -> bytes:
    """A .bin as insightface's build_eval_pack.py writes it: each image a numpy array from the encoder."""
    arrays = [np.frombuffer(blob, dtype=np.uint8) for blob in encode_faces(faces)]
    return pickle.dumps((arrays, same), protocol=2)
