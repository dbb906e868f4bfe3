"""A tiny SDXL checkpoint that a real ComfyUI detects as SDXL, for CPU tests (docs: shared sdxl.md section 4).

ComfyUI calls a UNet "SDXL" only when `model_channels` is 320 and the input-side transformer depths are
exactly [0, 0, 2, 2, 10, 10] (comfy/supported_models.py `SDXL.unet_config`), so the UNet stays 134 M
parameters; every level keeps 320 channels, the output side has no transformers and the middle block is
one ResBlock. The text towers keep their real widths (768 and 1280: the UNet's 2048-wide context and
2816-wide `y` check them) with 3 layers and an MLP of 64; the stock CheckpointLoaderSimple cannot load
such towers, so the options go beside the file as `<name>.te_options.json` and tests load it with the
probe node `F2DTestTinySDXLCheckpointLoader` (tests/support/probe_nodes), which passes them as
`te_model_options`.

Built in a subprocess (ComfyUI's top-level modules collide with this repository's), once per session or
reused from F2D_TEST_MODEL_CACHE under a stamp, like tests/support/tiny_models.py:

    sdxl = build_tiny_sdxl(models_dir, comfyui_path)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tests.support.tiny_models import (
    UNET_PREFIX,
    VAE_PREFIX,
    BuiltModels,
    _captured_warnings,
    _shapes,
    builder_arguments,
    run_builder,
    save_safetensors,
    seeded_state_dict,
    stamped_build,
    taesd_state_dict,
    timed_build,
    unet_shapes,
)

log = logging.getLogger(__name__)

SDXL_CHECKPOINT = "checkpoints/f2d_tiny_sdxl.safetensors"
TE_OPTIONS_SUFFIX = ".te_options.json"
SPEC_VERSION = 1
STAMP_NAME = ".f2d_tiny_sdxl.json"

SDXL_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_G_PREFIX = "conditioner.embedders.1.model."
REFINER_G_PREFIX = "conditioner.embedders.0.model."
TAESDXL_SCALE = 0.13025  # what ComfyUI's VAELoader sets for taesdxl (nodes.py)

# te_model_options for the tiny towers: ComfyUI reads `<model_name>_model_config` (comfy/sd1_clip.py).
TINY_SDXL_TE_OPTIONS: dict[str, dict[str, int]] = {
    "clip_l_model_config": {"num_hidden_layers": 3, "intermediate_size": 64},
    "clip_g_model_config": {"num_hidden_layers": 3, "intermediate_size": 64},
}


def tiny_sdxl_unet_config() -> dict[str, Any]:
    """A 133.9 M-parameter UNet ComfyUI detects as SDXL: 320 wide at every level, no output-side transformers."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": 2816,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "num_res_blocks": [2, 2, 2],
        "channel_mult": [1, 1, 1],
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_output": [0] * 9,
        "transformer_depth_middle": -1,
        "use_linear_in_transformer": True,
        "context_dim": 2048,
        "num_heads": -1,
        "num_head_channels": 64,
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
    }


def full_sdxl_unet_config() -> dict[str, Any]:
    """The real SDXL base UNet (2,567,463,684 parameters) as ComfyUI's detection describes it; for benchmarks."""
    return {
        **tiny_sdxl_unet_config(),
        "channel_mult": [1, 2, 4],
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "transformer_depth_middle": 10,
    }


def tiny_refiner_unet_config() -> dict[str, Any]:
    """A UNet ComfyUI detects as the SDXL refiner (comfy/supported_models.py `SDXLRefiner.unet_config`)."""
    return {
        **tiny_sdxl_unet_config(),
        "adm_in_channels": 2560,
        "model_channels": 384,
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 1, 1, 1],
        "transformer_depth": [0, 0, 4, 4, 4, 4, 0, 0],
        "transformer_depth_output": [0] * 12,
        "context_dim": 1280,
    }


