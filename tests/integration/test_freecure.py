"""F2D FreeCure Sampler in a real ComfyUI server, on the tiny SD1.5 and the seeded face parser.

One graph per case holds the plain workflow (Apply F2D Tokens -> KSampler) beside the FreeCure node, on a
non-square latent; latents come back through SaveLatent and are compared bit for bit or within tolerance.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import encode_face_graph
from tests.support.photos import ASTRONAUT, load_rgb

TIMEOUT = 600
WIDTH, HEIGHT = 64, 48  # non-square: a 8x6 latent
NO_ATTRIBUTE = "a photo of f l in a garden"  # no attribute word: FreeCure's mask is empty
CLASS_PROMPT = "a photo of person in a garden"  # its foundation prompt (class noun "person")
CONTROLNET = "f2d_tiny_controlnet_sd15.safetensors"
LORA = "f2d_freecure_lora.safetensors"


@pytest.fixture(scope="module")
def face_photo(comfy_server: ComfyServer) -> str:
    return comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_freecure_face.png")


def _ksampler(
    positive: list, latent: list, sampler: str, model: list | None = None, negative: list | None = None
) -> dict:
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": model or ["1", 0], "positive": positive, "negative": negative or ["7", 0], "latent_image": latent,
            "seed": 3, "steps": 2, "cfg": 7.0, "sampler_name": sampler, "scheduler": "normal", "denoise": 1.0,
        },
    }  # fmt: skip


def _freecure(text: str, sampler: str, **inputs) -> dict:
    return {
        "class_type": "F2DFreeCureSampler",
        "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "f2d_face": ["4", 0], "text": text,
            "negative": ["7", 0], "latent_image": ["6", 0], "face_parser": "79999_iter.pth", "seed": 3, "steps": 2,
            "cfg": 7.0, "sampler_name": sampler, "scheduler": "normal", "attributes": "auto", "mask_weight": 2.0,
            **inputs,
        },
    }  # fmt: skip


def _graph(photo: str, text: str, batch: int) -> dict:
    graph = encode_face_graph(photo, text)
    graph["6"] = {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": batch}}
    graph["7"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    return graph


def _save(graph: dict, saves: dict[str, list]) -> dict[str, str]:
    """Add SaveLatent nodes (ids 90+); return name -> node id."""
    ids = {}
    for i, (name, source) in enumerate(saves.items()):
        node = str(90 + i)
        prefix = f"freecure_{name}_{uuid.uuid4().hex[:8]}"
        graph[node] = {"class_type": "SaveLatent", "inputs": {"samples": source, "filename_prefix": prefix}}
        ids[name] = node
    return ids


def _run(server: ComfyServer, graph: dict, saves: dict[str, list]) -> tuple[dict[str, torch.Tensor], dict]:
    ids = _save(graph, saves)
    history = server.run(graph, timeout=TIMEOUT)
    out = {}
    for name, node in ids.items():
        ref = history["outputs"][node]["latents"][0]
        path = server.output_dir / ref.get("subfolder", "") / ref["filename"]
        out[name] = load_file(str(path))["latent_tensor"]
    return out, history


def _report(history: dict, node: str) -> str:
    return "\n".join(history["outputs"][node]["text"])


def test_empty_mask_gives_the_plain_workflow_bit_for_bit_and_leaves_the_model_unpatched(comfy_server, face_photo):
    """No attribute word -> empty mask: the refined images are the plain F2D workflow's, bit for bit (an
    ancestral sampler, a batch of 2, a non-square latent); the foundation is a plain KSampler of the class
    prompt; and a KSampler run after FreeCure on the same MODEL is still the plain one."""
    text = NO_ATTRIBUTE
    graph = _graph(face_photo, text, batch=2)
    graph["8"] = _ksampler(["5", 0], ["6", 0], "euler_ancestral")
    graph["10"] = _freecure(text, "euler_ancestral")
    graph["11"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": CLASS_PROMPT}}
    graph["12"] = _ksampler(["11", 0], ["6", 0], "euler_ancestral")
    graph["13"] = {"class_type": "LatentMultiply", "inputs": {"samples": ["10", 0], "multiplier": 0.0}}
    graph["14"] = _ksampler(["5", 0], ["13", 0], "euler_ancestral")  # runs after FreeCure, on model ["1", 0]
    latents, history = _run(
        comfy_server,
        graph,
        {"plain": ["8", 0], "refined": ["10", 0], "foundation": ["10", 1], "class": ["12", 0], "after": ["14", 0]},
    )
    assert latents["plain"].shape == (2, 4, HEIGHT // 8, WIDTH // 8)
    assert torch.equal(latents["refined"], latents["plain"])
    assert torch.equal(latents["foundation"], latents["class"])  # the foundation branch untouched
    assert torch.equal(latents["after"], latents["plain"])  # no patch left on the shared MODEL
    assert not torch.equal(latents["refined"][0], latents["refined"][1])
    report = _report(history, "10")
    assert "attributes none" in report and "the prompt names no attribute FASA restores (hair, " in report
    assert "shows no" not in report  # one warning for the prompt, none per image
    assert re.search(r"FASA acted in \d+ layer calls, left \d+ plain \(every mask empty: no change\)", report)


@pytest.mark.parametrize(("batch", "sampler"), [(2, "euler"), (1, "heun")])
def test_fast_route_equals_the_straightforward_port(comfy_server, face_photo, batch, sampler):
    """With a mask (attribute_mask), FASA changes the image; the fast route (foundation alone, cached keys)
    equals FreeCure's straightforward order within float tolerance (euler, and heun, which evaluates the model
    twice a step, once between the schedule's sigmas), and in the straightforward port the foundation branch is
    identical in both stages."""
    text = "a photo of f l with red hair"
    graph = _graph(face_photo, text, batch=batch)
    graph["8"] = _ksampler(["5", 0], ["6", 0], sampler)
    graph["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH, "height": HEIGHT // 2}}
    graph["10"] = _freecure(text, sampler, route="fast", attribute_mask=["9", 0])
    graph["11"] = _freecure(text, sampler, route="straightforward", attribute_mask=["9", 0])
    latents, history = _run(
        comfy_server,
        graph,
        {"plain": ["8", 0], "fast": ["10", 0], "straight": ["11", 0], "fd": ["10", 1], "straight_fd": ["11", 1]},
    )
    scale = latents["plain"].abs().max()
    assert (latents["fast"] - latents["plain"]).abs().max() > 1e-3 * scale  # FASA acted
    assert (latents["fast"] - latents["straight"]).abs().max() <= 1e-4 * scale  # stated tolerance
    # The [PD x k, FD x k] batch: each pair drew its image's noise and FD rows got the class prompt.
    assert (latents["fd"] - latents["straight_fd"]).abs().max() <= 1e-4 * scale
    assert "stage 2 vs stage 1: max abs difference 0\n" in _report(history, "11") + "\n"
    assert "attribute_mask" in _report(history, "10") and "route fast" in _report(history, "10")
    # the half-height SolidMask covers the whole image, stretched: said, as it may be another image's mask
    stretched = f"Warning: attribute_mask {WIDTH}x{HEIGHT // 2} was resized to the image's {WIDTH}x{HEIGHT} and"
    assert stretched in _report(history, "10")


def test_sigma_window_gates_fasa_through_the_server(comfy_server, face_photo):
    """start_percent picks the steps FASA acts in by noise level, on the sigmas ComfyUI samples at (2 steps of
    euler: sigma 14.6, then 0.03): from 50 % on, FASA acts in the second step's layer calls only, and the image
    differs from the plain one; a window that holds no step (start 100 %) gives the plain workflow bit for bit
    although the mask covers the whole image."""
    text = "a photo of f l with red hair"
    graph = _graph(face_photo, text, batch=1)
    graph["8"] = _ksampler(["5", 0], ["6", 0], "euler")
    graph["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH, "height": HEIGHT}}
    graph["11"] = _freecure(text, "euler", start_percent=0.5, attribute_mask=["9", 0])
    graph["12"] = _freecure(text, "euler", start_percent=1.0, attribute_mask=["9", 0])
    latents, history = _run(comfy_server, graph, {"plain": ["8", 0], "late": ["11", 0], "none": ["12", 0]})
    late, none = _report(history, "11"), _report(history, "12")
    assert "was resized" not in late  # a mask of the image's size is used as it is
    acted, plain = (int(n) for n in re.search(r"FASA acted in (\d+) layer calls, left (\d+) plain", late).groups())
    assert acted > 0 and plain > 0  # the first step's calls are outside the window
    assert not torch.equal(latents["late"], latents["plain"])
    assert re.search(r"FASA acted in 0 layer calls", none)
    assert torch.equal(latents["none"], latents["plain"])


def test_regional_people_get_a_clear_message(comfy_server, face_photo):
    graph = _graph(face_photo, "a photo of f l", batch=1)
    graph["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH, "height": HEIGHT}}
    graph["15"] = {
        "class_type": "ConditioningSetMask",
        "inputs": {"conditioning": ["5", 0], "mask": ["9", 0], "strength": 1.0, "set_cond_area": "default"},
    }
    graph["10"] = _freecure("a photo of f l", "euler", positive=["15", 0])
    with pytest.raises(ExecutionFailed, match="one person's prompt"):
        _run(comfy_server, graph, {"refined": ["10", 0]})


def test_a_nan_mask_weight_is_refused_not_sampled_into_nan_latents(comfy_server, face_photo):
    """ComfyUI's range check passes NaN (NaN < min is False); sampled, it made every latent NaN."""
    graph = _graph(face_photo, "a photo of f l with red hair", batch=1)
    graph["10"] = _freecure("a photo of f l with red hair", "euler", mask_weight=float("nan"))
    with pytest.raises(ExecutionFailed, match="mask_weight is nan: give a number"):
        _run(comfy_server, graph, {"refined": ["10", 0]})
    assert comfy_server.object_info("F2DFreeCureSampler")


