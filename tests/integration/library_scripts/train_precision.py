"""Library script (run by tests/support/comfy_library_run.py): the training dtype on ComfyUI's fp16 UNet.

On a GPU ComfyUI keeps an SD1.x UNet in fp16; on a CPU it would load fp32, so the checkpoint is
loaded with fp16 weights here (`model_options={"dtype": float16}`), which is what the GPU holds.
For each training dtype the script builds the real backend and trainer, takes the gradient of one
CGDR step with respect to S* (the mapper's output) and compares it with the fp32 gradient of the
same step. The plain fp16 backward that training used to run (no loss scale) is measured too.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import comfy.sd
import torch
from comfyui_face2diffusion.f2d_core.identity.mapper import F2DMapper
from comfyui_face2diffusion.f2d_core.training.data.dataset import TrainingSet
from comfyui_face2diffusion.f2d_core.training.data.report import DatasetReport
from comfyui_face2diffusion.f2d_core.training.precision import LossScale, dtype_name
from comfyui_face2diffusion.f2d_core.training.trainer import MapperTrainer, TrainSettings
from comfyui_face2diffusion.nodes.training.comfy_backend import ComfyDiffusionBackend
from torch import nn


class SStarProbe(nn.Module):
    """The mapper, keeping its output S* and the gradient that reaches it."""

    def __init__(self, mapper: F2DMapper) -> None:
        super().__init__()
        self.mapper, self.s_star = mapper, None

    def forward(self, *args) -> torch.Tensor:
        self.s_star = self.mapper(*args)
        self.s_star.retain_grad()
        return self.s_star


def training_set(n: int, latent: int, mask_value: float = 1.0) -> TrainingSet:
    """n seeded samples, one view, latents of the scale the SD1 VAE gives, the face mask over the middle."""
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, 1, latent, latent)
    masks[..., latent // 4 : -latent // 4, latent // 4 : -latent // 4] = mask_value
    return TrainingSet(
        idvec=torch.randn(n, 1, 1536, generator=g),
        expression=torch.randn(n, 1, 64, generator=g),
        latents=5 * torch.randn(n, 1, 4, latent, latent, generator=g),
        masks=masks,
        person=[""] * n,
        files=[f"{i}.png" for i in range(n)],
        report=DatasetReport(folder="synthetic"),
    )


def s_star_gradient(backend, data, settings: TrainSettings, run_dir: Path, loss_scaling: bool | None = None) -> dict:
    """Gradient of step 0's loss w.r.t. S* [B, 2, 768] through the real trainer (loss scale as the trainer chose)."""
    torch.manual_seed(0)
    mapper = F2DMapper().to(backend.device)
    probe = SStarProbe(mapper)
    trainer = MapperTrainer(mapper, backend, data, settings, run_dir, trainable=probe)
    if loss_scaling is not None:
        trainer.loss_scale = LossScale(enabled=loss_scaling)
    class_context = backend.text_context(settings.class_prompt).detach()
    loss, grad_norm = trainer.gradients(0, class_context)
    return {
        "grad": probe.s_star.grad.detach().float().cpu() / trainer.loss_scale.scale,
        "loss": loss.item(),
        "mapper_grad_norm": float(grad_norm),
        "loss_scale": trainer.loss_scale.scale,
    }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    value = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
    return 0.0 if math.isnan(value) else value


def main(checkpoint: str, work_dir: str, batch: int = 8, latent: int = 64, plain_fp16: bool = False) -> dict:
    """Gradients of S* for each training dtype against fp32; the UNet copies' dtypes; a zero-gradient run."""
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(
        checkpoint, output_vae=False, output_clip=True, model_options={"dtype": torch.float16}
    )
    weights = dtype_name(next(model.model.diffusion_model.parameters()).dtype)
    data = training_set(batch, latent)
    settings = TrainSettings(steps=1, batch_size=batch, checkpoint_every=10**6)
    work = Path(work_dir)
    out: dict = {"unet_weights": weights, "runs": {}}
    with torch.inference_mode(False):
        reference = None
        choices = [("fp32", None), ("bf16", None), ("fp16 + loss scaling", None)]
        if plain_fp16:
            choices.append(("plain fp16", False))  # the backward training ran before it had a training dtype
        for choice, scaling in choices:
            start = time.perf_counter()
            backend = ComfyDiffusionBackend(
                model, clip, training_dtype="fp16 + loss scaling" if choice == "plain fp16" else choice
            )
            built = time.perf_counter()
            got = s_star_gradient(backend, data, settings, work / choice.replace(" ", "_"), scaling)
            reference = got["grad"] if reference is None else reference
            out["runs"][choice] = {
                "unet_copy_dtype": dtype_name(next(backend.unet.parameters()).dtype),
                "training_dtype": dtype_name(backend.training_dtype),
                "cosine_to_fp32": _cosine(got["grad"], reference),
                "zero_fraction": (got["grad"] == 0).float().mean().item(),
                "grad_abs_mean": got["grad"].abs().mean().item(),
                "loss": got["loss"],
                "mapper_grad_norm": got["mapper_grad_norm"],
                "loss_scale": got["loss_scale"],
                "seconds": {"backend": built - start, "gradient": time.perf_counter() - built},
            }
            del backend
        # A loss whose gradient is exactly zero (masked reconstruction with empty masks) stops the run.
        backend = ComfyDiffusionBackend(model, clip, training_dtype="fp32")
        empty = training_set(2, 8, mask_value=0.0)
        stop = TrainSettings(steps=20, batch_size=2, loss="masked_reconstruction", max_zero_gradient_steps=3)
        result = MapperTrainer(F2DMapper(), backend, empty, stop, work / "zero").run(resume=False)
        out["zero_gradient"] = {"status": result.status, "step": result.step, "message": result.message}
    return out
