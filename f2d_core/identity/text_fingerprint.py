"""A fingerprint of the text encoders an SDXL mapper was trained with, to notice fine-tuned towers at inference.

S* lives in the input space of the towers it was trained with. Checkpoints that retrained their text encoders
(Pony, Illustrious, NoobAI style) or a text-encoder LoRA move that space, and likeness may drop (shared docs
sdxl.md 2.5, 7.5). The fingerprint is a SHA-256 over the fp16 bytes of a few tensors per tower (the token and
position tables, and the first, middle and last layers' query projections), in key order.

Only fp16 and fp32 towers have one: a weight read as fp32 or fp16 gives the same fp16 bytes (one rounding to fp16
either way), but ComfyUI's `--bf16-text-enc` and `--fp8_e4m3fn-text-enc` / `--fp8_e5m2-text-enc` (comfy/
model_management.py `text_encoder_dtype`) and fp8 checkpoints round the weights coarser first, so the same towers
would hash differently and a mapper would be reported as trained on other text encoders.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

METADATA_KEY = "text_encoder_fingerprint"  # in a mapper file's metadata and an encoded face's settings
COMPARABLE_DTYPES = (torch.float16, torch.float32)  # weights whose fp16 bytes do not depend on the load dtype


def fingerprint_keys(layers: int) -> list[str]:
    """The tensor names (HF CLIP layout, under `text_model.`) the fingerprint reads for a tower of `layers` layers."""
    picked = sorted({0, layers // 2, layers - 1})
    return [
        "embeddings.token_embedding.weight",
        "embeddings.position_embedding.weight",
        *(f"encoder.layers.{i}.self_attn.q_proj.weight" for i in picked),
    ]


def text_encoder_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """Hex SHA-256 of `tensors` ({name: tensor}, e.g. "l/embeddings.token_embedding.weight"), names sorted, each
    tensor's values as contiguous fp16 bytes (so fp16 and fp32 copies of the same weights agree). None when a
    tensor is in another dtype (bf16, fp8): its fp16 bytes differ from the same weights loaded in fp16."""
    if any(t.dtype not in COMPARABLE_DTYPES for t in tensors.values()):
        return None
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()
