"""One pass over a training folder: cache look-ups, decoding, detection, masks, batched model calls, the report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ...errors import DatasetError, F2DError, NoFaceError
from ...faces.face_detection import FaceDetector, pick_face
from .builder import SampleBuilder
from .cache import OK, SKIPPED, CachedSample, SampleCache, sha256_hex, tensor_digest
from .files import FolderEntry, UnreadableImage, decode_mask, decode_photo, find_mask_file
from .masks import fit_mask
from .report import MASK_MISSING, MASK_UNUSABLE, NO_FACE, UNREADABLE, DatasetReport
from .settings import MaskPlan

log = logging.getLogger(__name__)

MIN_EYE_DISTANCE = 2.0  # pixels: closer eyes are no usable face


class PreparationStopped(F2DError):
    """`should_stop` asked to stop; what was finished is cached and a new run resumes from there."""


class FolderRun:
    """Goes through a folder's entries once, filling `results` (entry index -> sample) and the report."""

    def __init__(
        self,
        folder: Path,
        entries: Sequence[FolderEntry],
        detector: FaceDetector,
        builder: SampleBuilder,
        plan: MaskPlan,
        cache_root: Path | None,
        settings: dict[str, object],
        report: DatasetReport,
        face_index: int,
    ) -> None:
        self.folder, self.entries, self.detector, self.builder = folder, list(entries), detector, builder
        self.plan, self.report, self.face_index = plan, report, face_index
        self.cache = SampleCache(cache_root, settings)
        self.results: dict[int, CachedSample] = {}  # usable samples hold no tensors when they are in the cache
        self.keys: dict[int, str] = {}  # entry index -> photo key (the cache file's name)
        self.report.total_files = len(self.entries)
        self._done = 0
        self._progress: Callable[[int, int], None] | None = None

    def _shapes(self) -> dict[str, tuple[int | None, ...]]:
        """The tensors a usable cached sample must hold."""
        v, h = self.builder.views, self.builder.latent_size
        shapes: dict[str, tuple[int | None, ...]] = {
            "idvec": (v, 1536),
            "latents": (v, None, h, h),
            "masks": (v, 1, h, h),
        }
        if self.builder.expression_model is not None:
            shapes["expression"] = (v, 64)
        return shapes

    def _finish(self, index: int, sample: CachedSample | None, on_disk: bool = False) -> None:
        """Record an entry's outcome (without its tensors when they are `on_disk`) and report progress."""
        if sample is not None:
            self.results[index] = replace(sample, tensors={}) if on_disk else sample
            if sample.status == SKIPPED:
                self.report.skip(self.entries[index].name, sample.reason, sample.detail)
                log.info("Skipped %s: %s", self.entries[index].name, sample.detail or sample.reason)
        self._done += 1
        if self._progress is not None:
            self._progress(self._done, len(self.entries))

    def _skip(self, index: int, reason: str, detail: str) -> None:
        """An entry left out before anything was computed (not cached)."""
        self.report.skip(self.entries[index].name, reason, detail)
        log.info("Skipped %s: %s", self.entries[index].name, detail or reason)
        self._finish(index, None)

    def _store(self, index: int, key: str, sample: CachedSample) -> None:
        """Cache a computed sample and record it."""
        saved = self.cache.save(key, sample)
        self.report.computed += 1
        self._finish(index, sample, on_disk=saved)

    def _flush(self) -> None:
        for work, sample in self.builder.flush():
            self._store(work.index, work.key, sample)

    def execute(
        self, progress: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None
    ) -> dict[int, CachedSample]:
        """Process every entry (model calls batched by the builder); PreparationStopped when asked to stop."""
        self._progress = progress
        if progress is not None:
            progress(0, len(self.entries))
        shapes = self._shapes()
        for index, entry in enumerate(self.entries):
            if should_stop is not None and should_stop():
                kept = f"What was finished is cached in {self.cache.dir}" if self.cache.dir else "Nothing was cached"
                raise PreparationStopped(
                    f"Preparing {self.folder} was stopped after {self._done} of {len(self.entries)} files "
                    f"(the photos in progress were dropped). {kept}; run it again to resume."
                )
            self._entry(index, entry, shapes)
            if len(self.builder.pending) >= self.builder.batch_size:
                self._flush()
        self._flush()
        return self.results

    def tensors(self, index: int) -> dict[str, torch.Tensor]:
        """A usable entry's tensors: kept in memory, or read back from its cache file.

        Raises DatasetError when the cache file went missing or bad since this run wrote or read it.
        """
        sample = self.results[index]
        if sample.tensors:
            return sample.tensors
        cached, _ = self.cache.load(self.keys[index], self._shapes())
        if cached is None or cached.status != OK:
            raise DatasetError(
                f"The cache file of {self.entries[index].name} ({self.cache.path(self.keys[index])}) changed or "
                "disappeared while the training set was being assembled: run the preparation again."
            )
        return cached.tensors

    def _entry(self, index: int, entry: FolderEntry, shapes: dict[str, tuple[int | None, ...]]) -> None:
        """One file: skipped, read from the cache, or computed (queued for the batched model calls)."""
        if entry.skip is not None:
            self._skip(index, entry.skip, "")
            return
        try:
            data = entry.path.read_bytes()
        except OSError as exc:
            self._skip(index, UNREADABLE, f"cannot read the file: {exc}")
            return
        mask, mask_digest = None, ""
        if self.plan.folder is not None:
            mask_path = find_mask_file(self.plan.folder, entry)
            if mask_path is None:
                self._skip(index, MASK_MISSING, f"no {Path(entry.name).stem}.* mask in {self.plan.folder}")
                return
            try:
                mask = mask_path.read_bytes()
            except OSError as exc:
                self._skip(index, MASK_UNUSABLE, f"cannot read the mask {mask_path}: {exc}")
                return
            mask_digest = sha256_hex(mask)
        elif self.plan.by_name is not None:
            mask = self.plan.by_name[entry.name]
            mask_digest = tensor_digest(mask)
        key = sha256_hex(f"{sha256_hex(data)}:{mask_digest}".encode())
        self.keys[index] = key
        cached, damaged = self.cache.load(key, shapes)
        self.report.cache_repaired += int(damaged)
        if cached is not None:
            self.report.from_cache += 1
            self._finish(index, cached, on_disk=True)
            return
        self._compute(index, entry, key, data, mask)

    def _compute(
        self, index: int, entry: FolderEntry, key: str, data: bytes, mask: bytes | torch.Tensor | None
    ) -> None:
        """Decode, detect and crop one photo; its model calls wait in the builder's queue."""
        try:
            rgb = decode_photo(data)
        except UnreadableImage as exc:
            self._store(index, key, CachedSample(SKIPPED, reason=UNREADABLE, detail=str(exc)))
            return
        photo_hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        photo_mask = None
        if isinstance(mask, bytes):
            try:
                photo_mask = fit_mask(torch.from_numpy(decode_mask(mask)), photo_hw)
            except UnreadableImage as exc:
                self._store(index, key, CachedSample(SKIPPED, reason=MASK_UNUSABLE, detail=f"mask: {exc}"))
                return
            if photo_mask is None:
                detail = f"the mask's shape differs from the photo's {photo_hw[1]}x{photo_hw[0]}"
                self._store(index, key, CachedSample(SKIPPED, reason=MASK_UNUSABLE, detail=detail))
                return
        elif isinstance(mask, torch.Tensor):
            photo_mask = fit_mask(mask, photo_hw)
            if photo_mask is None:
                raise DatasetError(
                    f"The mask given for {self.folder / entry.name} is {mask.shape[-1]}x{mask.shape[-2]} but the "
                    f"photo is {photo_hw[1]}x{photo_hw[0]}: give each mask at its photo's size "
                    "(masks follow the sorted file order)."
                )
        try:
            face = pick_face(self.detector.detect(rgb, entry.name), entry.name, self.face_index)
        except NoFaceError as exc:
            self._store(index, key, CachedSample(SKIPPED, reason=NO_FACE, detail=str(exc)))
            return
        except F2DError as exc:  # an image the detector rejects (e.g. an unsupported layout)
            self._store(index, key, CachedSample(SKIPPED, reason=UNREADABLE, detail=str(exc)))
            return
        kps = np.asarray(face.kps, dtype=np.float64)
        if not np.isfinite(kps).all() or np.hypot(*(kps[1] - kps[0])) < MIN_EYE_DISTANCE:
            detail = (
                f"{entry.name}: the detector's landmarks {kps.round(1).tolist()} are degenerate (a face too small?)"
            )
            self._store(index, key, CachedSample(SKIPPED, reason=NO_FACE, detail=detail))
            return
        self.builder.add(self.builder.prepare(index, key, rgb, face, photo_mask))  # stored at the next flush
