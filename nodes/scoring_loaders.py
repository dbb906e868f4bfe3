"""Load Face Recognizer and Load CLIP Scorer: the scoring models, converted/loaded once, under ComfyUI's
model management (read onto the offload device, loaded onto ComfyUI's device before each use, offloaded
by "Free model and node cache" and other models' memory needs, like the pack's other models)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import comfy.model_management
from comfy_api.latest import io

from ..f2d_core.evaluation.clip_models import CLIPScorer, load_clip_scorer
from ..f2d_core.evaluation.recognition import FaceRecognizer, load_face_recognizer
from ..f2d_core.folder_scan import entries, is_file
from .evaluation_paths import clip_model_path, clip_models, recognition_model_path, recognition_models
from .evaluation_sockets import F2DClipScorerSocket, F2DRecognizerSocket
from .model_cache import cached, load_on_device, managed


def _managed_recognizer(path: Path) -> FaceRecognizer:
    """The recogniser on the offload device, loaded by ComfyUI before each embedding."""
    recognizer = load_face_recognizer(path, comfy.model_management.unet_offload_device())
    recognizer.prepare = partial(load_on_device, managed(recognizer.network))
    return recognizer


def _managed_clip_scorer(folder: Path) -> CLIPScorer:
    """The CLIP scorer on the offload device, loaded by ComfyUI before each use."""
    scorer = load_clip_scorer(folder, comfy.model_management.unet_offload_device())
    scorer.prepare = partial(load_on_device, managed(scorer.networks))
    return scorer


def _folder_stamp(folder: Path) -> int:
    """The newest modification time of a folder's files (0 for a missing folder: loading reports it)."""
    return max((f.stat().st_mtime_ns for f in entries(folder) if is_file(f)), default=0)


class F2DLoadFaceRecognizer(io.ComfyNode):
    """Load Face Recognizer (ArcFace ONNX through torch)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DLoadFaceRecognizer",
            display_name="Load Face Recognizer",
            category="face2diffusion",
            description="Loads an ArcFace-style face recogniser to score likeness: w600k_r50.onnx from the buffalo_l "
            "pack, glintr100.onnx from antelopev2, or any such .onnx in models/face_recognition. It runs through torch "
            "on ComfyUI's device, independent of the MSID encoder that made S*.",
            inputs=[
                io.Combo.Input(
                    "recognition_model",
                    options=recognition_models(),
                    tooltip="<pack>/<file>.onnx from models/insightface/models, or a file in models/face_recognition. "
                    "Input 1x3x112x112 ArcFace-aligned face, output a 512-d embedding.",
                )
            ],
            outputs=[F2DRecognizerSocket.Output(display_name="recognizer")],
        )

    @classmethod
    def fingerprint_inputs(cls, recognition_model: str) -> object:
        try:
            return recognition_model_path(recognition_model).stat().st_mtime_ns
        except Exception:  # a missing file: the node's own run reports it
            return recognition_model

    @classmethod
    def execute(cls, recognition_model: str) -> io.NodeOutput:
        path = recognition_model_path(recognition_model)
        mtime_ns = path.stat().st_mtime_ns if path.is_file() else 0  # a missing file: loading reports it
        return io.NodeOutput(cached("face_recognizer", (path, mtime_ns), lambda: _managed_recognizer(path)))


class F2DLoadCLIPScorer(io.ComfyNode):
    """Load CLIP Scorer (transformers or open_clip folder)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DLoadCLIPScorer",
            display_name="Load CLIP Scorer",
            category="face2diffusion",
            description="Loads a CLIP model from a folder in models/clip_scoring to score how well images follow their "
            "prompts. transformers (save_pretrained) and open_clip hub folders work; the paper uses ViT-H/14 LAION-2B. "
            "Nothing is downloaded.",
            inputs=[
                io.Combo.Input(
                    "clip_model",
                    options=clip_models(),
                    tooltip="A folder in models/clip_scoring holding a CLIP with text and image towers "
                    "(config.json + model.safetensors + tokenizer, or open_clip_config.json + "
                    "open_clip_model.safetensors).",
                )
            ],
            outputs=[F2DClipScorerSocket.Output(display_name="clip_scorer")],
        )

    @classmethod
    def execute(cls, clip_model: str) -> io.NodeOutput:
        folder = clip_model_path(clip_model)
        return io.NodeOutput(
            cached("clip_scorer", (folder, _folder_stamp(folder)), lambda: _managed_clip_scorer(folder))
        )
