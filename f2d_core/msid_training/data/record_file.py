"""insightface's record files (MS1MV2/MS1MV3, Glint360K): `train.rec`, `train.idx`, `property`, read without MXNet.

The layout is MXNet's RecordIO (dmlc-core `src/recordio.cc`, MXNet `python/mxnet/recordio.py`):

- `train.rec`: records one after another. A record is a uint32 magic 0xced7230a, a uint32 `lrec`
  whose low 29 bits are the length and whose high 3 bits are a continuation flag, the payload, and
  zero padding to a multiple of 4 bytes. The writer splits a payload wherever the magic number
  occurs at a 4-aligned position in it: the parts carry flags 1 (first), 2 (middle), 3 (last), the
  magic itself is left out and put back between parts on reading; a whole record has flag 0.
- The payload (MXNet's IRHeader): uint32 flag, float32 label, uint64 id, uint64 id2 (24 bytes,
  little-endian); when flag > 0, `flag` float32 labels follow and the label field is unused. Then the
  encoded image (JPEG in insightface's sets).
- `train.idx`: text lines "key<TAB>byte offset of the record in train.rec".
- `property`: one line "num_classes,height,width".
- In insightface's sets, record 0 is a meta header (flag > 0, no image) whose first label is one past the
  last image record: images are keys 1 .. label[0] - 1 (insightface's `recognition/arcface_torch/dataset.py`,
  `MXFaceDataset`); the keys after them are one record per identity (no image), which are not read.
  Without it (MXNet's `im2rec`, with or without `--pack-label`, whose records carry `flag` labels each)
  every key is an image; a record 0 with flag > 0 and an image is an image, not a meta header. An image's
  identity is its first label.
- The meta header's labels are float32: above 2^24 (16.7 M images: WebFace42M, Glint360K's 17 M) the
  image count is rounded, so the end of the images is found among the keys that round to it
  (`meta_image_end`): the first that is no image record.
- Several parts: a folder without `train.rec` but with `<name>.rec` + `<name>.idx` pairs (MXNet's
  `im2rec --chunks N` writes `<prefix>_0.rec`, `<prefix>_1.rec`, ...) is read as one set, parts in
  sorted name order, sharing one `property`.

Every reader here raises RecordFileError (a DatasetError) naming the file, or BadRecord naming what is
wrong with one record, never struct.error, EOFError, OSError or ValueError from the bytes.

The file is memory-mapped: every decode worker (and every DDP rank) reads the same page cache.
"""

from __future__ import annotations

import math
import mmap
import os
import shutil
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...atomic_io import fsync_folder, write_error
from ...errors import DatasetError

MAGIC = 0xCED7230A
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3  # continuation flags
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2: 24 bytes
_RECORD_HEAD = struct.Struct("<II")  # magic, lrec
REC_FILE, IDX_FILE, PROPERTY_FILE = "train.rec", "train.idx", "property"


class RecordFileError(DatasetError):
    """A record directory that cannot be used (a missing or malformed file)."""


class BadRecord(ValueError):
    """One damaged record (bad magic, truncated, an unreadable header); the message says what is wrong."""


@dataclass(frozen=True)
class RecordHeader:
    """MXNet's IRHeader: flag, labels (one, or `flag` of them), id, id2."""

    flag: int
    labels: tuple[float, ...]
    id: int
    id2: int


def padded(length: int) -> int:
    """A length rounded up to a multiple of 4 (RecordIO pads every part so)."""
    return (length + 3) & ~3


def read_record(buffer: bytes | mmap.mmap | memoryview, offset: int) -> bytes:
    """The payload of the record at `offset`, its parts joined with the magic between them.

    Raises BadRecord for a wrong magic number, a part running past the end of the buffer, or a record
    that starts with a middle or last part.
    """
    size, parts, position, first = len(buffer), [], offset, True
    if not 0 <= offset <= size - 8:
        raise BadRecord(f"the offset {offset} is outside the file ({size} bytes)")
    while True:
        if position + 8 > size:
            raise BadRecord(f"truncated: the record header at byte {position} runs past the end ({size} bytes)")
        magic, lrec = _RECORD_HEAD.unpack_from(buffer, position)
        if magic != MAGIC:
            raise BadRecord(f"bad magic 0x{magic:08x} at byte {position} (expected 0x{MAGIC:08x})")
        flag, length = lrec >> LENGTH_BITS, lrec & LENGTH_MASK
        if flag > LAST or (first and flag in (MIDDLE, LAST)) or (not first and flag in (WHOLE, FIRST)):
            raise BadRecord(f"continuation flag {flag} out of order at byte {position}")
        start = position + 8
        if start + length > size:
            raise BadRecord(f"truncated: {length} bytes announced at byte {position}, the file ends at {size}")
        parts.append(bytes(buffer[start : start + length]))
        if flag in (WHOLE, LAST):
            break
        parts.append(struct.pack("<I", MAGIC))
        position, first = start + padded(length), False
    return b"".join(parts)


