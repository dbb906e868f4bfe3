"""Best of N: keep the k best images of a batch by identity, prompt fidelity or their harmonic mean."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d_core.errors import EvaluationError
from ..f2d_core.evaluation.best_of_n import RANK_BY, choose_best, harmonic_mean
from .evaluation_sockets import F2DScoresSocket, ImageScores, score_table
from .image_lists import first, one_batch
from .progress import comfy_progress


def _joined(scores: list[ImageScores] | None, column: str | None = None) -> torch.Tensor | None:
    """The score values (or one of their table's columns) of a list of ImageScores, one per IMAGE batch of a
    list, as one [N] tensor; None without scores or when a batch lacks that column."""
    if not scores:
        return None
    parts = [s.values if column is None else s.columns.get(column) for s in scores]
    if any(p is None for p in parts):
        return None
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class F2DBestOfN(io.ComfyNode):
    """Best of N."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DBestOfN",
            display_name="Best of N",
            category="face2diffusion",
            is_output_node=True,
            description="Keeps the k best images of a batch: by identity (Face Similarity), prompt fidelity (CLIP "
            "Score) or their harmonic mean, as the paper combines them. A sampler batch of 8 becomes the best 2. When "
            "every identity score is 0 (no face found, or none like the reference) it ranks by prompt if CLIP Score "
            "is connected, and otherwise keeps the whole batch, with a note saying which. An image list (and its "
            "list of scores) is ranked as one batch.",
            inputs=[
                io.Image.Input("images", tooltip="The batch to choose from (the one the scores were computed on)."),
                io.Int.Input("keep", default=1, min=1, max=4096, tooltip="How many images to keep (k)."),
                io.Combo.Input(
                    "rank_by",
                    options=list(RANK_BY),
                    default="identity",
                    tooltip="identity: likeness only; prompt: CLIP score only; harmonic mean: both, as the paper's "
                    "hMean (needs both scores connected).",
                ),
                F2DScoresSocket.Input("identity_scores", optional=True, tooltip="scores from Face Similarity."),
                F2DScoresSocket.Input("prompt_scores", optional=True, tooltip="scores from CLIP Score."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The kept images, best first."),
                io.String.Output(display_name="indices", tooltip="Their positions in the batch (1-based), best first."),
                io.String.Output(display_name="scores", tooltip="Their ranking scores, best first."),
                io.String.Output(display_name="table"),
            ],
            is_input_list=True,  # an image list is one choice among all its images, not one per image
        )

    @classmethod
    def execute(
        cls,
        images: list[torch.Tensor],
        keep: list[int],
        rank_by: list[str],
        identity_scores: list[ImageScores] | None = None,
        prompt_scores: list[ImageScores] | None = None,
    ) -> io.NodeOutput:
        images = one_batch(images, "Best of N")
        identity, prompt = _joined(identity_scores), _joined(prompt_scores)
        face_found = _joined(identity_scores, "face")
        choice = choose_best(identity, prompt, first(rank_by, "rank_by"), first(keep, "keep"), face_found)
        comfy_progress()(1, 1)  # its bar full; a Cancel pressed meanwhile stops here, before the images are cut
        ranking, kept = choice.ranking, choice.kept
        if ranking.shape[0] != images.shape[0]:
            raise EvaluationError(
                f"{ranking.shape[0]} scores for {images.shape[0]} images: score the same batch you choose from"
            )
        columns = {"rank score": ranking[kept]}
        if identity is not None:
            columns["identity"] = identity[kept]
        if prompt is not None:
            columns["CLIP"] = prompt[kept]
        if identity is not None and prompt is not None and choice.rank_by != "harmonic mean":
            columns["hMean"] = harmonic_mean(identity, prompt)[kept]
        table = f"best {len(kept)} of {images.shape[0]} by {choice.rank_by}\n" + score_table(columns, kept.tolist())
        if choice.note:
            table += f"\n{choice.note}"
        indices = ", ".join(str(i + 1) for i in kept.tolist())
        scores = ", ".join(f"{float(s):.4f}" for s in ranking[kept])
        return io.NodeOutput(images[kept], indices, scores, table, ui={"text": (table,)})
