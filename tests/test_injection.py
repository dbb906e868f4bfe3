"""Injection: S* lands at the identifier as `S* - position_embedding[pos]`, across chunks and weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f2d_core.conditioning.injection import find_identifier, inject_s_star, keep_identifiers_whole
from f2d_core.errors import PromptError
from tests.support.formula_weights import clip_text_state_dict

BOS, EOS = 49406, 49407
SPECIAL = (BOS, EOS)
F, L = 325, 331  # CLIP tokens of "f" and "l"


def _chunk(content: list[int], weight: float = 1.0) -> list[tuple]:
    tokens = [BOS, *content, EOS]
    tokens += [EOS] * (77 - len(tokens))
    return [(t, weight) for t in tokens]


@pytest.fixture(scope="module")
def clip_text_model():
    """SD1.x's CLIP-L text encoder (transformers) on the fixture's formula weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    model = CLIPTextModel(config).eval()
    text_model = getattr(model, "text_model", model)  # transformers 5 dropped the `text_model.` level
    prefix = "text_model." if text_model is not model else ""
    weights = {prefix + k.removeprefix("text_model."): v for k, v in clip_text_state_dict().items()}
    result = model.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys
    assert all("position_ids" in k for k in result.missing_keys)
    return text_model


def _encode(model, chunk: list[tuple]) -> torch.Tensor:
    """Run the text encoder with token embeddings taken from a chunk (ints looked up, tensors spliced)."""
    table = model.embeddings.token_embedding.weight
    rows = [table[e[0]] if isinstance(e[0], int) else e[0].to(table) for e in chunk]
    spliced = torch.stack(rows)[None]
    hook = model.embeddings.token_embedding.register_forward_hook(lambda *_: spliced)
    try:
        with torch.no_grad():
            ids = torch.tensor([[e[0] if isinstance(e[0], int) else 0 for e in chunk]])
            return model(input_ids=ids).last_hidden_state[0]
    finally:
        hook.remove()


def test_injected_chunks_reproduce_official_clip_hidden(clip_text_model, expected):
    position_embedding = clip_text_model.embeddings.position_embedding.weight
    s_star = torch.from_numpy(expected["s_null"][0])
    for k, token_ids in enumerate(expected["clip_token_ids"]):
        chunks = [[(int(t), 1.0) for t in token_ids]]
        injected = inject_s_star(chunks, [F, L], s_star, position_embedding, SPECIAL)
        pos = int(expected["clip_face_pos"][k])
        assert not isinstance(injected[0][pos][0], int) and not isinstance(injected[0][pos + 1][0], int)
        hidden = _encode(clip_text_model, injected[0])
        np.testing.assert_allclose(hidden.numpy(), expected["clip_hidden"][k], atol=1e-4, rtol=0)


def test_injected_entry_is_s_star_minus_position_embedding():
    positions = torch.randn(77, 768)
    s_star = torch.randn(2, 768)
    out = inject_s_star([_chunk([320, F, L, 601])], [F, L], s_star, positions, SPECIAL)
    torch.testing.assert_close(out[0][2][0], s_star[0] - positions[2])
    torch.testing.assert_close(out[0][3][0], s_star[1] - positions[3])
    original = _chunk([320, F, L, 601])
    assert [e[0] for e in out[0][:2] + out[0][4:]] == [e[0] for e in original[:2] + original[4:]]


def test_every_occurrence_is_replaced_and_weights_kept():
    chunk = _chunk([F, L, 320, F, L])
    chunk[4] = (F, 1.2)
    chunk[5] = (L, 1.2)
    out = inject_s_star([chunk], [F, L], torch.zeros(2, 768), torch.zeros(77, 768), SPECIAL)
    replaced = [i for i, e in enumerate(out[0]) if not isinstance(e[0], int)]
    assert replaced == [1, 2, 4, 5]
    assert [out[0][i][1] for i in replaced] == [1.0, 1.0, 1.2, 1.2]


def test_extra_entry_fields_survive():
    chunk = [(t, 1.0, 7) for t, _ in _chunk([F, L])]
    out = inject_s_star([chunk], [F, L], torch.zeros(2, 768), torch.zeros(77, 768), SPECIAL)
    assert out[0][1][1:] == (1.0, 7)


def test_identifier_split_by_a_chunk_boundary_is_found_and_moved_whole_into_the_next_window():
    first = _chunk([320] * 74 + [F])  # "f" is the last content token of window 0 (index 75)
    second = _chunk([L, 601])  # "l" opens window 1 (index 1)
    positions = torch.randn(77, 768)
    s_star = torch.randn(2, 768)
    assert find_identifier([first, second], [F, L], SPECIAL) == [[(0, 75), (1, 1)]]
    assert keep_identifiers_whole([first, second], [F, L], SPECIAL) == [_chunk([320] * 74), _chunk([F, L, 601])]
    out = inject_s_star([first, second], [F, L], s_star, positions, SPECIAL)
    assert out[0] == _chunk([320] * 74)
    torch.testing.assert_close(out[1][1][0], s_star[0] - positions[1])
    torch.testing.assert_close(out[1][2][0], s_star[1] - positions[2])
    assert out[1][3:] == _chunk([F, L, 601])[3:]


def test_moved_identifier_pushes_a_full_window_on_into_a_new_one():
    first = _chunk([320] * 74 + [F])
    second = _chunk([L] + [601] * 74)  # full: one token must move on
    out = keep_identifiers_whole([first, second], [F, L], SPECIAL)
    assert out == [_chunk([320] * 74), _chunk([F, L] + [601] * 73), _chunk([601])]


def test_existing_embeddings_in_the_prompt_are_left_alone():
    chunk = _chunk([F, L, 320])
    textual_inversion = torch.ones(768)
    chunk[3] = (textual_inversion, 1.0)
    out = inject_s_star([chunk], [F, L], torch.zeros(2, 768), torch.zeros(77, 768), SPECIAL)
    assert out[0][3][0] is textual_inversion


def test_input_chunks_are_not_mutated():
    chunks = [_chunk([F, L])]
    before = [list(c) for c in chunks]
    inject_s_star(chunks, [F, L], torch.zeros(2, 768), torch.zeros(77, 768), SPECIAL)
    assert chunks == before


def test_missing_identifier_is_a_clear_error():
    with pytest.raises(PromptError, match=r'does not contain the identifier "f l".*a photo of f l'):
        inject_s_star([_chunk([320, F, 601])], [F, L], torch.zeros(2, 768), torch.zeros(77, 768), SPECIAL)


def test_identifier_of_wrong_token_count_is_a_clear_error():
    with pytest.raises(PromptError, match=r'"sks" is 1 CLIP tokens.*exactly 2 tokens'):
        inject_s_star([_chunk([320])], [320], torch.zeros(2, 768), torch.zeros(77, 768), SPECIAL, "sks")


def test_gradient_flows_to_s_star():
    s_star = torch.randn(2, 768, requires_grad=True)
    out = inject_s_star([_chunk([F, L])], [F, L], s_star, torch.randn(77, 768), SPECIAL)
    (out[0][1][0].sum() + out[0][2][0].sum()).backward()
    assert s_star.grad is not None and torch.all(s_star.grad == 1)
