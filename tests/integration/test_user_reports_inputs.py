"""Inputs as users give them, from public reports on face packs (issue 13): photo formats, image and mask
sizes and batches, and saved faces (non-ASCII names, a folder that cannot be written). Real server."""

from __future__ import annotations

import io
import re
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import CHECKPOINT, encode_face_graph, loader, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb


@pytest.fixture(scope="module")
def face_rgb() -> np.ndarray:
    return si.face_photo(load_rgb(ASTRONAUT))


def _upload_bytes(server: ComfyServer, image: Image.Image, name: str, **save: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, **save)
    path = server.work_dir / name
    path.write_bytes(buffer.getvalue())
    return server.upload_image(path, name)


def _cond(server: ComfyServer, graph: dict, name: str, source: list | None = None) -> torch.Tensor:
    save_conditioning(graph, source or ["5", 0], name, "99")
    server.run(graph, timeout=300)
    return load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"]


def _failure(server: ComfyServer, graph: dict) -> ExecutionFailed:
    save_conditioning(graph, ["5", 0], "ri_never_written", "99")
    with pytest.raises(ExecutionFailed) as info:
        server.run(graph, timeout=300)
    assert server.object_info("F2DEncodeFace")  # the server keeps serving
    assert "Traceback" not in info.value.exception_message
    return info.value


# --- Photos ----------------------------------------------------------------------------------------


def test_photos_in_every_format_loadimage_reads_encode_like_the_rgb_photo(comfy_server, face_rgb):
    """Palette PNG, CMYK JPEG and 16-bit PNG through LoadImage into Encode Face: the same person as the
    8-bit RGB photo (S* within float noise of its conditioning)."""
    rgb = Image.fromarray(face_rgb)
    reference = _cond(comfy_server, encode_face_graph(comfy_server.upload_image(rgb, "ri_rgb.png")), "ri_rgb")
    uploads = {
        "palette": _upload_bytes(comfy_server, rgb.quantize(256, dither=Image.Dither.NONE), "ri_p.png", format="PNG"),
        "cmyk": _upload_bytes(comfy_server, rgb.convert("CMYK"), "ri_cmyk.jpg", format="JPEG", quality=98),
        "rgb16": _upload_bytes(comfy_server, rgb, "ri_16.png", format="PNG", bits=16),
    }
    for kind, name in uploads.items():
        got = _cond(comfy_server, encode_face_graph(name), f"ri_{kind}")
        assert torch.isfinite(got).all(), kind
        assert torch.nn.functional.cosine_similarity(got[0, 4:6], reference[0, 4:6], dim=-1).min() > 0.9, kind


def test_grayscale_photo_encodes_as_its_rgb_copy(comfy_server, face_rgb):
    """A grayscale ("L") photo is read as RGB by LoadImage and encodes exactly as an RGB photo of the same
    pixels: a finite S*, bit for bit the RGB copy's."""
    gray = Image.fromarray(face_rgb).convert("L")
    conds = []
    for mode, name in (("L", "ri_gray.png"), ("RGB", "ri_gray_rgb.png")):
        upload = _upload_bytes(comfy_server, gray.convert(mode), name, format="PNG")
        conds.append(_cond(comfy_server, encode_face_graph(upload), f"ri_gray_{mode}"))
    assert torch.isfinite(conds[0]).all() and torch.equal(conds[0], conds[1])


# --- Sizes and batches -----------------------------------------------------------------------------


def test_image_batch_of_mixed_sources_gives_one_pooled_face(comfy_server, face_rgb):
    """A PNG and a JPEG of different sizes, batched by ImageBatch (which rescales the second), encode as one face."""
    png = comfy_server.upload_image(Image.fromarray(face_rgb), "ri_mix_a.png")
    big = Image.fromarray(si.face_photo(load_rgb(ASTRONAUT), size=(900, 700), centre=(350, 450), side=180))
    jpg = _upload_bytes(comfy_server, big, "ri_mix_b.jpg", format="JPEG", quality=95)
    graph = encode_face_graph(png)
    graph["3b"] = {"class_type": "LoadImage", "inputs": {"image": jpg}}
    graph["3c"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["3b", 0]}}
    graph["4"]["inputs"]["image"] = ["3c", 0]
    history_cond = _cond(comfy_server, graph, "ri_mixed")
    assert torch.isfinite(history_cond).all() and history_cond.shape == (1, 77, 768)


