"""insightface's verification sets (`lfw.bin`, `cfp_fp.bin`, `agedb_30.bin`), read without running pickled code.

Such a file is a pickle of `(bins, issame_list)`: 2N encoded images (JPEG or PNG bytes; pair i is images
2i and 2i+1) and N bools, written by Python 2 (its `str` loads as bytes with `encoding="bytes"`, as
insightface's `recognition/arcface_torch/eval/verification.py` `load_bin` does). A pickle can call any
Python function while it loads, so this reader never hands the file to a plain unpickler: every opcode
is checked first (parsed with pickletools' opcode table, nothing run) against the few that build bytes,
bools, lists and tuples (the memo included), and the unpickler that then builds them refuses every
global (`find_class`) and persistent id. A file with anything else (a reference to `os.system`, a numpy
array, a string, a number) is refused with an error naming the file, and nothing in it runs.

The memo is checked too: a PUT must take the next free index and a GET an index already put (older
Pythons reserve room up to any memo index a file names: the 4-byte index of a 13-byte file would take
64 GiB), and a file larger than MAX_BIN_BYTES, or one whose length-prefixed data claims more bytes than
the file holds, is refused before anything is built.

Images are opened by Pillow only as JPEG, PNG, WebP or BMP (`data/images.py` `open_face_image`), their
pixel count checked from the header before decoding, and decoded to RGB. Those not 112x112 are resized
when square (insightface resizes the short side to 112 and then needs a square) and refused otherwise,
naming the pair.
"""

from __future__ import annotations

import io
import logging
import pickle
import pickletools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import DatasetError
from ..data.images import UndecodableFace, decode_rgb
from .pairs import VerificationSet, balanced_pair_subset

log = logging.getLogger(__name__)

FACE_SIZE = 112
MAX_FACE_PIXELS = 1024 * 1024  # a verification face is a 112 (or 250) px square crop; larger headers are refused
MAX_BIN_BYTES = 4 << 30  # insightface's largest set (cfp_fp.bin) is about 0.1 GB; 4 GiB leaves room for others
_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
_GETS = ("GET", "BINGET", "LONG_BINGET")
ALLOWED_OPCODES = frozenset(
    {
        # framing and the stack
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK",
        # the memo (shared references; pickle writes them for every list and string)
        "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET", "MEMOIZE",
        # lists and tuples
        "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        # bools (protocol 2+; protocol 0/1 write them as INT "01"/"00", admitted below only as a bool)
        "NEWTRUE", "NEWFALSE",
        # bytes: Python 2 str (loaded as bytes) and Python 3 bytes
        "STRING", "BINSTRING", "SHORT_BINSTRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8",
    }
)  # fmt: skip
_NUMPY_HINT = (
    " Images stored as numpy arrays (as insightface's build_eval_pack.py writes them) must be turned into "
    "bytes first, where insightface runs: load the file there and pickle.dump(([bytes(b) for b in bins], "
    "[bool(s) for s in issame_list]), f, protocol=2)."
)


def _refusal(path: Path, what: str, name: str, pos: int | None) -> DatasetError:
    hint = _NUMPY_HINT if "numpy" in what else ""
    return DatasetError(
        f"{path} is not a plain verification set: its pickle holds {what} (opcode {name} at byte {pos}). "
        "This pack reads only lists of image bytes and same/different flags from a .bin and never runs "
        f"pickled code, so the file is refused.{hint}"
    )


_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_CODE_REFERENCES = ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX")


