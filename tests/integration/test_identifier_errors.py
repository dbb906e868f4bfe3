"""An empty identifier is refused before anything runs, with the error pinned on the `identifier` input alone
(the frontend marks the inputs a node error names: no red `clip` or `f2d_face` socket)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import save_face
from tests.support.comfy_server import ComfyServer, PromptRejected
from tests.support.f2d_graphs import CHECKPOINT, save_conditioning

FACE_FILE = "identifier_errors_face.safetensors"
LAYOUT = "left/right halves"


@pytest.fixture(scope="module")
def face_file(comfy_models_dir: Path) -> str:
    face = EncodedFace(s_star=torch.randn(2, 768), idvec=torch.zeros(1536), crops=torch.zeros(1, 3, 112, 112))
    save_face(comfy_models_dir / "face2diffusion" / "faces" / FACE_FILE, face)
    return FACE_FILE


@pytest.mark.parametrize("node_type", ["F2DApplyTokens", "F2DAddPerson"])
def test_an_empty_identifier_is_an_error_on_the_identifier_input_alone(
    comfy_server: ComfyServer, face_file: str, node_type: str
):
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "F2DLoadFace", "inputs": {"face_file": face_file}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a park"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "F2DRegionLayout", "inputs": {"latent": ["5", 0], "layout": LAYOUT, "overlap": 0}},
    }
    inputs = {"clip": ["1", 1], "text": "a photo of f l", "f2d_face": ["2", 0], "identifier": "  "}
    if node_type == "F2DAddPerson":
        inputs.update(conditioning=["3", 0], latent=["5", 0], masks=["6", 0], person=1, strength=1.0)
    graph["4"] = {"class_type": node_type, "inputs": inputs}
    save_conditioning(graph, ["4", 0], "identifier_errors", "9")
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.run(graph)
    errors = rejected.value.node_errors["4"]["errors"]
    assert [error["extra_info"]["input_name"] for error in errors] == ["identifier"]
    assert "identifier widget is empty: set it to 'f l'" in errors[0]["details"]
