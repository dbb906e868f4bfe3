"""F2D Loss Graph: the training loss as an image (raw and smoothed), for a preview or save node."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw

from ..sockets import F2DTrainedMapperSocket, TrainedMapper

WIDTH, HEIGHT, MARGIN = 768, 384, 48


def smoothed(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average, bias-corrected so the start is not pulled to zero."""
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def loss_plot(losses: list[float], title: str) -> Image.Image:
    """A plain line plot: raw loss in grey, smoothed in blue, min/max on the axis."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 12), title, fill="black")
    draw.rectangle([MARGIN, MARGIN, WIDTH - MARGIN, HEIGHT - MARGIN], outline="black")
    values = np.asarray([v for v in losses if np.isfinite(v)], dtype=np.float64)
    if len(values) == 0:
        draw.text((WIDTH // 2 - 40, HEIGHT // 2), "no steps yet", fill="black")
        return image
    low, high = float(values.min()), float(values.max())
    span = high - low or 1.0

    def points(series: np.ndarray) -> list[tuple[float, float]]:
        xs = np.linspace(MARGIN, WIDTH - MARGIN, num=len(series)) if len(series) > 1 else np.array([WIDTH / 2])
        ys = HEIGHT - MARGIN - (series - low) / span * (HEIGHT - 2 * MARGIN)
        return list(zip(xs.tolist(), ys.tolist(), strict=True))

    draw.line(points(values), fill=(170, 170, 170), width=1)
    draw.line(points(smoothed(values)), fill=(30, 90, 200), width=2)
    draw.text((4, MARGIN - 6), f"{high:.4g}", fill="black")
    draw.text((4, HEIGHT - MARGIN - 6), f"{low:.4g}", fill="black")
    draw.text((WIDTH - MARGIN - 60, HEIGHT - MARGIN + 8), f"step {len(values)}", fill="black")
    return image


class F2DLossGraph(io.ComfyNode):
    """F2D Loss Graph."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DLossGraph",
            display_name="F2D Loss Graph",
            category="face2diffusion/training",
            description="Plots the training loss of a trained mapper (grey: per step, blue: smoothed).",
            inputs=[F2DTrainedMapperSocket.Input("trained_mapper", tooltip="From Train F2D Mapper.")],
            outputs=[io.Image.Output(display_name="plot")],
        )

    @classmethod
    def execute(cls, trained_mapper: TrainedMapper) -> io.NodeOutput:
        title = f"{trained_mapper.settings.get('loss', '')} loss, {trained_mapper.step} steps"
        plot = np.asarray(loss_plot(trained_mapper.losses, title), dtype=np.float32) / 255.0
        return io.NodeOutput(torch.from_numpy(plot)[None])
