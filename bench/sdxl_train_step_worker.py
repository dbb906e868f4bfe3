"""Library script for bench/sdxl_train_step.py (run through tests/support/comfy_library_run.py).

One SDXL CGDR step of the pack's trainer with micro-batching (`micro_batch`, gradients accumulated)
against the straightforward step (the whole batch in one forward and backward), on the same data,
weights, noise and timesteps. mode "time": both alternate in this process, median seconds per step
and the peak GPU memory of each (torch.cuda.max_memory_allocated); mode "memory": one configuration
only, for the CPU, where the process's peak RSS above its RSS before the first step is the measure
(run once per configuration, each in its own process).

With `full_unet`, the tiny SDXL's UNet is replaced by the full-size SDXL UNet (2.57 B parameters,
ComfyUI's `UNetModel` with the detected SDXL configuration) on seeded random weights in the training
dtype: the real UNet's time and memory, not its behaviour. The text towers stay the tiny ones (the
real towers add ~1.5 GiB of weights and ~0.16 GiB of activations per prompt, docs/sdxl.md 3.6).
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from pathlib import Path

import comfy.ops
import comfy.sd
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfyui_face2diffusion.f2d_core.identity.mapper_xl import F2DMapperXL
from comfyui_face2diffusion.f2d_core.training.data.dataset import TrainingSet
from comfyui_face2diffusion.f2d_core.training.data.report import DatasetReport
from comfyui_face2diffusion.f2d_core.training.trainer import MapperTrainer, TrainSettings
from comfyui_face2diffusion.nodes.training.comfy_backend import enable_gradient_checkpointing
from comfyui_face2diffusion.nodes.training.comfy_backend_sdxl import ComfySDXLBackend

FULL_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
    "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
    "num_heads": -1, "num_head_channels": 64, "use_temporal_resblock": False, "use_temporal_attention": False,
}  # fmt: skip  # docs/sdxl.md 4.2 (ComfyUI's detection of the SDXL base UNet)


def _data(n: int, latent: int) -> TrainingSet:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, 1, latent, latent, dtype=torch.uint8)
    masks[..., latent // 4 : -latent // 4, latent // 4 : -latent // 4] = 1
    return TrainingSet(
        idvec=torch.randn(n, 1, 1536, generator=g),
        expression=torch.randn(n, 1, 64, generator=g),
        latents=torch.randn(n, 1, 4, latent, latent, generator=g).half(),
        masks=masks,
        person=[""] * n,
        files=[f"{i}" for i in range(n)],
        report=DatasetReport(folder="synthetic"),
        source_side=torch.full((n, 1), 700.0),
    )


def _full_unet(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    unet = UNetModel(**FULL_SDXL_UNET, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim > 1:
                p.normal_(0, 0.02, generator=g)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)  # norms: identity scale, zero shift
    return unet.requires_grad_(False).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main(
    checkpoint: str,
    te_options: str,
    run_dir: str,
    configs: list[dict],
    resolution: int = 128,
    steps: int = 3,
    mode: str = "time",
    full_unet: bool = False,
    training_dtype: str = "auto",
) -> dict:
    """configs: [{"name", "batch", "micro_batch", "checkpointing"}]; micro_batch 0 = the straightforward step;
    checkpointing: False, True ("block") or a granularity of CHECKPOINT_GRANULARITIES, swapped in per step."""
    options = json.loads(Path(te_options).read_text())
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(
        checkpoint, output_vae=True, output_clip=True, te_model_options=options
    )
    with torch.inference_mode(False):
        backend = ComfySDXLBackend(model, clip, training_dtype=training_dtype)
        device = backend.device
        if full_unet:
            backend.unet = None
            backend.unet = _full_unet(device, backend.training_dtype)
        plain_unet = backend.unet
        data = _data(max(c["batch"] for c in configs), resolution // 8)
        trainers, class_cond = {}, backend.text_context("A photo of a person", pooled=True).detach()
        for c in configs:
            settings = TrainSettings(batch_size=c["batch"], micro_batch=c["micro_batch"], checkpoint_every=10**9)
            trainers[c["name"]] = MapperTrainer(F2DMapperXL().to(device), backend, data, settings, Path(run_dir))
        results: dict[str, dict] = {c["name"]: {"times": [], **c} for c in configs}
        before = _rss_bytes()
        for step in range(steps + 1):  # step 0: warm-up (kernels, allocator), not timed
            for c in configs if step % 2 else configs[::-1]:
                enable = c.get("checkpointing", False)  # False, True ("block") or a granularity
                if enable:
                    enable_gradient_checkpointing(plain_unet, "block" if enable is True else enable)
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                trainers[c["name"]]._train_step(step, class_cond)
                _sync(device)
                if step:
                    results[c["name"]]["times"].append(time.perf_counter() - start)
                if device.type == "cuda":
                    peak = torch.cuda.max_memory_allocated(device) / 2**30
                    results[c["name"]]["peak_gib"] = max(results[c["name"]].get("peak_gib", 0.0), peak)
                if enable:
                    _restore_blocks(plain_unet)
        if device.type != "cuda":
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            for r in results.values():
                r["peak_rss_above_start_mib"] = (peak_rss - before) / 2**20
    for r in results.values():
        r["seconds_per_step"] = statistics.median(r.pop("times"))
        r["samples_per_second"] = r["batch"] / r["seconds_per_step"]
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "training_dtype": str(backend.training_dtype),
        "resolution": resolution,
        "full_unet": full_unet,
        "mode": mode,
        "configs": results,
    }


def _restore_blocks(unet: torch.nn.Module) -> None:
    """Undo enable_gradient_checkpointing: each block back to its original class."""
    for block in unet.modules():
        if getattr(type(block), "_f2d_checkpointed", False):
            block.__class__ = type(block).__mro__[1]
