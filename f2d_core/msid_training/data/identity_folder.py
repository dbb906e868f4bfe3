"""A folder with one subfolder per identity (CASIA-WebFace, VGGFace2, WebFace4M) -> one record file of aligned crops.

Layout: `<folder>/<identity>/<image>`; identities are the subfolders in sorted order, labels 0..K-1
over those with at least one usable image. An image of exactly 112x112 pixels is taken as aligned
already (the ArcFace crop, as WebFace and MS1M ship); any other photo is detected with the pack's
face detector (the largest face), aligned by its 5 landmarks onto the ArcFace template (f2d_core/faces)
and cropped to 112x112 once, stored as a JPEG of quality CROP_QUALITY (MS1M's own form). Each
detection result (the crop, or the reason it failed) is cached by the photo's content
(`SampleCache`: one small .safetensors per photo, atomic writes), so an edited or added photo is the
only one detected again. All crops are then packed into one record directory in insightface's layout
(record_file.py; aligned files are copied byte for byte) named after the folder's listing (names,
sizes, times): the next open of an unchanged folder maps that file and reads no photo, and the
training loader decodes from it in its workers as it does from MS1M.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...atomic_io import atomic_write
from ...errors import DatasetError, F2DError, NoFaceError
from ...faces.alignment import ARCFACE_TEMPLATE_112, align_faces, similarity_transform
from ...faces.face_detection import FaceDetector, pick_face
from ...training.data.builder import _corners_in_photo, face_window
from ...training.data.cache import OK, SKIPPED, CachedSample, SampleCache, settings_digest, sha256_hex
from ...training.data.files import UnreadableImage, decode_photo, is_user_entry, list_folder, listing_fingerprint
from ...training.data.report import EMPTY_IDENTITY, FACE_TOO_SMALL, NO_FACE, NO_IDENTITY, UNREADABLE
from ...training.data.settings import detector_identity
from . import record_file as rf
from .images import CROP_SIZE, CropImages, RecordImages, UndecodableFace, decode_crop, open_face_image
from .report import FaceDataReport

log = logging.getLogger(__name__)

ALIGNMENT = "5-point similarity (Umeyama) onto the ArcFace 112 template, bilinear, black border"
MIN_EYE_DISTANCE = 8.0  # pixels in the photo; the template's eyes are 35 px apart: a smaller face is blown up > 4x
CROP_QUALITY = 95  # JPEG quality of a crop made by detection
PACK_FORMAT, PACK_VERSION = "f2d-msid-crops", "1"
PACK_FILE = "pack.json"  # beside train.rec: identities, report, detector
CROP_SHAPES = {"jpeg": (None,)}  # a cached detection: the crop's JPEG bytes
PACK_FOLDER = "msid_crops"
LAYOUT = "identity folder"


@dataclass
class FolderPlan:
    """An identity folder as listed: every subfolder (sorted; hidden ones and OS litter such as __MACOSX left
    out) and every file, and where its cache is."""

    folder: Path
    identities: list[str]
    entries: list  # FolderEntry, sorted by relative path
    cache_root: Path | None


def plan_folder(folder: Path, cache_dir: Path | None) -> FolderPlan:
    """List an identity folder; DatasetError when it is missing, a file, or holds no subfolder."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetError(
            f"{folder} is not a folder. Give a folder with one subfolder per identity, or a record directory "
            "(train.rec, train.idx, property)."
        )
    cache_root = None if cache_dir is None else Path(cache_dir).expanduser()
    excluded = None if cache_root is None else cache_root.resolve()
    identities = sorted(
        d.name
        for d in folder.iterdir()
        if d.is_dir() and is_user_entry(d.name) and (excluded is None or d.resolve() != excluded)
    )
    if not identities:
        raise DatasetError(
            f"{folder} has no subfolder: face-recognition training needs one subfolder per identity "
            "(e.g. alice/001.jpg, bob/001.jpg), or a record directory (train.rec, train.idx, property)."
        )
    return FolderPlan(folder, identities, list_folder(folder, exclude=cache_root), cache_root)


def crop_settings(detector: FaceDetector | None) -> dict[str, object]:
    """What a detected crop depends on: the detector, the alignment, the smallest face (the per-photo cache key)."""
    return {
        "kind": "msid-aligned-crop",
        "size": CROP_SIZE,
        "alignment": ALIGNMENT,
        "min_eye_distance": MIN_EYE_DISTANCE,
        "detector": None if detector is None else detector_identity(detector),
    }


