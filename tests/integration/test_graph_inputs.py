"""What a user's graph sends (issue 18, part 3): widgets fed by links, images a little outside [0, 1], image
lists instead of batches, composite node ids, and a saved face used with another mapper. Real server."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.conditioning_files import node_failure
from tests.support.f2d_graphs import (
    checkpoint_loader,
    encode_face,
    encode_face_graph,
    loader,
    save_conditioning,
    training_graph,
)
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, GROUP, load_rgb

RECOGNIZER = "buffalo_l/w600k_r50.onnx"


@pytest.fixture(scope="module")
def photos(comfy_server: ComfyServer) -> dict[str, str]:
    """Two "people" the synthetic detector finds, uploaded."""
    faces = {"a": si.face_photo(load_rgb(ASTRONAUT)), "b": si.face_photo(load_rgb(ALIGNED_CROP))}
    return {k: comfy_server.upload_image(Image.fromarray(v), f"gi_{k}.png") for k, v in faces.items()}


def _cond(server: ComfyServer, graph: dict, name: str, source: list | None = None) -> torch.Tensor:
    save_conditioning(graph, source or ["5", 0], name, "99")
    server.run(graph, timeout=300)
    return load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"]


def _failure(server: ComfyServer, graph: dict) -> ExecutionFailed:
    error = node_failure(server, graph, ["5", 0], "F2DEncodeFace")
    assert "Traceback" not in error.exception_message
    return error


# --- Widgets fed by links --------------------------------------------------------------------------


def test_identifier_text_and_numbers_linked_from_core_nodes(comfy_server, photos):
    """identifier from a String node, text from Concatenate, face_index from an Int node: the prompt is
    accepted (a linked identifier is None at validation) and gives the typed-in widgets' conditioning; a
    linked blank identifier and a linked face_index past its widget's max are node errors naming the input."""
    typed = _cond(comfy_server, encode_face_graph(photos["a"]), "gi_typed")
    graph = encode_face_graph(photos["a"])
    graph["20"] = {"class_type": "PrimitiveString", "inputs": {"value": "f l"}}
    graph["21"] = {
        "class_type": "StringConcatenate",
        "inputs": {"string_a": "a photo of ", "string_b": ["20", 0], "delimiter": ""},
    }
    graph["22"] = {"class_type": "PrimitiveInt", "inputs": {"value": 0}}
    graph["4"]["inputs"]["face_index"] = ["22", 0]
    graph["5"]["inputs"].update(text=["21", 0], identifier=["20", 0])
    linked = _cond(comfy_server, graph, "gi_linked")
    torch.testing.assert_close(linked, typed, atol=0, rtol=0)

    graph["20"]["inputs"]["value"] = "  "
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DApplyTokens" and "identifier" in error.exception_message
    assert "set it to 'f l'" in error.exception_message

    graph["20"]["inputs"]["value"] = "f l"
    graph["22"]["inputs"]["value"] = 65
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DEncodeFace"
    assert 'the value linked into "face_index" is 65, outside the widget\'s range 0..64' in error.exception_message

    # ComfyUI does not check a choice typed into an API graph for a V3 COMBO: the node does, without saying "linked"
    graph["22"]["inputs"]["value"] = 0
    graph["4"]["inputs"]["pooling"] = "medain"
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DEncodeFace"
    assert "\"pooling\" is 'medain', which is not one of its choices (" in error.exception_message
    assert "pick one from the widget's list (check the spelling" in error.exception_message


def _progress_events(server: ComfyServer, graph: dict, timeout: float) -> tuple[dict, list[dict]]:
    """Run `graph` while a websocket client (as the page) collects the pack's training progress events."""
    events: list[dict] = []
    ready, done = threading.Event(), threading.Event()

    async def listen() -> None:
        url = server.url.replace("http://", "ws://") + "/ws?clientId=gi_listener"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            ready.set()
            while not done.is_set():
                try:
                    message = await ws.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    body = json.loads(message.data)
                    if body.get("type") == "f2d.training.progress":
                        events.append(body["data"])
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return

    thread = threading.Thread(target=lambda: asyncio.run(listen()), daemon=True)
    thread.start()
    assert ready.wait(30), "the websocket did not connect"
    try:
        history = server.run(graph, timeout=timeout)
    finally:
        done.set()
        thread.join(10)
    return history, events


