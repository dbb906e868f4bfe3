"""Face detection with an insightface model pack (SCRFD): box, 5 keypoints and score, largest face first.

Packs live in `<insightface_root>/models/<name>/` (ComfyUI: `models/insightface/models/antelopev2`,
`.../buffalo_l`). Only the pack's detector is used. It runs with torch on any torch device (`scrfd.py`),
so neither insightface nor onnxruntime is needed; where they are installed, `providers=[...]` runs it
with them instead (insightface's FaceAnalysis with `allowed_modules=["detection"]`). Both are imported
only then, so a broken onnxruntime never stops the pack from loading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import F2DError, ModelPackError, NoFaceError
from ..folder_scan import is_file, skipped, subfolders
from ..images import ImageLike, as_labeled_images, to_rgb_uint8
from ..progress import Progress, no_progress
from .detection_cascade import detect_with_cascade, plan_attempts
from .onnx_to_torch import import_package
from .scrfd import TorchScrfd

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
DEFAULT_DET_SIZE = 640
DEFAULT_RETRY_DET_SIZE = 320
# SCRFD detectors are 2-17 MB; bigger files (recognisers, 3D landmarks) are not parsed to find one.
_SCAN_LIMIT_BYTES = 64 * 2**20
_COMFYUI_PLACE = "ComfyUI/models/insightface/models/<name>/"

OnMissing = Literal["error", "skip"]


# --- the optional insightface + onnxruntime backend ----------------------------------------------

ONNXRUNTIME_FIX = (
    "Choose detector_device 'auto' or 'cpu' (face detection with torch; onnxruntime is not needed), or repair "
    "onnxruntime in the Python that runs ComfyUI: pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
    "onnxruntime-gpu (on Windows a 'DLL load failed' also needs the Microsoft Visual C++ Redistributable)."
)
INSIGHTFACE_FIX = (
    "Choose detector_device 'auto' or 'cpu' (face detection with torch; insightface is not needed), or repair "
    "insightface in the Python that runs ComfyUI: pip install --force-reinstall --no-deps insightface "
    "(--no-deps: its requirements would add the CPU onnxruntime beside onnxruntime-gpu)."
)


def _onnxruntime() -> Any:
    """The onnxruntime module, or a MissingPackageError naming the import error and the fix."""
    return import_package("onnxruntime", "face detection with onnxruntime", ONNXRUNTIME_FIX)


def _identity_model_bytes() -> bytes:
    """A one-node ONNX model, to see which providers a session really starts with."""
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "probe",
        [value],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.lru_cache(maxsize=1)
def _cuda_probe() -> str | None:
    """Why a CUDA session does not start here, or None when it does (tried once per process)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    session = _onnxruntime().InferenceSession(_identity_model_bytes(), providers=[CUDA_PROVIDER, CPU_PROVIDER])
    if CUDA_PROVIDER not in session.get_providers():
        return (
            "onnxruntime-gpu could not start CUDA (its CUDA/cuDNN libraries are missing or do not match; "
            "onnxruntime logged the details)"
        )
    return None


def cuda_unavailable_reason() -> str | None:
    """Why onnxruntime cannot run on CUDA on this machine, or None when it can."""
    if CUDA_PROVIDER not in _onnxruntime().get_available_providers():
        return "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
    return _cuda_probe()


def select_providers(preference: str = "auto") -> list[str]:
    """onnxruntime providers for "auto" (CUDA if it works, else CPU), "cpu", "cuda" or a provider name.

    An explicit provider name (e.g. "TensorrtExecutionProvider") is an override: it only has to be
    listed by `onnxruntime.get_available_providers()`, and CPU is appended as the fallback.
    """
    available = list(_onnxruntime().get_available_providers())
    choice = preference.strip()
    if choice.lower() == "auto":
        reason = cuda_unavailable_reason()
        chosen = [CUDA_PROVIDER, CPU_PROVIDER] if reason is None else [CPU_PROVIDER]
        if reason is not None:
            logger.info("face detection runs on the CPU: %s", reason)
    elif choice.lower() == "cpu":
        chosen = [CPU_PROVIDER]
    elif choice.lower() == "cuda":
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise F2DError(
                f"face detection on CUDA was asked for, but {reason}. Choose 'auto' or 'cpu', "
                "or install an onnxruntime-gpu that matches this machine's CUDA."
            )
        chosen = [CUDA_PROVIDER, CPU_PROVIDER]
    elif choice in available:
        chosen = [choice] + ([CPU_PROVIDER] if choice != CPU_PROVIDER and CPU_PROVIDER in available else [])
    else:
        raise F2DError(
            f"unknown onnxruntime provider {preference!r}; use 'auto', 'cpu', 'cuda' or one of the "
            f"providers this onnxruntime lists: {', '.join(available)}"
        )
    logger.info("face detection providers: %s", chosen)
    return chosen


