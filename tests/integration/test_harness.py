"""The harness itself: tiny models ComfyUI accepts, and core-node graphs a real server runs on them."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support import tiny_models
from tests.support.comfy_server import ComfyServer, ExecutionFailed, PromptRejected
from tests.support.tiny_models import TinyModels

log = logging.getLogger(__name__)

CHECKPOINT = Path(tiny_models.CHECKPOINT).name
INPAINT_CHECKPOINT = Path(tiny_models.INPAINT_CHECKPOINT).name
CONTROLNET = Path(tiny_models.CONTROLNET).name
SIZE = 64


def txt2img_graph(ckpt_name: str = CHECKPOINT, seed: int = 0, steps: int = 2) -> dict[str, Any]:
    """Checkpoint -> two prompts -> empty 64x64 latent -> KSampler -> VAEDecode -> SaveImage (API format)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a person"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry, low quality"}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "f2d_harness"}},
    }


def inpaint_graph(image_name: str) -> dict[str, Any]:
    """txt2img on the inpainting checkpoint, its latent from InpaintModelConditioning of an RGBA upload."""
    graph = txt2img_graph(INPAINT_CHECKPOINT)
    graph["8"] = {"class_type": "LoadImage", "inputs": {"image": image_name}}  # IMAGE, MASK (from alpha)
    graph["9"] = {
        "class_type": "InpaintModelConditioning",
        "inputs": {
            "positive": ["2", 0],
            "negative": ["3", 0],
            "vae": ["1", 2],
            "pixels": ["8", 0],
            "mask": ["8", 1],
            "noise_mask": True,
        },
    }
    graph["5"]["inputs"].update(positive=["9", 0], negative=["9", 1], latent_image=["9", 2])
    del graph["4"]
    return graph


def controlnet_graph(hint_name: str) -> dict[str, Any]:
    """txt2img with both prompts passed through ControlNetApplyAdvanced on an uploaded hint image."""
    graph = txt2img_graph()
    graph["8"] = {"class_type": "LoadImage", "inputs": {"image": hint_name}}
    graph["9"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}}
    graph["10"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "positive": ["2", 0],
            "negative": ["3", 0],
            "control_net": ["9", 0],
            "image": ["8", 0],
            "strength": 1.0,
            "start_percent": 0.0,
            "end_percent": 1.0,
        },
    }
    graph["5"]["inputs"].update(positive=["10", 0], negative=["10", 1])
    return graph