def test_linked_folder_and_64_bit_seed_and_composite_node_ids_in_training(comfy_server):
    """A String node's folder linked into F2D Training Dataset (its fingerprint, asked before the graph runs,
    sees None: "unknown", no failure logged) and a seed node's 64-bit seed linked into Train F2D Mapper (its
    widget stops at 2^31 - 1): training runs, the seed folded into the widget's range (seed mod 2^31), not an
    overflow of torch's seed mid-training. The nodes carry subgraph ids ("12:4"): the progress events name
    the training node by that id, which the page's sparkline resolves (js/f2d_training_loss.js,
    nodeByExecutionId)."""
    folder = Path(comfy_server.input_dir) / "gi_training"
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP, GROUP)):
        Image.fromarray(si.face_photo(load_rgb(source))).save(folder / f"person_{i}.png")
    flat = training_graph(folder.name, "gi_seed_folded", steps=2, save_as=None)
    flat["7"] = {"class_type": "PrimitiveInt", "inputs": {"value": 2**62 + 5}}
    flat["4"]["inputs"]["seed"] = ["7", 0]
    flat["8"] = {"class_type": "PrimitiveString", "inputs": {"value": folder.name}}
    flat["3"]["inputs"]["folder"] = ["8", 0]
    log_start = len(comfy_server.log_text())
    graph = {  # every node inside subgraph 12, as the page sends a subgraph's nodes
        f"12:{node_id}": {
            **node,
            "inputs": {k: [f"12:{v[0]}", v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()},
        }
        for node_id, node in flat.items()
    }
    history, events = _progress_events(comfy_server, graph, timeout=600)
    assert history["status"]["status_str"] == "success"
    assert events and {e["node"] for e in events} == {"12:4"}
    assert events[-1]["step"] == events[-1]["total"] == 2
    # The linked folder is unknown to the dataset's fingerprint before the graph runs: no failure logged.
    assert "'NoneType' object has no attribute" not in comfy_server.log_text()[log_start:]
    state = comfy_server.output_dir / "face2diffusion_training" / "gi_seed_folded" / "training_state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        assert json.loads(f.metadata()["identity"])["seed"] == (2**62 + 5) % 2**31


# --- Images slightly outside [0, 1] ----------------------------------------------------------------


def test_bicubic_and_lanczos_upscales_of_a_photo_encode(comfy_server, photos):
    """Core Upscale Image (bicubic) overshoots the face square's hard edges (checked here: beyond the old
    2 % slack); Encode Face clamps it and finds the same person as in the photo; lanczos too."""
    rgb = np.asarray(Image.open(comfy_server.input_dir / photos["a"]).convert("RGB"), np.float32) / 255
    upscaled = torch.nn.functional.interpolate(
        torch.from_numpy(rgb).permute(2, 0, 1)[None], size=(900, 900), mode="bicubic"
    )
    assert float(upscaled.max()) > 1.02 or float(upscaled.min()) < -0.02  # the input the old check refused
    reference = _cond(comfy_server, encode_face_graph(photos["a"]), "gi_plain")
    for method in ("bicubic", "lanczos"):
        graph = encode_face_graph(photos["a"])
        graph["30"] = {
            "class_type": "ImageScale",
            "inputs": {"image": ["3", 0], "upscale_method": method, "width": 900, "height": 900, "crop": "disabled"},
        }
        graph["4"]["inputs"]["image"] = ["30", 0]
        got = _cond(comfy_server, graph, f"gi_{method}")
        assert torch.isfinite(got).all(), method
        assert torch.nn.functional.cosine_similarity(got[0, 4:6], reference[0, 4:6], dim=-1).min() > 0.9, method


# --- Image lists -----------------------------------------------------------------------------------


def _two_photo_batch(graph: dict, photos: dict[str, str]) -> list:
    graph["3b"] = {"class_type": "LoadImage", "inputs": {"image": photos["b"]}}
    graph["3c"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["3b", 0]}}
    return ["3c", 0]


