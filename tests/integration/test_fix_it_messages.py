"""Every fix-it message names the widget or the flag to change: a batch with a photo without a face names
if_no_face, a wrong weight file names msid_file or mapper_file (through the real server); loose photos
without a detector name --insightface-root (the identity-encoder tools' data reader)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from f2d_core.errors import DatasetError
from f2d_core.msid_training.data.face_dataset import open_training_data
from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import encode_face_graph, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb


@pytest.fixture(scope="module")
def photos(comfy_server: ComfyServer) -> dict[str, str]:
    return {
        "face": comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "fix_it_face.png"),
        "none": comfy_server.upload_image(Image.new("RGB", (320, 240)), "fix_it_no_face.png"),
    }


def _failure(server: ComfyServer, graph: dict) -> ExecutionFailed:
    save_conditioning(graph, ["5", 0], "never_written", "99")
    with pytest.raises(ExecutionFailed) as info:
        server.run(graph)
    return info.value


def test_a_batch_with_a_photo_without_a_face_names_if_no_face(comfy_server: ComfyServer, photos: dict):
    graph = encode_face_graph(photos["face"])
    graph["30"] = {"class_type": "LoadImage", "inputs": {"image": photos["none"]}}
    graph["31"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["30", 0]}}
    graph["4"]["inputs"]["image"] = ["31", 0]
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DEncodeFace"
    assert "image 2 of 2: no face found" in error.exception_message
    assert "set if_no_face to 'skip image'" in error.exception_message


@pytest.mark.parametrize(
    ("files", "widget"), [({"msid": "mapping.pt"}, "msid_file"), ({"mapper": "msid.pt"}, "mapper_file")]
)
def test_a_wrong_weight_file_names_the_widget_to_change(
    comfy_server: ComfyServer, photos: dict, files: dict, widget: str
):
    error = _failure(comfy_server, encode_face_graph(photos["face"], **files))
    assert error.node_type == "F2DLoadMSIDEncoder"
    assert f"Choose another file in {widget}." in error.exception_message


def test_loose_photos_without_a_detector_name_insightface_root(tmp_path: Path):
    person = tmp_path / "held_out" / "someone"
    person.mkdir(parents=True)
    for k in range(2):
        Image.new("RGB", (200, 240), (k * 40, 90, 120)).save(person / f"{k}.jpg")
    with pytest.raises(DatasetError, match=r"pass --insightface-root \(the folder holding models/<pack>/"):
        open_training_data(tmp_path / "held_out")


def test_out_of_memory_in_encode_face_names_what_to_change_and_releases_what_the_call_held(
    comfy_server: ComfyServer, photos: dict
):
    """An out-of-memory error inside Encode Face (injected: no GPU here) says what to change, and what the failed
    call held is freed at once, not kept alive by the error's traceback until a garbage collection, so the
    next run has the memory back and succeeds."""
    session = comfy_server._session
    session.post(f"{comfy_server.url}/f2d_test/out_of_memory_once", timeout=30).raise_for_status()
    error = _failure(comfy_server, encode_face_graph(photos["face"]))
    assert error.node_type == "F2DEncodeFace"
    assert (
        "Encode Face ran out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB" in error.exception_message
    )
    assert "Encode fewer photos at once (this batch has 1)" in error.exception_message
    held = session.get(f"{comfy_server.url}/f2d_test/out_of_memory_held", timeout=30).json()
    assert held == {"alive": 0}
    graph = encode_face_graph(photos["face"])
    save_conditioning(graph, ["5", 0], "after_out_of_memory", "99")
    comfy_server.run(graph)  # the next run works


@pytest.mark.parametrize(
    ("batch_size", "world_size", "named"), [(32, 1, "lower --batch-size"), (6, 4, "--batch-size 6")]
)
def test_a_batch_the_identity_encoder_cannot_train_with_names_batch_size(
    tmp_path: Path, batch_size: int, world_size: int, named: str
):
    from f2d_core.errors import F2DError
    from f2d_core.identity.msid_encoder import MSIDEncoder
    from f2d_core.msid_training.trainer import MSIDTrainer, MSIDTrainSettings
    from tests.support.identity_sets import identity_set

    data = identity_set(2, 2, real=False)  # 4 faces
    settings = MSIDTrainSettings(epochs=1, batch_size=batch_size)
    encoder = MSIDEncoder(width=32, depth=4, heads=2, tap_blocks=(0, 1, 2, 3))
    with pytest.raises(F2DError, match=re.escape(named)):
        MSIDTrainer(encoder, data, lambda e, f: iter(()), settings, tmp_path, init_digest="r", world_size=world_size)
