"""The pack's models under ComfyUI's model management, in a real server.

What ComfyUI holds is read from `comfy.model_management.current_loaded_models` through the test-only
probe pack's `GET /f2d_test/loaded_models` (tests/support/probe_nodes, never shipped).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import save_face
from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import CHECKPOINT, encode_face_graph, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb

# MSID + mapper, Deep3DFaceRecon's regressor, the face detector (SCRFD converted to torch)
PACK_MODELS = {"EncoderNetworks", "ExpressionRegressor", "OnnxModule"}


def _loaded(server: ComfyServer) -> list[dict]:
    return server._get("/f2d_test/loaded_models").json()


def _pack_models(server: ComfyServer) -> list[dict]:
    return [m for m in _loaded(server) if m["class"] in PACK_MODELS]


def _conditioning(server: ComfyServer, graph: dict, source: list, name: str) -> torch.Tensor:
    save_conditioning(graph, source, name, "99")
    server.run(graph)
    return load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"][0]


@pytest.fixture(scope="module")
def photo(comfy_server: ComfyServer) -> str:
    return comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_mm_face.png")


def _expression_graph(photo: str) -> dict:
    graph = encode_face_graph(photo)
    graph["7"] = {
        "class_type": "F2DExpressionReference",
        "inputs": {
            "f2d_model": ["2", 0],
            "image": ["3", 0],
            "expression_model": "epoch_20.pth",
            "face_index": 0,
            "strength": 1.0,
        },
    }
    graph["5"]["inputs"].update(expression=["7", 0], expression_strength=1.0)
    return graph


def _scoring(graph: dict) -> dict:
    """Add Load Face Recognizer + Face Similarity and Load CLIP Scorer + CLIP Score on the photo."""
    graph["20"] = {"class_type": "F2DLoadFaceRecognizer", "inputs": {"recognition_model": "buffalo_l/w600k_r50.onnx"}}
    graph["21"] = {
        "class_type": "F2DFaceSimilarity",
        "inputs": {
            "f2d_model": ["2", 0],
            "recognizer": ["20", 0],
            "images": ["3", 0],
            "f2d_face": ["4", 0],
            "reference_images_are": "one person",
        },
    }
    graph["22"] = {"class_type": "F2DLoadCLIPScorer", "inputs": {"clip_model": "tiny_clip"}}
    graph["23"] = {
        "class_type": "F2DCLIPScore",
        "inputs": {"clip_scorer": ["22", 0], "images": ["3", 0], "prompt": "a photo of f l",
                   "reference_prompt": "A photo of a person"},
    }  # fmt: skip
    return graph


def _alive(server: ComfyServer) -> list[str]:
    return server._get("/f2d_test/alive_models").json()["modules"]


def test_free_model_and_node_cache_frees_the_packs_models(comfy_server, photo):
    """After "Free model and node cache" no model object of the pack is alive in the server (issue 13,
    point 4): MSID + mapper, the detector, the expression regressor, the recogniser, the CLIP scorer."""
    graph = _scoring(_expression_graph(photo))
    first = _conditioning(comfy_server, graph, ["5", 0], "mm_before_free")
    # The expression regressor was held by its node while it ran; the loaders' models by ComfyUI's node cache.
    assert {m["class"] for m in _pack_models(comfy_server)} == PACK_MODELS - {"ExpressionRegressor"}
    assert {"EncoderNetworks", "OnnxModule", "CLIPNetworks"} <= set(_alive(comfy_server))
    assert "ExpressionRegressor" not in _alive(comfy_server)

    comfy_server.free(unload_models=True, free_memory=True)
    deadline = time.monotonic() + 30
    while (_pack_models(comfy_server) or _alive(comfy_server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pack_models(comfy_server) == [], "the pack's models are still loaded after POST /free"
    assert _alive(comfy_server) == [], "the pack's models are still alive after POST /free"

    # The next queue loads them again and gives the same conditioning.
    again = _conditioning(comfy_server, graph, ["5", 0], "mm_after_free")
    assert {m["class"] for m in _pack_models(comfy_server)} == PACK_MODELS - {"ExpressionRegressor"}
    torch.testing.assert_close(again, first, atol=0, rtol=0)


def test_changing_detection_size_loads_no_second_msid(comfy_server, photo):
    graph = encode_face_graph(photo)
    _conditioning(comfy_server, graph, ["5", 0], "mm_det_640")
    graph["2"]["inputs"]["detection_size"] = 320
    _conditioning(comfy_server, graph, ["5", 0], "mm_det_320")
    encoders = [m for m in _loaded(comfy_server) if m["class"] == "EncoderNetworks"]
    assert len(encoders) == 1, encoders


def _lora_patching_position_embedding(path) -> None:
    """A LoRA in ComfyUI's generic "diff" format that adds to CLIP-L's position embedding table only."""
    diff = torch.randn(77, 768, generator=torch.Generator().manual_seed(7)) * 0.5
    save_file({"text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.diff": diff}, str(path))


def test_lora_patched_position_embedding_gives_the_same_conditioning_on_first_and_later_queues(
    comfy_server, comfy_models_dir, expected
):
    face = EncodedFace(
        s_star=torch.from_numpy(expected["s_null"][0]), idvec=torch.zeros(1536), crops=torch.zeros(1, 3, 112, 112)
    )
    save_face(comfy_models_dir / "face2diffusion" / "faces" / "mm_lora_face.safetensors", face)
    lora = f"f2d_pos_lora_{uuid.uuid4().hex[:8]}.safetensors"  # a LoRA no earlier queue has loaded
    _lora_patching_position_embedding(comfy_models_dir / "loras" / lora)
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "F2DLoadFace", "inputs": {"face_file": "mm_lora_face.safetensors"}},
        "3": {
            "class_type": "F2DApplyTokens",
            "inputs": {"clip": ["1", 1], "text": "a photo of f l", "f2d_face": ["2", 0]},
        },
    }
    without_lora = _conditioning(comfy_server, graph, ["3", 0], "mm_no_lora")
    graph["6"] = {
        "class_type": "LoraLoader",
        "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora, "strength_model": 0.0, "strength_clip": 1.0},
    }
    graph["3"]["inputs"]["clip"] = ["6", 1]
    first = _conditioning(comfy_server, graph, ["3", 0], "mm_lora_first")
    graph["3"]["inputs"]["text"] = "a photo of f l "  # same tokens; only Apply F2D Tokens runs again
    second = _conditioning(comfy_server, graph, ["3", 0], "mm_lora_second")
    assert (first - without_lora).abs().amax() > 1e-2  # the LoRA does change the text encoder's input
    torch.testing.assert_close(first, second, atol=1e-6, rtol=0)


def test_weight_file_replaced_with_its_timestamp_preserved_is_reloaded(comfy_server, comfy_models_dir, photo):
    folder = comfy_models_dir / "face2diffusion"
    swapped = folder / "mapping_swapped.pt"
    mapping = torch.load(folder / "mapping.pt", weights_only=True)
    torch.save(mapping, swapped)
    graph = encode_face_graph(photo, mapper="mapping_swapped.pt")
    before = _conditioning(comfy_server, graph, ["5", 0], "mm_mapper_before")

    # Another mapper (same structure, so the same file size) put in its place as `cp -p` or an unzip
    # would: a new file, with the old file's modification time.
    stat = swapped.stat()
    replacement = folder / "mapping_swapped.tmp"
    torch.save({k: v * 0.5 if v.is_floating_point() else v for k, v in mapping.items()}, replacement)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, swapped)
    assert swapped.stat().st_mtime_ns == stat.st_mtime_ns

    after = _conditioning(comfy_server, graph, ["5", 0], "mm_mapper_after")
    assert (after - before).abs().amax() > 1e-3, "the replaced mapper file was not loaded again"


def test_detector_file_replaced_with_its_timestamp_preserved_is_reloaded(comfy_server, comfy_models_dir, photo):
    pack_dir = si.write_synthetic_pack(comfy_models_dir / "insightface", "buffalo_swapped", files=["det_10g.onnx"])
    try:
        _check_detector_replacement_is_loaded(comfy_server, pack_dir, photo)
    finally:  # the server's models folder is shared by the session's tests: leave only the usual pack
        shutil.rmtree(pack_dir)


def _check_detector_replacement_is_loaded(comfy_server: ComfyServer, pack_dir, photo: str) -> None:
    graph = encode_face_graph(photo)
    graph["2"]["inputs"]["insightface_pack"] = "buffalo_swapped"
    before = _conditioning(comfy_server, graph, ["5", 0], "mm_detector_before")

    # A detector whose keypoints follow the image (other landmarks, so another aligned crop and S*), moved
    # into place with the old file's modification time, as an unzip or `rsync -t` would.
    detector = pack_dir / "det_10g.onnx"
    stat = detector.stat()
    replacement = pack_dir / "det_10g.onnx.tmp"
    si.onnx.save(si.build_scrfd_detector(regression_gain=0.5), str(replacement))
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, detector)

    after = _conditioning(comfy_server, graph, ["5", 0], "mm_detector_after")
    assert (after - before).abs().amax() > 1e-4, "the replaced detector file was not loaded again"


def test_unload_models_releases_the_onnxruntime_detectors_session(comfy_server, photo):
    """An onnxruntime detector's session holds device memory torch's memory management cannot see: "Unload
    models" (POST /free with unload_models only, the node cache kept) releases it, and the next queue opens it
    again and gives the same conditioning."""
    graph = encode_face_graph(photo)
    graph["2"]["inputs"]["detector_device"] = "onnxruntime"
    first = _conditioning(comfy_server, graph, ["5", 0], "mm_onnx_before_unload")
    released = ": onnxruntime session released"
    before = comfy_server.log_text().count(released)
    comfy_server.free(unload_models=True, free_memory=False)
    deadline = time.monotonic() + 30
    while comfy_server.log_text().count(released) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert comfy_server.log_text().count(released) == before + 1
    same_photo = comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_mm_face_2.png")
    graph["3"]["inputs"]["image"] = same_photo  # a new input: Encode Face runs again, on the kept loader's detector
    again = _conditioning(comfy_server, graph, ["5", 0], "mm_onnx_after_unload")
    torch.testing.assert_close(again, first, atol=0, rtol=0)
