"""The prepared training set (`TrainingSet`): in memory, or memory-mapped from its packed file in the cache.

A packed file is named by what it holds (the settings digest and each usable photo's name, person
and content key), so a changed folder listing or setting gives a new file and an unchanged one is
opened as it is. Old packed files of the same training folder are deleted when a new one is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .packed import PackedSetError, open_packed_set, write_packed_set
from .report import DatasetReport

log = logging.getLogger(__name__)

SETS_FOLDER = "sets"  # inside a settings folder of the sample cache


@dataclass
class TrainingSet:
    """Training tensors of N photos x V views (V = 2 with the flip), in sorted file order.

    Prepared with a cache, the tensors are memory maps of one packed file (`path`, see packed.py),
    shared by every process that opens it; without a cache they are in memory, in the same dtypes.
    Convert a batch with `.float()` after indexing, never the whole set.
    """

    idvec: torch.Tensor  # [N, V, 1536] float32
    expression: torch.Tensor | None  # [N, V, 64] float32; None without an expression model (null_exp only)
    latents: torch.Tensor  # [N, V, C, h, w] float16, as encode_latents gave them
    masks: torch.Tensor  # [N, V, 1, h, w] uint8 in {0, 1}
    person: list[str]  # subfolder name per sample, "" for photos directly in the folder
    files: list[str]  # path relative to the folder per sample
    report: DatasetReport
    settings: dict[str, object] = field(default_factory=dict)
    path: Path | None = None  # the packed file the tensors map; None when they are in memory
    keys: list[str] = field(default_factory=list)  # content key per sample: sha256 of the photo's bytes and its mask
    source_side: torch.Tensor | None = None  # [N, V] float32: the face's FFHQ quad side in photo pixels (SDXL)

    def __post_init__(self) -> None:
        self._groups: dict[str, list[int]] = {}
        for i, person in enumerate(self.person):
            if person:
                self._groups.setdefault(person, []).append(i)

    def __len__(self) -> int:
        return len(self.files)

    def shuffle_note(self) -> str:
        """What shuffle_identities can do on this set: "" when every photo has another of its person, else a
        sentence for the user (nothing to shuffle in a flat folder, or how many photos are left as they are)."""
        shufflable = sum(len(group) for group in self._groups.values() if len(group) > 1)
        if shufflable == len(self):
            return ""
        if shufflable == 0:
            return (
                "shuffle_identities does nothing here: no person has two photos (photos directly in the folder are "
                "each their own person). Put each person's photos in a subfolder of their own, or turn it off."
            )
        return (
            f"shuffle_identities: {len(self) - shufflable} of {len(self)} photos have no other photo of their person "
            "(in the folder itself, or alone in their subfolder) and are encoded as they are."
        )

    def reference_index(self, i: int, generator: torch.Generator | None = None) -> int:
        """Another photo of sample i's person, drawn uniformly (FaceChain-FACT's shuffle); i when there is none.

        Photos directly in the folder (person "") are each their own identity, so they get i back.
        """
        others = [j for j in self._groups.get(self.person[i], []) if j != i]
        if not others:
            return i
        return others[int(torch.randint(len(others), (1,), generator=generator))]


def packed_set_path(settings_dir: Path, folder: Path, samples: Sequence[tuple[str, str, str]]) -> Path:
    """Where the packed set of `samples` ((name, person, photo key) per usable photo, in order) lives.

    `<settings_dir>/sets/<folder tag>-<content digest>.safetensors`: the tag (a hash of the folder's
    path) lets a new set of the same folder replace the old one; the digest names the content.
    """
    tag = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    digest = hashlib.sha256(json.dumps([settings_dir.name, list(samples)]).encode()).hexdigest()[:24]
    return settings_dir / SETS_FOLDER / f"{tag}-{digest}.safetensors"


def open_training_set(path: Path, report: DatasetReport | None = None) -> TrainingSet:
    """The packed set at `path`, memory-mapped; its own saved report unless `report` is given.

    Raises PackedSetError when the file is missing, damaged or of another version.
    """
    tensors, meta = open_packed_set(Path(path))
    try:
        files, person = json.loads(meta["files"]), json.loads(meta["person"])
        settings = json.loads(meta["settings"])
        report = report or DatasetReport.from_json(meta["report"])
        keys = json.loads(meta.get("keys", "[]"))  # sets packed before content keys were recorded: none
    except (KeyError, ValueError, TypeError) as exc:
        raise PackedSetError(f"unreadable metadata ({type(exc).__name__}: {exc})") from None
    if not len(files) == len(person) == tensors["idvec"].shape[0] or len(keys) not in (0, len(files)):
        raise PackedSetError(f"{len(files)} files and {len(keys)} content keys for {tensors['idvec'].shape[0]} rows")
    return TrainingSet(
        idvec=tensors["idvec"],
        expression=tensors.get("expression"),
        latents=tensors["latents"],
        masks=tensors["masks"],
        person=person,
        files=files,
        report=report,
        settings=settings,
        path=Path(path),
        keys=keys,
        source_side=tensors.get("source_side"),
    )


def write_training_set(
    path: Path,
    rows: Iterable[dict[str, torch.Tensor]],
    files: list[str],
    person: list[str],
    report: DatasetReport,
    settings: dict[str, object],
    keys: list[str] | None = None,
) -> TrainingSet:
    """Pack `rows` (compact tensors, one per file) into `path`, drop the folder's older sets, open it mapped.

    `keys`: each file's content key (kept in the metadata; the run identity hashes them).

    Raises PackedSetError when a row's shapes differ from the first's, OSError when the file cannot
    be written.
    """
    metadata = {
        "files": json.dumps(files),
        "person": json.dumps(person),
        "settings": json.dumps({**settings, "set_file": path.name}, default=str),
        "report": report.to_json(),
        "keys": json.dumps(list(keys or [])),
    }
    write_packed_set(path, rows, len(files), metadata)
    tag = path.name.split("-")[0]
    for old in path.parent.glob(f"{tag}-*.safetensors"):
        if old != path:
            try:
                old.unlink()
            except OSError as exc:  # in use elsewhere (Windows) or read-only: it only takes space
                log.warning("Could not delete the old training set %s (%s).", old, exc)
    return open_training_set(path, report)


def stack_training_set(
    rows: Iterable[dict[str, torch.Tensor]],
    files: list[str],
    person: list[str],
    report: DatasetReport,
    settings: dict[str, object],
    keys: list[str] | None = None,
) -> TrainingSet:
    """The training set in memory (no cache): rows stacked in their compact dtypes; `keys` as in write_training_set."""
    rows = list(rows)
    has_expression = "expression" in rows[0]
    return TrainingSet(
        idvec=torch.stack([r["idvec"] for r in rows]),
        expression=torch.stack([r["expression"] for r in rows]) if has_expression else None,
        latents=torch.stack([r["latents"] for r in rows]),
        masks=torch.stack([r["masks"] for r in rows]),
        person=person,
        files=files,
        report=report,
        settings=settings,
        keys=list(keys or []),
        source_side=torch.stack([r["source_side"] for r in rows]) if "source_side" in rows[0] else None,
    )
