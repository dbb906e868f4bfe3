"""Training Dataset node: a folder of face photos -> the cached CGDR training set."""

from __future__ import annotations

import hashlib
import json

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from ...f2d_core.errors import F2DError
from ...f2d_core.faces.expression_model import HOW_TO_GET, load_expression_model
from ...f2d_core.faces.face_parsing import load_face_parser
from ...f2d_core.training.data.cache import module_fingerprint
from ...f2d_core.training.data.dataset import PreparationStopped, prepare_dataset
from ...f2d_core.training.data.files import listing_fingerprint, tree_fingerprint
from ..model_cache import load_weight_file
from ..model_paths import training_cache_dir, weight_files, weight_path
from ..sockets import F2DDatasetSocket, F2DModel, F2DModelSocket
from .outside_input import training_folder

NO_PARSER = "(none: landmark ellipse)"
NO_EXPRESSION = "(none: null_exp only)"
PARSER_FILE = "79999_iter.pth"
PARSER_HOW_TO_GET = (
    "Download 79999_iter.pth of face-parsing.PyTorch (github.com/zllrunning/face-parsing.PyTorch) and put it there."
)


def _file_record(name: str, how_to_get: str) -> list[object]:
    """[name, size, mtime in ns] of a model file of the face2diffusion folder ([name] when it is not there)."""
    try:
        stat = weight_path(name, how_to_get).stat()
    except (F2DError, OSError):
        return [name]
    return [name, stat.st_size, stat.st_mtime_ns]


def dataset_fingerprint(folder: str, face_parser: str, expression_model: str, mask_folder: str = "") -> str:
    """Hex SHA-256 of what the node reads besides its sockets: the photo and mask listings and the model files."""
    parts: list[object] = []
    for name, is_mask in ((folder, False), (mask_folder, True)):
        if is_mask and not name:
            continue
        try:
            path = training_folder(name)
        except F2DError as exc:  # refused: execute says why, every time
            parts.append(str(exc))
            continue
        parts.append(tree_fingerprint(path) if is_mask else listing_fingerprint(path, exclude=training_cache_dir()))
    if face_parser != NO_PARSER:
        parts.append(_file_record(face_parser, PARSER_HOW_TO_GET))
    if expression_model != NO_EXPRESSION:
        parts.append(_file_record(expression_model, HOW_TO_GET))
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class F2DTrainingDataset(io.ComfyNode):
    """F2D Training Dataset."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DTrainingDataset",
            display_name="F2D Training Dataset",
            category="face2diffusion/training",
            description="Prepares a folder of face photos for mapper training: face crops, identity vectors, "
            "VAE latents, face masks and expressions, cached so a second run is instant. Unusable files are "
            "skipped and listed in the report.",
            inputs=[
                F2DModelSocket.Input("f2d_model", tooltip="Its detector finds the faces, its MSID encoder reads them."),
                io.Vae.Input("vae", tooltip="The VAE of the checkpoint you will train for."),
                io.String.Input(
                    "folder",
                    default="faces",
                    tooltip="Folder of photos inside ComfyUI's input folder: photos directly in it, or one "
                    "subfolder per person (enables the identity shuffle).",
                ),
                io.Combo.Input(
                    "face_parser",
                    options=[*weight_files(PARSER_FILE, "iter"), NO_PARSER],
                    tooltip="BiSeNet face parser (79999_iter.pth) for the face mask of the CGDR loss. Without "
                    "it, an ellipse from the landmarks stands in.",
                ),
                io.Combo.Input(
                    "expression_model",
                    options=[*weight_files("epoch_20.pth", "epoch"), NO_EXPRESSION],
                    tooltip="Deep3DFaceRecon epoch_20.pth for expression codes; without it the mapper learns "
                    "with its neutral expression only.",
                ),
                io.Int.Input(
                    "crop_size",
                    default=512,
                    min=64,
                    max=1024,
                    step=64,
                    tooltip="Training crop size (paper: 512; SDXL: 1024, or 768 / 512 for less compute).",
                ),
                io.Boolean.Input(
                    "flip", default=True, tooltip="Add the mirror image of each photo (the paper's only augmentation)."
                ),
                io.Int.Input("face_index", default=0, min=0, max=64, tooltip="0 = the largest face of each photo."),
                io.String.Input(
                    "mask_folder",
                    default="",
                    optional=True,
                    tooltip="Optional folder of masks (same name as each photo, white = face) instead of the parser.",
                ),
                io.Mask.Input("masks", optional=True, tooltip="Optional masks, one per photo in sorted file order."),
            ],
            outputs=[
                F2DDatasetSocket.Output(display_name="dataset"),
                io.String.Output(display_name="report", tooltip="What was used and what was skipped, and why."),
            ],
        )

    @classmethod
    def fingerprint_inputs(
        cls, folder: str, face_parser: str, expression_model: str, mask_folder: str = "", **_
    ) -> str:
        """Changes when a photo, a mask or a model file is added, removed, replaced or edited: then the node runs.

        ComfyUI would otherwise reuse the last output for unchanged inputs and never see new photos.
        Nothing is read but the folder listings (path, size, mtime of each file).
        """
        return dataset_fingerprint(folder, face_parser, expression_model, mask_folder)

    @classmethod
    def execute(
        cls,
        f2d_model: F2DModel,
        vae,
        folder: str,
        face_parser: str,
        expression_model: str,
        crop_size: int,
        flip: bool,
        face_index: int,
        mask_folder: str = "",
        masks: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        path = training_folder(folder)
        parser = regressor = None  # ModelPatchers, held while the dataset is prepared
        if face_parser != NO_PARSER and not mask_folder and masks is None:
            parser = load_weight_file(load_face_parser, face_parser, PARSER_HOW_TO_GET)
        if expression_model != NO_EXPRESSION:
            regressor = load_weight_file(load_expression_model, expression_model, HOW_TO_GET)
        bar = comfy.utils.ProgressBar(1)
        try:
            dataset = prepare_dataset(
                path,
                f2d_model.encoder,
                f2d_model.detector,
                lambda crops: vae.encode(crops.permute(0, 2, 3, 1)),
                f"vae:{module_fingerprint(vae.first_stage_model)}",
                cache_dir=training_cache_dir(),
                face_parser=None if parser is None else parser.model,
                mask_folder=training_folder(mask_folder) if mask_folder else None,
                masks=None if masks is None else list(masks),
                expression_model=None if regressor is None else regressor.model,
                crop_size=crop_size,
                flip=flip,
                face_index=face_index,
                progress=lambda done, total: bar.update_absolute(done, total),
                should_stop=comfy.model_management.processing_interrupted,
            )
        except PreparationStopped:
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
        return io.NodeOutput(dataset, dataset.report.summary())