def test_apg_reruns_the_expression_and_stays_off_with_an_expression_reference(comfy_server, face_photo):
    """'laughing' turns APG on in auto (the latent changes against apg off); an Expression Reference turns it off."""
    text = "a photo of f l laughing"
    graph = _graph(face_photo, text, batch=1)
    graph["10"] = _freecure(text, "euler", apg="off")
    graph["11"] = _freecure(text, "euler", apg="auto")
    graph["12"] = {
        "class_type": "F2DExpressionReference",
        "inputs": {"f2d_model": ["2", 0], "image": ["3", 0], "expression_model": "epoch_20.pth", "face_index": 0,
                   "strength": 1.0},
    }  # fmt: skip
    graph["13"] = _freecure(text, "euler", apg="auto", expression=["12", 0])
    latents, history = _run(comfy_server, graph, {"off": ["10", 0], "auto": ["11", 0], "reference": ["13", 0]})
    assert not torch.equal(latents["off"], latents["auto"])
    assert "APG: inverted 1 of 2 steps" in _report(history, "11")
    assert "'a photo of person' -> 'a photo of person laughing'" in _report(history, "11")
    assert "APG off (apg is off); expression words: laughing" in _report(history, "10")
    assert "APG off (an Expression Reference is connected)" in _report(history, "13")


