"""A folder of face photos -> the cached training set of CGDR mapper training (`prepare_dataset`).

Layout: photos directly in the folder (each its own, unknown identity: person id "") and/or one
subfolder per person (person id = the subfolder's name). Per usable photo: the largest face (or
`face_index`), its 112 MSID crop's identity vector, the FFHQ crop's VAE latent, the face mask M at
latent size and, with an expression model, the 64-d expression code; with `flip` also the mirror
image as a second view. Files that cannot be used are reported, never raised; the results are cached
by content (see dataset_cache.py), so a second run over the same folder redoes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import DatasetError, F2DError
from ...faces.expression_model import ExpressionRegressor
from ...faces.face_detection import FaceDetector
from ...faces.face_parsing import FaceParser
from ...identity.face_encoder import FaceEncoder
from .builder import LatentEncoder, SampleBuilder
from .cache import OK
from .files import IMAGE_SUFFIXES, list_folder
from .masks import check_mask_list
from .report import DatasetReport
from .run import FolderRun, PreparationStopped
from .settings import MaskPlan, build_settings

__all__ = ["PreparationStopped", "TrainingSet", "prepare_dataset"]

log = logging.getLogger(__name__)

DEFAULT_CROP_SIZE = 512
DEFAULT_BATCH_SIZE = 4


@dataclass
class TrainingSet:
    """Stacked training tensors of N photos x V views (V = 2 with the flip), in sorted file order."""

    idvec: torch.Tensor  # [N, V, 1536]
    expression: torch.Tensor | None  # [N, V, 64]; None without an expression model (null_exp only)
    latents: torch.Tensor  # [N, V, C, h, w] as encode_latents gave them
    masks: torch.Tensor  # [N, V, 1, h, w] float32 in {0, 1}
    person: list[str]  # subfolder name per sample, "" for photos directly in the folder
    files: list[str]  # path relative to the folder per sample
    report: DatasetReport
    settings: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._groups: dict[str, list[int]] = {}
        for i, person in enumerate(self.person):
            if person:
                self._groups.setdefault(person, []).append(i)

    def __len__(self) -> int:
        return len(self.files)

    def reference_index(self, i: int, generator: torch.Generator | None = None) -> int:
        """Another photo of sample i's person, drawn uniformly (FaceChain-FACT's shuffle); i when there is none.

        Photos directly in the folder (person "") are each their own identity, so they get i back.
        """
        others = [j for j in self._groups.get(self.person[i], []) if j != i]
        if not others:
            return i
        return others[int(torch.randint(len(others), (1,), generator=generator))]


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
    sorted order), or else a landmark ellipse (a warning says so). `cache_dir=None` caches nothing.
    Raises DatasetError for a missing or empty folder or one without a usable photo, and
    PreparationStopped when `should_stop()` turns true (checked between photos).
    """
    folder = Path(folder).expanduser()
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
    if sources == 0:
        log.warning(
            "No face parser, mask folder or masks given for %s: the face mask M is a landmark ellipse "
            "(forehead to chin, cheek to cheek). A BiSeNet face parser gives the paper's mask.",
            folder,
        )
    settings = build_settings(encoder, detector, latent_key, plan, expression_model, crop_size, flip, face_index)
    builder = SampleBuilder(encoder, encode_latents, crop_size, flip, face_parser, expression_model, batch_size)
    report = DatasetReport(folder=str(folder), mask_source=plan.describe(), expression=expression_model is not None)
    run = FolderRun(folder, entries, detector, builder, plan, cache_root, settings, report, face_index)
    results = run.execute(progress, should_stop)
    usable = [i for i in sorted(results) if results[i].status == OK]
    if not usable:
        raise DatasetError(
            f"No usable face photo among the {len(entries)} files of {folder}: skipped {report.skipped_text()}. "
            "Use photos with a clearly visible face, directly in the folder or in one subfolder per person."
        )
    report.used = [entries[i].name for i in usable]
    samples = [results[i].tensors for i in usable]
    latent_shapes = {tuple(s["latents"].shape) for s in samples}
    if len(latent_shapes) > 1:
        raise DatasetError(
            f"The cached latents of {folder} have different shapes {sorted(latent_shapes)} under one latent_key "
            f"{latent_key!r}: the key must name exactly one VAE. Use a new key (or delete {run.cache.dir})."
        )
    has_expression = expression_model is not None
    training_set = TrainingSet(
        idvec=torch.stack([s["idvec"] for s in samples]).float(),
        expression=torch.stack([s["expression"] for s in samples]).float() if has_expression else None,
        latents=torch.stack([s["latents"] for s in samples]).float(),
        masks=torch.stack([s["masks"] for s in samples]).float(),
        person=[entries[i].person for i in usable],
        files=list(report.used),
        report=report,
        settings={**settings, "mask_source": plan.describe(), "views": builder.views, "cache": run.cache.digest},
    )
    log.info("Training set of %s:\n%s", folder, report.summary())
    return training_set
