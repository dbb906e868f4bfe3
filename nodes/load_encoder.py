"""Load MSID Encoder: the MSID encoder + mapper (under ComfyUI's model management) and a face detector, each cached."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import comfy.model_management
import torch
from comfy_api.latest import io

from ..f2d_core.checkpoints import load_f2d_models
from ..f2d_core.errors import WeightFileError
from ..f2d_core.faces.face_detection import DETECTOR_DEVICES, FaceDetector, load_detector
from ..f2d_core.identity.face_encoder import FaceEncoder
from .model_cache import ReleasingPatcher, cached, file_identity, load_on_device, managed, weight_file_version
from .model_paths import insightface_packs, insightface_root_of, weight_files, weight_path
from .sockets import F2DModel, F2DModelSocket

log = logging.getLogger(__name__)

SAME_FILE = "(in the MSID file)"
OFFICIAL = (
    "Download msid.pt and mapping.pt from the official Face2Diffusion release "
    "(github.com/mapooon/Face2Diffusion) and put them there."
)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _encoder(msid_path: Path, mapper_path: Path, precision: str) -> FaceEncoder:
    """MSID + mapper read from their files, handed to ComfyUI's model management."""
    models = load_f2d_models(msid_path, mapper_path)
    encoder = FaceEncoder(models, comfy.model_management.unet_offload_device(), PRECISIONS[precision])
    encoder.prepare = partial(load_on_device, managed(encoder.networks))
    return encoder


def _detector(pack: str, provider: str, det_size: int) -> FaceDetector:
    """The face detector, cached apart from the encoder: changing detection_size loads no second MSID.

    With torch on "auto" it is read onto the offload device and handed to ComfyUI's model management,
    which loads it onto ComfyUI's device before each detection (and may offload it afterwards).
    """
    device = comfy.model_management.unet_offload_device()
    detector = load_detector(insightface_root_of(pack), pack, provider, device, det_size)
    if provider == "auto" and detector.network is not None:
        detector.prepare = partial(load_on_device, managed(detector.network))
    elif detector.backend == "onnxruntime":  # its session's GPU memory is released with ComfyUI's models
        detector.prepare = partial(load_on_device, ReleasingPatcher(detector.release))
    return detector


def pack_versions(pack: str) -> tuple:
    """File identities of an insightface pack's .onnx files (also one folder down, as an unzip leaves them)."""
    pack_dir = insightface_root_of(pack) / "models" / pack
    files = sorted([*pack_dir.glob("*.onnx"), *pack_dir.glob("*/*.onnx")]) if pack_dir.is_dir() else []
    return tuple((f.name, *file_identity(f)) for f in files)


def _paths(msid: str, mapper: str) -> tuple[Path, Path]:
    """The MSID and mapper files; the mapper may be inside the MSID file."""
    msid_path = weight_path(msid, OFFICIAL)
    return msid_path, msid_path if mapper == SAME_FILE else weight_path(mapper, OFFICIAL)


def _widget_to_change(message: str, msid_file: str, mapper_file: str) -> str:
    """Which widget a weight-file error is about: mapper_file when the message starts with its file's path and
    is not about the MSID encoder, else msid_file (a mapper inside the MSID file is the MSID file's)."""
    named = Path(message.split(" ", 1)[0]).name  # the file the message is about: its first word, a path
    about_msid = "not the F2D MSID encoder" in message  # the MSID file is wrong, whatever the mapper is
    if mapper_file != SAME_FILE and named == Path(mapper_file).name and not about_msid:
        return "Choose another file in mapper_file."
    return "Choose another file in msid_file."


def file_versions(*names: str) -> tuple:
    """(size, mtime, inode) of each file, so that a replaced file is loaded again; a missing file is a
    version too (the node's own run reports it)."""
    return tuple(weight_file_version(n, OFFICIAL) for n in names if n != SAME_FILE)


