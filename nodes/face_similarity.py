"""Face Similarity: identity score of each generated image against the reference person(s)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d_core.errors import EvaluationError
from ..f2d_core.evaluation.face_similarity import identity_scores, largest_face_crops, person_embedding
from ..f2d_core.evaluation.previews import draw_labels
from .evaluation_sockets import F2DRecognizerSocket, F2DScoresSocket, ImageScores, score_table
from .progress import comfy_progress
from .sockets import F2DFace, F2DFaceSocket, F2DModel, F2DModelSocket

REFERENCE_MODES = ("one person", "one person per image")


def reference_embeddings(
    f2d_model: F2DModel, recognizer, f2d_face: F2DFace | None, reference_images: torch.Tensor | None, mode: str
) -> torch.Tensor:
    """[P, D] reference people: the F2D face (its aligned crops) first, then the photos (pooled, or one each)."""
    people, progress = [], comfy_progress()
    if f2d_face is not None:
        people.append(person_embedding(recognizer, f2d_face.face.crops, progress))
    if reference_images is not None:
        crops = largest_face_crops(f2d_model.detector, recognizer, reference_images, progress)
        groups = [crops] if mode == "one person" else list(crops.split(1))
        people += [person_embedding(recognizer, group, progress) for group in groups]
    if not people:
        raise EvaluationError("Face Similarity needs a reference: connect an F2D face or reference images")
    return torch.stack(people)


class F2DFaceSimilarity(io.ComfyNode):
    """Face Similarity."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DFaceSimilarity",
            display_name="Face Similarity",
            category="face2diffusion",
            is_output_node=True,
            description="Scores how much each generated image looks like the reference person: cosine similarity of "
            "ArcFace embeddings, clipped at 0, and 0 when no face is found (the paper's convention). With several "
            "reference people each face is matched to its closest reference.",
            inputs=[
                F2DModelSocket.Input("f2d_model", tooltip="From Load MSID Encoder: its face detector finds the faces."),
                F2DRecognizerSocket.Input("recognizer", tooltip="From Load Face Recognizer."),
                io.Image.Input("images", tooltip="The generated images (a batch), e.g. after VAE Decode."),
                F2DFaceSocket.Input(
                    "f2d_face", optional=True, tooltip="The person as an F2D face (its aligned crops are the reference)"
                ),
                io.Image.Input(
                    "reference_images", optional=True, tooltip="Reference photos (the largest face of each is used)."
                ),
                io.Combo.Input(
                    "reference_images_are",
                    options=list(REFERENCE_MODES),
                    default="one person",
                    tooltip="Whether the reference photos show one person (pooled) or one person each (several "
                    "people: each generated face is matched to its closest reference).",
                ),
            ],
            outputs=[
                F2DScoresSocket.Output(display_name="scores", tooltip="Per-image identity scores, for Best of N."),
                io.Float.Output(display_name="mean_similarity"),
                io.Float.Output(display_name="face_found_rate"),
                io.Image.Output(display_name="previews", tooltip="The images with their score drawn on them."),
                io.String.Output(display_name="table"),
            ],
        )

    @classmethod
    def execute(
        cls,
        f2d_model: F2DModel,
        recognizer,
        images: torch.Tensor,
        reference_images_are: str,
        f2d_face: F2DFace | None = None,
        reference_images: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        references = reference_embeddings(f2d_model, recognizer, f2d_face, reference_images, reference_images_are)
        result = identity_scores(f2d_model.detector, recognizer, images, references, comfy_progress())
        table = score_table({"identity": result.scores, "face": result.face_found})
        table += f"\nmean {float(result.scores.mean()):.4f}, faces found in {100 * result.found_rate:.0f}% of images"
        missed = int((~result.face_found).sum())
        if missed:
            table += (
                f"\nno face in {missed} of {len(result.face_found)} image(s): they score 0 (a helmet, a turned or "
                "too small face; the images must be the generated ones, after VAE Decode)"
            )
        pairs = zip(result.scores.tolist(), result.face_found.tolist(), strict=True)
        labels = [f"id {score:.3f}" if found else "no face: 0" for score, found in pairs]
        previews = draw_labels(images, labels)
        scores = ImageScores("identity", result.scores, {"identity": result.scores, "face": result.face_found})
        return io.NodeOutput(
            scores,
            float(result.scores.mean()),
            result.found_rate,
            previews,
            table,
            # The table only: pictures on the node would grow it over the next one when it runs; the
            # previews output shows them where the user puts a Preview Image.
            ui={"text": (table,)},
        )