def pattern_image(alpha_hole: bool = False) -> Image.Image:
    """A 64x64 gradient with a bright square; with `alpha_hole`, RGBA whose transparent centre is the mask."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    rgb[16:48, 16:48] = 255
    if not alpha_hole:
        return Image.fromarray(rgb, "RGB")
    alpha = np.full((SIZE, SIZE, 1), 255, np.uint8)
    alpha[20:44, 20:44] = 0  # LoadImage: mask = 1 - alpha
    return Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA")


def run_timed(server: ComfyServer, graph: dict[str, Any], what: str) -> tuple[dict[str, Any], float]:
    """Queue a graph, wait for it, and log how long it took."""
    start = time.perf_counter()
    history = server.run(graph, timeout=180)
    seconds = time.perf_counter() - start
    log.info("graph %s ran in %.2f s", what, seconds)
    return history, seconds


def single_image(server: ComfyServer, history: dict[str, Any]) -> np.ndarray:
    """The one 64x64 RGB image a graph saved, as uint8 [64, 64, 3]."""
    images = server.output_images(history)
    assert len(images) == 1
    assert images[0].size == (SIZE, SIZE) and images[0].mode == "RGB"
    return np.asarray(images[0])


def test_comfyui_loads_the_tiny_models_as_sd15(tiny_models: TinyModels) -> None:
    """ComfyUI detects SD15 + TAESD, holds every formula text-encoder weight, and encodes like the fixture."""
    report = tiny_models.verification
    log.info("tiny models: built in %.1f s, sizes %s", tiny_models.build_seconds, tiny_models.sizes)
    ckpt = report["checkpoint"]
    assert (ckpt["model_config"], ckpt["model_type"], ckpt["vae"]) == ("SD15", "EPS", "TAESD")
    assert ckpt["in_channels"] == 4 and ckpt["concat_keys"] == []
    assert ckpt["unet_parameters"] == 25_789_444
    assert ckpt["vae_scale"] == pytest.approx(0.18215)
    te = ckpt["text_encoder"]
    assert te["weights_held"] == 196 and te["held_not_in_formula"] == [] and te["formula_not_held"] == []
    assert te["differing_from_formula"] == [] and te["dtypes"] == ["torch.float32"]
    cond = ckpt["conditioning"]
    assert cond["shape"] == [1, 77, 768] and cond["finite"] and 0.5 < cond["std"] < 2.0
    assert cond["pooled_shape"] == [1, 768]
    assert cond["token_ids_match_fixture"] == [True, True]
    assert cond["fixture_prefix_max_abs_diff"] < 1e-4
    assert ckpt["warnings"] == []

    inpaint = report["inpaint_checkpoint"]
    assert (inpaint["model_config"], inpaint["in_channels"]) == ("SD15", 9)
    assert inpaint["concat_keys"] == ["mask", "masked_image"]
    assert inpaint["warnings"] == []
    assert report["controlnet"] == {"type": "ControlNet", "model_channels": 320, "warnings": []}
    full = report["full_sd15_unet"]  # the benchmark UNet: shapes only, no weights built
    assert (full["model_config"], full["parameters"], full["config_differences"]) == ("SD15", 859_520_964, {})


def test_server_lists_the_tiny_models(comfy_server: ComfyServer) -> None:
    """The checkpoint and ControlNet loaders offer the tiny models from the extra model paths."""
    log.info("ComfyUI server ready in %.1f s", comfy_server.start_seconds)
    checkpoints = comfy_server.combo_options("CheckpointLoaderSimple", "ckpt_name")
    assert {CHECKPOINT, INPAINT_CHECKPOINT} <= set(checkpoints)
    assert CONTROLNET in comfy_server.combo_options("ControlNetLoader", "control_net_name")


def test_txt2img_graph_runs_to_an_image(comfy_server: ComfyServer) -> None:
    """Core nodes only: a 2-step 64x64 KSampler graph on the tiny checkpoint saves one non-blank image."""
    history, _ = run_timed(comfy_server, txt2img_graph(), "txt2img")
    image = single_image(comfy_server, history)
    assert image.std() > 0  # NaN latents decode to a flat black image


def test_inpainting_checkpoint_runs_an_inpainting_graph(comfy_server: ComfyServer) -> None:
    """The 9-channel checkpoint samples from InpaintModelConditioning of an uploaded image and its alpha mask."""
    name = comfy_server.upload_image(pattern_image(alpha_hole=True), name="f2d_harness_inpaint.png")
    assert (comfy_server.input_dir / name).is_file()
    history, _ = run_timed(comfy_server, inpaint_graph(name), "inpaint")
    assert single_image(comfy_server, history).std() > 0


def test_controlnet_graph_runs_and_changes_the_image(comfy_server: ComfyServer) -> None:
    """ControlNetLoader + ControlNetApplyAdvanced on the tiny UNet runs, and its output differs from plain txt2img."""
    name = comfy_server.upload_image(pattern_image(), name="f2d_harness_hint.png")
    controlled, _ = run_timed(comfy_server, controlnet_graph(name), "controlnet")
    plain, _ = run_timed(comfy_server, txt2img_graph(), "txt2img (same seed, cached if already run)")
    difference = np.abs(single_image(comfy_server, controlled).astype(int) - single_image(comfy_server, plain))
    assert difference.max() > 0


def test_bad_graph_is_a_readable_node_error_and_the_server_keeps_serving(comfy_server: ComfyServer) -> None:
    """A missing checkpoint name is rejected with node_errors naming the node; the next graph still runs."""
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue_prompt(txt2img_graph("f2d_no_such_checkpoint.safetensors"))
    node = rejected.value.node_errors["1"]
    assert node["class_type"] == "CheckpointLoaderSimple"
    assert node["errors"][0]["type"] == "value_not_in_list"
    assert "f2d_no_such_checkpoint.safetensors" in node["errors"][0]["details"]
    assert "f2d_no_such_checkpoint.safetensors" in str(rejected.value)
    assert comfy_server.running
    single_image(comfy_server, run_timed(comfy_server, txt2img_graph(), "txt2img after a rejected graph")[0])


def test_node_exception_surfaces_node_id_type_and_message(comfy_server: ComfyServer) -> None:
    """A graph that validates but raises inside a node comes back as ExecutionFailed with the node's details."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../f2d_escape"}},
    }
    with pytest.raises(ExecutionFailed) as failed:
        comfy_server.run(graph, timeout=60)
    assert (failed.value.node_id, failed.value.node_type) == ("2", "SaveImage")
    assert "outside the output folder" in failed.value.exception_message
    assert not list(comfy_server.output_dir.parent.glob("f2d_escape*"))
