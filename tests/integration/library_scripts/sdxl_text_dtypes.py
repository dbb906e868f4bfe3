"""Library script (run by tests/support/comfy_library_run.py, and by bench/gpu_robustness.py on a GPU): an SDXL
face on text towers loaded in each of ComfyUI's text-encoder dtypes.

The tiny SDXL's CLIP is loaded as ComfyUI loads it under `--fp16-text-enc`, `--fp32-text-enc`, `--bf16-text-enc`
and `--fp8_e4m3fn-text-enc` (the flags set, `comfy/model_management.py` `text_encoder_dtype`). Per dtype:
- `parity_max_abs`: S* spliced in by Apply F2D Tokens (fp32 tensors in the token lists) against the same vectors as
  a ComfyUI embedding file, cond and pooled (ComfyUI casts both to fp32 before the towers, comfy/sd1_clip.py
  `process_tokens`; 0 expected);
- `fingerprint`: the towers' text-encoder fingerprint, and `warning`: Apply F2D Tokens' fine-tuned-towers warning
  for a face whose mapper was trained on the fp16 load of these very towers.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy.cli_args
import comfy.sd
import comfy.utils
import torch
from comfyui_face2diffusion.nodes.clip_tokens import (
    clip_text_fingerprint,
    fine_tuned_towers_warning,
    tokens_with_face,
)
from safetensors.torch import save_file

PROMPT = "a photo of f l as a knight"
FLAGS = {"fp16": "fp16_text_enc", "fp32": "fp32_text_enc", "bf16": "bf16_text_enc", "fp8_e4m3fn": "fp8_e4m3fn_text_enc"}


def _load_clip(sd: dict, options: dict, flag: str, embeddings_dir: str):
    """The CLIP as ComfyUI loads it with `flag` on the command line (and only it)."""
    args = comfy.cli_args.args
    saved = {f: getattr(args, f) for f in FLAGS.values()}
    try:
        for f in FLAGS.values():
            setattr(args, f, f == flag)
        _, clip, _, _ = comfy.sd.load_state_dict_guess_config(
            dict(sd), output_vae=False, output_model=False, embedding_directory=embeddings_dir, te_model_options=options
        )
    finally:
        for f, v in saved.items():
            setattr(args, f, v)
    return clip


def _encode(clip, tokens):
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    return out["cond"], out["pooled_output"]


def main(checkpoint: str, te_options: str, embeddings_dir: str, dtypes: list[str] | None = None) -> dict:
    options = {k: v for k, v in json.loads(Path(te_options).read_text()).items() if k != "dtype"}
    sd = comfy.utils.load_torch_file(checkpoint)
    g = torch.Generator().manual_seed(1)
    face = {"l": torch.randn(2, 768, generator=g) * 0.02, "g": torch.randn(2, 1280, generator=g) * 0.02}
    save_file({"clip_l": face["l"], "clip_g": face["g"]}, str(Path(embeddings_dir) / "face.safetensors"))
    clips = {"fp16": _load_clip(sd, options, FLAGS["fp16"], embeddings_dir)}
    trained = {"text_encoder_fingerprint": clip_text_fingerprint(clips["fp16"])}  # a mapper trained on fp16 towers
    out = {"trained_fingerprint": trained["text_encoder_fingerprint"]}
    for name in dtypes or list(FLAGS):
        clip = clips.pop(name, None) or _load_clip(sd, options, FLAGS[name], embeddings_dir)
        cond, pooled = _encode(clip, tokens_with_face(clip, PROMPT, face, "f l"))
        ti_cond, ti_pooled = _encode(clip, clip.tokenize("a photo of embedding:face as a knight"))
        out[name] = {
            "weights": str(clip.cond_stage_model.clip_g.transformer.text_model.embeddings.token_embedding.weight.dtype),
            "parity_max_abs": max(float((cond - ti_cond).abs().max()), float((pooled - ti_pooled).abs().max())),
            "finite": bool(torch.isfinite(cond).all() and torch.isfinite(pooled).all()),
            "fingerprint": clip_text_fingerprint(clip),
            "warning": fine_tuned_towers_warning(clip, trained),
        }
    return out
