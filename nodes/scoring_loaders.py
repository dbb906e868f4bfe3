"""Load Face Recognizer and Load CLIP Scorer: the scoring models, converted/loaded once on ComfyUI's device."""

from __future__ import annotations

import comfy.model_management
from comfy_api.latest import io

from ..f2d_core.evaluation.clip_models import load_clip_scorer
from ..f2d_core.evaluation.recognition import load_face_recognizer
from .evaluation_paths import clip_model_path, clip_models, recognition_model_path, recognition_models
from .evaluation_sockets import F2DClipScorerSocket, F2DRecognizerSocket


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
        device = comfy.model_management.get_torch_device()
        return io.NodeOutput(load_face_recognizer(recognition_model_path(recognition_model), device))


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
        device = comfy.model_management.get_torch_device()
        return io.NodeOutput(load_clip_scorer(clip_model_path(clip_model), device))