def clip_text_shapes(config_name: str, override: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ComfyUI's CLIPTextModel for `comfy/<config_name>` with `override` (HF layout)."""
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip

    config_path = Path(comfy.sd1_clip.__file__).parent / config_name
    config = {**json.loads(config_path.read_text()), **override}
    with torch.device("meta"):
        model = comfy.clip_model.CLIPTextModel(config, torch.float16, "meta", comfy.ops.manual_cast)
    return _shapes(model)


def openclip_text_shapes(hf: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The open_clip key layout of an HF-layout CLIP text model: the inverse of comfy/utils.py
    `clip_text_transformers_convert` (q/k/v joined into `in_proj`, `text_projection` transposed)."""
    layers = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("text_model.encoder.layers."))
    w = hf["text_model.embeddings.token_embedding.weight"][1]
    m = hf["text_model.encoder.layers.0.mlp.fc1.weight"][0]
    out: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": (w,),
        "ln_final.bias": (w,),
        "text_projection": (w, w),
    }
    for i in range(layers):
        r = f"transformer.resblocks.{i}."
        out |= {
            r + "attn.in_proj_weight": (3 * w, w),
            r + "attn.in_proj_bias": (3 * w,),
            r + "attn.out_proj.weight": (w, w),
            r + "attn.out_proj.bias": (w,),
            r + "ln_1.weight": (w,),
            r + "ln_1.bias": (w,),
            r + "ln_2.weight": (w,),
            r + "ln_2.bias": (w,),
            r + "mlp.c_fc.weight": (m, w),
            r + "mlp.c_fc.bias": (m,),
            r + "mlp.c_proj.weight": (w, m),
            r + "mlp.c_proj.bias": (w,),
        }
    return out


def clip_l_shapes(te_options: dict = TINY_SDXL_TE_OPTIONS) -> dict[str, tuple[int, ...]]:
    """CLIP-L `text_model.*` shapes (SDXL files carry no CLIP-L projection)."""
    shapes = clip_text_shapes("sd1_clip_config.json", te_options.get("clip_l_model_config", {}))
    return {k: v for k, v in shapes.items() if k.startswith("text_model.")}


def clip_g_shapes(te_options: dict = TINY_SDXL_TE_OPTIONS) -> dict[str, tuple[int, ...]]:
    """bigG shapes in the open_clip layout SDXL checkpoints use."""
    return openclip_text_shapes(clip_text_shapes("clip_config_bigg.json", te_options.get("clip_g_model_config", {})))


def sdxl_text_state_dict(
    seed: int = 0, dtype: torch.dtype = torch.float16, te_options: dict = TINY_SDXL_TE_OPTIONS
) -> dict[str, torch.Tensor]:
    """Both towers, seeded, under the SDXL checkpoint prefixes (needs `import_comfy`)."""
    sd = seeded_state_dict(clip_l_shapes(te_options), SDXL_L_PREFIX, seed, dtype)
    sd |= seeded_state_dict(clip_g_shapes(te_options), SDXL_G_PREFIX, seed, dtype)
    return sd


def sdxl_checkpoint_state_dict(
    unet_config: dict[str, Any] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    text_seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """A whole SDXL checkpoint (UNet, TAESD-XL, both tiny towers); `text_seed` varies only the towers."""
    unet_config = unet_config or tiny_sdxl_unet_config()
    sd = seeded_state_dict(unet_shapes(unet_config), UNET_PREFIX, seed, dtype)
    sd |= taesd_state_dict(seed, dtype, TAESDXL_SCALE)
    sd |= sdxl_text_state_dict(seed if text_seed is None else text_seed, dtype)
    return sd


def sdxl_refiner_state_dict(sdxl: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny refiner (in memory) sharing `sdxl`'s bigG weights: refiner UNet, TAESD-XL, bigG at the refiner's prefix.

    Load it with `te_model_options={"clip_g_model_config": ...}`.
    """
    sd = seeded_state_dict(unet_shapes(tiny_refiner_unet_config()), UNET_PREFIX, seed, torch.float16)
    sd |= {k: v for k, v in sdxl.items() if k.startswith(VAE_PREFIX)}
    sd |= {REFINER_G_PREFIX + k.removeprefix(SDXL_G_PREFIX): v for k, v in sdxl.items() if k.startswith(SDXL_G_PREFIX)}
    return sd


def write_tiny_sdxl(models_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write the tiny SDXL (fp16) and its te_options sidecar under `models_dir` (needs `import_comfy`)."""
    path = models_dir / SDXL_CHECKPOINT
    size = save_safetensors(sdxl_checkpoint_state_dict(seed=seed), path, f"sdxl tiny seed={seed}")
    te_options_path(path).write_text(json.dumps(TINY_SDXL_TE_OPTIONS))
    return {SDXL_CHECKPOINT: size}


def te_options_path(checkpoint: Path) -> Path:
    """The sidecar holding a tiny checkpoint's te_model_options."""
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + TE_OPTIONS_SUFFIX)


# ---------------------------------------------------------------------------------------------
# Verification (inside the subprocess): what ComfyUI makes of the file.


def sdxl_checkpoint_report(path: Path, te_options: dict) -> dict[str, Any]:
    """Load with `te_options` (fp32 towers) and check detection, shapes and one UNet step.

    (The stock loader, without the options, fails with "size mismatch for clip_l...mlp.fc1.weight"; not re-checked
    here: it builds the full-size towers, 1.5 GB and 20 s.)"""
    import comfy.sd

    with _captured_warnings() as warnings:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(path), te_model_options={**te_options, "dtype": torch.float32}
        )
    out = clip.encode_from_tokens(clip.tokenize("a photo of f l as a knight"), return_pooled=True, return_dict=True)
    y = model.model.encode_adm(pooled_output=out["pooled_output"], width=64, height=64, device="cpu")
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        den = model.model.apply_model(noise, torch.tensor([5.0]), c_crossattn=out["cond"], y=y)
    return {
        "model_config": type(model.model.model_config).__name__,
        "model_base": type(model.model).__name__,
        "model_type": model.model.model_type.name,
        "latent_format": type(model.model.latent_format).__name__,
        "clip": type(clip.cond_stage_model).__name__,
        "vae": type(vae.first_stage_model).__name__,
        "vae_scale": vae.first_stage_model.vae_scale.item(),
        "unet_parameters": sum(p.numel() for p in model.model.diffusion_model.parameters()),
        "cond_shape": list(out["cond"].shape),
        "pooled_shape": list(out["pooled_output"].shape),
        "y_shape": list(y.shape),
        "denoised_finite": bool(torch.isfinite(den).all()),
        "warnings": list(warnings),
    }


def build_and_verify(models_dir: Path, seed: int) -> dict[str, Any]:
    """Write the tiny SDXL and verify it (what the subprocess runs)."""
    return timed_build(
        lambda: write_tiny_sdxl(models_dir, seed),
        lambda: sdxl_checkpoint_report(models_dir / SDXL_CHECKPOINT, TINY_SDXL_TE_OPTIONS),
    )


@dataclass(frozen=True)
class TinySDXL(BuiltModels):
    """The tiny SDXL checkpoint and its te_options sidecar."""

    checkpoint: Path
    te_options: Path


def build_tiny_sdxl(models_dir: Path, comfyui_path: Path, seed: int = 0) -> TinySDXL:
    """Build and verify the tiny SDXL into `models_dir` in a ComfyUI subprocess, or reuse a matching build."""
    checkpoint = Path(models_dir) / SDXL_CHECKPOINT
    files = [checkpoint, te_options_path(checkpoint)]
    stamp = (STAMP_NAME, {"spec_version": SPEC_VERSION, "seed": seed})
    options = ["--seed", str(seed)]
    built = stamped_build(models_dir, comfyui_path, "tests.support.tiny_sdxl", options, files, stamp, "tiny SDXL")
    return TinySDXL(**vars(built), checkpoint=files[0], te_options=files[1])


def write_full_sdxl_checkpoint(path: Path, seed: int = 0) -> int:
    """A full-size SDXL base on seeded random weights (real UNet and real-width, real-depth towers, fp16); for GPU
    benchmarks: the real shapes and cost, not the behaviour. Needs `import_comfy`."""
    sd = seeded_state_dict(unet_shapes(full_sdxl_unet_config()), UNET_PREFIX, seed, torch.float16)
    sd |= taesd_state_dict(seed, torch.float16, TAESDXL_SCALE)
    sd |= sdxl_text_state_dict(seed, torch.float16, te_options={})
    return save_safetensors(sd, Path(path), f"sdxl full-size random seed={seed}")


def main(argv: list[str] | None = None) -> None:
    """The builder subprocess: write and verify the tiny SDXL, or (--full-sdxl PATH) a full-size random SDXL."""
    parser = builder_arguments("Build and verify the tiny SDXL test checkpoint.")
    parser.add_argument("--full-sdxl", type=Path, help="Write only a full-size random SDXL checkpoint here.")
    full = ("full_sdxl", write_full_sdxl_checkpoint)
    run_builder(parser, argv, full, lambda a: build_and_verify(a.models_dir, a.seed))


if __name__ == "__main__":
    main()