def pack_path(plan: FolderPlan) -> Path | None:
    """Where the folder's packed crops live: a record directory named after its listing (None without a cache)."""
    if plan.cache_root is None:
        return None
    listing = listing_fingerprint(plan.folder, exclude=plan.cache_root)
    key = settings_digest(
        {"listing": listing, "version": PACK_VERSION, "quality": CROP_QUALITY, "eye": MIN_EYE_DISTANCE}
    )
    return plan.cache_root / PACK_FOLDER / key[:24]


def _image_size(data: bytes) -> tuple[int, int] | str:
    """(width, height) from an image's header without decoding it, or why it is no usable photo.

    Only FACE_FORMATS are identified (`open_face_image`), and a header claiming more than
    MAX_PHOTO_PIXELS is refused here, so no other decoder sees the bytes and no bomb is decoded.
    """
    try:
        with open_face_image(data) as image:
            return image.size
    except UndecodableFace as exc:
        return str(exc)


def align_photo(rgb: np.ndarray, kps: np.ndarray) -> torch.Tensor:
    """The aligned 112 crop, uint8 [3, 112, 112], of an RGB uint8 photo [H, W, 3] with 5 landmarks [5, 2] (x, y).

    Only the part of the photo the crop reads (plus a margin) is converted to float, so a camera
    photo costs what a small one does; the crop equals `align_faces` on the whole photo (to float32 rounding).
    """
    height, width = rgb.shape[:2]
    lm = torch.from_numpy(np.asarray(kps, np.float32))[None]
    corners = _corners_in_photo(similarity_transform(lm, ARCFACE_TEMPLATE_112)[0], CROP_SIZE)
    x0, y0, x1, y1 = face_window(corners, 1, height, width)
    patch = torch.from_numpy(np.ascontiguousarray(rgb[y0:y1, x0:x1])).permute(2, 0, 1)[None].float().div_(255)
    crop = align_faces(patch, lm - torch.tensor([x0, y0], dtype=torch.float32), CROP_SIZE)[0]
    return crop.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def encode_crop(crop: torch.Tensor) -> bytes:
    """JPEG bytes (quality CROP_QUALITY) of a uint8 crop [3, 112, 112]."""
    buffer = io.BytesIO()
    Image.fromarray(crop.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=CROP_QUALITY)
    return buffer.getvalue()


def detect_and_align(data: bytes, name: str, detector: FaceDetector) -> CachedSample:
    """A photo's bytes -> its aligned crop as JPEG (OK, tensors {"jpeg": uint8 [L]}) or why not (SKIPPED, a reason)."""
    try:
        rgb = decode_photo(data)
    except UnreadableImage as exc:
        return CachedSample(SKIPPED, reason=UNREADABLE, detail=str(exc))
    try:
        face = pick_face(detector.detect(rgb, name), name)
    except NoFaceError as exc:
        return CachedSample(SKIPPED, reason=NO_FACE, detail=str(exc))
    except F2DError as exc:  # an image the detector rejects
        return CachedSample(SKIPPED, reason=UNREADABLE, detail=str(exc))
    kps = np.asarray(face.kps, np.float64)
    eyes = float(np.hypot(*(kps[1] - kps[0]))) if np.isfinite(kps).all() else 0.0
    if eyes < MIN_EYE_DISTANCE:
        detail = f"eyes {eyes:.1f} px apart (at least {MIN_EYE_DISTANCE:g} needed to align a 112 px crop)"
        return CachedSample(SKIPPED, reason=FACE_TOO_SMALL, detail=detail)
    jpeg = torch.frombuffer(bytearray(encode_crop(align_photo(rgb, kps))), dtype=torch.uint8)
    return CachedSample(OK, {"jpeg": jpeg}, face={"kps": kps.round(3).tolist()})


@dataclass
class _Usable:
    """A usable image: its entry, its encoded crop when kept in memory, its cache key when it was detected."""

    index: int
    data: bytes | None
    key: str | None


