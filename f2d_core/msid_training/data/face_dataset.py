"""Face-recognition training data for MSID: aligned 112x112 crops with identity labels, from either layout.

`open_training_data(path)` recognises what it is given:
- a record directory (insightface's `train.rec`, `train.idx`, `property`: MS1MV2/MS1MV3, Glint360K),
  read without MXNet (record_file.py), JPEGs decoded with PIL in the loader's workers;
- a folder with one subfolder per identity (CASIA-WebFace, VGGFace2, WebFace4M), of aligned 112x112
  crops or of photos detected and aligned once (identity_folder.py), packed into a record file too.

Either way the dataset gives uint8 RGB [3, 112, 112] crops and int64 labels 0..num_classes-1, and
a report of what was skipped and why. Normalisation to [-1, 1] and flips belong to the trainer, on
the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from ...errors import DatasetError, F2DError
from ...faces.face_detection import FaceDetector
from ...training.data.report import BAD_RECORD
from . import record_file as rf
from .identity_folder import LAYOUT as FOLDER_LAYOUT
from .identity_folder import open_crop_pack, open_identity_folder, prepare_share
from .images import CROP_SIZE, ImageSource, RecordImages
from .report import FaceDataReport

log = logging.getLogger(__name__)

RECORD_LAYOUT = "record files"


class FaceRecognitionDataset(Dataset):
    """Aligned face crops and their identities: `dataset[i]` -> (uint8 [3, 112, 112] RGB, label int).

    Attributes: `num_classes` (labels are 0..num_classes-1), `labels` (int64 [N], every image's
    label, read without decoding), `source` (the folder or record directory read), `report`
    (FaceDataReport: what was used and skipped), `identities` (identity names in label order, for
    an identity folder; None for record files, whose identities are numbers).
    """

    def __init__(
        self,
        images: ImageSource,
        labels: torch.Tensor,
        num_classes: int,
        source: str,
        report: FaceDataReport,
        identities: list[str] | None = None,
    ) -> None:
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.source, self.report, self.identities = source, report, identities

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        return self.images.item(int(index) % len(self))

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 [B, 3, 112, 112], int64 [B]) of several images at once (what a loader worker calls)."""
        return self.images.batch(indices)

    def __repr__(self) -> str:
        return f"FaceRecognitionDataset({len(self)} images, {self.num_classes} identities, {self.source})"


def open_record_folder(folder: Path) -> FaceRecognitionDataset:
    """A record directory's images: framing checked and labels read for all of them, nothing decoded.

    Several `.rec` parts (`record_file.record_parts`) are read as one set. Damaged records (bad magic,
    truncated, a label outside the property's classes) are named in the report and left out. Raises
    RecordFileError for a missing index or `property`, a property other than 112x112, or no usable record.
    """
    num_classes, height, width = rf.read_property(folder)
    if (height, width) != (CROP_SIZE, CROP_SIZE):
        raise rf.RecordFileError(
            f"{folder / rf.PROPERTY_FILE} says the images are {width}x{height}; MSID trains on aligned "
            f"{CROP_SIZE}x{CROP_SIZE} crops (insightface's MS1M, Glint360K): align them to that size first."
        )
    report = FaceDataReport(folder=str(folder), layout=RECORD_LAYOUT, total_files=0)
    names = rf.record_parts(folder)
    chosen: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for part, (rec_name, idx_name) in enumerate(names):
        keys, offsets = rf.read_index(folder, idx_name)
        buffer = rf.map_file(folder / rec_name)
        try:
            keys, offsets = rf.image_keys(buffer, keys, offsets)
            scan = rf.scan_records(buffer, keys, offsets, num_classes)
        finally:
            buffer.close()
        report.total_files += len(keys)
        for key, detail in scan.bad:
            report.skip(f"{rec_name} record {key}", BAD_RECORD, detail)
        chosen.append((scan.keys, scan.offsets, scan.labels, np.full(len(scan.keys), part, np.int32)))
    rec_path = folder / names[0][0] if len(names) == 1 else folder
    if report.skipped:
        log.warning("%s: %d damaged records left out: %s", rec_path, len(report.skipped), report.skipped_text())
    keys, offsets, label_array, parts = (np.concatenate(column) for column in zip(*chosen, strict=True))
    if not len(keys):
        listed = ", ".join(idx for _, idx in names)
        raise rf.RecordFileError(f"{rec_path} holds no usable image record ({report.total_files} listed in {listed}).")
    labels = torch.from_numpy(label_array)
    report.images, report.identities = len(labels), int(np.unique(label_array).size)
    images = RecordImages([folder / rec for rec, _ in names], offsets, keys, labels, parts)
    log.info("Face-recognition data of %s:\n%s", folder, report.summary())
    return FaceRecognitionDataset(images, labels, num_classes, str(folder), report)


