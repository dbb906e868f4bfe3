"""The text-encoder fingerprint across the dtypes ComfyUI loads text towers in (--fp16/fp32/bf16/fp8_*-text-enc)."""

from __future__ import annotations

import torch

from f2d_core.identity.text_fingerprint import text_encoder_fingerprint


def _towers(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The same fp16 weights (as an SDXL checkpoint stores them), loaded in `dtype`."""
    g = torch.Generator().manual_seed(0)
    stored = {
        "l/embeddings.token_embedding.weight": (torch.randn(64, 768, generator=g) * 0.02).half(),
        "g/encoder.layers.0.self_attn.q_proj.weight": (torch.randn(128, 1280, generator=g) * 0.02).half(),
    }
    return {k: v.to(dtype) for k, v in stored.items()}


def test_fp16_and_fp32_loads_share_a_fingerprint_and_coarser_loads_have_none():
    fp16 = text_encoder_fingerprint(_towers(torch.float16))
    assert fp16 is not None and len(fp16) == 64
    assert text_encoder_fingerprint(_towers(torch.float32)) == fp16
    # bf16 / fp8 round the same weights coarser: their fp16 bytes would differ, a false "other text encoders".
    for dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        assert text_encoder_fingerprint(_towers(dtype)) is None, dtype