# --- model packs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PackScan:
    """What a pack folder holds: its ONNX files, the detector among them, and files that did not parse."""

    onnx_files: tuple[Path, ...]
    detector: Path | None
    unreadable: tuple[tuple[Path, str], ...]


@functools.lru_cache(maxsize=256)
def _onnx_output_count(path: str, size: int, mtime_ns: int) -> int:
    """Number of graph outputs of an ONNX file (cached per file version); raises if it does not parse."""
    import onnx

    del size, mtime_ns  # part of the cache key only
    return len(onnx.load_model(path, load_external_data=False).graph.output)


def onnx_folder(pack_dir: Path) -> Path:
    """The folder holding a pack's .onnx files: the pack folder, or its one subfolder that holds them.

    insightface's zips unpack into a folder of the pack's name, so a pack unzipped inside its own
    folder ends up as `models/antelopev2/antelopev2/*.onnx`; that inner folder is used as the pack.
    """
    if any(is_file(p) for p in pack_dir.glob("*.onnx")):
        return pack_dir
    inner = [d for d in subfolders(pack_dir) if any(is_file(f) for f in d.glob("*.onnx"))]
    return inner[0] if len(inner) == 1 else pack_dir


def _scan_pack(pack_dir: Path) -> _PackScan:
    """Find the pack's detector the way insightface routes one: an ONNX model with 5 or more outputs."""
    files = tuple(sorted(p for p in pack_dir.glob("*.onnx") if is_file(p)))
    hinted = [p for p in files if p.name.startswith("det") or "scrfd" in p.name.lower()]
    try:
        import onnx  # noqa: F401
    except Exception as exc:  # a broken install: go by file name; loading then names the import error
        logger.warning("cannot import onnx (%s: %s): packs are listed by file name", type(exc).__name__, exc)
        return _PackScan(files, hinted[0] if hinted else None, ())
    others = sorted((p for p in files if p not in hinted), key=lambda p: p.stat().st_size)
    unreadable = []
    for path in hinted + others:
        stat = path.stat()
        if path not in hinted and stat.st_size > _SCAN_LIMIT_BYTES:
            continue
        try:
            outputs = _onnx_output_count(str(path), stat.st_size, stat.st_mtime_ns)
        except Exception as exc:  # onnx raises DecodeError, ValueError or OSError for a damaged file
            unreadable.append((path, f"{type(exc).__name__}: {exc}".strip()))
            continue
        if outputs >= 5:
            return _PackScan(files, path, tuple(unreadable))
    return _PackScan(files, None, tuple(unreadable))


def list_model_packs(insightface_root: Path | str) -> list[str]:
    """Names of the packs in `<insightface_root>/models/<name>/` that hold a face detection model.

    Odd entries (an unreadable folder, a broken symlink, a file) are skipped with a log line (`folder_scan`).
    """
    models_dir = Path(insightface_root).expanduser() / "models"
    packs = []
    for pack in subfolders(models_dir):
        try:
            if _scan_pack(onnx_folder(pack)).detector is not None:
                packs.append(pack.name)
        except OSError as exc:  # a member unreadable or gone between listing and reading
            skipped(pack, f"{type(exc).__name__}: {exc.strerror or exc}")
    return packs


def _packs_found(root: Path) -> str:
    """'Packs found in X: a, b.' for error messages."""
    packs = list_model_packs(root)
    return f"Packs with a face detector in {root / 'models'}: {', '.join(packs) if packs else 'none'}."


def _where_to_put(root: Path, name: str) -> str:
    """Where a pack's files belong, for error messages."""
    return (
        f"Put the pack's .onnx files (e.g. det_10g.onnx) in {root / 'models' / name}/ "
        f"(in ComfyUI: {_COMFYUI_PLACE.replace('<name>', name)})."
    )


def _pack_dir(root: Path, pack_name: str) -> Path:
    """The existing folder of a pack, or a ModelPackError naming what exists and where a pack goes."""
    if not pack_name or pack_name in (".", "..") or "/" in pack_name or "\\" in pack_name:
        raise ModelPackError(
            f"insightface pack name {pack_name!r} must be a folder name inside {root / 'models'}. " + _packs_found(root)
        )
    pack_dir = root / "models" / pack_name
    if not pack_dir.is_dir():
        raise ModelPackError(
            f"insightface model pack {pack_name!r} not found: there is no folder {pack_dir}. "
            f"{_packs_found(root)} {_where_to_put(root, pack_name)}"
        )
    return pack_dir