def test_image_list_encodes_as_one_pooled_face_like_the_batch(comfy_server, photos):
    """Rebatch Images (batch_size 1) makes a list of one-photo batches: Encode Face pools them into one face,
    the same conditioning as the batch (not one face per photo, the last of which wins)."""
    graph = encode_face_graph(photos["a"])
    graph["4"]["inputs"]["image"] = _two_photo_batch(graph, photos)
    batch = _cond(comfy_server, graph, "gi_batch")
    graph["3d"] = {"class_type": "RebatchImages", "inputs": {"images": ["3c", 0], "batch_size": 1}}
    graph["4"]["inputs"]["image"] = ["3d", 0]
    save_conditioning(graph, ["5", 0], "gi_list", "99")
    history = comfy_server.run(graph, timeout=300)
    (report,) = history["outputs"]["4"]["text"]  # Encode Face ran once, on both photos
    assert report.count("of 2:") == 2, report
    listed = load_file(str(comfy_server.output_dir / "gi_list.safetensors"))["cond_0"]
    torch.testing.assert_close(listed, batch, atol=1e-6, rtol=0)


def test_best_of_n_chooses_among_a_whole_image_list(comfy_server, photos):
    """Best of N fed an image list (and Face Similarity's list of scores) keeps the best 1 of all 2 images,
    once, not "the best of 1" for each image."""
    graph = {
        "1": loader(),
        "2": {"class_type": "F2DLoadFaceRecognizer", "inputs": {"recognition_model": RECOGNIZER}},
        "3": {"class_type": "LoadImage", "inputs": {"image": photos["a"]}},
        "4": encode_face(["1", 0], ["3", 0]),
    }
    images = _two_photo_batch(graph, photos)
    graph["3d"] = {"class_type": "RebatchImages", "inputs": {"images": images, "batch_size": 1}}
    graph["9"] = {
        "class_type": "F2DFaceSimilarity",
        "inputs": {
            "f2d_model": ["1", 0],
            "recognizer": ["2", 0],
            "images": ["3d", 0],
            "f2d_face": ["4", 0],
            "reference_images_are": "one person",
        },
    }
    graph["10"] = {
        "class_type": "F2DBestOfN",
        "inputs": {"images": ["3d", 0], "keep": 1, "rank_by": "identity", "identity_scores": ["9", 0]},
    }
    history = comfy_server.run(graph, timeout=300)
    (table,) = history["outputs"]["10"]["text"]
    assert table.startswith("best 1 of 2 by identity"), table
    assert table.splitlines()[2].split()[0] == "1", table  # photo a: the reference itself


# --- A saved face with another mapper --------------------------------------------------------------