class FolderPass:
    """One pass over an identity folder (or one rank's share of its photos): crops, cache, report."""

    def __init__(self, plan: FolderPlan, detector: FaceDetector | None, report: FaceDataReport) -> None:
        self.plan, self.detector, self.report = plan, detector, report
        self.cache = SampleCache(plan.cache_root, crop_settings(detector))
        self.usable: list[_Usable] = []
        self.undetected: list[str] = []

    def run(self, share: tuple[int, int] | None, progress: Callable[[int, int], None] | None) -> None:
        """Go through the entries; with `share` = (rank, world_size) only detect that share of the photos."""
        entries = self.plan.entries
        chosen = range(len(entries)) if share is None else range(share[0], len(entries), share[1])
        keep = self.plan.cache_root is None
        for done, index in enumerate(chosen):
            self._entry(index, entries[index], keep, share is not None)
            if progress is not None:
                progress(done + 1, len(chosen))
        if self.undetected:
            shown = ", ".join(self.undetected[:3]) + (", ..." if len(self.undetected) > 3 else "")
            raise DatasetError(
                f"{len(self.undetected)} images of {self.plan.folder} are not 112x112 aligned crops ({shown}) and "
                "no face detector was given: pass --insightface-root (the folder holding models/<pack>/, e.g. "
                "ComfyUI/models/insightface) to detect and align them once, or align them to 112x112 first."
            )

    def _entry(self, index: int, entry, keep: bool, share_only: bool) -> None:
        report = self.report
        if entry.skip is not None:
            report.skip(entry.name, entry.skip)
            return
        if not entry.person:
            report.skip(entry.name, NO_IDENTITY, "put it in a subfolder named after its person")
            return
        try:
            data = entry.path.read_bytes()
        except OSError as exc:
            report.skip(entry.name, UNREADABLE, f"cannot read the file: {exc}")
            return
        size = _image_size(data)
        if isinstance(size, str):
            report.skip(entry.name, UNREADABLE, size)
            return
        if size == (CROP_SIZE, CROP_SIZE):
            if share_only:
                return  # nothing to detect: the pass that packs checks it
            try:
                decode_crop(data)  # it must decode in full, not only its header
            except UndecodableFace as exc:
                report.skip(entry.name, UNREADABLE, str(exc))
                return
            self.usable.append(_Usable(index, data if keep else None, None))
            return
        self._detected(index, entry.name, data, keep)

    def _detected(self, index: int, name: str, data: bytes, keep: bool) -> None:
        """A photo to align: its cached result, or detection now (cached)."""
        key = sha256_hex(data)
        sample, damaged = self.cache.load(key, CROP_SHAPES)
        self.report.cache_repaired += int(damaged)
        if sample is not None:
            self.report.from_cache += 1
        elif self.detector is None:
            self.undetected.append(name)
            return
        else:
            sample = detect_and_align(data, name, self.detector)
            self.cache.save(key, sample)
            self.report.computed += 1
        if sample.status != OK:
            self.report.skip(name, sample.reason, sample.detail)
            log.info("Skipped %s: %s", name, sample.detail or sample.reason)
            return
        self.report.detected += 1
        self.usable.append(_Usable(index, sample.tensors["jpeg"].numpy().tobytes() if keep else None, key))

    def encoded(self, item: _Usable) -> bytes:
        """A usable image's encoded crop: kept, read from the cache, or the aligned file's own bytes."""
        if item.data is not None:
            return item.data
        entry = self.plan.entries[item.index]
        if item.key is None:
            try:
                return entry.path.read_bytes()
            except OSError as exc:
                raise DatasetError(f"{entry.path} could not be read again while packing: {exc}") from None
        sample, _ = self.cache.load(item.key, CROP_SHAPES)
        if sample is None or sample.status != OK:
            where = self.cache.path(item.key)
            raise DatasetError(f"The cached crop of {entry.name} ({where}) vanished: open the data again.")
        return sample.tensors["jpeg"].numpy().tobytes()

    def labels(self) -> tuple[list[str], torch.Tensor]:
        """(identities with a usable image, in label order; int64 label per usable image); empty ones reported."""
        persons = [self.plan.entries[u.index].person for u in self.usable]
        present = set(persons)
        for name in self.plan.identities:
            if name not in present:
                self.report.skip(f"{name}/", EMPTY_IDENTITY, "no usable image in it")
        names = [n for n in self.plan.identities if n in present]
        label_of = {n: i for i, n in enumerate(names)}
        return names, torch.tensor([label_of[p] for p in persons], dtype=torch.long)