def _no_detector_message(root: Path, pack_dir: Path, scan: _PackScan) -> str:
    """Why a pack folder has no usable detector, naming its files."""
    if scan.unreadable:
        broken = "; ".join(f"{path} ({why})" for path, why in scan.unreadable)
        return (
            f"insightface model pack {pack_dir.name!r}: cannot read {broken}. The file is damaged or "
            f"not an ONNX model (an interrupted download?): download the pack again. {_packs_found(root)}"
        )
    names = ", ".join(p.name for p in scan.onnx_files) or "no .onnx files"
    deeper = sorted({p.parent for p in pack_dir.rglob("*.onnx")} - {pack_dir})
    if not scan.onnx_files and deeper:
        return (
            f"insightface model pack {pack_dir.name!r} in {pack_dir} holds no .onnx files itself; they are in "
            f"{', '.join(map(str, deeper))}. Move the .onnx files up into {pack_dir}/ (only one folder level "
            f"down is found on its own). {_packs_found(root)}"
        )
    return (
        f"insightface model pack {pack_dir.name!r} in {pack_dir} has no face detection model "
        f"(an SCRFD .onnx such as det_10g.onnx); it holds: {names}. {_packs_found(root)} "
        f"{_where_to_put(root, pack_dir.name)}"
    )