def unpack_record(payload: bytes) -> tuple[RecordHeader, bytes]:
    """(header, image bytes) of a payload; BadRecord when it is shorter than its header says."""
    if len(payload) < IR_HEADER.size:
        raise BadRecord(f"a payload of {len(payload)} bytes has no 24-byte header")
    flag, label, id_, id2 = IR_HEADER.unpack_from(payload)
    end = IR_HEADER.size + 4 * flag
    if flag > 0:
        if len(payload) < end:
            raise BadRecord(f"the header announces {flag} labels but the payload has {len(payload)} bytes")
        labels = tuple(float(x) for x in np.frombuffer(payload, "<f4", flag, IR_HEADER.size))
        return RecordHeader(flag, labels, id_, id2), payload[end:]
    return RecordHeader(flag, (float(label),), id_, id2), payload[IR_HEADER.size :]


def map_file(path: Path) -> mmap.mmap:
    """`path` memory-mapped read-only, read-ahead off (decode workers read records in random order).

    Raises RecordFileError for a file that cannot be opened or is empty.
    """
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:  # ValueError: "cannot mmap an empty file"
        raise RecordFileError(f"{path} cannot be read as a record file: {exc}") from None
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return mapped


def _missing(folder: Path, name: str, rec_name: str = REC_FILE) -> str:
    fixes = {
        IDX_FILE: "the index of train.rec (lines 'key<TAB>byte offset'); it comes with train.rec in the "
        "dataset's download: copy it beside train.rec",
        PROPERTY_FILE: "one line 'num_classes,112,112'; it comes with train.rec in the dataset's download: copy it "
        "beside train.rec, or write it with the dataset's number of identities",
    }
    needs = f"a record directory needs {REC_FILE}, {IDX_FILE} and {PROPERTY_FILE}"
    fix = fixes[IDX_FILE if name.endswith(".idx") else PROPERTY_FILE].replace("train.rec", rec_name)
    return f"{folder / name} is missing: {needs}. {name} is {fix}."


def read_property(folder: Path) -> tuple[int, int, int]:
    """(num_classes, height, width) from `property`; RecordFileError when missing or malformed."""
    path = folder / PROPERTY_FILE
    if not path.is_file():
        raise RecordFileError(_missing(folder, PROPERTY_FILE))
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError as exc:
        raise RecordFileError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        num_classes, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise RecordFileError(
            f"{path} holds {text[:80]!r}; it must be one line 'num_classes,height,width', e.g. '93431,112,112'."
        ) from None
    if num_classes < 1:
        raise RecordFileError(f"{path} gives {num_classes} classes; it must be at least 1.")
    return num_classes, height, width


def read_index(folder: Path, idx_name: str = IDX_FILE) -> tuple[np.ndarray, np.ndarray]:
    """(keys, byte offsets), int64 [N] each in file order, from `train.idx` (or `idx_name`); RecordFileError when
    missing, unreadable or not integer pairs."""
    path = folder / idx_name
    if not path.is_file():
        raise RecordFileError(_missing(folder, idx_name, idx_name.removesuffix(".idx") + ".rec"))
    try:
        numbers = np.array(path.read_bytes().split(), dtype=np.int64)
    except OSError as exc:
        raise RecordFileError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, OverflowError) as exc:
        raise RecordFileError(f"{path} is not lines of 'key<TAB>byte offset' integers ({exc}).") from None
    if numbers.size % 2:
        raise RecordFileError(f"{path} has an odd number of fields: its lines must be 'key<TAB>byte offset'.")
    pairs = numbers.reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


