"""What makes a resumable state belong to a run: a resume with another identity would mix two runs.

The identity is what the saved mapper and optimizer moments were computed from: the dataset, the
starting mapper, the loss, the global batch, the seed, the number of processes, the model family
(SD1.x or SDXL) and, for SDXL, where the pooled vector comes from. Everything else
(learning rate, weight decay, steps, dropout, ...) is a hyper-parameter the user may change between
sessions; the current value wins.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import F2DError

IDENTITY_LABELS = {
    "dataset": "dataset",
    "start_mapper": "starting mapper",
    "loss": "loss",
    "global_batch_size": "batch size",
    "seed": "seed",
    "world_size": "number of processes (world size)",
    "family": "model family",
    "pooled_source": "pooled_source",
}
_DIGESTS = ("dataset", "start_mapper")  # shown shortened


@dataclass(frozen=True)
class RunIdentity:
    """The run a state belongs to (hex digests for the dataset and the starting mapper)."""

    dataset: str
    start_mapper: str
    loss: str
    global_batch_size: int
    seed: int
    world_size: int
    family: str = "sd1"  # states saved before SDXL training record neither: they are SD1 runs
    pooled_source: str = ""  # SDXL only (docs/sdxl.md D5); "" for SD1

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunIdentity:
        values = json.loads(text)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def differences(self, saved: RunIdentity) -> list[str]:
        """'loss (saved run: cgdr, now: reconstruction)' for every field that differs."""
        out = []
        for name, label in IDENTITY_LABELS.items():
            old, new = getattr(saved, name), getattr(self, name)
            if old != new:
                if name in _DIGESTS:
                    old, new = str(old)[:12], str(new)[:12]
                out.append(f"{label} (saved run: {old}, now: {new})")
        return out


def dataset_digest(data) -> str:
    """The training set's digest: its own `fingerprint` when it has one, else what it was made from.

    Hashes the prepared-photo cache's settings digest, the resolved folder, the sorted relative file
    names and, per file, its content key (`data.keys`: sha256 of the photo's bytes and its mask), so
    photos replaced under the same names give another digest. A relative and an absolute name of one
    folder give the same digest. A set without content keys (packed by an older version) is hashed
    as `names_only_dataset_digest`.
    """
    fingerprint = getattr(data, "fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    keys = list(getattr(data, "keys", None) or [])
    if not keys:
        return names_only_dataset_digest(data)
    parts = {**_listing(data), "files": sorted(zip(data.files, keys, strict=True))}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def names_only_dataset_digest(data) -> str:
    """The digest states written before content keys were hashed record: cache key, folder, file names."""
    parts = {**_listing(data, resolve=False), "files": sorted(getattr(data, "files", []))}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _listing(data, resolve: bool = True) -> dict[str, object]:
    settings = getattr(data, "settings", {}) or {}
    folder = getattr(getattr(data, "report", None), "folder", None)
    if folder is not None and resolve:
        folder = str(Path(folder).resolve())
    return {"cache": settings.get("cache"), "folder": folder}


def run_folder_name(run_name: str) -> str:
    """The folder name of a training run: `run_name` in Unicode NFC, anything but letters, digits, "-", "_" and
    "." replaced by "_", "run" when nothing is left.

    NFC first: "Zo\u00eb" typed on Windows or Linux (composed) and "Zoe\u0308" typed on macOS (decomposed)
    name one run, not two (the combining mark alone would become "_" and start a silent new run).
    """
    name = unicodedata.normalize("NFC", run_name)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "run"


def existing_spelling(path: str | Path, new_names: str | None = None) -> Path:
    """`path` with each name in the Unicode normalisation (as typed, NFC or NFD) of the folder or file that
    exists; a name that exists in no form stays as typed, or in the form `new_names` ("NFC") when given.

    A folder made on macOS holds decomposed names (NFD); the same name typed on Windows or Linux is
    composed (NFC). Linux file systems compare bytes, so the typed name misses the folder: this finds it,
    name by name (a parent made on a Mac, a child typed elsewhere).
    """
    spelled = Path()
    for name in Path(path).parts:
        forms = [name, *(unicodedata.normalize(form, name) for form in ("NFC", "NFD"))]
        new = name if new_names is None else unicodedata.normalize(new_names, name)
        spelled = next((spelled / f for f in forms if (spelled / f).exists()), spelled / new)
    return spelled


def run_dir_spelling(path: str | Path) -> Path:
    """The run (or output) folder a typed path names: `existing_spelling`, with the names of folders still to
    make in NFC, the form of the node's run folders (`run_folder_name`).

    So "Zo\u00eb" and "Zoe\u0308" typed to a CLI's --run-dir are one run on every file system: the same
    state resumed, the same run.lock taken; and a new run inside a folder a Mac named goes into that
    folder, not into a second one spelled the other way. (An argparse `type` too: a str is taken.)
    """
    return existing_spelling(path, "NFC")


def free_run_name(run_dir: Path) -> str:
    """The first `<name>_<k>` (k = 2, 3, ...) beside `run_dir` that does not exist yet."""
    k = 2
    while (run_dir.parent / f"{run_dir.name}_{k}").exists():
        k += 1
    return f"{run_dir.name}_{k}"


class RunMismatch(F2DError):
    """A resume whose run identity differs from the saved state's."""

    def __init__(self, run_dir: Path, differences: list[str]) -> None:
        self.differences = differences
        super().__init__(
            f"The saved run in {run_dir} was trained with another " + "; another ".join(differences) + ". "
            "Resuming it would mix two runs and return a mapper of the old one. Choose a new run name "
            f"(e.g. '{free_run_name(run_dir)}'), or turn resume off to start this run over in the same folder."
        )
