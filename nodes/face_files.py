"""Save / Load F2D Face: reuse a person's S* without the photo."""

from __future__ import annotations

import re
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..f2d_core.identity.face_file import load_face, save_embedding, save_face
from ..f2d_core.identity.s_star_family import s_star_family
from .encode_face import crops_as_image
from .model_paths import FACES_FOLDER
from .sockets import F2DFace, F2DFaceSocket, F2DModel, F2DModelSocket


def _next_free(directory: Path, stem: str) -> Path:
    """`<stem>_00001.safetensors`, numbered after the highest existing one."""
    numbers = [int(m.group(1)) for p in directory.glob(f"{stem}_*.safetensors") if (m := re.search(r"_(\d+)$", p.stem))]
    return directory / f"{stem}_{max(numbers, default=0) + 1:05d}.safetensors"


class F2DSaveFace(io.ComfyNode):
    """Save F2D Face."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DSaveFace",
            display_name="Save F2D Face",
            category="face2diffusion",
            description="Saves S* with its settings and the aligned face crops (not the photo) to "
            "models/face2diffusion/faces, for Load F2D Face.",
            inputs=[
                F2DFaceSocket.Input("f2d_face", tooltip="From Encode Face (the face as S*)."),
                io.String.Input("name", default="person", tooltip="File name; a counter is appended."),
                io.Boolean.Input(
                    "also_save_embedding",
                    default=True,
                    optional=True,
                    tooltip="SDXL faces only: also write models/embeddings/<name>.safetensors (clip_l / clip_g), an "
                    "ordinary ComfyUI embedding usable as embedding:<name> in any SDXL prompt without the pack. "
                    "With a class_prompt mapper its pooled vector then differs from Apply F2D Tokens'. SD1.x faces "
                    "have no embedding file (their S* depends on the identifier's position).",
                ),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, f2d_face: F2DFace, name: str, also_save_embedding: bool = True) -> io.NodeOutput:
        stem = re.sub(r"[^\w\-. ]", "_", name).strip(" .") or "person"
        directory = Path(folder_paths.get_folder_paths(FACES_FOLDER)[0])
        path = _next_free(directory, stem)
        save_face(path, f2d_face.face)
        preview = ui.PreviewImage(crops_as_image(f2d_face.face.crops), cls=cls).as_dict()
        # The name written (with its counter), shown under the node; the page then lists it in Load F2D Face.
        text = f"saved as {path.name}"
        if also_save_embedding and s_star_family(f2d_face.face.s_star) == "sdxl":
            embedding = Path(folder_paths.get_folder_paths("embeddings")[0]) / path.name
            save_embedding(embedding, f2d_face.face)
            text += f"; embedding:{embedding.stem} in SDXL prompts"
        return io.NodeOutput(ui={**preview, "text": [text]})


class F2DLoadFace(io.ComfyNode):
    """Load F2D Face."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DLoadFace",
            display_name="Load F2D Face",
            category="face2diffusion",
            description="Loads a face saved by Save F2D Face; no photo or face detector needed.",
            inputs=[
                io.Combo.Input(
                    "face_file",
                    options=folder_paths.get_filename_list(FACES_FOLDER),
                    tooltip="A saved face in models/face2diffusion/faces.",
                ),
                F2DModelSocket.Input(
                    "f2d_model",
                    optional=True,
                    tooltip="Only needed to mix in an expression (Expression Reference): gives the mapper.",
                ),
            ],
            outputs=[
                F2DFaceSocket.Output(display_name="f2d_face"),
                io.Image.Output(display_name="aligned_faces", tooltip="The crops the face was encoded from."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, face_file: str, **_: object) -> float:
        return Path(folder_paths.get_full_path_or_raise(FACES_FOLDER, face_file)).stat().st_mtime_ns

    @classmethod
    def execute(cls, face_file: str, f2d_model: F2DModel | None = None) -> io.NodeOutput:
        face = load_face(folder_paths.get_full_path_or_raise(FACES_FOLDER, face_file))
        encoder = f2d_model.encoder if f2d_model is not None else None
        return io.NodeOutput(F2DFace(face, encoder), crops_as_image(face.crops))