@contextlib.contextmanager
def _stdout_to_log() -> Iterator[None]:
    """Send what insightface prints to the debug log instead of the user's console."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.debug("insightface: %s", line)


def _load_face_analysis(root: Path, pack_dir: Path, scan: _PackScan, providers: list[str]) -> Any:
    """insightface's FaceAnalysis with only the detector, or a ModelPackError naming the file that failed.

    The pack folder's absolute path is given as `name`: insightface uses a name that is an existing
    folder as is (2.x) or joins it under `root/models` (0.7.x, where an absolute path wins), so it
    never looks in the working directory or tries a download.
    """
    _onnxruntime()
    import_package("insightface", "face detection with onnxruntime", INSIGHTFACE_FIX)
    FaceAnalysis = import_package("insightface.app", "face detection with onnxruntime", INSIGHTFACE_FIX).FaceAnalysis
    try:
        with _stdout_to_log():
            return FaceAnalysis(
                name=str(pack_dir.resolve()), root=str(root), allowed_modules=["detection"], providers=providers
            )
    except Exception as exc:  # insightface raises onnxruntime, onnx and assertion errors alike
        text = f"{type(exc).__name__}: {exc}".strip()
        culprits = [p for p in scan.onnx_files if p.name in text]
        what = f"cannot load {culprits[0]}" if culprits else f"cannot load the models in {pack_dir}"
        raise ModelPackError(
            f"insightface model pack {pack_dir.name!r}: {what} ({text}). A damaged or incompatible "
            f".onnx file (an interrupted download?): download the pack again. {_packs_found(root)}"
        ) from exc


# --- detection -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DetectedFace:
    """One face: box (x1, y1, x2, y2) and 5 keypoints (eye, eye, nose, mouth corner x2) in image pixels."""

    bbox: tuple[float, float, float, float]
    kps: np.ndarray  # (5, 2) float32, insightface order
    score: float
    det_size: int  # the detection size (pixels) that found it
    found_by: str = ""  # which detection attempt found it, e.g. "found at once (the photo at detection size 640)"

    @property
    def area(self) -> float:
        """Box area in pixels."""
        x1, y1, x2, y2 = self.bbox
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _no_landmarks_message(pack_name: str, model_file: Path) -> str:
    """The error for a detector without the 5 keypoints alignment needs."""
    return (
        f"the detector of insightface pack {pack_name!r} ({model_file}) gives no 5-point landmarks, which face "
        "alignment needs: use a pack such as buffalo_l or antelopev2."
    )


def _check_det_size(value: int, what: str) -> int:
    """A detection size: a positive multiple of 32 (SCRFD's largest stride)."""
    if int(value) != value or value < 32 or value % 32:
        raise F2DError(f"{what} {value!r} must be a multiple of 32 (e.g. 320, 480, 640)")
    return int(value)


class FaceDetector:
    """An insightface pack's SCRFD detector, loaded once; `detect` gives faces largest first.

    By default the detector graph runs with torch on `device` (any torch device; default CPU), or
    wherever its weights (`network`) are when `prepare()`, which runs before each detection, has put
    them (the node layer makes it load them onto ComfyUI's device).
    With `providers` (onnxruntime execution providers, see `select_providers`) it runs with
    insightface + onnxruntime instead, which must then be installed; a failed import of either raises
    a MissingPackageError naming it, the import error and the fix.
    """

    def __init__(
        self,
        insightface_root: Path | str,
        pack_name: str,
        providers: Sequence[str] | None = None,
        det_size: int = DEFAULT_DET_SIZE,
        retry_det_size: int | None = DEFAULT_RETRY_DET_SIZE,
        det_thresh: float = 0.5,
        device: torch.device | str | None = None,
    ) -> None:
        self.root = Path(insightface_root).expanduser()
        self.pack_name = pack_name
        self.pack_dir = _pack_dir(self.root, pack_name)
        files_dir = onnx_folder(self.pack_dir)
        if files_dir != self.pack_dir:
            logger.info(
                "insightface pack %r: its .onnx files are one folder down, in %s (unzipped inside its own "
                "folder); using that folder",
                pack_name,
                files_dir,
            )
        scan = _scan_pack(files_dir)
        if scan.detector is None:
            raise ModelPackError(_no_detector_message(self.root, self.pack_dir, scan))
        self.det_size = _check_det_size(det_size, "det_size")
        retry = None if retry_det_size is None else _check_det_size(retry_det_size, "retry_det_size")
        self.retry_det_size = None if retry == self.det_size else retry
        self.providers = list(providers) if providers is not None else None
        self.prepare: Callable[[], object] = lambda: None
        self.backend = "torch" if providers is None else "onnxruntime"
        self._static_size: tuple[int, int] | None = None
        if self.providers is None:
            self.device = torch.device(device or "cpu")
            self._scrfd = TorchScrfd(scan.detector, self.device, det_thresh)
            self.model_file = scan.detector
            if not self._scrfd.layout.use_kps:
                raise ModelPackError(_no_landmarks_message(pack_name, scan.detector))
            self._use_static_size(self._scrfd.layout.fixed_size)
            where = str(self.device)
        else:
            self.device = torch.device("cpu")
            self._load_with_onnxruntime(files_dir, scan, det_thresh)
            where = f"onnxruntime {self._det_model.session.get_providers()}"
        logger.info("face detector %s loaded from %s, running on %s", self.model_file.name, self.pack_dir, where)

    def release(self) -> None:
        """Drop the onnxruntime session (and the device memory it holds, which torch's memory management does not
        see); the next detection opens it again. Nothing to do with the torch backend (its weights are managed)."""
        if self.providers is not None and self._det_model is not None:
            self._analysis = self._det_model = None
            logger.info("face detector %s: onnxruntime session released", self.model_file.name)

    def _ensure_session(self) -> None:
        """Open the onnxruntime session again after `release`."""
        if self._det_model is None:
            self._load_with_onnxruntime(*self._onnx_args)

    def _load_with_onnxruntime(self, files_dir: Path, scan: _PackScan, det_thresh: float) -> None:
        """insightface's FaceAnalysis (detection only) on this detector's onnxruntime providers."""
        self._onnx_args = (files_dir, scan, det_thresh)
        self._analysis = _load_face_analysis(self.root, files_dir, scan, self.providers)
        self._det_model = self._analysis.det_model
        self.model_file = Path(self._det_model.model_file)
        if not getattr(self._det_model, "use_kps", True):
            raise ModelPackError(_no_landmarks_message(self.pack_name, self.model_file))
        shape = getattr(self._det_model, "input_shape", None) or []
        height, width = [*list(shape[2:4]), None, None][:2]
        fixed = (width, height) if isinstance(height, int) and isinstance(width, int) and height > 0 else None
        self._use_static_size(fixed)
        with _stdout_to_log():
            size = self._static_size or (self.det_size, self.det_size)
            self._analysis.prepare(ctx_id=0, det_thresh=det_thresh, det_size=size)
        in_use = self._det_model.session.get_providers()
        if in_use[:1] != self.providers[:1]:
            logger.warning("face detector asked for %s but onnxruntime runs it on %s", self.providers, in_use)

    def _use_static_size(self, size: tuple[int, int] | None) -> None:
        """Detectors exported with a fixed input size (width, height) run only at that size: no other, no retry."""
        if size is not None:
            logger.info("the detector's input is fixed at %dx%d: detecting at that size only", *size)
            self.det_size, self.retry_det_size = size[0], None
            self._static_size = size

    @property
    def network(self) -> torch.nn.Module | None:
        """The torch detector graph (for a memory manager to load and offload); None with onnxruntime."""
        return None if self.providers is not None else self._scrfd.net

    def __repr__(self) -> str:
        return (
            f"FaceDetector(pack={self.pack_name!r}, backend={self.backend}, det_size={self.det_size}, "
            f"retry={self.retry_det_size})"
        )

    def _detect_at(self, bgr: np.ndarray, size: int) -> list[DetectedFace]:
        """All faces SCRFD finds in a BGR uint8 image fitted into size x size (or the fixed input size)."""
        input_size = self._static_size or (size, size)
        if self.providers is None:
            self.prepare()
            bboxes, kpss = self._scrfd.detect(bgr[:, :, ::-1], input_size)
        else:
            self.prepare()
            self._ensure_session()
            bboxes, kpss = self._det_model.detect(bgr, input_size=input_size)
        return [
            DetectedFace(
                bbox=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                kps=np.asarray(k, dtype=np.float32).reshape(5, 2),
                score=float(b[4]),
                det_size=size,
            )
            for b, k in zip(bboxes, kpss, strict=True)
        ]

    def detect(self, image: ImageLike, label: str = "image") -> list[DetectedFace]:
        """Every face in an RGB image, largest box first, each saying which attempt found it.

        Before giving up ([]) the photo is tried padded, at larger sizes (a big photo) and at the
        smaller retry size: see `detection_cascade`. A face found at once costs one detection.
        """
        rgb = to_rgb_uint8(image, label)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        height, width = bgr.shape[:2]
        smaller = () if self.retry_det_size is None else (self.retry_det_size,)
        attempts = plan_attempts(height, width, self.det_size, smaller, resizable=self._static_size is None)
        result = detect_with_cascade(self._detect_at, bgr, attempts, label)
        found_by = result.describe()
        faces = [dataclasses.replace(face, found_by=found_by) for face in result.faces]
        faces.sort(key=lambda face: (-face.area, -face.score))
        logger.debug("%s: %d face(s), %s", label, len(faces), found_by)  # per image: DEBUG, not in progress bars
        return faces


# Where the detector runs: "auto" = the models' torch device, "cpu" = torch on the CPU, "onnxruntime" =
# insightface + onnxruntime (when installed) on CUDA if onnxruntime-gpu can use it, else on the CPU.
DETECTOR_DEVICES = ("auto", "cpu", "onnxruntime")


def load_detector(
    insightface_root: Path | str, pack_name: str, choice: str, device: torch.device | str, det_size: int
) -> FaceDetector:
    """The pack's detector where `choice` (one of DETECTOR_DEVICES) says; "auto" runs it on `device`."""
    if choice == "onnxruntime":
        return FaceDetector(insightface_root, pack_name, select_providers("auto"), det_size=det_size)
    if choice not in DETECTOR_DEVICES:
        raise F2DError(f"detector device {choice!r} is not one of {', '.join(DETECTOR_DEVICES)}")
    return FaceDetector(insightface_root, pack_name, det_size=det_size, device="cpu" if choice == "cpu" else device)


def pick_face(faces: Sequence[DetectedFace], label: str, index: int = 0) -> DetectedFace:
    """Face number `index` of a largest-first list (0 = largest); NoFaceError naming `label` if absent."""
    if index < 0:
        raise F2DError(f"{label}: face_index {index} is negative; 0 is the largest face, 1 the next, ...")
    if not faces:
        raise NoFaceError(
            f"{label}: no face found. Use a photo where the face is clearly visible and roughly frontal, "
            "crop closer if it is small in the frame, or skip this image."
        )
    if index >= len(faces):
        raise NoFaceError(
            f"{label}: face_index {index} asked for, but {len(faces)} face(s) found "
            f"(face_index 0..{len(faces) - 1}, largest first); lower face_index."
        )
    return faces[index]


def detect_faces(
    detector: FaceDetector,
    images: ImageLike | Sequence[ImageLike],
    face_index: int = 0,
    on_missing: OnMissing = "error",
    progress: Progress | None = None,
) -> list[DetectedFace | None]:
    """Face `face_index` of each image of a batch; with on_missing="skip" a missing one is None (and logged).

    `progress(done, total)` is called after each image (see `f2d_core.progress`); what it raises stops the loop.
    """
    if on_missing not in ("error", "skip"):
        raise F2DError(f"on_missing must be 'error' or 'skip', not {on_missing!r}")
    report = progress or no_progress
    items = as_labeled_images(images)
    picked: list[DetectedFace | None] = []
    for item in items:
        try:
            picked.append(pick_face(detector.detect(item.rgb, item.label), item.label, face_index))
        except NoFaceError as exc:
            if on_missing == "error":
                raise
            logger.warning("%s Skipping it.", exc)
            picked.append(None)
        report(len(picked), len(items))
    return picked