def test_regions_on_a_904x600_latent_and_a_1023px_hand_painted_mask(comfy_server, face_rgb):
    """Sizes that are not multiples of 64 work (904x600: region layout, two people, KSampler, VAE decode); a
    hand-painted mask one pixel short of the image (1023x1023 for 1024x1024) is used, resized to the image; a
    mask of another shape (1023x512) is a node error saying what to do."""
    name = comfy_server.upload_image(Image.fromarray(face_rgb), "ri_regions.png")
    graph = encode_face_graph(name)
    graph["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 904, "height": 600, "batch_size": 1}}
    graph["7"] = {
        "class_type": "F2DRegionLayout",
        "inputs": {"latent": ["6", 0], "layout": "left/right halves", "overlap": 0.25},
    }
    graph["8"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "two friends"}}
    person = {"clip": ["1", 1], "latent": ["6", 0], "masks": ["7", 0], "f2d_face": ["4", 0], "strength": 1.0}
    graph["10"] = {
        "class_type": "F2DAddPerson",
        "inputs": {**person, "conditioning": ["8", 0], "text": "a photo of f l", "person": 1},
    }
    graph["11"] = {
        "class_type": "F2DAddPerson",
        "inputs": {**person, "conditioning": ["10", 0], "text": "a photo of f l smiling", "person": 2},
    }
    graph["12"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "positive": ["11", 0],
            "negative": ["8", 0],
            "latent_image": ["6", 0],
            "seed": 0,
            "steps": 1,
            "cfg": 2.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    }
    graph["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}}
    graph["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "ri_904"}}
    (image,) = comfy_server.output_images(comfy_server.run(graph, timeout=600), "14")
    assert image.size == (904, 600)

    painted = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": loader(),
        "3": graph["3"],
        "4": graph["4"],
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "7": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 1023, "height": 1023}},
        "8": graph["8"],
        "5": {"class_type": "F2DAddPerson", "inputs": {**person, "latent": ["6", 0], "masks": ["7", 0],
                                                       "conditioning": ["8", 0], "text": "a photo of f l",
                                                       "person": 1}},
    }  # fmt: skip
    save_conditioning(painted, ["5", 0], "ri_painted", "99")
    comfy_server.run(painted, timeout=300)
    saved = load_file(str(comfy_server.output_dir / "ri_painted.safetensors"))
    masks = [tensor for key, tensor in saved.items() if key.startswith("mask_")]
    assert [tuple(mask.shape[-2:]) for mask in masks] == [(1024, 1024)] and masks[0].min() == 1.0
    painted["7"]["inputs"]["height"] = 512
    error = _failure(comfy_server, painted)
    assert error.node_type == "F2DAddPerson"
    assert "mask is 1023x512 pixels, but the latent is for a 1024x1024 image" in error.exception_message
    assert "make the mask at the image size" in error.exception_message


# --- Saved faces -----------------------------------------------------------------------------------


def _faces_dir(server: ComfyServer, comfy_models_dir, stem: str):
    """The folder Save F2D Face wrote `<stem>_*.safetensors` into."""
    pattern = re.compile(rf"{re.escape(stem)}_\d{{5}}\.safetensors")  # not another test's `<stem>_mapper`
    (found,) = {p.parent for p in comfy_models_dir.rglob(f"{stem}_*.safetensors") if pattern.fullmatch(p.name)}
    return found


def test_face_named_in_any_script_round_trips_and_a_read_only_folder_is_a_clear_error(
    comfy_server, comfy_models_dir, face_rgb
):
    """Save F2D Face with the name "Zoë_\u674e" is offered by Load F2D Face in the very next prompt (API) and gives
    the same conditioning; a faces folder that cannot be written is a clear node error, the saved file intact."""
    name = comfy_server.upload_image(Image.fromarray(face_rgb), "ri_zoe.png")
    graph = encode_face_graph(name)
    graph["6"] = {"class_type": "F2DSaveFace", "inputs": {"f2d_face": ["4", 0], "name": "Zoë_\u674e"}}
    direct = _cond(comfy_server, graph, "ri_zoe_direct")
    saved = [f for f in comfy_server.combo_options("F2DLoadFace", "face_file") if f.startswith("Zoë_\u674e_")]
    assert saved, comfy_server.combo_options("F2DLoadFace", "face_file")
    loaded = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "4": {"class_type": "F2DLoadFace", "inputs": {"face_file": saved[-1]}},
        "5": {"class_type": "F2DApplyTokens", "inputs": {"clip": ["1", 1], "text": "a photo of f l",
                                                         "f2d_face": ["4", 0]}},
    }  # fmt: skip
    torch.testing.assert_close(_cond(comfy_server, loaded, "ri_zoe_loaded"), direct, atol=0, rtol=0)

    folder = _faces_dir(comfy_server, comfy_models_dir, "Zoë_\u674e")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available to make the folder read-only for this (root) user")
    try:
        graph["6"]["inputs"]["name"] = "Zoë_\u674e again"
        error = _failure(comfy_server, graph)
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert error.node_type == "F2DSaveFace"
    assert (
        "Could not write the face file" in error.exception_message
        and "choose a writable folder" in error.exception_message
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing partial, nothing changed