def prepare_share(
    folder: Path, *, rank: int, world_size: int, cache_dir: Path, detector: FaceDetector | None
) -> FaceDataReport:
    """Detect and align one rank's share of an identity folder's photos (rank, rank + world_size, ...) into the cache.

    When every rank's share is done, one `open_identity_folder` reads every crop from the cache and
    packs them. Raises DatasetError as `open_identity_folder` does.
    """
    if not 0 <= rank < world_size:
        raise F2DError(f"rank {rank} is not one of the {world_size} processes.")
    plan = plan_folder(folder, cache_dir)
    report = FaceDataReport(folder=str(plan.folder), layout=LAYOUT, total_files=len(plan.entries))
    FolderPass(plan, detector, report).run((rank, world_size), None)
    return report


Images = CropImages | RecordImages


def open_identity_folder(
    folder: Path,
    *,
    cache_dir: Path | None,
    detector: FaceDetector | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Images, list[str], FaceDataReport, Path | None]:
    """(images, identity names, report, packed record directory) of an identity folder; see the module docstring.

    With a cache the crops are packed into a record directory there (reused while the folder's
    listing is unchanged and, when a detector is given and photos were detected, it is the same
    detector); without one they stay decoded in memory. Raises DatasetError for a missing folder,
    one without subfolders or without any usable image, or photos to align with no detector.
    """
    plan = plan_folder(folder, cache_dir)
    path = pack_path(plan)
    if path is not None and (path / PACK_FILE).is_file():
        try:
            images, names, report, detector_used = open_crop_pack(path)
            current = crop_settings(detector)["detector"]
            if detector is None or report.detected == 0 or detector_used == current:
                return images, names, report, path
            log.info("%s was packed with another face detector; detecting its photos again.", plan.folder)
        except (DatasetError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("The packed crops %s are unusable (%s); packing them again.", path, exc)
    report = FaceDataReport(folder=str(plan.folder), layout=LAYOUT, total_files=len(plan.entries))
    run = FolderPass(plan, detector, report)
    run.run(None, progress)
    names, labels = run.labels()
    report.images, report.identities = len(labels), len(names)
    if not run.usable:
        raise DatasetError(
            f"No usable face image among the {len(plan.entries)} files of {plan.folder}: skipped "
            f"{report.skipped_text()}."
        )
    log.info("Face-recognition data of %s:\n%s", plan.folder, report.summary())
    if path is None:
        crops = [torch.from_numpy(decode_crop(u.data)).permute(2, 0, 1) for u in run.usable]
        return CropImages(torch.stack(crops), labels), names, report, None
    items = ((run.encoded(u), int(labels[i])) for i, u in enumerate(run.usable))
    rf.write_record_folder(path, items, len(names))
    pack = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "source": str(plan.folder),
        "identities": names,
        "detector": crop_settings(detector)["detector"],
        "report": json.loads(report.to_json()),
    }
    text = json.dumps(pack, indent=1)
    atomic_write(
        path / PACK_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8")
    )  # last: a pack without it is incomplete
    images, _, _, _ = open_crop_pack(path)
    return images, names, report, path


def open_crop_pack(path: Path) -> tuple[RecordImages, list[str], FaceDataReport, object]:
    """(images, identity names, report, detector identity) of a packed identity folder (a record directory).

    Raises DatasetError (RecordFileError) or ValueError/KeyError when it is not a complete pack.
    """
    pack = json.loads((path / PACK_FILE).read_text(encoding="utf-8"))
    if pack.get("format") != PACK_FORMAT or pack.get("version") != PACK_VERSION:
        raise ValueError(f"not a version {PACK_VERSION} {PACK_FORMAT} pack")
    names = list(pack["identities"])
    num_classes, _, _ = rf.read_property(path)
    keys, offsets = rf.read_index(path)
    buffer = rf.map_file(path / rf.REC_FILE)
    try:
        scan = rf.scan_records(buffer, keys, offsets, num_classes)
    finally:
        buffer.close()
    if scan.bad or num_classes != len(names):
        raise rf.RecordFileError(f"{path}: {len(scan.bad)} damaged records, {num_classes} classes for {len(names)}")
    report = FaceDataReport.from_json(json.dumps(pack["report"]))
    report.from_cache = report.total_files  # nothing was read this time
    report.computed = report.cache_repaired = 0
    labels = torch.from_numpy(scan.labels)
    return RecordImages(path / rf.REC_FILE, scan.offsets, scan.keys, labels), names, report, pack["detector"]
