"""SDXL injection (framework-free): S* in token space per tower, bigG's 0 padding, equal chunk counts, face files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from f2d_core.conditioning.injection import equal_chunk_counts, inject_s_star, keep_identifiers_whole
from f2d_core.errors import F2DError, WeightFileError
from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import load_face, save_embedding, save_face
from f2d_core.identity.s_star_family import check_s_star_widths

BOS, EOS, PAD_G = 49406, 49407, 0
SPECIAL = {BOS, EOS}
F, L = 325, 331  # "f", "l"
BANG = 0  # "!" inside a punctuation run ("!$" -> 0, 259) is token 0, bigG's pad id too


def _chunk(content: list[int], pad: int, weight: float = 1.0) -> list[tuple]:
    tokens = [BOS, *content, EOS]
    return [(t, weight) for t in tokens + [pad] * (77 - len(tokens))]


def _sdxl_face(seed: int = 0) -> EncodedFace:
    g = torch.Generator().manual_seed(seed)
    s_star = {"l": torch.randn(2, 768, generator=g), "g": torch.randn(2, 1280, generator=g)}
    return EncodedFace(
        s_star=s_star,
        idvec=torch.randn(1536, generator=g),
        crops=torch.rand(1, 3, 112, 112, generator=g),
        settings={"mapper": "xl.safetensors"},
        pooled_source="identity_prompt",
    )


def test_injection_token_space_writes_s_star_unshifted():
    s_star = torch.randn(2, 1280)
    chunks = [_chunk([320, 1125, 539, F, L, 320, 7355], PAD_G, 1.2)]
    out = inject_s_star(chunks, [F, L], s_star, None, SPECIAL, pad_token=PAD_G)
    assert torch.equal(out[0][4][0], s_star[0]) and torch.equal(out[0][5][0], s_star[1])
    assert out[0][4][1] == out[0][5][1] == 1.2  # the weight is kept
    assert [e[0] for i, e in enumerate(out[0]) if i not in (4, 5)] == [
        e[0] for i, e in enumerate(chunks[0]) if i not in (4, 5)
    ]


def test_g_tower_pads_with_zero_and_keeps_bang_as_content():
    # Window 1: BANG (content 0) then 72 words, then "f" as its last content token; "l" opens window 2.
    first = [BANG, 259] + [320] * 72 + [F]
    chunks = [_chunk(first, PAD_G), _chunk([L, 7355, BANG, 259], PAD_G)]
    moved = keep_identifiers_whole(chunks, [F, L], SPECIAL, pad_token=PAD_G)
    ids = [[e[0] for e in c] for c in moved]
    assert ids[0][:3] == [BOS, BANG, 259]  # the content 0 is not taken for padding
    assert ids[0][75:] == [EOS, PAD_G]  # "f" left window 1, which is padded with 0, not the end token
    assert ids[1][:8] == [BOS, F, L, 7355, BANG, 259, EOS, PAD_G] and set(ids[1][8:]) == {PAD_G}
    out = inject_s_star(chunks, [F, L], torch.ones(2, 1280), None, SPECIAL, pad_token=PAD_G)
    assert torch.is_tensor(out[1][1][0]) and torch.is_tensor(out[1][2][0])
    # SD1 padding (end token as pad) is untouched by the change.
    sd1 = [[(t, 1.0) for t in [BOS, *first, EOS]], _chunk([L], EOS)]
    assert [e[0] for e in keep_identifiers_whole(sd1, [F, L], SPECIAL)[0]][75:] == [EOS, EOS]


def test_towers_keep_equal_chunk_counts():
    l_chunks = [_chunk([320], EOS), _chunk([F, L], EOS)]
    g_chunks = [_chunk([320], PAD_G)]
    out = equal_chunk_counts({"l": l_chunks, "g": g_chunks}, {"l": _chunk([], EOS), "g": _chunk([], PAD_G)})
    assert len(out["l"]) == len(out["g"]) == 2 and out["g"][1] == _chunk([], PAD_G) and out["l"] == l_chunks


def test_face_file_v2_round_trip_and_v1_still_loads(tmp_path):
    face = _sdxl_face()
    back = load_face(save_face(tmp_path / "xl.safetensors", face))
    assert back.s_star.keys() == {"l", "g"} and all(torch.equal(back.s_star[t], face.s_star[t]) for t in ("l", "g"))
    assert back.pooled_source == "identity_prompt" and back.settings == face.settings
    v1 = EncodedFace(s_star=torch.randn(2, 768), idvec=torch.randn(1536), crops=torch.rand(1, 3, 112, 112))
    back1 = load_face(save_face(tmp_path / "sd1.safetensors", v1))
    assert torch.equal(back1.s_star, v1.s_star) and back1.pooled_source is None
    bad = _sdxl_face()
    bad.s_star["g"] = torch.randn(2, 768)
    with pytest.raises(WeightFileError, match="tensor 'clip_g' should have shape \\(2, 1280\\)"):
        load_face(save_face(tmp_path / "bad.safetensors", bad))
    with pytest.raises(F2DError, match="wrong width for the SDXL text tower 'g'"):
        check_s_star_widths(bad.s_star)


def test_embedding_export_has_clip_l_and_clip_g(tmp_path):
    face = _sdxl_face()
    tensors = load_file(str(save_embedding(tmp_path / "person.safetensors", face)))
    assert set(tensors) == {"clip_l", "clip_g"}
    assert {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()} == {
        "clip_l": ((2, 768), torch.float32),
        "clip_g": ((2, 1280), torch.float32),
    }
    assert torch.equal(tensors["clip_g"], face.s_star["g"])
    # The face file itself is an embedding too: ComfyUI's load_embed reads embed["clip_l"] / embed["clip_g"].
    face_tensors = load_file(str(save_face(tmp_path / "face.safetensors", face)))
    assert torch.equal(face_tensors["clip_l"], face.s_star["l"])
    with pytest.raises(ValueError, match="only SDXL faces"):
        save_embedding(
            tmp_path / "sd1.safetensors",
            EncodedFace(torch.randn(2, 768), torch.randn(1536), torch.rand(0, 3, 112, 112)),
        )


def test_both_towers_put_s_star_at_the_same_positions_after_a_short_window():
    """A window ended early (ComfyUI's BREAK) with "f" last and "l" opening the next: the g tower's 0 padding is
    not content, so both towers see the same split identifier, move it the same way and inject at the same place."""
    content = [320, 1125, F]
    towers = {"l": EOS, "g": PAD_G}
    out = {}
    for tower, pad in towers.items():
        chunks = [_chunk(content, pad), _chunk([L, 7355], pad)]
        special = SPECIAL if pad != EOS else {BOS, EOS}
        out[tower] = inject_s_star(
            chunks, [F, L], torch.ones(2, 8), None, special, pad_token=None if pad == EOS else pad
        )
    where = {
        t: [(c, i) for c, chunk in enumerate(o) for i, e in enumerate(chunk) if torch.is_tensor(e[0])]
        for t, o in out.items()
    }
    assert where["l"] == where["g"] == [(1, 1), (1, 2)]
