"""Cancel during a long batch: Encode Face, Face Similarity, Expression Reference (in its regressor's chunks,
after the detection) and CLIP Score show progress and stop within about a second of POST /interrupt (the
UI's Cancel), and the server serves the next prompt. Best of N and Face Masks have no loop over frames to
stop inside (a sort of scores, one photo)."""

from __future__ import annotations

import logging
import time

import pytest
from PIL import Image

from tests.support import synthetic_insightface as si
from tests.support.comfy_events import EventListener
from tests.support.f2d_graphs import CHECKPOINT, PACK, loader, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb

log = logging.getLogger(__name__)
FRAMES = 400  # minutes of detection at the test detector's speed: only a Cancel ends it in time
# Nodes whose loop runs in chunks of images (f2d_core.progress.CHUNK): frames for some seconds of it.
CHUNKED_FRAMES = {"F2DExpressionReference": 24, "F2DCLIPScore": 1024}
# The stage of the node to cancel in (a node's next stage starts its progress bar over): the regressor's.
CANCEL_IN_STAGE = {"F2DExpressionReference": 2}
STOP_WITHIN_S = 2.0  # "about a second", with room for a loaded 2-core CI machine...
FRAMES_OF_SLACK = 3  # ...or, on a machine so loaded that a frame (chunk) takes longer, the one it is on and two more


@pytest.fixture(scope="module")
def frame(comfy_server) -> str:
    """A small photo with one face the synthetic detector finds, uploaded."""
    photo = si.face_photo(load_rgb(ASTRONAUT), (64, 64), (32, 32), 32)
    return comfy_server.upload_image(Image.fromarray(photo), "f2d_cancel_frame.png")


def _encode_face(image: list) -> dict:
    inputs = {"f2d_model": ["1", 0], "image": image, "face_index": 0, "if_no_face": "error"}
    return {"class_type": "F2DEncodeFace", "inputs": {**inputs, "pooling": "normalized_mean"}}


def _graph(frame: str, node: str, frames: int) -> dict:
    """LoadImage -> RepeatImageBatch(frames) -> the node under test (Encode Face's crops previewed)."""
    graph = {
        "1": loader(),  # detection_size 160 below: the frames are 64 px
        "2": {"class_type": "LoadImage", "inputs": {"image": frame}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": frames}},
    }
    graph["1"]["inputs"]["detection_size"] = 160
    if node == "F2DEncodeFace":
        graph["4"] = _encode_face(["3", 0])
        graph["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}}
    elif node == "F2DExpressionReference":  # its expression goes into Apply F2D Tokens, saved by a probe node
        graph["4"] = {
            "class_type": "F2DExpressionReference",
            "inputs": {
                "f2d_model": ["1", 0],
                "image": ["3", 0],
                "expression_model": "epoch_20.pth",
                "face_index": 0,
                "strength": 1.0,
            },
        }
        graph["7"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}
        graph["8"] = _encode_face(["2", 0])
        graph["9"] = {
            "class_type": "F2DApplyTokens",
            "inputs": {
                "clip": ["7", 1],
                "text": "a photo of f l",
                "f2d_face": ["8", 0],
                "expression": ["4", 0],
                "expression_strength": 1.0,
            },
        }
        save_conditioning(graph, ["9", 0], "f2d_cancel_expression", "10")
    elif node == "F2DCLIPScore":
        del graph["1"]
        graph["5"] = {"class_type": "F2DLoadCLIPScorer", "inputs": {"clip_model": "tiny_clip"}}
        graph["4"] = {
            "class_type": "F2DCLIPScore",
            "inputs": {
                "clip_scorer": ["5", 0],
                "images": ["3", 0],
                "prompt": "a photo of f l",
                "reference_prompt": "A photo of a person",
            },
        }
    else:
        graph["6"] = {"class_type": "F2DLoadFaceRecognizer", "inputs": {"recognition_model": f"{PACK}/w600k_r50.onnx"}}
        graph["4"] = {
            "class_type": "F2DFaceSimilarity",
            "inputs": {
                "f2d_model": ["1", 0],
                "recognizer": ["6", 0],
                "images": ["3", 0],
                "reference_images": ["2", 0],
                "reference_images_are": "one person",
            },
        }
    return graph


def _stages(timed: list[tuple[float, dict]]) -> list[list[tuple[float, dict]]]:
    """The node's progress events split into its stages (each next stage starts the bar over)."""
    stages: list[list[tuple[float, dict]]] = []
    for event in timed:
        if not stages or event[1]["value"] < stages[-1][-1][1]["value"]:
            stages.append([])
        stages[-1].append(event)
    return stages


@pytest.mark.parametrize("node", ["F2DEncodeFace", "F2DFaceSimilarity", "F2DExpressionReference", "F2DCLIPScore"])
def test_cancel_stops_a_long_batch_within_about_a_second(comfy_server, frame: str, node: str) -> None:
    frames, stage = CHUNKED_FRAMES.get(node, FRAMES), CANCEL_IN_STAGE.get(node, 1)

    def progress() -> list[list[tuple[float, dict]]]:
        return _stages([(t, d) for t, d in events.of_type("progress", prompt_id) if d["node"] == "4"])

    with EventListener(comfy_server.url, comfy_server.client_id) as events:
        prompt_id = comfy_server.queue_prompt(_graph(frame, node, frames))
        deadline = time.monotonic() + 120
        while len(progress()) < stage or progress()[stage - 1][-1][1]["value"] < 2:
            assert time.monotonic() < deadline, f"no progress from {node}:\n{comfy_server.log_tail()}"
            assert comfy_server.history(prompt_id) is None, f"{node} finished {frames} frames before the test"
            time.sleep(0.05)
        comfy_server.interrupt()
        asked = time.monotonic()
        stopped, _ = events.wait_for("execution_interrupted", prompt_id, timeout=60)
    stages = progress()
    assert len(stages) == stage, f"{node} went on to another stage: {stages}"
    timed = stages[-1]
    assert timed[-1][1]["max"] == frames and timed[-1][1]["value"] < frames, timed
    # a frame, or a chunk of frames; a later stage's first step is timed from the previous stage's end
    first = stages[-2][-1][0] if len(stages) > 1 else timed[0][0]
    per_step = (timed[-1][0] - first) / max(1, len(timed) - (len(stages) == 1))
    assert stopped - asked < max(STOP_WITHIN_S, FRAMES_OF_SLACK * per_step), (
        f"{node} stopped {stopped - asked:.1f} s after Cancel ({per_step:.2f} s a step; "
        f"progress {[(round(t - asked, 2), d['value']) for t, d in timed]})"
    )
    log.info("%s stopped at %d of %d, %.2f s after Cancel", node, timed[-1][1]["value"], frames, stopped - asked)
    history = comfy_server.history(prompt_id)
    assert "execution_interrupted" in [event for event, _ in history["status"]["messages"]]
    after = comfy_server.run(_graph(frame, node, 2), timeout=120)  # the server serves the next prompt
    assert after["status"]["status_str"] == "success"
