"""A trained MSID encoder loads in Load MSID Encoder through the real server and encodes a face.

The encoder is the official architecture (ViT-S, 112 px, patch 8), trained by cli/train_msid.py from
random weights for one step on the CPU on a folder of tests/support/identity_sets.py's faces (faces
have no labelled identity set offline), written into the server's models/face2diffusion/.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from f2d_core.checkpoints import load_msid
from f2d_core.identity.msid_encoder import MSIDEncoder
from f2d_core.weight_files import read_weights
from tests.support import synthetic_insightface as si
from tests.support.f2d_graphs import encode_face_graph, save_conditioning
from tests.support.identity_sets import identity_set
from tests.support.photos import ASTRONAUT, load_rgb

TRAINED = "msid_trained_one_step.safetensors"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained_encoder(comfy_models_dir, tmp_path_factory):
    """cli/train_msid.py, one step from random weights on a folder of identity subfolders; the file and
    the tensors the step changed."""
    work = tmp_path_factory.mktemp("msid_cli")
    folder = identity_set(2, 2, seed=0).write_folder(work / "faces")  # 10 identities x 2 aligned crops
    out = comfy_models_dir / "face2diffusion" / TRAINED
    command = [sys.executable, str(REPO_ROOT / "cli" / "train_msid.py"), "--data", str(folder), "--out", str(out)]
    command += ["--run-dir", str(work / "run"), "--batch-size", "8", "--max-steps", "1", "--scale", "16"]
    command += ["--epochs", "1", "--cpu", "--workers", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "images/s" in done.stderr and "trained encoder (step 1 of 2)" in done.stderr
    torch.manual_seed(0)  # --init random --seed 0: the same starting weights
    before = MSIDEncoder().state_dict()
    after = load_msid(out).state_dict()  # the loader Load MSID Encoder and mapper training use
    assert set(after) == set(before)
    return out, [k for k, v in after.items() if not torch.equal(v, before[k])]


def _s_star(server, image: str, msid: str, name: str) -> torch.Tensor:
    graph = save_conditioning(encode_face_graph(image, msid=msid), ["5", 0], name, "99")
    server.run(graph)
    return load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"][0]


def test_trained_encoder_loads_in_the_server_and_encodes_a_face(comfy_server, trained_encoder):
    path, changed = trained_encoder
    assert "blocks.0.attn.qkv.weight" in changed and "norms.layer_2.0.running_mean" in changed
    metadata = read_weights(path)[1]
    assert metadata["contents"] == "msid" and metadata["trained_steps"] == "1" and metadata["loss"].startswith("msid")
    photo = comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_msid_trained.png")
    ours = _s_star(comfy_server, photo, TRAINED, "msid_trained")
    official = _s_star(comfy_server, photo, "msid.pt", "msid_official")
    assert ours.shape == (77, 768) and torch.isfinite(ours).all()
    assert (ours[4:6] - official[4:6]).abs().amax() > 1e-3  # the identifier carries this encoder's S*
    torch.testing.assert_close(ours[:4], official[:4])  # "a photo of" is untouched
