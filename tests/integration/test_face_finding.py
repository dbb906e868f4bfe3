"""Finding the face people see, in a real server: photos one detection size misses encode, and say how."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import encode_face_graph, save_conditioning
from tests.support.hard_photos import HARD_PHOTOS, hard_photo
from tests.support.photos import ASTRONAUT, load_rgb


def _encode(server: ComfyServer, image: str, name: str, pack: str | None = None) -> dict:
    """Run photo -> Encode Face -> Apply F2D Tokens -> saved conditioning; the history entry."""
    graph = encode_face_graph(image)
    if pack is not None:
        graph["2"]["inputs"]["insightface_pack"] = pack
    save_conditioning(graph, ["5", 0], name, "99")
    graph["6"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": name}}
    return server.run(graph, timeout=300)


def test_a_face_found_at_once_says_so(comfy_server: ComfyServer) -> None:
    image = comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_found_at_once.png")
    history = _encode(comfy_server, image, "found_at_once")
    assert history["outputs"]["4"]["text"] == ["image 1 of 1: found at once (the photo at detection size 640)"]


@pytest.mark.parametrize("name", list(HARD_PHOTOS))
def test_photo_one_detection_size_misses_encodes(comfy_server: ComfyServer, name: str) -> None:
    image = comfy_server.upload_image(Image.fromarray(hard_photo(name)), f"f2d_{name}.png")
    history = _encode(comfy_server, image, name)
    (text,) = history["outputs"]["4"]["text"]
    assert text.startswith(f"image 1 of 1: found on {HARD_PHOTOS[name].found_on} (attempt "), text
    # Said under the node; the console gets no per-image detection lines (they would break progress bars).
    log = comfy_server.log_text()
    assert "image 1 of 1: 1 face(s)" not in log and "no face on the photo at detection size" not in log
    (crop,) = comfy_server.output_images(history, "6")
    assert crop.size == (112, 112)
    assert (comfy_server.output_dir / f"{name}.safetensors").is_file()


@pytest.fixture
def pack_unzipped_one_folder_too_deep(comfy_models_dir: Path):
    """models/insightface/models/antelopev2/antelopev2/*.onnx, as antelopev2.zip unpacks inside its own folder."""
    outer = comfy_models_dir / "insightface" / "models" / "antelopev2"
    si.write_synthetic_pack(outer, "antelopev2")
    (outer / "models" / "antelopev2").rename(outer / "antelopev2")
    (outer / "models").rmdir()
    yield outer / "antelopev2"
    shutil.rmtree(outer)


def test_pack_unzipped_one_folder_too_deep_is_used(comfy_server: ComfyServer, pack_unzipped_one_folder_too_deep):
    options = comfy_server.object_info("F2DLoadMSIDEncoder")["F2DLoadMSIDEncoder"]["input"]["required"]
    assert "antelopev2" in options["insightface_pack"][1]["options"]
    image = comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_nested_pack.png")
    history = _encode(comfy_server, image, "nested_pack", pack="antelopev2")
    assert history["outputs"]["4"]["text"] == ["image 1 of 1: found at once (the photo at detection size 640)"]
    inner = pack_unzipped_one_folder_too_deep
    assert f"insightface pack 'antelopev2': its .onnx files are one folder down, in {inner}" in comfy_server.log_text()