@dataclass(frozen=True)
class RecordScan:
    """What `scan_records` found: the usable image records and the damaged ones."""

    keys: np.ndarray  # int64 [N]: record keys of usable images
    offsets: np.ndarray  # int64 [N]: their byte offsets in train.rec
    labels: np.ndarray  # int64 [N]: their identities
    bad: list[tuple[int, str]]  # (key, what is wrong)


def _label_of(payload: bytes) -> float:
    header, _ = unpack_record(payload)
    return header.labels[0]


def scan_records(buffer: mmap.mmap | bytes, keys: np.ndarray, offsets: np.ndarray, num_classes: int) -> RecordScan:
    """Check every image record's framing and read its label, without decoding an image.

    Whole records (the usual case) are checked at once with numpy: magic, length inside the file,
    header present; a record split in parts is read in full. A record with a wrong magic, one running
    past the end of the file, an unreadable header or a label outside 0..num_classes-1 goes to `bad`.
    """
    size = len(buffer)
    words = np.frombuffer(buffer, "<u4", size // 4)
    floats = words.view("<f4")
    offsets = offsets.astype(np.int64)
    index = offsets // 4
    aligned = (offsets % 4 == 0) & (offsets >= 0) & (offsets + 8 <= size)
    safe = np.where(aligned, index, 0)
    magic_ok = aligned & (words[safe] == MAGIC)
    lrec = words[np.minimum(safe + 1, len(words) - 1)].astype(np.int64)
    flag, length = lrec >> LENGTH_BITS, lrec & LENGTH_MASK
    fits = magic_ok & (offsets + 8 + length <= size)
    header_flag = words[np.minimum(safe + 2, len(words) - 1)].astype(np.int64)
    # as unpack_record: the 24-byte header, then `flag` float32 labels when flag > 0
    simple = fits & (flag == WHOLE) & (length >= IR_HEADER.size + 4 * header_flag)
    label_word = np.where(header_flag > 0, safe + 2 + IR_HEADER.size // 4, safe + 3)
    labels = np.full(len(keys), np.nan)
    labels[simple] = floats[np.minimum(label_word, len(words) - 1)][simple]
    bad: list[tuple[int, str]] = []
    for i in np.flatnonzero(~simple):
        try:
            labels[i] = _label_of(read_record(buffer, int(offsets[i])))
        except BadRecord as exc:
            bad.append((int(keys[i]), str(exc)))
    rounded = np.rint(labels)
    ok = np.isfinite(labels) & (rounded == labels) & (rounded >= 0) & (rounded < num_classes)
    known_bad = {k for k, _ in bad}
    for i in np.flatnonzero(~ok):
        if int(keys[i]) not in known_bad:
            bad.append(
                (int(keys[i]), f"label {labels[i]} is not an identity 0..{num_classes - 1} of the property file")
            )
    bad.sort()
    return RecordScan(keys[ok], offsets[ok], rounded[ok].astype(np.int64), bad)


FLOAT32_EXACT = 1 << 24  # every integer up to 2^24 is a float32; above, the meta header's count is rounded


def meta_image_end(claimed: float, is_image: Callable[[int], bool]) -> int:
    """One past the last image key, from the meta header's float32 label[0] (`claimed`).

    Up to 2^24 the float is exact. Above, it is one of the integers that round to the same float32
    (a spacing of 2 up to 2^25, 4 up to 2^26, ...): the end is the first of them, in order, whose key
    `is_image` says is not an image record (an identity record, or no record at all).

    Raises RecordFileError when `claimed` is not a finite count >= 1, or no candidate key ends the images.
    """
    if not (math.isfinite(claimed) and claimed >= 1):
        raise RecordFileError(f"record 0 (insightface's meta header) gives {claimed} as the image count's end")
    end = int(claimed)
    if end <= FLOAT32_EXACT:
        return end
    rounded = np.float32(claimed)
    step = int(np.spacing(rounded))
    candidates = [k for k in range(end - step, end + step + 1) if np.float32(k) == rounded]
    for key in candidates:
        if not is_image(key):
            return key
    raise RecordFileError(
        f"record 0 (insightface's meta header) says about {end - 1} images, but keys {candidates[0]}..{candidates[-1]}"
        " are all images: the index does not belong to this record file."
    )


def image_keys(buffer: mmap.mmap | bytes, keys: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of the image records: 1 .. end-1 after insightface's meta record 0, else all.

    Record 0 is a meta header when its IRHeader flag is > 0 and it holds no image (an `im2rec
    --pack-label` file's record 0 has labels and an image: it is an image). RecordFileError when
    record 0 cannot be read, or the meta record names images the index lacks.
    """
    where = np.flatnonzero(keys == 0)
    if not len(where):
        return keys, offsets
    try:
        header, image = unpack_record(read_record(buffer, int(offsets[where[0]])))
    except BadRecord as exc:
        raise RecordFileError(f"record 0 (insightface's meta header) is damaged: {exc}") from None
    if header.flag == 0 or image:
        return keys, offsets

    def is_image(key: int) -> bool:  # called for a few keys only, and only above 2^24 images
        found = np.flatnonzero(keys == key)
        if not len(found):
            return False
        try:
            return bool(unpack_record(read_record(buffer, int(offsets[found[0]])))[1])
        except BadRecord:
            return True  # a damaged record among the images: the scan names it

    end = meta_image_end(header.labels[0], is_image)
    chosen = (keys >= 1) & (keys < end)
    if int(chosen.sum()) != end - 1:
        raise RecordFileError(
            f"record 0 says images are keys 1..{end - 1}, but the index lists {int(chosen.sum())} of them: "
            f"the index does not belong to this record file (copy both from the same download)."
        )
    return keys[chosen], offsets[chosen]


def record_parts(folder: Path) -> list[tuple[str, str]]:
    """(rec name, idx name) of each part of a record directory: train.rec alone, else every `<name>.rec`, sorted.

    RecordFileError when the folder holds no .rec file.
    """
    if (folder / REC_FILE).is_file():
        return [(REC_FILE, IDX_FILE)]
    parts = sorted(p.name for p in folder.glob("*.rec") if p.is_file() and not p.name.startswith("."))
    if not parts:
        raise RecordFileError(f"{folder} holds no {REC_FILE} (nor other .rec parts).")
    return [(name, name.removesuffix(".rec") + ".idx") for name in parts]


def is_record_folder(path: Path) -> bool:
    """Whether `path` is a folder holding `train.rec` or other `.rec` parts (a record directory, even if its other
    files are missing)."""
    return path.is_dir() and ((path / REC_FILE).is_file() or any(p.is_file() for p in path.glob("*.rec")))


def frame(payload: bytes) -> bytes:
    """A payload as RecordIO stores it: split where the magic occurs at a 4-aligned place (left out), parts flagged
    FIRST, MIDDLE, LAST (WHOLE when there is no such place), each part's data zero-padded to 4 bytes."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == magic]
    if not cuts:
        return _part(WHOLE, payload, magic)
    pieces, start = [], 0
    for n, cut in enumerate(cuts):
        pieces.append(_part(FIRST if n == 0 else MIDDLE, payload[start:cut], magic))
        start = cut + 4
    pieces.append(_part(LAST, payload[start:], magic))
    return b"".join(pieces)


def _part(flag: int, data: bytes, magic: bytes) -> bytes:
    return magic + struct.pack("<I", (flag << LENGTH_BITS) | len(data)) + data + b"\0" * (padded(len(data)) - len(data))


def write_record_folder(folder: Path, items: Iterable[tuple[bytes, int]], num_classes: int) -> int:
    """Write `train.rec`, `train.idx` and `property` of (encoded image, label) items; the number written.

    Every record is an image (keys 0..N-1, no meta record; IRHeader flag 0, the label as float32,
    id = key). The folder is written beside under a temporary name and renamed into place, so it is
    complete or absent; an existing folder of that name is replaced. Raises WriteError (full disk,
    read-only folder) naming the folder; nothing partial is left.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    try:
        tmp.mkdir(parents=True)
        with open(tmp / REC_FILE, "wb") as rec, open(tmp / IDX_FILE, "w") as idx:
            for count, (image, label) in enumerate(items, start=1):
                idx.write(f"{count - 1}\t{rec.tell()}\n")
                rec.write(frame(IR_HEADER.pack(0, float(label), count - 1, 0) + image))
            rec.flush()
            os.fsync(rec.fileno())
        (tmp / PROPERTY_FILE).write_text(f"{num_classes},112,112\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        fsync_folder(folder.parent)
    except OSError as exc:
        raise write_error(folder, "packed crops", exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return count