# Works with ControlNet, LoRA, identity_start, Best of N and another node's attn1_replace patch (issue 19).
# Each case samples with an empty FreeCure mask, where "correct" is exact: the person is the plain F2D
# workflow on the same inputs and the foundation a plain KSampler of the class prompt on the same inputs, bit
# for bit (fast route, 2 steps of euler); each case also checks that the feature changes the image, so that
# dropping it from either branch fails. (Best of N, which needs FASA to act, uses a mask.)


def _with_class_prompt(graph: dict) -> dict:
    graph["11"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": CLASS_PROMPT}}
    return graph


def _hint_image() -> Image.Image:
    """A gradient with a bright block: a control image the tiny ControlNet responds to."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    rgb[12:36, 16:40] = 255
    return Image.fromarray(rgb, "RGB")


def _apply_controlnet(positive: list) -> dict:
    return {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "positive": positive, "negative": ["7", 0], "control_net": ["21", 0], "image": ["20", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
        },
    }  # fmt: skip


def test_controlnet_on_positive_reaches_both_branches(comfy_server, face_photo):
    """Apply F2D Tokens (identity_start 0.5) -> Apply ControlNet -> `positive`: the person is sampled with that
    conditioning (ControlNet and identity_start) and the foundation branch gets the same ControlNet (hint,
    strength, range) on the class prompt, as the specification's foundation conditioning keeps every entry's
    options. The sampler's own identity_start, set too, is reported as unused."""
    hint = comfy_server.upload_image(_hint_image(), "f2d_freecure_hint.png")
    graph = _with_class_prompt(_graph(face_photo, NO_ATTRIBUTE, batch=1))
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": hint}}
    graph["21"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CONTROLNET}}
    graph["5"]["inputs"]["identity_start"] = 0.5
    graph["22"] = _apply_controlnet(["5", 0])
    graph["23"] = _apply_controlnet(["11", 0])
    graph["8"] = _ksampler(["22", 0], ["6", 0], "euler", negative=["22", 1])
    graph["12"] = _ksampler(["23", 0], ["6", 0], "euler", negative=["23", 1])
    graph["13"] = _ksampler(["11", 0], ["6", 0], "euler")  # the class prompt without ControlNet
    graph["10"] = _freecure(NO_ATTRIBUTE, "euler", positive=["22", 0], negative=["22", 1], identity_start=0.3)
    latents, history = _run(
        comfy_server,
        graph,
        {"plain": ["8", 0], "refined": ["10", 0], "foundation": ["10", 1], "class": ["12", 0], "free": ["13", 0]},
    )
    assert not torch.equal(latents["class"], latents["free"])  # the ControlNet changes the image
    assert torch.equal(latents["foundation"], latents["class"])  # the foundation got the same ControlNet
    assert torch.equal(latents["refined"], latents["plain"])  # and the person its own conditioning
    assert "positive is connected, so identity_start 0.3 here is not used" in _report(history, "10")