def _opcodes(data: bytes):
    """(opcode, arg, byte position) of each opcode up to STOP: pickletools' parsing, nothing executed.

    As `pickletools.genops`, except that a protocol-0 STRING's argument stays bytes (Python 3.11's
    pickletools decodes it as ASCII and fails on an image's bytes).
    """
    stream = io.BytesIO(data)
    while True:
        pos = stream.tell()
        code = stream.read(1)
        opcode = _OPCODES.get(code)
        if opcode is None:
            raise ValueError(
                f"at byte {pos}, {'the data ends before STOP' if not code else f'unknown opcode {code!r}'}"
            )
        if opcode.name == "STRING":
            line = stream.readline()
            if len(line) < 3 or not line.endswith(b"\n") or line[0] != line[-2] or line[:1] not in (b"'", b'"'):
                raise ValueError(f"at byte {pos}, a STRING without quotes and newline")
            arg = line[1:-2]
        else:
            arg = None if opcode.arg is None else opcode.arg.reader(stream)
        yield opcode, arg, pos
        if opcode.name == "STOP":
            return


def _what(opcode, arg, strings: list[str]) -> str:
    """What a forbidden opcode would make, in words."""
    name = opcode.name
    if name in ("GLOBAL", "INST"):
        return f"a reference to {str(arg).replace(' ', '.')}"
    if name == "STACK_GLOBAL":
        return f"a reference to {'.'.join(strings[-2:]) or 'a Python object'}"
    if name in _CODE_REFERENCES:
        return "a call to build a Python object"
    return f"something other than bytes, bools and lists ({opcode.doc.strip().splitlines()[0]})"


def check_opcodes(data: bytes, path: Path) -> None:
    """Raise DatasetError unless every opcode of the pickle `data` is in ALLOWED_OPCODES (INT only as a bool).

    Nothing is executed: the opcodes are only parsed. A reference to code (GLOBAL and its kin) is named
    in the error in preference to the first other forbidden opcode. A truncated or non-pickle file is
    an error too.
    """
    strings: list[str] = []  # strings pushed so far, to name a protocol-4 STACK_GLOBAL's target
    refused = None
    memo = 0  # memo entries put so far: the next PUT must take index `memo`
    try:
        for opcode, arg, pos in _opcodes(data):
            name = opcode.name
            if name in _PUTS or name == "MEMOIZE":
                if name != "MEMOIZE" and arg != memo:
                    raise _memo_refusal(path, f"a memo index {arg} out of order (the next is {memo})", name, pos)
                memo += 1
            elif name in _GETS and not (isinstance(arg, int) and 0 <= arg < memo):
                raise _memo_refusal(path, f"a memo index {arg} that was never put ({memo} were)", name, pos)
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(arg))
            if name in ALLOWED_OPCODES or (name == "INT" and isinstance(arg, bool)):
                continue
            if refused is None or (name in _CODE_REFERENCES and refused[1] not in _CODE_REFERENCES):
                refused = (_what(opcode, arg, strings), name, pos)
    except ValueError as e:
        if refused is None:
            raise DatasetError(
                f"{path} is not a readable pickle ({e}): is it an insightface verification .bin, complete?"
            ) from None
    if refused is not None:
        raise _refusal(path, *refused)


def _memo_refusal(path: Path, what: str, name: str, pos: int) -> DatasetError:
    return DatasetError(
        f"{path} is not a plain verification set: its pickle holds {what} (opcode {name} at byte {pos}). "
        "A pickle written by Python numbers its memo in order; this file may be crafted to make the reader "
        "reserve gigabytes, so it is refused."
    )


