"""Save / Load F2D Face: reuse a person's S* without the photo."""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..f2d_core.errors import WeightFileError
from ..f2d_core.identity.face_encoder import EncodedFace, FaceEncoder
from ..f2d_core.identity.face_file import load_face, save_embedding, save_face
from ..f2d_core.identity.s_star_family import s_star_family
from .encode_face import crops_as_image
from .model_paths import FACES_FOLDER
from .sockets import F2DFace, F2DFaceSocket, F2DModel, F2DModelSocket

log = logging.getLogger(__name__)


def face_for_mapper(face: EncodedFace, encoder: FaceEncoder | None) -> tuple[EncodedFace, str]:
    """The loaded face as it is used, and a line saying which mapper made its S*.

    With an encoder, S* is mapped again from the saved identity vector by the encoder's (current) mapper, so a
    face saved with another mapper never mixes with this one (a norm-matched face is rescaled to that mapper's
    anchors); without, S* is used as saved.
    """
    saved_mapper = str(face.settings.get("mapper") or "an unnamed mapper")
    if encoder is None:
        return face, (
            f"S* as saved, made by the mapper {saved_mapper}; connect an F2D model to map it with that model's mapper"
        )
    mapper = encoder.sources.get("mapper", "")
    s_star = encoder.s_star(face.idvec, norm_match=face.norm_match)
    face = dataclasses.replace(face, s_star=s_star, settings={**face.settings, "mapper": mapper})
    note = f"S* mapped by the connected F2D model's mapper {mapper} (saved with {saved_mapper})"
    saved_msid, msid = face.settings.get("msid"), encoder.sources.get("msid", "")
    if saved_msid and saved_msid != msid:
        note += f"; its identity was encoded by {saved_msid}, not by {msid}: encode the photo again to use this MSID"
    return face, note


def _next_free(directory: Path, stem: str) -> Path:
    """`<stem>_00001.safetensors`, numbered after the highest existing one."""
    numbers = [int(m.group(1)) for p in directory.glob(f"{stem}_*.safetensors") if (m := re.search(r"_(\d+)$", p.stem))]
    return directory / f"{stem}_{max(numbers, default=0) + 1:05d}.safetensors"


# face_file's only choice while no face is saved: the widget then holds it (not `undefined`), and a run says
# what to do. The page puts the saved file in its place after Save F2D Face runs (js/f2d_file_lists.js).
NO_SAVED_FACE = "(no saved face yet: run Save F2D Face)"


def saved_faces() -> list[str]:
    """face_file's choices: the saved faces, or NO_SAVED_FACE alone."""
    return folder_paths.get_filename_list(FACES_FOLDER) or [NO_SAVED_FACE]


def face_file_problem(face_file: str | None) -> str | None:
    """Why `face_file` cannot be loaded (no choice, or no such saved face), naming the widget; None when it can."""
    folders = " or ".join(folder_paths.get_folder_paths(FACES_FOLDER))
    saved = folder_paths.get_filename_list(FACES_FOLDER)
    what_to_do = (
        "choose one of the saved faces in the face_file widget"
        if saved
        else "run Save F2D Face once (the face_file list then fills without a reload) and choose it in face_file"
    )
    if not face_file or face_file == NO_SAVED_FACE:
        return f"no saved face is chosen in face_file: {what_to_do}"
    if face_file not in saved:
        return f"face_file '{face_file}' is not a saved face in {folders}: {what_to_do}"
    return None


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
        # NFC: "Zo\u00eb" composed (Windows, Linux) and decomposed (macOS) name one person's files, not two.
        stem = re.sub(r"[^\w\-. ]", "_", unicodedata.normalize("NFC", name)).strip(" .") or "person"
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
                    options=saved_faces(),
                    tooltip="A saved face in models/face2diffusion/faces.",
                ),
                F2DModelSocket.Input(
                    "f2d_model",
                    optional=True,
                    tooltip="Optional. Connected: its mapper maps the saved identity to S* (so a face saved with "
                    "another mapper is used with this one) and can mix in an expression (Expression Reference). "
                    "Not connected: the S* saved in the file, from the mapper that made it.",
                ),
            ],
            outputs=[
                F2DFaceSocket.Output(display_name="f2d_face"),
                io.Image.Output(display_name="aligned_faces", tooltip="The crops the face was encoded from."),
            ],
        )

    @classmethod
    def validate_inputs(cls, face_file: str | None = None) -> bool | str:
        # Takes face_file, so ComfyUI skips its bare "Value not in list" for it: this names the file and the fix.
        return face_file_problem(face_file) or True

    @classmethod
    def fingerprint_inputs(cls, face_file: str | None = None, **_: object) -> str:
        """The file's modification time (a missing file or choice fingerprints as such; validation says why)."""
        path = folder_paths.get_full_path(FACES_FOLDER, face_file) if face_file else None
        return (
            f"{face_file}@{Path(path).stat().st_mtime_ns}" if path and Path(path).is_file() else f"{face_file}@missing"
        )

    @classmethod
    def execute(cls, face_file: str | None = None, f2d_model: F2DModel | None = None) -> io.NodeOutput:
        problem = face_file_problem(face_file)
        if problem:  # the file went away between validation and the run
            raise WeightFileError(f"Load F2D Face: {problem}")
        face = load_face(folder_paths.get_full_path_or_raise(FACES_FOLDER, face_file))
        encoder = f2d_model.encoder if f2d_model is not None else None
        face, note = face_for_mapper(face, encoder)
        log.info("Load F2D Face %s: %s", face_file, note)
        return io.NodeOutput(F2DFace(face, encoder), crops_as_image(face.crops), ui={"text": [note]})
