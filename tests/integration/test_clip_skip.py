"""Clip skip in a real server: allowed, but Apply F2D Tokens says on the node and in the log that likeness may drop."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import encode_face_graph, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb

WARNING = "S* was trained on CLIP's last layer (-1), as in the official Face2Diffusion code, so the likeness may drop"


def _apply_tokens_text(server: ComfyServer, stop_at_clip_layer: int | None, name: str) -> list[str]:
    """Encode a face and apply it through CLIP Set Last Layer (or none); Apply F2D Tokens' UI text."""
    image = server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_clip_skip.png")
    graph = encode_face_graph(image)
    if stop_at_clip_layer is not None:
        graph["6"] = {
            "class_type": "CLIPSetLastLayer",
            "inputs": {"clip": ["1", 1], "stop_at_clip_layer": stop_at_clip_layer},
        }
        graph["5"]["inputs"]["clip"] = ["6", 0]
    save_conditioning(graph, ["5", 0], name, "99")
    return server.run(graph)["outputs"]["5"]["text"]


@pytest.mark.parametrize("layer", [-2, -12])
def test_clip_skip_is_allowed_but_not_silent(comfy_server: ComfyServer, layer: int) -> None:
    (text,) = _apply_tokens_text(comfy_server, layer, f"clip_skip_{-layer}")
    assert text.startswith(f"Warning: clip skip: this CLIP stops at layer {layer} (CLIP Set Last Layer)")
    assert WARNING in text
    assert f"Apply F2D Tokens: clip skip: this CLIP stops at layer {layer}" in comfy_server.log_text()
    assert (comfy_server.output_dir / f"clip_skip_{-layer}.safetensors").is_file()


@pytest.mark.parametrize("layer", [None, -1])
def test_last_layer_gives_no_warning(comfy_server: ComfyServer, layer: int | None) -> None:
    assert _apply_tokens_text(comfy_server, layer, f"no_clip_skip_{layer}") == [""]
