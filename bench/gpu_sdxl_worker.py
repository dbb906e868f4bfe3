"""Library script for bench/gpu_sdxl.py (run through tests/support/comfy_library_run.py): SDXL F2D on full-size shapes.

A full-size SDXL base (the real UNet, CLIP-L and bigG shapes; seeded random weights made on the device, no file,
no download: real costs, not real behaviour), loaded as ComfyUI loads a checkpoint on this device. Then
1. parity: S* in both towers (Apply F2D Tokens' tokens) == the same vectors as a ComfyUI embedding file, in
   ComfyUI's text dtype here: cond and pooled max |diff| (must be 0);
2. text: seconds to encode the prompt, plain CLIPTextEncode against Apply F2D Tokens (class_prompt pooled:
   two encodes), median of `text_rounds`;
3. sampling: KSampler (`steps`, Euler, CFG 5) at `size`, plain against F2D conditioning, alternating, median of
   `rounds` after one warm-up each: S* adds no sampling cost (ratio within 3 %).
With `checkpoint` (the tiny SDXL file and its te_options) instead, it checks itself on a CPU in seconds.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import comfy.clip_model
import comfy.model_management
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.taesd.taesd
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfyui_face2diffusion.nodes.clip_tokens import tokens_with_face
from comfyui_face2diffusion.nodes.face_conditioning import face_conditioning
from safetensors.torch import save_file

import nodes

PROMPT = "a photo of f l as a knight"
FULL_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
    "num_heads": -1, "num_head_channels": 64, "use_temporal_resblock": False, "use_temporal_attention": False,
}  # fmt: skip


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _clip_shapes(config_name: str) -> dict[str, tuple[int, ...]]:
    config = json.loads((Path(comfy.sd1_clip.__file__).parent / config_name).read_text())
    with torch.device("meta"):
        return _shapes(comfy.clip_model.CLIPTextModel(config, torch.float16, "meta", comfy.ops.manual_cast))


def _random(shape: tuple[int, ...], key: str, device: torch.device, g: torch.Generator) -> torch.Tensor:
    """Uniform weights scaled by fan-in (norm weights about 1, biases small), fp16, made on `device`."""
    v = torch.rand(shape, generator=g, device=device, dtype=torch.float16).mul_(2).sub_(1)
    if key.endswith("bias") or (len(shape) == 1 and "weight" not in key):
        return v.mul_(0.02)
    if len(shape) == 1:
        return v.mul_(0.1).add_(1)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return v.mul_((3.0 / fan_in) ** 0.5)


def full_sdxl_state_dict(device: torch.device) -> dict[str, torch.Tensor]:
    """Full-size SDXL checkpoint keys (UNet, TAESD-XL, CLIP-L and bigG), fp16 on `device`."""
    g = torch.Generator(device=device).manual_seed(0) if device.type != "meta" else None
    with torch.device("meta"):
        unet = UNetModel(**FULL_SDXL_UNET, device="meta", operations=comfy.ops.disable_weight_init)
        taesd = comfy.taesd.taesd.TAESD()
    sd = {"model.diffusion_model." + k: _random(s, k, device, g) for k, s in _shapes(unet).items()}
    sd |= {"first_stage_model." + k: _random(s, k, device, g) for k, s in _shapes(taesd).items() if "vae_" not in k}
    sd["first_stage_model.vae_scale"], sd["first_stage_model.vae_shift"] = torch.tensor(0.13025), torch.tensor(0.0)
    for k, s in _clip_shapes("sd1_clip_config.json").items():
        if k.startswith("text_model."):
            sd["conditioner.embedders.0.transformer." + k] = _random(s, k, device, g)
    # bigG: ComfyUI maps `conditioner.embedders.1.model.` to `clip_g.` and converts open_clip names; HF-layout names
    # under `...model.transformer.` are already its final `clip_g.transformer.*` keys.
    for k, s in _clip_shapes("clip_config_bigg.json").items():
        sd["conditioner.embedders.1.model.transformer." + k] = _random(s, k, device, g)
    return sd


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def main(
    checkpoint: str | None = None, size: int = 1024, steps: int = 10, rounds: int = 3, text_rounds: int = 10
) -> dict:
    device = comfy.model_management.get_torch_device()
    embeddings = Path(tempfile.mkdtemp(prefix="f2d_sdxl_emb_"))
    start = time.perf_counter()
    if checkpoint:
        te = json.loads(Path(checkpoint.removesuffix(".safetensors") + ".te_options.json").read_text())
        sd = comfy.utils.load_torch_file(checkpoint)
    else:
        te, sd = {}, full_sdxl_state_dict(device)
    model, clip, _, _ = comfy.sd.load_state_dict_guess_config(
        sd, output_vae=False, embedding_directory=str(embeddings), te_model_options=te
    )
    del sd
    build_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(1)
    table_l = clip.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight
    table_g = clip.cond_stage_model.clip_g.transformer.text_model.embeddings.token_embedding.weight
    face = {
        "l": torch.randn(2, 768, generator=g) * float(table_l.float().std()),
        "g": torch.randn(2, 1280, generator=g) * float(table_g.float().std()),
    }
    save_file({"clip_l": face["l"], "clip_g": face["g"]}, str(embeddings / "face.safetensors"))

    def encode(tokens):
        out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        return out["cond"], out["pooled_output"]

    cond, pooled = encode(tokens_with_face(clip, PROMPT, face, "f l"))
    ti_cond, ti_pooled = encode(clip.tokenize("a photo of embedding:face as a knight"))
    parity = {
        "text_dtype": str(clip.cond_stage_model.clip_l.transformer.text_model.embeddings.token_embedding.weight.dtype),
        "cond_max_abs_diff": float((cond - ti_cond).abs().max()),
        "pooled_max_abs_diff": float((pooled - ti_pooled).abs().max()),
    }

    def plain_cond():
        return nodes.CLIPTextEncode().encode(clip, "a photo of a person as a knight")[0]

    def f2d_cond():
        return face_conditioning(clip, PROMPT, face, "f l", pooled_source="class_prompt")

    text = {"plain": [], "f2d": []}
    for _ in range(text_rounds):
        text["plain"].append(_timed(plain_cond))
        text["f2d"].append(_timed(f2d_cond))
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    positive = {"plain": plain_cond(), "f2d": f2d_cond()}

    def sample(kind: str) -> None:
        nodes.common_ksampler(model, 0, steps, 5.0, "euler", "normal", positive[kind], negative, latent)

    sampling = {"plain": [], "f2d": []}
    for kind in ("plain", "f2d"):
        sample(kind)  # warm-up
    for r in range(rounds):
        for kind in ("plain", "f2d") if r % 2 == 0 else ("f2d", "plain"):
            sampling[kind].append(_timed(lambda k=kind: sample(k)))
    med = {k: statistics.median(v) for k, v in sampling.items()}
    text_med = {k: statistics.median(v) for k, v in text.items()}
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
        "size": size,
        "steps": steps,
        "build_s": build_s,
        "unet_parameters": sum(p.numel() for p in model.model.diffusion_model.parameters()),
        "parity": parity,
        "text_s": text_med,
        "text_ratio": text_med["f2d"] / text_med["plain"],
        "sampling_s": med,
        "sampling_ratio": med["f2d"] / med["plain"],
        "sampling_runs": sampling,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
