"""Library script for bench/train_step.py (run through tests/support/comfy_library_run.py).

Times CGDR training steps of this pack's trainer against the straightforward implementation, side by
side in one process: the straightforward step runs the UNet once on the concatenated batch
[S* prompt; class prompt] with autograd on, so backward also walks the class half; ours predicts the
class noise under no_grad and backpropagates through the S* half only. Same data, same weights.
"""

from __future__ import annotations

import statistics
import time

import comfy.sd
import torch
from comfyui_face2diffusion.f2d_core.identity.mapper import F2DMapper
from comfyui_face2diffusion.f2d_core.training.backend import TextCond
from comfyui_face2diffusion.f2d_core.training.data.dataset import TrainingSet
from comfyui_face2diffusion.f2d_core.training.data.report import DatasetReport
from comfyui_face2diffusion.f2d_core.training.losses import denoising_loss
from comfyui_face2diffusion.f2d_core.training.trainer import MapperTrainer, TrainSettings, sample_batch
from comfyui_face2diffusion.nodes.training.comfy_backend import ComfyDiffusionBackend


def _data(n: int, latent: int) -> TrainingSet:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 2, 1, latent, latent)
    masks[..., latent // 4 : -latent // 4, latent // 4 : -latent // 4] = 1
    return TrainingSet(
        idvec=torch.randn(n, 2, 1536, generator=g),
        expression=torch.randn(n, 2, 64, generator=g),
        latents=torch.randn(n, 2, 4, latent, latent, generator=g),
        masks=masks,
        person=[""] * n,
        files=[f"{i}" for i in range(n)],
        report=DatasetReport(folder="synthetic"),
    )


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(checkpoint: str, batch: int, resolution: int, steps: int, gradient_checkpointing: bool, run_dir: str) -> dict:
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:4]
    with torch.inference_mode(False):
        backend = ComfyDiffusionBackend(model, clip, gradient_checkpointing=gradient_checkpointing)
        data = _data(max(batch, 4), resolution // 8)
        settings = TrainSettings(steps=steps, batch_size=batch, learning_rate=1e-5, checkpoint_every=10**9)
        mapper = F2DMapper().to(backend.device)
        trainer = MapperTrainer(mapper, backend, data, settings, run_dir)
        class_context = backend.text_context(settings.class_prompt).detach()

        def ours(step: int) -> None:
            trainer._train_step(step, class_context)

        def straightforward(step: int) -> None:
            b = sample_batch(data, settings, step)
            g = torch.Generator().manual_seed(step)
            trainer.optimizer.zero_grad(set_to_none=True)
            dev = backend.device
            s_star = mapper(b.idvec.to(dev), b.expression.to(dev), b.keep_expression.to(dev))
            context = backend.text_context(settings.prompt, s_star).context
            latents = b.latents.to(dev)
            noise = torch.randn(latents.shape, generator=g).to(dev)
            t = torch.randint(0, 1000, (len(latents),), generator=g).to(dev)
            noisy = backend.noisy_latents(latents, noise, t)
            both = backend.predict_noise(
                torch.cat([noisy, noisy]),
                torch.cat([t, t]),
                TextCond(torch.cat([context, class_context.context.expand_as(context)])),
            )
            eps_hat, eps_class = both.chunk(2)
            denoising_loss("cgdr", eps_hat, noise, b.masks.to(dev), eps_class.detach()).backward()
            trainer.optimizer.step()

        times: dict[str, list[float]] = {"ours": [], "straightforward": []}
        peak: dict[str, float] = {}
        runs = {"ours": ours, "straightforward": straightforward}
        for name in runs:  # warm-up
            runs[name](0)
        for step in range(1, steps + 1):
            for name in ("ours", "straightforward") if step % 2 else ("straightforward", "ours"):
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                _sync()
                start = time.perf_counter()
                runs[name](step)
                _sync()
                times[name].append(time.perf_counter() - start)
                if torch.cuda.is_available():
                    peak[name] = max(peak.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(backend.device),
        "training_dtype": str(backend.training_dtype),
        "seconds_per_step": median,
        "samples_per_second": {k: batch / v for k, v in median.items()},
        "speedup": median["straightforward"] / median["ours"],
        "peak_gib": peak or "not measured on CPU",
    }
