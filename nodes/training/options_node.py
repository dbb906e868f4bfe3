"""F2D Training Options: the training settings most runs never touch, kept off Train F2D Mapper's face.

An optional `options` input of Train F2D Mapper takes them, so SD1.x templates keep the trainer's widgets
(docs/sdxl.md 2.3 and 3.5): `anchor_reg` (SDXL: pull S* towards the words it started at, Cross-Init's
regulariser) and `checkpoint_granularity` (what gradient checkpointing recomputes).
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from .comfy_backend import CHECKPOINT_GRANULARITIES

F2DTrainingOptionsSocket = io.Custom("F2D_TRAINING_OPTIONS")


@dataclass(frozen=True)
class TrainingOptions:
    """What F2D Training Options hands Train F2D Mapper (the defaults are the trainer's without the node)."""

    anchor_reg: float = 0.0
    checkpoint_granularity: str = "block"


class F2DTrainingOptions(io.ComfyNode):
    """F2D Training Options."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DTrainingOptions",
            display_name="F2D Training Options",
            category="face2diffusion/training",
            description="More settings for Train F2D Mapper (connect to its options input): the anchor "
            "regulariser for SDXL mappers and the granularity of gradient checkpointing.",
            inputs=[
                io.Float.Input(
                    "anchor_reg",
                    default=0.0,
                    min=0.0,
                    max=100.0,
                    step=1e-4,
                    round=1e-6,
                    tooltip="SDXL only: adds anchor_reg x mean ||S* - anchor||^2 to the loss, pulling S* towards "
                    "the words it started at (Cross-Initialization's regulariser). 0 = off. Needs a mapper with "
                    "anchors (start_from scratch, or an SDXL mapper trained from scratch).",
                ),
                io.Combo.Input(
                    "checkpoint_granularity",
                    options=list(CHECKPOINT_GRANULARITIES),
                    default="block",
                    tooltip="With gradient_checkpointing on: recompute each ResBlock and whole transformer stack "
                    "(block) or each transformer block inside them (transformer_block: less memory at the same "
                    "compute, for SDXL at 1024).",
                ),
            ],
            outputs=[F2DTrainingOptionsSocket.Output(display_name="options")],
        )

    @classmethod
    def execute(cls, anchor_reg: float, checkpoint_granularity: str) -> io.NodeOutput:
        return io.NodeOutput(TrainingOptions(anchor_reg, checkpoint_granularity))
