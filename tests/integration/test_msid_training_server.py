"""A trained MSID encoder loads in Load MSID Encoder through the real server and encodes a face.

The encoder is the official architecture (ViT-S, 112 px, patch 8), trained from random weights for
one step on the CPU on tests/support/identity_sets.py's faces (faces have no labelled identity set
offline), and written with `save_trained_encoder` into the server's models/face2diffusion/.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from f2d_core.checkpoints import load_msid
from f2d_core.identity.msid_encoder import MSIDEncoder
from f2d_core.msid_training.encoder_output import save_trained_encoder
from f2d_core.msid_training.trainer import MSIDTrainer, MSIDTrainSettings
from tests.support import synthetic_insightface as si
from tests.support.f2d_graphs import encode_face_graph, save_conditioning
from tests.support.identity_sets import identity_set
from tests.support.photos import ASTRONAUT, load_rgb

TRAINED = "msid_trained_one_step.safetensors"


@pytest.fixture(scope="module")
def trained_encoder(comfy_models_dir, tmp_path_factory):
    faces = identity_set(2, 2, seed=0)  # 10 identities x 2 photos, batch 8: one step
    torch.manual_seed(0)
    encoder = MSIDEncoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    settings = MSIDTrainSettings(epochs=1, batch_size=8, scale=16.0, max_steps=1)
    batches = lambda epoch, first: [(faces.images[:8], faces.labels[:8])][first:]  # noqa: E731
    run_dir = tmp_path_factory.mktemp("msid_run")
    trainer = MSIDTrainer(encoder, faces, batches, settings, run_dir, init_digest="random:seed=0")
    result = trainer.run()
    assert result.step == 1 and len(result.losses) == 1
    out = comfy_models_dir / "face2diffusion" / TRAINED
    path = save_trained_encoder(out, encoder, result, settings, faces, "random")
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    return path, changed


def _s_star(server, image: str, msid: str, name: str) -> torch.Tensor:
    graph = save_conditioning(encode_face_graph(image, msid=msid), ["5", 0], name, "99")
    server.run(graph)
    return load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"][0]


def test_trained_encoder_loads_in_the_server_and_encodes_a_face(comfy_server, trained_encoder):
    path, changed = trained_encoder
    assert "blocks.0.attn.qkv.weight" in changed and "norms.layer_2.0.running_mean" in changed
    loaded = load_msid(path)  # the loader Load MSID Encoder and mapper training use
    assert set(loaded.state_dict()) == set(MSIDEncoder().state_dict())
    photo = comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_msid_trained.png")
    ours = _s_star(comfy_server, photo, TRAINED, "msid_trained")
    official = _s_star(comfy_server, photo, "msid.pt", "msid_official")
    assert ours.shape == (77, 768) and torch.isfinite(ours).all()
    assert (ours[4:6] - official[4:6]).abs().amax() > 1e-3  # the identifier carries this encoder's S*
    torch.testing.assert_close(ours[:4], official[:4])  # "a photo of" is untouched