class _NoObjectsUnpickler(pickle.Unpickler):
    """An unpickler that can build nothing but the built-in containers and scalars: no class, no function."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused: a reference to {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused: a persistent id")


def read_verification_pickle(path: Path | str) -> tuple[list[bytes], list[bool]]:
    """The (encoded images, same flags) of a verification `.bin`, loaded safely (see the module doc).

    Raises:
        DatasetError: missing file, a forbidden opcode, not a pickle, or not (list of bytes, list of bools)
        with 2 images per flag (more images than that are ignored, as insightface does).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"the verification set {path} does not exist")
    try:
        size = path.stat().st_size
        if size > MAX_BIN_BYTES:
            raise DatasetError(
                f"{path} is {size / 2**30:.1f} GiB, more than the {MAX_BIN_BYTES >> 30} GiB a verification set may "
                "be (insightface's are about 0.1 GB): is it a verification .bin?"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"the verification set {path} cannot be read: {exc.strerror or exc}") from None
    check_opcodes(data, path)
    try:
        loaded = _NoObjectsUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError) as e:
        raise DatasetError(f"{path} could not be read as a verification set: {e}") from None
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise DatasetError(f"{path} does not hold the pair (images, same flags) insightface's .bin files hold")
    bins, same = loaded
    if not isinstance(bins, (list, tuple)) or not isinstance(same, (list, tuple)):
        raise DatasetError(f"{path}: expected a list of images and a list of flags")
    for i, item in enumerate(bins):
        if not isinstance(item, bytes):
            raise DatasetError(f"{path}: image {i} is a {type(item).__name__}, not encoded image bytes")
    for i, item in enumerate(same):
        if not isinstance(item, bool):
            raise DatasetError(f"{path}: flag {i} is a {type(item).__name__}, not a bool")
    if len(bins) < 2 * len(same) or not same:
        raise DatasetError(f"{path} holds {len(bins)} images for {len(same)} pairs; each pair needs two")
    if len(bins) > 2 * len(same):
        log.warning("%s: %d images beyond the %d pairs' are ignored", path, len(bins) - 2 * len(same), len(same))
    return list(bins[: 2 * len(same)]), list(same)


def decode_face(blob: bytes, path: Path, index: int) -> torch.Tensor:
    """uint8 [3, 112, 112] RGB of image `index` (pair index // 2) of a .bin; DatasetError naming the pair."""
    where = f"{path}: image {index} ({'first' if index % 2 == 0 else 'second'} of pair {index // 2})"
    try:
        rgb = Image.fromarray(decode_rgb(blob, MAX_FACE_PIXELS))
    except UndecodableFace as e:
        raise DatasetError(f"{where} is not a readable face image: {e}") from None
    if rgb.size != (FACE_SIZE, FACE_SIZE):
        width, height = rgb.size
        if width != height:
            raise DatasetError(
                f"{where} is {width}x{height}, not {FACE_SIZE}x{FACE_SIZE}: verification faces are aligned square "
                "crops (insightface resizes only square ones), so this set cannot be used as is."
            )
        # mxnet's resize_short default: area interpolation when shrinking (Pillow's box filter), else bilinear
        shrink = width > FACE_SIZE
        rgb = rgb.resize((FACE_SIZE, FACE_SIZE), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def read_verification_bin(
    path: Path | str, max_pairs: int | None = None, seed: int = 0, workers: int = 4
) -> VerificationSet:
    """The pairs of an insightface verification `.bin` as a VerificationSet.

    Args:
        path: `lfw.bin`, `cfp_fp.bin`, `agedb_30.bin` or another file of that form.
        max_pairs: score only this many pairs, half same and half different, chosen with `seed`
            (`balanced_pair_subset`); only their images are decoded. None: every pair.
        workers: decoding threads (Pillow decodes outside the GIL).

    Returns:
        faces uint8 [2K, 3, 112, 112] RGB, pair k = (faces[2k], faces[2k+1]), same bool [K].

    Raises:
        DatasetError: see `read_verification_pickle` and `decode_face`.
    """
    path = Path(path)
    bins, flags = read_verification_pickle(path)
    same = torch.tensor(flags, dtype=torch.bool)
    keep = balanced_pair_subset(same, max_pairs, seed) if max_pairs is not None else torch.arange(len(same))
    indices = torch.stack([2 * keep, 2 * keep + 1], dim=1).flatten().tolist()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        faces = list(pool.map(lambda i: decode_face(bins[i], path, i), indices))
    pairs = torch.arange(len(keep))
    return VerificationSet(
        faces=torch.stack(faces),
        first=2 * pairs,
        second=2 * pairs + 1,
        same=same[keep],
        source=path.name if max_pairs is None else f"{path.name} ({len(keep)} of {len(same)} pairs, seed {seed})",
    )