def _write_lora(folder: Path) -> None:
    """A rank-4 LoRA (kohya key names) on the tiny UNet's up-block self-attention q, k, v: the layers FreeCure
    reads and patches."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / LORA).is_file():
        return
    g = torch.Generator().manual_seed(19)
    weights = {}
    for block in (0, 1):
        for proj in ("to_q", "to_k", "to_v"):
            name = f"lora_unet_output_blocks_{block}_1_transformer_blocks_0_attn1_{proj}"
            weights[f"{name}.lora_down.weight"] = torch.randn(4, 320, generator=g) * 0.2
            weights[f"{name}.lora_up.weight"] = torch.randn(320, 4, generator=g) * 0.2
    save_file(weights, str(folder / LORA))


def test_lora_patched_model_is_used_by_both_branches(comfy_server, comfy_models_dir, face_photo):
    """A LoRA-patched MODEL (LoraLoaderModelOnly): both the foundation and the person are sampled with it."""
    _write_lora(comfy_models_dir / "loras")
    graph = _with_class_prompt(_graph(face_photo, NO_ATTRIBUTE, batch=1))
    graph["30"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["1", 0], "lora_name": LORA, "strength_model": 1.0},
    }
    graph["8"] = _ksampler(["5", 0], ["6", 0], "euler", model=["30", 0])
    graph["12"] = _ksampler(["11", 0], ["6", 0], "euler", model=["30", 0])
    graph["13"] = _ksampler(["5", 0], ["6", 0], "euler")  # without the LoRA
    graph["10"] = _freecure(NO_ATTRIBUTE, "euler", model=["30", 0])
    latents, _ = _run(
        comfy_server,
        graph,
        {"plain": ["8", 0], "refined": ["10", 0], "foundation": ["10", 1], "class": ["12", 0], "free": ["13", 0]},
    )
    assert not torch.equal(latents["plain"], latents["free"])  # the LoRA changes the image
    assert torch.equal(latents["refined"], latents["plain"])
    assert torch.equal(latents["foundation"], latents["class"])


def test_identity_start_switches_the_person_from_the_class_noun_to_s_star(comfy_server, face_photo):
    """identity_start 0.5 on the sampler: the person branch is Apply F2D Tokens' with identity_start 0.5 (the
    class noun for the first half of sampling, then S*), not the S* prompt throughout; the foundation stays
    the class prompt."""
    graph = _with_class_prompt(_graph(face_photo, NO_ATTRIBUTE, batch=1))
    graph["25"] = {
        "class_type": "F2DApplyTokens",
        "inputs": {"clip": ["1", 1], "text": NO_ATTRIBUTE, "f2d_face": ["4", 0], "identity_start": 0.5},
    }
    graph["8"] = _ksampler(["25", 0], ["6", 0], "euler")
    graph["12"] = _ksampler(["11", 0], ["6", 0], "euler")
    graph["13"] = _ksampler(["5", 0], ["6", 0], "euler")  # S* from the first step
    graph["10"] = _freecure(NO_ATTRIBUTE, "euler", identity_start=0.5)
    latents, _ = _run(
        comfy_server,
        graph,
        {"plain": ["8", 0], "refined": ["10", 0], "foundation": ["10", 1], "class": ["12", 0], "s_star": ["13", 0]},
    )
    assert not torch.equal(latents["plain"], latents["s_star"])  # identity_start changes the image
    assert not torch.equal(latents["plain"], latents["class"])  # and S* does come in
    assert torch.equal(latents["refined"], latents["plain"])
    assert torch.equal(latents["foundation"], latents["class"])


def test_another_attn1_replace_patch_keeps_working_under_freecure(comfy_server, face_photo):
    """A MODEL whose up-block self-attention is already replaced by another node's patch (a test node that
    sharpens it): FreeCure chains it, so with an empty mask both branches are that model's plain output."""
    graph = _with_class_prompt(_graph(face_photo, NO_ATTRIBUTE, batch=1))
    graph["40"] = {"class_type": "F2DTestSharperSelfAttention", "inputs": {"model": ["1", 0], "scale": 1.5}}
    graph["8"] = _ksampler(["5", 0], ["6", 0], "euler", model=["40", 0])
    graph["12"] = _ksampler(["11", 0], ["6", 0], "euler", model=["40", 0])
    graph["13"] = _ksampler(["5", 0], ["6", 0], "euler")  # without the other patch
    graph["10"] = _freecure(NO_ATTRIBUTE, "euler", model=["40", 0])
    latents, _ = _run(
        comfy_server,
        graph,
        {"plain": ["8", 0], "refined": ["10", 0], "foundation": ["10", 1], "class": ["12", 0], "free": ["13", 0]},
    )
    assert not torch.equal(latents["plain"], latents["free"])  # the other patch changes the image
    assert torch.equal(latents["refined"], latents["plain"])
    assert torch.equal(latents["foundation"], latents["class"])


