"""CLIP Score: prompt fidelity of each image (CLIP score, and directional CLIP with a reference image)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d_core.evaluation.clip_score import REFERENCE_PROMPT, clip_scores, directional_clip_scores
from .evaluation_sockets import F2DClipScorerSocket, F2DScoresSocket, ImageScores, score_table
from .progress import comfy_progress


class F2DCLIPScore(io.ComfyNode):
    """CLIP Score."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DCLIPScore",
            display_name="CLIP Score",
            category="face2diffusion",
            is_output_node=True,
            description="Scores how well each image follows its prompt: the cosine of CLIP's image and text "
            "embeddings ('f l' is read as 'a person'). With a reference image generated from 'a photo of f l' it also "
            "gives the paper's directional CLIP.",
            inputs=[
                F2DClipScorerSocket.Input("clip_scorer", tooltip="From Load CLIP Scorer."),
                io.Image.Input("images", tooltip="The generated images (a batch)."),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="a photo of f l",
                    tooltip="The prompt the images were made from; or one prompt per line, one per image.",
                ),
                io.Image.Input(
                    "reference_image",
                    optional=True,
                    tooltip="For directional CLIP: the same face generated from 'a photo of f l' (one image).",
                ),
                io.String.Input(
                    "reference_prompt",
                    default=REFERENCE_PROMPT,
                    tooltip="For directional CLIP: the text the reference image stands for (the paper's "
                    "'A photo of a person').",
                ),
            ],
            outputs=[
                F2DScoresSocket.Output(display_name="scores", tooltip="Per-image CLIP scores, for Best of N."),
                io.Float.Output(display_name="mean_clip_score"),
                io.String.Output(display_name="table"),
            ],
        )

    @classmethod
    def execute(
        cls,
        clip_scorer,
        images: torch.Tensor,
        prompt: str,
        reference_prompt: str,
        reference_image: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        prompts = [line for line in prompt.splitlines() if line.strip()] if "\n" in prompt.strip() else [prompt]
        progress = comfy_progress()
        clip = clip_scores(clip_scorer, images, prompts, progress)
        columns = {"CLIP": clip}
        if reference_image is not None:
            columns["dCLIP"] = directional_clip_scores(
                clip_scorer, images, prompts, reference_image, reference_prompt, progress
            )
        table = score_table(columns) + f"\nmean CLIP {float(clip.mean()):.4f}"
        return io.NodeOutput(ImageScores("prompt", clip, columns), float(clip.mean()), table, ui={"text": (table,)})