class F2DLoadMSIDEncoder(io.ComfyNode):
    """Load MSID Encoder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DLoadMSIDEncoder",
            display_name="Load MSID Encoder",
            category="face2diffusion",
            description="Loads the Face2Diffusion MSID encoder and mapper (official msid.pt / mapping.pt, or a "
            "converted or trained .safetensors) from models/face2diffusion, and an insightface pack from "
            "models/insightface/models to find faces with.",
            inputs=[
                io.Combo.Input(
                    "msid_file",
                    options=weight_files("msid.pt"),
                    tooltip="The MSID encoder: msid.pt from the official release, or a combined face2diffusion "
                    ".safetensors. Put it in ComfyUI/models/face2diffusion/.",
                ),
                io.Combo.Input(
                    "mapper_file",
                    options=[*weight_files("mapping.pt", "map"), SAME_FILE],
                    tooltip="The mapper: mapping.pt from the official release or one you trained. Choose "
                    f"'{SAME_FILE}' when the MSID file is a combined .safetensors holding both.",
                ),
                io.Combo.Input(
                    "insightface_pack",
                    options=insightface_packs(),
                    tooltip="Face detector pack in ComfyUI/models/insightface/models/ (antelopev2 or buffalo_l, "
                    "the same packs InstantID and PuLID use).",
                ),
                io.Combo.Input(
                    "detector_device",
                    options=list(DETECTOR_DEVICES),
                    default="auto",
                    tooltip="Where face detection runs: auto = ComfyUI's device (GPU when there is one), with torch; "
                    "cpu = with torch on the CPU (keeps GPU memory free); onnxruntime = with insightface + "
                    "onnxruntime, when they are installed (CUDA if onnxruntime-gpu can use it).",
                ),
                io.Combo.Input(
                    "precision",
                    options=list(PRECISIONS),
                    default="fp32",
                    tooltip="Precision of the MSID encoder and mapper. fp32 gives the official S* exactly; "
                    "fp16/bf16 are faster on GPUs and differ slightly. Face alignment always runs in fp32.",
                ),
                io.Int.Input(
                    "detection_size",
                    default=640,
                    min=160,
                    max=1600,
                    step=32,
                    tooltip="Detector input size in pixels. When no face is found at this size, the photo is "
                    "tried padded (a face filling the photo), at larger sizes (a small face in a big photo) and at "
                    "detection size 320 before 'no face found'; Encode Face says which attempt found it.",
                ),
            ],
            outputs=[F2DModelSocket.Output(display_name="f2d_model")],
        )

    @classmethod
    def fingerprint_inputs(cls, msid_file: str, mapper_file: str, insightface_pack: str, **_: object) -> tuple:
        return file_versions(msid_file, mapper_file), pack_versions(insightface_pack)

    @classmethod
    def execute(
        cls,
        msid_file: str,
        mapper_file: str,
        insightface_pack: str,
        detector_device: str,
        precision: str,
        detection_size: int,
    ) -> io.NodeOutput:
        try:
            msid_path, mapper_path = _paths(msid_file, mapper_file)
            versions = (file_identity(msid_path), file_identity(mapper_path))  # a replaced file loads anew
            encoder = cached(
                "msid_encoder",
                (msid_path, mapper_path, versions, precision),
                lambda: _encoder(msid_path, mapper_path, precision),
            )
        except WeightFileError as e:
            raise WeightFileError(f"{e} {_widget_to_change(str(e), msid_file, mapper_file)}") from e
        detector = cached(
            "face_detector",
            (insightface_pack, detector_device, detection_size, pack_versions(insightface_pack)),
            lambda: _detector(insightface_pack, detector_device, detection_size),
        )
        device = comfy.model_management.get_torch_device()
        info = {**encoder.sources, "pack": insightface_pack, "device": str(device), "precision": precision}
        log.info("Face2Diffusion model ready: %s", info)
        return io.NodeOutput(F2DModel(encoder=encoder, detector=detector, info=info))