def test_best_of_n_chooses_among_the_freecure_images(comfy_server, face_photo):
    """FreeCure at batch 2 (FASA acting through an attribute_mask) -> VAE Decode -> CLIP Score -> Best of N:
    both refined images are scored and the kept one is the refined image with the better score."""
    text = "a photo of f l with red hair"
    graph = _graph(face_photo, text, batch=2)
    graph["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH, "height": HEIGHT // 2}}
    graph["10"] = _freecure(text, "euler", attribute_mask=["9", 0])
    graph["8"] = _ksampler(["10", 4], ["6", 0], "euler")  # the same images without FreeCure
    graph["50"] = {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}}
    graph["51"] = {"class_type": "F2DLoadCLIPScorer", "inputs": {"clip_model": "tiny_clip"}}
    graph["52"] = {
        "class_type": "F2DCLIPScore",
        "inputs": {"clip_scorer": ["51", 0], "images": ["50", 0], "prompt": text,
                   "reference_prompt": "A photo of a person"},
    }  # fmt: skip
    graph["53"] = {
        "class_type": "F2DBestOfN",
        "inputs": {"images": ["50", 0], "keep": 1, "rank_by": "prompt", "prompt_scores": ["52", 0]},
    }
    graph["54"] = {"class_type": "SaveImage", "inputs": {"images": ["50", 0], "filename_prefix": "f2d_fc_all"}}
    graph["55"] = {"class_type": "SaveImage", "inputs": {"images": ["53", 0], "filename_prefix": "f2d_fc_best"}}
    latents, history = _run(comfy_server, graph, {"plain": ["8", 0], "refined": ["10", 0]})
    scale = latents["plain"].abs().max()
    assert all((latents["refined"][j] - latents["plain"][j]).abs().max() > 1e-3 * scale for j in range(2))
    clip = [float(line.split()[1]) for line in history["outputs"]["52"]["text"][0].splitlines()[1:3]]
    best = history["outputs"]["53"]["text"][0]
    assert best.startswith("best 1 of 2 by prompt")
    kept = int(best.splitlines()[2].split()[0]) - 1
    assert kept == max(range(2), key=lambda j: clip[j])
    every = [np.asarray(image) for image in comfy_server.output_images(history, "54")]
    (chosen,) = [np.asarray(image) for image in comfy_server.output_images(history, "55")]
    assert len(every) == 2 and np.array_equal(chosen, every[kept])
