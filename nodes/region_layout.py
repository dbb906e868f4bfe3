"""F2D Region Layout: one mask per person from a layout (halves, thirds, 2x2), at the latent's image size."""

from __future__ import annotations

from comfy_api.latest import io

from ..f2d_core.conditioning.regions import LATENT_SCALE, LAYOUTS, layout_masks


class F2DRegionLayout(io.ComfyNode):
    """F2D Region Layout."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DRegionLayout",
            display_name="F2D Region Layout",
            category="face2diffusion",
            description="Splits the image into one region per person (left/right halves, thirds, a 2x2 grid) for "
            "Add F2D Person.",
            inputs=[
                io.Latent.Input("latent", tooltip="The latent that is sampled: the masks get its image size."),
                io.Combo.Input(
                    "layout",
                    options=list(LAYOUTS),
                    default="left/right halves",
                    tooltip="Regions numbered left to right (the grid row by row): person 1 is the first.",
                ),
                io.Float.Input(
                    "overlap",
                    default=0.1,
                    min=0.0,
                    max=0.5,
                    step=0.01,
                    tooltip="How far each region reaches into its neighbours, as a fraction of a region's size. "
                    "Some overlap lets people stand close; where regions overlap both prompts are averaged.",
                ),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="One mask per region, [N, H, W]."),
                io.Int.Output(display_name="count", tooltip="How many regions (people) the layout has."),
            ],
        )

    @classmethod
    def execute(cls, latent: dict, layout: str, overlap: float) -> io.NodeOutput:
        height, width = (LATENT_SCALE * size for size in latent["samples"].shape[-2:])
        masks = layout_masks(layout, height, width, overlap)
        return io.NodeOutput(masks, masks.shape[0])
