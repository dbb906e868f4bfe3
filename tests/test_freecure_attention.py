"""FASA, gathered (f2d_core.freecure.attention and .patch) against a reference of FreeCure's formulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from f2d_core.freecure.attention import FasaLayoutError, fasa_attention
from f2d_core.freecure.foundation_cache import FoundationCache
from f2d_core.freecure.gating import SigmaWindow
from f2d_core.freecure.masks import LayerMasks
from f2d_core.freecure.patch import FasaPatch

HEADS = 8


def sdpa(q, k, v, heads, mask=None, **_):
    """ComfyUI's attention_pytorch contract: [B, N, H*D] in and out, a 3-D float mask broadcast over heads."""
    b, n, width = q.shape
    d = width // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, width)


def reference_fasa(q, k, v, heads, cond_or_uncond, pairs, masks_flat, omega, style_fidelity):
    """The specification's Sec. 1.6 literally: PD keys concatenated with all N FD keys, logits [h, N, 2N],
    +omega on FD keys inside the mask, -inf outside, softmax over 2N; uncond PD blended with style_fidelity.
    (FreeCure's code tests `M * omega == 0` for "outside", the same thing for omega != 0.)"""
    b = 2 * pairs
    n = q.shape[1]
    d = q.shape[2] // heads
    out = sdpa(q, k, v, heads)
    plain = out.clone()
    for c, kind in enumerate(cond_or_uncond):
        if kind == 1 and style_fidelity == 1.0:
            continue
        for j in range(pairs):
            pd, fd = c * b + j, c * b + pairs + j
            qh = q[pd].view(n, heads, d).transpose(0, 1)  # [h, N, d]
            kh = torch.cat([k[pd], k[fd]]).view(2 * n, heads, d).transpose(0, 1)  # [h, 2N, d]
            vh = torch.cat([v[pd], v[fd]]).view(2 * n, heads, d).transpose(0, 1)
            scores = qh @ kh.transpose(1, 2) * d**-0.5  # [h, N, 2N]
            fd_bias = torch.where(masks_flat[j], torch.tensor(omega), torch.tensor(float("-inf")))
            scores[:, :, n:] += fd_bias
            o = (scores.softmax(-1) @ vh).transpose(0, 1).reshape(n, heads * d)
            out[pd] = o if kind == 0 else (1 - style_fidelity) * o + style_fidelity * plain[pd]
    return out


def _qkv(batch, n=1024, width=640, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, n, width, generator=g) for _ in range(3))


