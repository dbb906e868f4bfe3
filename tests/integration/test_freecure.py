"""F2D FreeCure Sampler in a real ComfyUI server, on the tiny SD1.5 and the seeded face parser.

One graph per case holds the plain workflow (Apply F2D Tokens -> KSampler) beside the FreeCure node, on a
non-square latent; latents come back through SaveLatent and are compared bit for bit or within tolerance.
"""

from __future__ import annotations

import uuid

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import encode_face_graph
from tests.support.photos import ASTRONAUT, load_rgb

TIMEOUT = 600
WIDTH, HEIGHT = 64, 48  # non-square: a 8x6 latent


@pytest.fixture(scope="module")
def face_photo(comfy_server: ComfyServer) -> str:
    return comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_freecure_face.png")


def _ksampler(positive: list, latent: list, sampler: str, model: list | None = None) -> dict:
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": model or ["1", 0], "positive": positive, "negative": ["7", 0], "latent_image": latent,
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
    text = "a photo of f l in a garden"
    graph = _graph(face_photo, text, batch=2)
    graph["8"] = _ksampler(["5", 0], ["6", 0], "euler_ancestral")
    graph["10"] = _freecure(text, "euler_ancestral")
    graph["11"] = {
        "class_type": "CLIPTextEncode",
        "inputs": {"clip": ["1", 1], "text": "a photo of person in a garden"},
    }
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
    assert "attributes none" in report and "shows no anything" in report


@pytest.mark.parametrize("batch", [1, 2])
def test_fast_route_equals_the_straightforward_port(comfy_server, face_photo, batch):
    """With a mask (attribute_mask), FASA changes the image; the fast route (foundation alone, cached keys)
    equals FreeCure's straightforward order within float tolerance (euler), and in the straightforward port the
    foundation branch is identical in both stages."""
    text = "a photo of f l with red hair"
    graph = _graph(face_photo, text, batch=batch)
    graph["8"] = _ksampler(["5", 0], ["6", 0], "euler")
    graph["9"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": WIDTH, "height": HEIGHT // 2}}
    graph["10"] = _freecure(text, "euler", route="fast", attribute_mask=["9", 0])
    graph["11"] = _freecure(text, "euler", route="straightforward", attribute_mask=["9", 0])
    latents, history = _run(
        comfy_server, graph, {"plain": ["8", 0], "fast": ["10", 0], "straight": ["11", 0], "fd": ["10", 1]}
    )
    scale = latents["plain"].abs().max()
    assert (latents["fast"] - latents["plain"]).abs().max() > 1e-3 * scale  # FASA acted
    assert (latents["fast"] - latents["straight"]).abs().max() <= 1e-4 * scale  # stated tolerance
    assert "stage 2 vs stage 1: max abs difference 0\n" in _report(history, "11") + "\n"
    assert "attribute_mask" in _report(history, "10") and "route fast" in _report(history, "10")


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