def open_training_data(
    path: Path,
    *,
    cache_dir: Path | None = None,
    detector: FaceDetector | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FaceRecognitionDataset:
    """The face-recognition training data at `path`: a record directory or a folder of identity folders.

    cache_dir: where an identity folder's detected crops and its packed crops file go (without it
    they stay in memory; several ranks need one). detector: the pack's face detector, needed only
    for photos that are not 112x112 aligned crops. progress(done, total) is called per file of an
    identity folder. Raises DatasetError (RecordFileError for record files) naming the file and the fix.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(
            f"{path} does not exist. Give a record directory (train.rec, train.idx, property) or a folder with "
            "one subfolder per identity."
        )
    if rf.is_record_folder(path):
        return open_record_folder(path)
    if path.is_file() and path.suffix == ".rec":
        return open_record_folder(path.parent)
    images, names, report, _ = open_identity_folder(path, cache_dir=cache_dir, detector=detector, progress=progress)
    return FaceRecognitionDataset(images, images.labels, len(names), str(path), report, names)


class RankMeeting(Protocol):
    """Ranks meeting without a collective timeout: cli/rank_sync.py's RankSync (torchrun's store)."""

    def meet(self, name: str) -> float: ...

    def publish(self, name: str, value: str) -> None: ...

    def read(self, name: str) -> tuple[str, float]: ...

    def fail(self, message: str) -> None: ...


def open_training_data_on_ranks(
    path: Path,
    *,
    rank: int,
    world_size: int,
    sync: RankMeeting | None,
    cache_dir: Path | None,
    detector: FaceDetector | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FaceRecognitionDataset:
    """`open_training_data` on every DDP rank, before the process group exists (no collective, no timeout).

    Record files need no preparation: every rank opens them. An identity folder's photos are
    detected in shares (rank r takes photos r, r + world_size, ...; each rank with its own detector
    on its own device) into `cache_dir`; the ranks meet through `sync` (RankSync on torchrun's
    store); rank 0 packs the crops and publishes the packed file, which the others map. A rank that
    fails tells the others through `sync.fail`, so none waits forever; the sync's own error (another
    rank failed) propagates unchanged. Raises F2DError when several ranks have no cache_dir or no sync.
    """
    path = Path(path).expanduser()
    if world_size == 1 or rf.is_record_folder(path) or (path.is_file() and path.suffix == ".rec"):
        return open_training_data(path, cache_dir=cache_dir, detector=detector, progress=progress)
    if cache_dir is None or sync is None:
        raise F2DError(f"{world_size} ranks preparing {path} together need a cache_dir and a rank sync to meet in.")
    try:
        prepare_share(path, rank=rank, world_size=world_size, cache_dir=cache_dir, detector=detector)
    except BaseException as exc:
        sync.fail(f"rank {rank} could not prepare {path}: {type(exc).__name__}: {exc}")
        raise
    sync.meet("msid-data-shares")
    if rank == 0:
        try:
            images, names, report, packed = open_identity_folder(
                path, cache_dir=cache_dir, detector=detector, progress=progress
            )
        except BaseException as exc:
            sync.fail(f"rank 0 could not pack {path}: {type(exc).__name__}: {exc}")
            raise
        sync.publish("msid-data-pack", str(packed))
    else:
        packed, waited = sync.read("msid-data-pack")
        log.info("waited %.1f s for rank 0 to pack %s; mapping %s", waited, path, packed)
        images, names, report, _ = open_crop_pack(Path(packed))
    return FaceRecognitionDataset(images, images.labels, len(names), str(path), report, names)


__all__ = [
    "FOLDER_LAYOUT",
    "RECORD_LAYOUT",
    "FaceRecognitionDataset",
    "open_training_data",
    "open_training_data_on_ranks",
]
