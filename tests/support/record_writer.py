"""A minimal writer of insightface's record files, in MXNet RecordIO's byte layout as documented, for tests only.

Written from the format's description (dmlc-core's recordio: magic 0xced7230a, lrec = flag << 29 |
length, payload split where the magic occurs at a 4-aligned place with the magic left out, zero padding
to 4 bytes; MXNet's IRHeader `<IfQQ` then `flag` float32 labels; `train.idx` "key<TAB>offset" lines;
`property` "num_classes,112,112"), independently of the reader in f2d_core, so a test of one against
the other checks the layout and not a shared mistake.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

MAGIC_BYTES = struct.pack("<I", 0xCED7230A)


def _part(flag: int, data: bytes) -> bytes:
    return MAGIC_BYTES + struct.pack("<I", (flag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def frame(payload: bytes) -> bytes:
    """One record as RecordIO writes it: split at every 4-aligned magic of the payload, parts flagged 1, 2, 3."""
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == MAGIC_BYTES]
    if not cuts:
        return _part(0, payload)
    pieces, start = [], 0
    for n, cut in enumerate(cuts):
        pieces.append(_part(1 if n == 0 else 2, payload[start:cut]))
        start = cut + 4
    pieces.append(_part(3, payload[start:]))
    return b"".join(pieces)


def ir_payload(labels: float | Sequence[float], image: bytes, record_id: int = 0) -> bytes:
    """IRHeader + image: one float label (flag 0), or several (flag = their count, the label field 0)."""
    if isinstance(labels, (int, float)):
        return struct.pack("<IfQQ", 0, float(labels), record_id, 0) + image
    head = struct.pack("<IfQQ", len(labels), 0.0, record_id, 0)
    return head + struct.pack(f"<{len(labels)}f", *labels) + image


def write_record_folder(
    folder: Path,
    images: Sequence[tuple[bytes, float | Sequence[float]]],
    num_classes: int,
    *,
    meta_record: bool = True,
    record_ids: Sequence[int] | None = None,
    identity_records: bool = False,
    stem: str = "train",
    meta_labels: Sequence[float] | None = None,
) -> list[int]:
    """Write <stem>.rec, <stem>.idx and property; return each image record's byte offset.

    With `meta_record`, record 0 is insightface's header (flag 2, labels [one past the last image
    key, one past the last identity record], no image; `meta_labels` overrides them) and images are
    keys 1..N; else images are keys 0..N-1 (MXNet's im2rec; a list label is its `--pack-label` form).
    `identity_records` adds, after the images, one record per identity as insightface's
    face2rec2.py writes them: flag 2, labels [first key, one past the last key] of its images (sorted by
    label), no image. Several parts: call once per part with another `stem` (im2rec --chunks).
    """
    folder.mkdir(parents=True, exist_ok=True)
    first = 1 if meta_record else 0
    identities: list[bytes] = []
    if identity_records:
        firsts = [float(lab if isinstance(lab, (int, float)) else lab[0]) for _, lab in images]
        for label in range(num_classes):
            keys = [first + n for n, value in enumerate(firsts) if value == label]
            identities.append(ir_payload([float(keys[0]), float(keys[-1] + 1)], b""))
    records: list[tuple[int, bytes]] = []
    if meta_record:
        end = len(images) + 1
        labels = meta_labels if meta_labels is not None else [float(end), float(end + len(identities))]
        records.append((0, ir_payload(list(labels), b"")))
    for n, (jpeg, labels) in enumerate(images):
        rid = record_ids[n] if record_ids is not None else n
        records.append((first + n, ir_payload(labels, jpeg, rid)))
    for n, payload in enumerate(identities):
        records.append((first + len(images) + n, payload))
    rec, idx, offsets = bytearray(), [], []
    for key, payload in records:
        idx.append(f"{key}\t{len(rec)}\n")
        if first <= key < first + len(images):
            offsets.append(len(rec))
        rec += frame(payload)
    (folder / f"{stem}.rec").write_bytes(bytes(rec))
    (folder / f"{stem}.idx").write_text("".join(idx))
    (folder / "property").write_text(f"{num_classes},112,112\n")
    return offsets
