"""Library script for bench/gpu_training.py (run through tests/support/comfy_library_run.py).

Loads the checkpoint as ComfyUI does on this device (on an NVIDIA GPU: the UNet in fp16), then
1. learning: for each training dtype, a fresh seeded mapper takes `steps` CGDR steps on one fixed
   batch (same samples, noise and timesteps every step); per step the loss and the mapper's gradient
   norm, and the cosine of the first step's mapper gradient with the fp32 one. "plain fp16" is the
   backward training ran before it had a training dtype: ComfyUI's fp16 UNet without a loss scale.
2. speed: steps/s and peak memory of the trainer's real steps in `speed_dtype` at each batch size.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import comfy.sd
import torch
from comfyui_face2diffusion.f2d_core.identity.mapper import F2DMapper
from comfyui_face2diffusion.f2d_core.training.data.dataset import TrainingSet
from comfyui_face2diffusion.f2d_core.training.data.report import DatasetReport
from comfyui_face2diffusion.f2d_core.training.precision import LossScale, bf16_supported, dtype_name
from comfyui_face2diffusion.f2d_core.training.trainer import MapperTrainer, TrainSettings
from comfyui_face2diffusion.nodes.training.comfy_backend import ComfyDiffusionBackend


def training_set(n: int, latent: int) -> TrainingSet:
    """n seeded samples (one view) with latents at the SD1 VAE's scale and a face mask over the middle."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, 1, latent, latent)
    masks[..., latent // 4 : -latent // 4, latent // 4 : -latent // 4] = 1
    return TrainingSet(
        idvec=torch.randn(n, 1, 1536, generator=g),
        expression=torch.randn(n, 1, 64, generator=g),
        latents=5 * torch.randn(n, 1, 4, latent, latent, generator=g),
        masks=masks,
        person=[""] * n,
        files=[f"{i}.png" for i in range(n)],
        report=DatasetReport(folder="synthetic"),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flat_grad(mapper: F2DMapper) -> torch.Tensor:
    return torch.cat([p.grad.flatten().double().cpu() for p in mapper.parameters() if p.grad is not None])


def learn_on_a_fixed_batch(model, clip, choice: str, data, settings: TrainSettings, run_dir: Path, plain: bool) -> dict:
    """`settings.steps` optimizer steps on step 0's batch; losses, gradient norms and the first gradient."""
    backend = ComfyDiffusionBackend(model, clip, training_dtype=choice, gradient_checkpointing=True)
    torch.manual_seed(settings.seed)
    mapper = F2DMapper().to(backend.device)
    trainer = MapperTrainer(mapper, backend, data, settings, run_dir)
    if plain:
        trainer.loss_scale = LossScale(enabled=False)
    class_context = backend.text_context(settings.class_prompt).detach()
    losses, norms, first = [], [], None
    for _ in range(settings.steps):
        outcome = trainer._train_step(0, class_context)  # the trainer's own step, always on batch 0
        if first is None:
            first = _flat_grad(mapper)
        loss, norm = outcome if outcome is not None else (math.nan, math.nan)
        losses.append(loss)
        norms.append(norm)
    result = {
        "unet_weights": dtype_name(next(model.model.diffusion_model.parameters()).dtype),
        "computes_in": dtype_name(backend.training_dtype),
        "loss_scale": trainer.loss_scale.scale if trainer.loss_scale.enabled else None,
        "losses": losses,
        "grad_norms": norms,
        "zero_gradient_steps": sum(1 for n in norms if n == 0),
    }
    del trainer, backend
    return result, first


def speed(model, clip, choice: str, batch: int, resolution: int, steps: int, run_dir: Path, checkpointing: bool):
    """Median seconds of the trainer's real steps at `batch`, and the peak memory (GPU only)."""
    backend = ComfyDiffusionBackend(model, clip, training_dtype=choice, gradient_checkpointing=checkpointing)
    device = backend.device
    data = training_set(batch, resolution // 8)
    settings = TrainSettings(steps=steps + 2, batch_size=batch, checkpoint_every=10**9)
    trainer = MapperTrainer(F2DMapper().to(device), backend, data, settings, run_dir)
    class_context = backend.text_context(settings.class_prompt).detach()
    trainer._train_step(0, class_context)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(1, steps + 1):
        _sync(device)
        start = time.perf_counter()
        trainer._train_step(step, class_context)
        _sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    computes_in = dtype_name(backend.training_dtype)
    del trainer, backend
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "batch": batch,
        "computes_in": computes_in,
        "gradient_checkpointing": checkpointing,
        "seconds_per_step": seconds,
        "steps_per_second": 1 / seconds,
        "samples_per_second": batch / seconds,
        "peak_gib": peak,
    }


def main(
    checkpoint: str,
    work_dir: str,
    steps: int = 50,
    learn_batch: int = 8,
    speed_batches: tuple[int, ...] = (8, 32),
    resolution: int = 512,
    speed_steps: int = 5,
    learning_rate: float = 1e-4,
    gradient_checkpointing: bool = True,
) -> dict:
    """Both parts; a JSON-able dict."""
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clip=True)
    work = Path(work_dir)
    device = model.load_device
    out: dict = {"device": str(device), "resolution": resolution, "learning": {}, "speed": []}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    data = training_set(learn_batch, resolution // 8)
    settings = TrainSettings(steps=steps, batch_size=learn_batch, learning_rate=learning_rate, checkpoint_every=10**9)
    choices = [("fp32", "fp32", False), ("fp16 + loss scaling", "fp16 + loss scaling", False)]
    choices += [("plain fp16", "fp16 + loss scaling", True)]
    if bf16_supported(device):
        choices.insert(1, ("bf16", "bf16", False))
    speed_dtype = "bf16" if bf16_supported(device) else "fp32"
    reference = None
    with torch.inference_mode(False):
        for name, choice, plain in choices:
            result, first = learn_on_a_fixed_batch(model, clip, choice, data, settings, work / name, plain)
            reference = first if reference is None else reference
            cosine = torch.nn.functional.cosine_similarity(first, reference, dim=0).item()
            out["learning"][name] = {**result, "first_gradient_cosine_to_fp32": 0.0 if math.isnan(cosine) else cosine}
        for batch in speed_batches:
            run_dir = work / f"speed_{batch}"
            checkpointing = gradient_checkpointing
            out["speed"].append(speed(model, clip, speed_dtype, batch, resolution, speed_steps, run_dir, checkpointing))
    return out
