"""Load F2D Face with a face_file that is not there: a workflow from another machine names a face this one
never saved, or the page sent no choice at all (its list was empty when the node was added). Validation
names the file and the widget; the rest of the graph still runs, without a traceback in the log."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import save_face
from tests.support.comfy_server import ComfyServer, PromptRejected

FACE_FILE = "load_face_choice.safetensors"


@pytest.fixture(scope="module")
def face_file(comfy_models_dir: Path) -> str:
    face = EncodedFace(s_star=torch.randn(2, 768), idvec=torch.zeros(1536), crops=torch.zeros(1, 3, 112, 112))
    save_face(comfy_models_dir / "face2diffusion" / "faces" / FACE_FILE, face)
    return FACE_FILE


def _load_and_preview(face_inputs: dict, node: str, preview: str) -> dict:
    return {
        node: {"class_type": "F2DLoadFace", "inputs": face_inputs},
        preview: {"class_type": "PreviewImage", "inputs": {"images": [node, 1]}},
    }


def test_a_face_file_this_machine_never_saved_is_named_with_the_widget(comfy_server: ComfyServer, face_file: str):
    graph = _load_and_preview({"face_file": "from_another_machine_00001.safetensors"}, "1", "2")
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.run(graph)
    (error,) = rejected.value.node_errors["1"]["errors"]
    assert error["extra_info"]["input_name"] == "face_file"
    assert "face_file 'from_another_machine_00001.safetensors' is not a saved face in" in error["details"]
    assert "choose one of the saved faces in the face_file widget" in error["details"]
    assert face_file in comfy_server.combo_options("F2DLoadFace", "face_file")


def test_a_node_without_a_choice_stops_alone_and_leaves_no_traceback(comfy_server: ComfyServer, face_file: str):
    """The page sends no face_file when the widget shows `undefined`: that node is refused, the other branch
    runs, and the cache's fingerprint of the refused node does not raise (it used to log a TypeError)."""
    before = len(comfy_server.log_text())
    graph = {**_load_and_preview({}, "1", "2"), **_load_and_preview({"face_file": face_file}, "3", "4")}
    prompt_id = comfy_server.queue_prompt(graph)
    history = comfy_server.wait(prompt_id)
    assert "4" in history["outputs"] and "2" not in history["outputs"]
    log = comfy_server.log_text()[before:]
    assert "face_file" in log  # the refused node is reported...
    assert "fingerprint_inputs" not in log and "Traceback" not in log  # ...without a raw error
