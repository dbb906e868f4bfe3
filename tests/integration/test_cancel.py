"""Cancel during a long batch: Encode Face and Face Similarity on hundreds of frames show progress and stop
within about a second of POST /interrupt (the UI's Cancel), and the server serves the next prompt. The
other scoring loops share the same callback (tests/test_progress.py); Best of N and Face Masks have no
loop over frames to stop inside (a sort of scores, one photo)."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from tests.support import synthetic_insightface as si
from tests.support.comfy_events import EventListener
from tests.support.f2d_graphs import PACK, loader
from tests.support.photos import ASTRONAUT, load_rgb

FRAMES = 400  # minutes of detection at the test detector's speed: only a Cancel ends it in time
STOP_WITHIN_S = 2.0  # "about a second", with room for a loaded 2-core CI machine...
FRAMES_OF_SLACK = 3  # ...or, on a machine so loaded that a frame takes longer, the frame it is on and two more


@pytest.fixture(scope="module")
def frame(comfy_server) -> str:
    """A small photo with one face the synthetic detector finds, uploaded."""
    photo = si.face_photo(load_rgb(ASTRONAUT), (64, 64), (32, 32), 32)
    return comfy_server.upload_image(Image.fromarray(photo), "f2d_cancel_frame.png")


def _graph(frame: str, node: str, frames: int) -> dict:
    """LoadImage -> RepeatImageBatch(frames) -> the node under test (Encode Face's crops previewed)."""
    graph = {
        "1": loader(),  # detection_size 160 below: the frames are 64 px
        "2": {"class_type": "LoadImage", "inputs": {"image": frame}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": frames}},
    }
    graph["1"]["inputs"]["detection_size"] = 160
    if node == "F2DEncodeFace":
        graph["4"] = {
            "class_type": "F2DEncodeFace",
            "inputs": {
                "f2d_model": ["1", 0],
                "image": ["3", 0],
                "face_index": 0,
                "if_no_face": "error",
                "pooling": "normalized_mean",
            },
        }
        graph["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}}
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


@pytest.mark.parametrize("node", ["F2DEncodeFace", "F2DFaceSimilarity"])
def test_cancel_stops_a_long_batch_within_about_a_second(comfy_server, frame: str, node: str) -> None:
    with EventListener(comfy_server.url, comfy_server.client_id) as events:
        prompt_id = comfy_server.queue_prompt(_graph(frame, node, FRAMES))
        deadline = time.monotonic() + 120
        while not [d for _, d in events.of_type("progress", prompt_id) if d["node"] == "4" and d["value"] >= 2]:
            assert time.monotonic() < deadline, f"no progress from {node}:\n{comfy_server.log_tail()}"
            assert comfy_server.history(prompt_id) is None, f"{node} finished {FRAMES} frames before the test"
            time.sleep(0.05)
        comfy_server.interrupt()
        asked = time.monotonic()
        stopped, _ = events.wait_for("execution_interrupted", prompt_id, timeout=60)
    timed = [(t, d) for t, d in events.of_type("progress", prompt_id) if d["node"] == "4"]
    progress = [d for _, d in timed]
    assert progress[-1]["max"] == FRAMES and progress[-1]["value"] < FRAMES
    per_frame = (timed[-1][0] - timed[0][0]) / max(1, len(timed) - 1)
    assert stopped - asked < max(STOP_WITHIN_S, FRAMES_OF_SLACK * per_frame), (
        f"{node} stopped {stopped - asked:.1f} s after Cancel ({per_frame:.2f} s a frame; "
        f"progress {[(round(t - asked, 2), d['value']) for t, d in timed]})"
    )
    history = comfy_server.history(prompt_id)
    assert "execution_interrupted" in [event for event, _ in history["status"]["messages"]]
    after = comfy_server.run(_graph(frame, node, 2), timeout=120)  # the server serves the next prompt
    assert after["status"]["status_str"] == "success"
