"""Prompts as users write them, from public reports on face packs (issue 13): long prompts, weights at
the identifier, and nothing lingering in the shared CLIP. Through the real server, on the tiny SD1.5."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import CHECKPOINT, encode_face_graph, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb

FILLER = "photo " * 74  # 74 one-token words: "f" of a following "f l" is the 75th, last content token of window 0


@pytest.fixture(scope="module")
def photo(comfy_server: ComfyServer) -> str:
    return comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_reports_face.png")


def _conditionings(server: ComfyServer, graph: dict, sources: dict[str, list]) -> dict[str, torch.Tensor]:
    """Run `graph` with a probe on each source; {name: its first conditioning tensor [1, 77k, 768]}."""
    for k, (name, source) in enumerate(sources.items()):
        save_conditioning(graph, source, name, f"9{k}")
    server.run(graph, timeout=300)
    return {name: load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"] for name in sources}


def _apply(graph: dict, node_id: str, text: str) -> None:
    graph[node_id] = {"class_type": "F2DApplyTokens", "inputs": {"clip": ["1", 1], "text": text, "f2d_face": ["4", 0]}}


def _plain(graph: dict, node_id: str, text: str, clip: list | None = None) -> None:
    graph[node_id] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip or ["1", 1], "text": text}}


def test_identifier_split_by_the_77_token_boundary_moves_whole_into_the_next_window(comfy_server, photo):
    """S1* and S2* go through one CLIP pass: the second window equals a prompt that starts with the identifier."""
    graph = encode_face_graph(photo, text=FILLER + "f l eating bread")
    _apply(graph, "6", "f l eating bread")
    _plain(graph, "7", FILLER)
    got = _conditionings(comfy_server, graph, {"rp_split": ["5", 0], "rp_start": ["6", 0], "rp_filler": ["7", 0]})
    assert got["rp_split"].shape == (1, 154, 768)
    torch.testing.assert_close(got["rp_split"][:, 77:], got["rp_start"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["rp_split"][:, :77], got["rp_filler"], atol=1e-5, rtol=0)


def test_weight_at_the_identifier_scales_the_s_star_positions_as_comfyui_weights_words(comfy_server, photo):
    """`(f l:1.4)`: at S1*, S2* the output is empty + 1.4 (unweighted - empty), ComfyUI's rule for a weighted
    word (comfy/sd1_clip.py `encode_token_weights`); elsewhere unchanged. `(f l:1.0)` equals `f l` exactly."""
    graph = encode_face_graph(photo, text="a photo of f l")
    _apply(graph, "6", "a photo of (f l:1.4)")
    _apply(graph, "7", "a photo of (f l:1.0)")
    _plain(graph, "8", "")
    got = _conditionings(
        comfy_server, graph, {"rw_plain": ["5", 0], "rw_14": ["6", 0], "rw_10": ["7", 0], "rw_empty": ["8", 0]}
    )
    plain, weighted, empty = got["rw_plain"], got["rw_14"], got["rw_empty"]
    assert torch.equal(got["rw_10"], plain)
    ids = slice(4, 6)  # <start> a photo of f l
    torch.testing.assert_close(weighted[:, ids], empty[:, ids] + 1.4 * (plain[:, ids] - empty[:, ids]))
    assert not torch.allclose(weighted[:, ids], plain[:, ids])
    others = torch.ones(77, dtype=torch.bool)
    others[ids] = False
    torch.testing.assert_close(weighted[:, others], plain[:, others], atol=1e-6, rtol=0)


def test_after_an_f2d_prompt_the_shared_clip_encodes_plain_text_as_a_fresh_one(comfy_server, comfy_models_dir, photo):
    """Nothing of S* lingers in the CLIP that Apply F2D Tokens used: a plain CLIPTextEncode of "f l eating
    bread" on it equals the same encode on a CLIP loaded fresh from a copy of the checkpoint."""
    fresh = "f2d_reports_fresh_copy.safetensors"
    shutil.copyfile(comfy_models_dir / "checkpoints" / CHECKPOINT, comfy_models_dir / "checkpoints" / fresh)
    try:
        _conditionings(comfy_server, encode_face_graph(photo, text="f l eating bread"), {"rl_f2d": ["5", 0]})
        graph = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
            "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": fresh}},
        }
        _plain(graph, "3", "f l eating bread")
        _plain(graph, "4", "f l eating bread", ["2", 1])
        got = _conditionings(comfy_server, graph, {"rl_used": ["3", 0], "rl_fresh": ["4", 0]})
        assert torch.equal(got["rl_used"], got["rl_fresh"])
    finally:
        Path(comfy_models_dir / "checkpoints" / fresh).unlink(missing_ok=True)