def test_saved_face_loaded_with_another_mapper_uses_that_mapper(comfy_server, comfy_models_dir, photos):
    """A face saved with mapping.pt, loaded with an F2D model whose mapper is another: S* is mapped by the
    connected mapper (the conditioning of encoding the photo with it), and the node says so; without a model,
    the saved S* is used and the node names the mapper that made it."""
    mapping = torch.load(comfy_models_dir / "face2diffusion" / "mapping.pt", weights_only=True)
    other = {k: v * 0.5 if v.is_floating_point() else v for k, v in mapping.items()}
    torch.save(other, comfy_models_dir / "face2diffusion" / "gi_other_mapper.pt")

    graph = encode_face_graph(photos["a"])
    graph["6"] = {"class_type": "F2DSaveFace", "inputs": {"f2d_face": ["4", 0], "name": "gi_mapper_face"}}
    saved = _cond(comfy_server, graph, "gi_saved")
    with_other = _cond(comfy_server, encode_face_graph(photos["a"], mapper="gi_other_mapper.pt"), "gi_other")
    assert (with_other - saved).abs().amax() > 1e-3  # the two mappers do differ

    (face_file,) = [f for f in comfy_server.combo_options("F2DLoadFace", "face_file") if "gi_mapper_face_" in f]
    loaded = {
        "1": checkpoint_loader(),
        "2": loader(mapper="gi_other_mapper.pt"),
        "4": {"class_type": "F2DLoadFace", "inputs": {"face_file": face_file, "f2d_model": ["2", 0]}},
        "5": {"class_type": "F2DApplyTokens", "inputs": {"clip": ["1", 1], "text": "a photo of f l",
                                                         "f2d_face": ["4", 0]}},
    }  # fmt: skip
    save_conditioning(loaded, ["5", 0], "gi_loaded_other", "99")
    history = comfy_server.run(loaded, timeout=300)
    got = load_file(str(comfy_server.output_dir / "gi_loaded_other.safetensors"))["cond_0"]
    torch.testing.assert_close(got, with_other, atol=1e-5, rtol=0)
    (note,) = history["outputs"]["4"]["text"]
    assert "mapped by the connected F2D model's mapper gi_other_mapper.pt (saved with mapping.pt)" in note

    del loaded["2"], loaded["4"]["inputs"]["f2d_model"]
    save_conditioning(loaded, ["5", 0], "gi_loaded_saved", "99")
    history = comfy_server.run(loaded, timeout=300)
    torch.testing.assert_close(
        load_file(str(comfy_server.output_dir / "gi_loaded_saved.safetensors"))["cond_0"], saved, atol=0, rtol=0
    )
    assert "S* as saved, made by the mapper mapping.pt" in history["outputs"]["4"]["text"][0]


# --- One file, several frames ----------------------------------------------------------------------


def test_animation_frames_are_pooled_and_an_mpo_gives_its_first_image(comfy_server, photos):
    """As the face photo, a two-frame animated WebP (person a, then b) is Load Image's batch of both frames:
    the face pooled from both, as the batch of the two photos; a phone's MPO JPEG of the same two images
    is its first image only (person a), as Load Image reads it (docs/nodes.md, One file, several frames)."""
    frames = [Image.open(comfy_server.input_dir / photos[k]).convert("RGB") for k in ("a", "b")]
    uploads = {}
    for kind, save in (("webp", {"format": "WEBP", "lossless": True}), ("mpo", {"format": "MPO", "quality": 100})):
        path = comfy_server.work_dir / f"gi_frames.{kind}"
        frames[0].save(path, save_all=True, append_images=frames[1:], **save)
        assert Image.open(path).n_frames == 2
        uploads[kind] = comfy_server.upload_image(path, f"gi_frames_{kind}.{'jpg' if kind == 'mpo' else kind}")

    graph = encode_face_graph(photos["a"])
    graph["4"]["inputs"]["image"] = _two_photo_batch(graph, photos)
    batch = _cond(comfy_server, graph, "gi_frames_batch")
    animated = _cond(comfy_server, encode_face_graph(uploads["webp"]), "gi_frames_webp")
    torch.testing.assert_close(animated, batch, atol=1e-5, rtol=0)

    single = _cond(comfy_server, encode_face_graph(photos["a"]), "gi_frames_single")
    mpo = _cond(comfy_server, encode_face_graph(uploads["mpo"]), "gi_frames_mpo")
    assert torch.nn.functional.cosine_similarity(mpo[0, 4:6], single[0, 4:6], dim=-1).min() > 0.99
    assert (mpo - single).abs().amax() < (mpo - batch).abs().amax() / 4  # person a, not a pooled with b
