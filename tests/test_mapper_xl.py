"""The SDXL mapper F2DMapperXL: shapes and size, anchored start, warm start from the official head, its file."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open

from f2d_core.checkpoints import load_f2d_models, load_mapper, save_f2d_safetensors
from f2d_core.errors import WeightFileError
from f2d_core.identity.mapper import F2DMapper
from f2d_core.identity.mapper_xl import (
    F2DMapperXL,
    class_anchors,
    token_anchors,
    warm_start_l_head,
)
from tests.support.formula_weights import clip_text_state_dict, official_state_dicts


def _seeded_xl(seed: int = 0, pooled_source: str = "class_prompt") -> F2DMapperXL:
    torch.manual_seed(seed)
    return F2DMapperXL(pooled_source=pooled_source).eval()


def test_mapper_xl_shapes_keys_and_size():
    mapper = _seeded_xl()
    out = mapper(torch.randn(3, 1536), torch.randn(3, 64), 0.5)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"l": (3, 2, 768), "g": (3, 2, 1280)}
    assert sum(p.numel() for p in mapper.parameters()) == 25_575_488
    # heads.l has the official key layout: mapping.pt's i2t_* tensors load into it as they are.
    _, official = official_state_dicts()
    head_l = {k: v for k, v in official.items() if k.startswith("i2t_")}
    mapper.heads["l"].load_state_dict(head_l, strict=True)
    keys = set(mapper.state_dict())
    assert {"null_exp", "anchor.l", "anchor.g", "heads.g.i2t_last.fc_out.weight"} <= keys


def test_anchor_init_starts_at_the_anchor():
    table_l, table_g = torch.randn(100, 768), torch.randn(100, 1280)
    names = [[3, 7], [5, 9, 11], [4], [6, 2]]  # a one-token name is skipped
    anchors = {"l": token_anchors(table_l, names), "g": token_anchors(table_g, names)}
    assert torch.equal(anchors["l"][0], table_l[[3, 5, 6]].mean(0)) and torch.equal(
        anchors["g"][1], table_g[[7, 9, 2]].mean(0)
    )
    mapper = _seeded_xl()
    mapper.init_from_anchors(anchors)
    out = mapper(torch.nn.functional.normalize(torch.randn(4, 1536), dim=-1) * 10)
    for t in ("l", "g"):
        rel = (out[t] - anchors[t]).norm(dim=-1) / anchors[t].norm(dim=-1)
        assert float(rel.max().detach()) < 0.05, t
        assert torch.equal(getattr(mapper.anchor, t), anchors[t])
    assert torch.equal(class_anchors(table_g, 12), table_g[12].expand(2, -1))
    with pytest.raises(ValueError, match="anchor for tower 'g' must be \\[2, 1280\\]"):
        mapper.init_from_anchors({"l": anchors["l"], "g": anchors["l"]})


def test_l_head_warm_start_reproduces_official_s_star_at_training_positions():
    _, official_sd = official_state_dicts()
    official = F2DMapper()
    official.load_state_dict(official_sd)
    official.eval()
    pos = clip_text_state_dict()["text_model.embeddings.position_embedding.weight"].float()
    mapper = _seeded_xl()
    warm_start_l_head(mapper, official, pos)
    idvec, exp = torch.randn(2, 1536), torch.randn(2, 64)
    with torch.no_grad():
        s_official, s_xl = official(idvec, exp, 0.7), mapper(idvec, exp, 0.7)["l"]
    torch.testing.assert_close(s_xl + pos[[4, 5]], s_official, rtol=0, atol=1e-6)


def test_sdxl_mapper_file_round_trip_and_family_dispatch(tmp_path):
    mapper = _seeded_xl(pooled_source="identity_prompt")
    mapper.text_encoder_fingerprint = "ab" * 32
    path = save_f2d_safetensors(tmp_path / "xl.safetensors", mapper=mapper)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert "mapper.heads.g.i2t_first.fc_out.weight" in set(f.keys())
    assert (meta["format_version"], meta["family"], meta["s_star_space"]) == ("2", "sdxl", "token")
    assert meta["pooled_source"] == "identity_prompt"
    loaded = load_mapper(path)
    assert isinstance(loaded, F2DMapperXL) and loaded.pooled_source == "identity_prompt"
    assert loaded.text_encoder_fingerprint == "ab" * 32
    saved, back = mapper.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    # The SD1 mapper still loads as before, and asking for the other family names both.
    sd1 = save_f2d_safetensors(tmp_path / "sd1.safetensors", mapper=F2DMapper())
    assert type(load_mapper(sd1)) is F2DMapper
    with safe_open(str(sd1), framework="pt") as f:
        assert f.metadata()["format_version"] == "1" and "family" not in f.metadata()
    with pytest.raises(WeightFileError, match=re.escape("is an SDXL F2D mapper, but an SD1.x one is needed")):
        load_mapper(path, family="sd1")
    with pytest.raises(WeightFileError, match=re.escape("is an SD1.x F2D mapper, but an SDXL one is needed")):
        load_mapper(sd1, family="sdxl")


def test_sdxl_mapper_loads_next_to_the_msid_encoder(tmp_path, official_checkpoints):
    msid_path, _ = official_checkpoints
    path = save_f2d_safetensors(tmp_path / "xl.safetensors", mapper=_seeded_xl())
    models = load_f2d_models(msid_path, path)
    assert isinstance(models.mapper, F2DMapperXL)