def _masks(pairs, h, w, seed=1, fraction=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(pairs, h, w, generator=g) < fraction


def _tokens(masks):
    return [m.flatten().nonzero()[:, 0] for m in masks]


def test_gathered_fasa_equals_the_reference_within_1e_5_fp32():
    q, k, v = _qkv(4)  # [u_PD, u_FD, c_PD, c_FD], 32x32 tokens, 640 channels, 8 heads
    masks = _masks(1, 32, 32)
    for omega in (0.5, 2.0):
        ours = fasa_attention(q, k, v, HEADS, [1, 0], 1, _tokens(masks), omega, 1.0, sdpa)
        ref = reference_fasa(q, k, v, HEADS, [1, 0], 1, masks.flatten(1), omega, 1.0)
        assert (ours - ref).abs().max() < 1e-5
        assert (ours[2] - sdpa(q, k, v, HEADS)[2]).abs().max() > 1e-3  # it did change the cond PD row


def test_style_fidelity_below_one_blends_the_uncond_row_like_the_reference():
    q, k, v = _qkv(4, n=256, width=320)
    masks = _masks(1, 16, 16)
    ours = fasa_attention(q, k, v, HEADS, [1, 0], 1, _tokens(masks), 1.0, 0.25, sdpa)
    ref = reference_fasa(q, k, v, HEADS, [1, 0], 1, masks.flatten(1), 1.0, 0.25)
    assert (ours - ref).abs().max() < 1e-5
    with pytest.raises(FasaLayoutError, match="style_fidelity"):
        fasa_attention(q, k, v, HEADS, [1, 0], 1, _tokens(masks), 1.0, 1.5, sdpa)


@pytest.mark.parametrize("cond_or_uncond", [[0], [1], [1, 0], [0, 1], [1, 0, 0]])
@pytest.mark.parametrize("pairs", [1, 2])
def test_only_conditional_pd_rows_change_and_match_the_reference(cond_or_uncond, pairs):
    q, k, v = _qkv(len(cond_or_uncond) * 2 * pairs, n=96, width=320, seed=pairs)
    masks = _masks(pairs, 12, 8, seed=3)  # non-square 12x8
    plain = sdpa(q, k, v, HEADS)
    ours = fasa_attention(q, k, v, HEADS, cond_or_uncond, pairs, _tokens(masks), 2.0, 1.0, sdpa)
    ref = reference_fasa(q, k, v, HEADS, cond_or_uncond, pairs, masks.flatten(1), 2.0, 1.0)
    assert (ours - ref).abs().max() < 1e-5
    changed = {c * 2 * pairs + j for c, kind in enumerate(cond_or_uncond) if kind == 0 for j in range(pairs)}
    for row in range(q.shape[0]):
        if row in changed:
            assert not torch.equal(ours[row], plain[row]), row
        else:
            assert torch.equal(ours[row], plain[row]), row  # FD rows and uncond PD rows: bit for bit


def test_empty_mask_and_omega_minus_infinity_give_plain_attention():
    q, k, v = _qkv(4, n=64, width=320)
    plain = sdpa(q, k, v, HEADS)
    empty = [torch.zeros(0, dtype=torch.long)]
    assert torch.equal(fasa_attention(q, k, v, HEADS, [1, 0], 1, empty, 2.0, 1.0, sdpa), plain)
    tokens = _tokens(_masks(1, 8, 8))
    assert torch.equal(fasa_attention(q, k, v, HEADS, [1, 0], 1, tokens, float("-inf"), 1.0, sdpa), plain)
    near = fasa_attention(q, k, v, HEADS, [1, 0], 1, tokens, -1e4, 1.0, sdpa)
    assert (near - plain).abs().max() < 1e-6  # the limit, approached
    # one pair empty, the other not: the empty pair's rows stay bit for bit
    q2, k2, v2 = _qkv(4, n=64, width=320, seed=5)
    out = fasa_attention(q2, k2, v2, HEADS, [0], 2, [tokens[0], empty[0]], 2.0, 1.0, sdpa)
    plain2 = sdpa(q2, k2, v2, HEADS)
    assert not torch.equal(out[0], plain2[0]) and torch.equal(out[1], plain2[1])


def test_bad_layout_is_refused():
    q, k, v = _qkv(6, n=64, width=320)
    with pytest.raises(FasaLayoutError, match="chunk"):
        fasa_attention(q, k, v, HEADS, [1, 0], 1, _tokens(_masks(1, 8, 8)), 1.0, 1.0, sdpa)


def _eo(cu, h, w, sigma, block=("output", 1), batch=2):
    return {
        "n_heads": HEADS,
        "cond_or_uncond": cu,
        "sigmas": torch.full((batch,), sigma),
        "block": block,
        "block_index": 0,
        "activations_shape": [batch, 320, h, w],
        "original_shape": [batch, 4, h, w],
        "attn_precision": None,
    }


def _plain(q, k, v, eo):
    return sdpa(q, k, v, eo["n_heads"])


@pytest.mark.parametrize("pairs", [1, 2])
def test_cached_foundation_route_equals_the_pair_batch(pairs):
    """Stage 1 records FD keys/values alone; stage 2's PD-only rows equal FASA on the [PD, FD] batch."""
    h, w = 12, 8  # non-square
    cu = [1, 0]
    q, k, v = _qkv(len(cu) * 2 * pairs, n=h * w, width=320, seed=7)
    masks = LayerMasks(_masks(pairs, 12, 8, seed=2))
    both = FasaPatch("pairs", pairs, _plain, sdpa, omega=1.5, masks=masks)
    want = both(q, k, v, _eo(cu, h, w, 3.0, batch=q.shape[0]))
    fd = torch.cat([torch.arange(c * 2 * pairs + pairs, (c + 1) * 2 * pairs) for c in range(len(cu))])
    pd = torch.cat([torch.arange(c * 2 * pairs, c * 2 * pairs + pairs) for c in range(len(cu))])
    cache = FoundationCache()
    record = FasaPatch("record", pairs, _plain, sdpa, omega=1.5, cache=cache)
    assert torch.equal(record(q[fd], k[fd], v[fd], _eo(cu, h, w, 3.0, batch=len(fd))), sdpa(q[fd], k[fd], v[fd], 8))
    cache.gather(masks)
    replay = FasaPatch("cached", pairs, _plain, sdpa, omega=1.5, masks=masks, cache=cache)
    got = replay(q[pd], k[pd], v[pd], _eo(cu, h, w, 3.0, batch=len(pd)))
    assert (got - want[pd]).abs().max() < 1e-6
    assert cache.misses == 0 and replay.stats.fasa_calls == 1


@pytest.mark.parametrize("style_fidelity", [1.0, 0.5])
def test_cached_route_asks_no_plain_attention_for_the_rows_fasa_replaces(style_fidelity):
    """With a backend that attends each row on its own (rows_independent), the cached mode computes the plain
    attention of the unconditional rows only (kept, or blended when style_fidelity < 1), not of the
    conditional ones FASA overwrites; the output is the same as with the plain output of every row. With no
    in-mask token it asks for the whole batch at once: the plain output bit for bit."""
    pairs, h, w, cu = 2, 12, 8, [1, 0]
    q, k, v = _qkv(len(cu) * pairs, n=h * w, width=320, seed=7)
    eo = _eo(cu, h, w, 3.0, batch=q.shape[0])
    asked = []

    def plain(q_, k_, v_, eo_):
        asked.append(q_)
        return sdpa(q_, k_, v_, eo_["n_heads"])

    for mask_fraction, want_rows in ((0.3, q[:pairs]), (0.0, q)):
        patches = []
        for independent in (None, lambda _: True):
            cache = FoundationCache()
            FasaPatch("record", pairs, _plain, sdpa, style_fidelity=style_fidelity, cache=cache)(q, k, v, eo)
            cache.gather(LayerMasks(_masks(pairs, h, w, seed=2, fraction=mask_fraction)))
            patches.append(
                FasaPatch("cached", pairs, plain, sdpa, omega=1.5, style_fidelity=style_fidelity, cache=cache,
                          rows_independent=independent)
            )  # fmt: skip
        every = patches[0](q, k, v, eo)
        asked.clear()
        kept = patches[1](q, k, v, eo)
        assert len(asked) == 1 and torch.equal(asked[0], want_rows)
        assert (kept - every).abs().max() < 1e-6
        if mask_fraction == 0.0:
            assert torch.equal(kept, sdpa(q, k, v, HEADS))
        else:
            assert (kept[pairs:] - sdpa(q, k, v, HEADS)[pairs:]).abs().max() > 1e-3  # FASA acted


def test_sigma_window_gates_fasa():
    h, w = 8, 8
    q, k, v = _qkv(4, n=64, width=320)
    masks = LayerMasks(_masks(1, 8, 8))
    patch = FasaPatch("pairs", 1, _plain, sdpa, window=SigmaWindow(high=5.0, low=1.0), omega=2.0, masks=masks)
    plain = sdpa(q, k, v, HEADS)
    assert torch.equal(patch(q, k, v, _eo([1, 0], h, w, 7.0, batch=4)), plain)
    assert torch.equal(patch(q, k, v, _eo([1, 0], h, w, 0.5, batch=4)), plain)
    assert not torch.equal(patch(q, k, v, _eo([1, 0], h, w, 2.0, batch=4)), plain)
    # a multi-evaluation sampler's in-between sigma is gated by its value, not by a call counter
    assert not torch.equal(patch(q, k, v, _eo([0, 1], h, w, 2.7, batch=4)), plain)
    assert patch.stats.fasa_calls == 2 and patch.stats.skipped == {"outside the sigma window": 2}


def test_non_square_layer_uses_activations_shape_and_cropped_input_stays_plain():
    h, w = 48, 32
    q, k, v = _qkv(2, n=h * w, width=320)
    masks = LayerMasks(_masks(1, 96, 64, seed=4))
    patch = FasaPatch("pairs", 1, _plain, sdpa, omega=2.0, masks=masks, latent_hw=(h, w))
    out = patch(q, k, v, _eo([0], h, w, 1.0))
    ref = reference_fasa(q, k, v, HEADS, [0], 1, masks.at(h, w).flatten(1), 2.0, 1.0)
    assert masks.at(h, w).shape == (1, 48, 32)
    assert (out - ref).abs().max() < 1e-5
    cropped = _eo([0], h, w, 1.0)
    cropped["original_shape"] = [2, 4, 40, 32]
    assert torch.equal(patch(q, k, v, cropped), sdpa(q, k, v, HEADS))


def test_cached_route_with_a_missing_entry_stays_plain():
    q, k, v = _qkv(2, n=64, width=320)
    cache = FoundationCache()
    cache.gather(LayerMasks(_masks(1, 8, 8)))
    patch = FasaPatch("cached", 1, _plain, sdpa, omega=2.0, cache=cache)
    assert torch.equal(patch(q, k, v, _eo([1, 0], 8, 8, 1.0)), sdpa(q, k, v, HEADS))
    assert cache.misses == 1


def test_a_callable_budget_is_read_once_at_the_first_record_and_caps_what_is_counted():
    reads = []

    def budget() -> int:
        reads.append(True)
        return 2 * 64 * 320 * 4  # one record's keys and values, fp32

    cache = FoundationCache(budget_bytes=budget)
    assert reads == []  # not at construction: the sampler has not loaded the UNet yet
    keys = torch.zeros(1, 64, 320)
    cache.record(("l", 0, 0, 1.0), keys, keys, (8, 8))
    cache.record(("l", 0, 0, 1.0), keys, keys, (8, 8))
    assert len(reads) == 1 and cache.budget_bytes == 2 * 64 * 320 * 4
    assert cache._held == cache.budget_bytes  # the second record went to the CPU, outside the budget
    assert cache.nbytes == 2 * cache.budget_bytes
