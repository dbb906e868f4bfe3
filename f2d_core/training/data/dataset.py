"""A folder of face photos -> the cached training set of CGDR mapper training (`prepare_dataset`).

Layout: photos directly in the folder (each its own, unknown identity: person id "") and/or one
subfolder per person (person id = the subfolder's name). Per usable photo: the largest face (or
`face_index`), its 112 MSID crop's identity vector, the FFHQ crop's VAE latent, the face mask M at
latent size and, with an expression model, the 64-d expression code; with `flip` also the mirror
image as a second view. Files that cannot be used are reported, never raised; the results are cached
by content (see cache.py), so a second run over the same folder redoes nothing, and packed into one
file that every training process maps (see training_set.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from ...errors import DatasetError, F2DError
from ...faces.expression_model import ExpressionRegressor
from ...faces.face_detection import FaceDetector
from ...faces.face_parsing import FaceParser
from ...identity.face_encoder import FaceEncoder
from .builder import LatentEncoder, SampleBuilder
from .cache import OK
from .ffhq_crop import source_side
from .files import IMAGE_SUFFIXES, list_folder
from .masks import check_mask_list
from .packed import PackedSetError, compact_row
from .report import DatasetReport
from .run import FolderRun, PreparationStopped
from .settings import MaskPlan, build_settings
from .training_set import (
    TrainingSet,
    open_training_set,
    packed_set_path,
    stack_training_set,
    write_training_set,
)

__all__ = ["PreparationStopped", "TrainingSet", "open_training_set", "prepare_dataset", "prepare_share"]

log = logging.getLogger(__name__)

DEFAULT_CROP_SIZE = 512
DEFAULT_BATCH_SIZE = 4


def _check_folder(folder: Path) -> None:
    """A DatasetError unless `folder` is an existing folder."""
    if not folder.exists():
        raise DatasetError(
            f"Training folder {folder} does not exist. Give the folder that holds the face photos "
            "(directly, or in one subfolder per person)."
        )
    if not folder.is_dir():
        raise DatasetError(f"Training folder {folder} is a file, not a folder: give the folder that holds the photos.")


def _check_arguments(crop_size: int, face_index: int, batch_size: int, latent_key: str, sources: int) -> None:
    """Raise F2DError for settings that cannot work."""
    if crop_size < 64 or crop_size % 64:
        raise F2DError(f"crop_size {crop_size} must be a positive multiple of 64 (the SD UNet needs latents of /8).")
    if face_index < 0:
        raise F2DError(f"face_index {face_index} is negative; 0 is the largest face, 1 the next, ...")
    if batch_size < 1:
        raise F2DError(f"batch_size must be at least 1, not {batch_size}.")
    if not latent_key:
        raise F2DError("latent_key is empty: name the VAE (e.g. its file name and hash) so its latents cache apart.")
    if sources > 1:
        raise F2DError("Give one source of face masks: a face parser, a mask folder, or a list of masks, not several.")


def prepare_dataset(
    folder: Path | str,
    encoder: FaceEncoder,
    detector: FaceDetector,
    encode_latents: LatentEncoder,
    latent_key: str,
    *,
    cache_dir: Path | str | None,
    face_parser: FaceParser | None = None,
    mask_folder: Path | str | None = None,
    masks: Sequence[torch.Tensor] | None = None,
    expression_model: ExpressionRegressor | None = None,
    crop_size: int = DEFAULT_CROP_SIZE,
    flip: bool = True,
    face_index: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainingSet:
    """Prepare (or load from `cache_dir`) the training set of a folder of face photos.

    encode_latents: the caller's VAE, [B, 3, S, S] in 0..1 on the CPU -> [B, C, S/8, S/8]; latent_key
    names it for the cache. Masks come from one of face_parser, mask_folder (same relative path and
    stem as each photo, in the photo's pixels, white = face), masks (one [H, W] per image file in
    sorted order), or else a landmark ellipse (a warning says so). With a cache the set is packed
    into one file there and returned memory-mapped (see training_set.py); `cache_dir=None` caches
    nothing and keeps the set in memory. Raises DatasetError for a missing or empty folder or one
    without a usable photo, and PreparationStopped when `should_stop()` turns true (checked between photos).
    """
    run = _run(
        folder, encoder, detector, encode_latents, latent_key, cache_dir, face_parser, mask_folder, masks,
        expression_model, crop_size, flip, face_index, batch_size, progress, should_stop, share=None,
    )  # fmt: skip
    usable = [i for i in sorted(run.results) if run.results[i].status == OK]
    report = run.report
    if not usable:
        raise DatasetError(
            f"No usable face photo among the {len(run.entries)} files of {run.folder}: skipped "
            f"{report.skipped_text()}. Use photos with a clearly visible face, directly in the folder or in one "
            "subfolder per person."
        )
    report.used = [run.entries[i].name for i in usable]
    person = [run.entries[i].person for i in usable]
    settings = {**run.cache.settings, "mask_source": run.plan.describe(), "views": run.builder.views}
    settings["cache"] = run.cache.digest
    rows = (compact_row(_with_source_side(run, i)) for i in usable)
    try:
        if run.cache.dir is None:
            _check_latent_shapes(run, rows := list(rows))
            keys = [run.keys[i] for i in usable]
            training_set = stack_training_set(rows, list(report.used), person, report, settings, keys)
        else:
            training_set = _packed(run, usable, rows, person, settings)
    except PackedSetError as exc:
        raise DatasetError(
            f"The cached latents of {run.folder} have different shapes ({exc}) under one latent_key "
            f"{latent_key!r}: the key must name exactly one VAE. Use a new key (or delete {run.cache.dir})."
        ) from None
    log.info("Training set of %s:\n%s", run.folder, report.summary())
    return training_set


def prepare_share(
    folder: Path | str,
    encoder: FaceEncoder,
    detector: FaceDetector,
    encode_latents: LatentEncoder,
    latent_key: str,
    *,
    rank: int,
    world_size: int,
    cache_dir: Path | str,
    face_parser: FaceParser | None = None,
    mask_folder: Path | str | None = None,
    masks: Sequence[torch.Tensor] | None = None,
    expression_model: ExpressionRegressor | None = None,
    crop_size: int = DEFAULT_CROP_SIZE,
    flip: bool = True,
    face_index: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> DatasetReport:
    """Prepare one process's share of a folder into the cache: files rank, rank + world_size, ... in sorted order.

    For several processes (DDP ranks) preparing one folder together: when every share is done, one
    `prepare_dataset` with the same arguments reads everything from the cache and packs the set.
    Shares alternate through the sorted files, so each gets a like mix of persons and sizes. Returns
    the share's report; raises what prepare_dataset raises for the folder and settings.
    """
    if cache_dir is None:
        raise F2DError("prepare_share needs a cache_dir: the shares meet there.")
    if not 0 <= rank < world_size:
        raise F2DError(f"rank {rank} is not one of the {world_size} processes.")
    run = _run(
        folder, encoder, detector, encode_latents, latent_key, cache_dir, face_parser, mask_folder, masks,
        expression_model, crop_size, flip, face_index, batch_size, progress, should_stop, share=(rank, world_size),
    )  # fmt: skip
    return run.report


def _run(
    folder: Path | str,
    encoder: FaceEncoder,
    detector: FaceDetector,
    encode_latents: LatentEncoder,
    latent_key: str,
    cache_dir: Path | str | None,
    face_parser: FaceParser | None,
    mask_folder: Path | str | None,
    masks: Sequence[torch.Tensor] | None,
    expression_model: ExpressionRegressor | None,
    crop_size: int,
    flip: bool,
    face_index: int,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
    share: tuple[int, int] | None,
) -> FolderRun:
    """Check the arguments, list the folder and go through it (or through `share` = (rank, world_size) of it)."""
    folder = Path(folder).expanduser().resolve()  # one name for the folder, however it was given
    _check_folder(folder)
    sources = sum(x is not None for x in (face_parser, mask_folder, masks))
    _check_arguments(crop_size, face_index, batch_size, latent_key, sources)
    cache_root = None if cache_dir is None else Path(cache_dir).expanduser()
    entries = list_folder(folder, exclude=cache_root)
    if not entries:
        raise DatasetError(
            f"Training folder {folder} is empty. Put face photos ({', '.join(IMAGE_SUFFIXES)}) directly in it, "
            "or in one subfolder per person."
        )
    images = [e for e in entries if e.skip is None]
    mask_list = None
    if masks is not None:
        mask_list = dict(zip([e.name for e in images], check_mask_list(masks, len(images), folder), strict=True))
    plan = MaskPlan(face_parser, None if mask_folder is None else Path(mask_folder).expanduser(), mask_list)
    if plan.folder is not None and not plan.folder.is_dir():
        raise DatasetError(f"Mask folder {plan.folder} does not exist: give the folder that holds one mask per photo.")
    if sources == 0 and (share is None or share[0] == 0):
        log.warning(
            "No face parser, mask folder or masks given for %s: the face mask M is a landmark ellipse "
            "(forehead to chin, cheek to cheek). A BiSeNet face parser gives the paper's mask.",
            folder,
        )
    settings = build_settings(encoder, detector, latent_key, plan, expression_model, crop_size, flip, face_index)
    builder = SampleBuilder(encoder, encode_latents, crop_size, flip, face_parser, expression_model, batch_size)
    report = DatasetReport(folder=str(folder), mask_source=plan.describe(), expression=expression_model is not None)
    if share is not None:
        entries = entries[share[0] :: share[1]]
    run = FolderRun(folder, entries, detector, builder, plan, cache_root, settings, report, face_index)
    run.execute(progress, should_stop)
    return run


def _with_source_side(run: FolderRun, index: int) -> dict[str, torch.Tensor]:
    """A usable entry's tensors plus `source_side` [V]: its face's FFHQ quad side in photo pixels.

    Computed from the landmarks the cache keeps with every sample, so older caches need no new
    encode; the mirrored view has the same side.
    """
    tensors = run.tensors(index)
    kps = torch.tensor(run.results[index].face["kps"], dtype=torch.float64)[None]
    side = source_side(kps).float().expand(tensors["idvec"].shape[0]).clone()
    return {**tensors, "source_side": side}


def _check_latent_shapes(run: FolderRun, rows: list[dict[str, torch.Tensor]]) -> None:
    """PackedSetError when the rows' latents differ in shape (one latent_key used for two VAEs)."""
    shapes = sorted({tuple(r["latents"].shape) for r in rows})
    if len(shapes) > 1:
        raise PackedSetError(f"{shapes}")


def _packed(
    run: FolderRun, usable: list[int], rows: Iterable[dict[str, torch.Tensor]], person: list[str], settings: dict
) -> TrainingSet:
    """The packed set of the usable entries in the cache: opened when it exists, else written first.

    A set that cannot be written (a full disk) is kept in memory instead, with a warning.
    """
    names = [run.entries[i].name for i in usable]
    keys = [run.keys[i] for i in usable]
    path = packed_set_path(run.cache.dir, run.folder, list(zip(names, person, keys, strict=True)))
    if path.exists():
        try:
            return open_training_set(path, run.report)
        except PackedSetError as exc:
            log.warning("The packed training set %s is unusable (%s); writing it again.", path, exc)
            run.report.cache_repaired += 1
    try:
        return write_training_set(path, rows, names, person, run.report, settings, keys)
    except OSError as exc:
        log.warning("Could not write the packed training set %s (%s): keeping it in memory.", path, exc)
        rows = [compact_row(_with_source_side(run, i)) for i in usable]
        _check_latent_shapes(run, rows)
        return stack_training_set(rows, names, person, run.report, settings, keys)
