"""The benchmark's CSV, one row per generated image, rewritten atomically so an interrupt never corrupts it."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..atomic_io import atomic_write

COLUMNS = (
    "setting", "face", "prompt_index", "prompt", "seed", "batch_index", "image",
    "face_found", "identity", "clip", "dclip", "hmean", "gmean",
)  # fmt: skip


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of an existing results CSV ([] when there is none yet)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """Write all rows (COLUMNS order) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in COLUMNS})
    text = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
