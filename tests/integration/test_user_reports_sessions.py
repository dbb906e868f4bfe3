"""State across queues, from public reports on face packs (issue 13): reruns, seeds, batches, and a long
session's memory. Through the real server, on the tiny SD1.5."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import encode_face_graph, loader
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def photo(comfy_server: ComfyServer) -> str:
    return comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_sessions_face.png")


def _sampling_graph(photo: str, seed: int, f2d: bool = True) -> dict:
    """Encode Face -> Apply F2D Tokens (or plain CLIPTextEncode of the same text) -> KSampler, batch 4, CFG 2."""
    graph = encode_face_graph(photo, text="a photo of f l")
    if not f2d:
        graph["5"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of f l"}}
    graph["6"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}}
    graph["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}}
    graph["8"] = {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": ["5", 0], "negative": ["6", 0], "latent_image": ["7", 0], "seed": seed,
        "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}  # fmt: skip
    graph["9"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}}
    graph["10"] = {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "rs_batch"}}
    return graph


def _images(server: ComfyServer, graph: dict) -> list[np.ndarray]:
    return [np.asarray(image) for image in server.output_images(server.run(graph, timeout=600), "10")]


def test_reruns_seeds_and_a_batch_of_four(comfy_server, photo):
    """Queued again with a fixed seed (recomputed after "Free model and node cache"): bit-identical. Another
    seed: other images, never a stale output. KSampler batch 4 with CFG 2: four different images, each
    differing from the same seed without S* (each carries the face)."""
    first = _images(comfy_server, _sampling_graph(photo, seed=1))
    assert len(first) == 4
    assert all(not np.array_equal(a, b) for i, a in enumerate(first) for b in first[i + 1 :])
    plain = _images(comfy_server, _sampling_graph(photo, seed=1, f2d=False))
    assert all(not np.array_equal(a, b) for a, b in zip(first, plain, strict=True))

    other_seed = _images(comfy_server, _sampling_graph(photo, seed=2))
    assert all(not np.array_equal(a, b) for a, b in zip(first, other_seed, strict=True))
    for _ in range(2):  # the second and third queue of the same graph, each computed anew
        comfy_server.free(unload_models=True, free_memory=True)
        again = _images(comfy_server, _sampling_graph(photo, seed=1))
        assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_fifty_encodes_of_ten_large_photos_keep_the_servers_memory_flat(comfy_server, record_property):
    """50 queued Encode Face runs cycling through 10 photos up to 4000 px: the server's RSS plateaus.

    Measured by the probe pack (`GET /f2d_test/alive_models`, after a garbage collection) after runs 1, 10
    and 50; printed to the test log and recorded as properties (pytest --junitxml shows them).
    """
    textures = [load_rgb(ASTRONAUT), load_rgb(ALIGNED_CROP)]
    names = []
    for k in range(10):  # 640 to 3840 px: the 640 px photo enlarged, so the detector sees the same face
        scale = (1, 2, 3, 5, 6)[k % 5]
        small = Image.fromarray(si.face_photo(textures[k % 2], shade=k))
        big = small.resize((640 * scale, 640 * scale), Image.Resampling.NEAREST)
        names.append(comfy_server.upload_image(big, f"rs_long_{k}.png"))
    rss = {}
    for run in range(1, 51):
        graph = {
            "2": loader(),
            "3": {"class_type": "LoadImage", "inputs": {"image": names[(run - 1) % 10]}},
            "4": {"class_type": "F2DEncodeFace", "inputs": {"f2d_model": ["2", 0], "image": ["3", 0], "face_index": 0,
                                                            "if_no_face": "error", "pooling": "normalized_mean"}},
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
        }  # fmt: skip
        comfy_server.run(graph, timeout=300)
        if run in (1, 10, 50):
            rss[run] = comfy_server._get("/f2d_test/alive_models").json()["rss_mib"]
            record_property(f"rss_mib_after_run_{run}", round(rss[run], 1))
    log.warning("server RSS after runs 1, 10, 50: %.0f, %.0f, %.0f MiB", rss[1], rss[10], rss[50])
    assert rss[50] - rss[10] < 0.10 * rss[10], rss  # a plateau: no growth per run once every photo was seen
