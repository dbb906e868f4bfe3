"""Norm matching of SDXL S* to the mapper's anchors (sdxl.md 2.3, `norm_match = "anchor"`): exact anchor norms,
the same directions, off by default, and a clear error where there are no anchors."""

from __future__ import annotations

import re

import pytest
import torch

from f2d_core.checkpoints import F2DModels, load_mapper, load_msid, save_f2d_safetensors
from f2d_core.errors import F2DError
from f2d_core.identity.face_encoder import FaceEncoder
from f2d_core.identity.mapper_xl import F2DMapperXL
from f2d_core.identity.norm_match import mapper_anchors, match_anchor_norms
from tests.support.sdxl_mappers import anchored_sdxl_mapper


def _encoder(mapper: F2DMapperXL, official_checkpoints) -> FaceEncoder:
    return FaceEncoder(F2DModels(load_msid(official_checkpoints[0]), mapper, {"mapper": "xl.safetensors"}))


def test_rescaled_words_have_the_anchor_norms_and_the_same_directions(official_checkpoints):
    mapper = anchored_sdxl_mapper()
    encoder = _encoder(mapper, official_checkpoints)
    idvec = torch.nn.functional.normalize(torch.randn(3, 1536), dim=-1) * 10
    plain = encoder.s_star(idvec)
    matched = encoder.s_star(idvec, norm_match="anchor")
    anchors = mapper_anchors(mapper)
    for tower in ("l", "g"):
        norms = matched[tower].norm(dim=-1)  # [3, 2]
        torch.testing.assert_close(norms, anchors[tower].norm(dim=-1).expand(3, -1), rtol=1e-6, atol=0)
        torch.testing.assert_close(
            matched[tower] / norms[..., None], plain[tower] / plain[tower].norm(dim=-1, keepdim=True), rtol=0, atol=1e-6
        )
        assert not torch.allclose(plain[tower].norm(dim=-1), norms, rtol=1e-2)  # it did change the lengths
    # With an expression (as Expression Reference re-maps a norm-matched face), the words are rescaled too.
    expressive = encoder.s_star(idvec[0], torch.randn(64), 1.0, norm_match="anchor")
    torch.testing.assert_close(expressive["g"].norm(dim=-1), anchors["g"].norm(dim=-1), rtol=1e-6, atol=0)


def test_norm_match_is_off_by_default_and_leaves_s_star_bit_identical(official_checkpoints):
    mapper = anchored_sdxl_mapper()
    encoder = _encoder(mapper, official_checkpoints)
    idvec = torch.randn(1536)
    with torch.inference_mode():
        mapped = mapper(idvec[None])
    default, off = encoder.s_star(idvec), encoder.s_star(idvec, norm_match="off")
    for tower in ("l", "g"):
        assert torch.equal(default[tower], mapped[tower][0]) and torch.equal(off[tower], mapped[tower][0])
    with pytest.raises(ValueError, match="norm_match must be 'anchor' or 'off'"):
        encoder.s_star(idvec, norm_match="yes")


def test_norm_match_needs_an_sdxl_mapper_with_anchors(tmp_path, official_checkpoints):
    torch.manual_seed(0)
    unanchored = F2DMapperXL()  # saved before anchored initialisation: anchor buffers all zero
    path = save_f2d_safetensors(tmp_path / "unanchored.safetensors", mapper=unanchored)
    assert mapper_anchors(load_mapper(path)) is None
    with pytest.raises(F2DError, match=re.escape("cannot be norm-matched: it holds no anchors")) as info:
        _encoder(load_mapper(path), official_checkpoints).s_star(torch.randn(1536), norm_match="anchor")
    assert "choose such a mapper_file in Load MSID Encoder, or set norm_match to off" in str(info.value)
    anchored = save_f2d_safetensors(tmp_path / "anchored.safetensors", mapper=anchored_sdxl_mapper())
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            mapper_anchors(load_mapper(anchored)).values(), mapper_anchors(anchored_sdxl_mapper()).values(), strict=True
        )
    )
    with pytest.raises(F2DError, match=re.escape("Norm matching is for SDXL faces, but this face is for SD1.x")):
        match_anchor_norms(torch.randn(2, 768), mapper_anchors(anchored_sdxl_mapper()))
    sd1_encoder = FaceEncoder(F2DModels(load_msid(official_checkpoints[0]), load_mapper(official_checkpoints[1]), {}))
    assert sd1_encoder.anchors is None
    with pytest.raises(F2DError, match="Norm matching is for SDXL faces"):
        sd1_encoder.s_star(torch.randn(1536), norm_match="anchor")
