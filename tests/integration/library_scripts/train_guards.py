"""Library script (run by tests/support/comfy_library_run.py): the trainer's guards on real ComfyUI objects.

On the tiny SD1.5 checkpoint, loaded as ComfyUI loads it, with latents its VAE encodes from photos:
1. `nan_sample`: one of two samples has NaN latents; the steps that draw it are skipped and the run
   completes every step, learning from the others.
2. `diverged`: a run saved at step `good_steps` is continued on data that is NaN everywhere; it stops
   as "diverged" after `max_bad_steps` and the saved state stays as it was.
   A skipped step on a `checkpoint_every` boundary still writes the checkpoint (its step moves on; the
   mapper, moments and losses in it stay the last good ones).
3. `loss_scale`: an fp16 run saved under a loss scale that is not the initial one resumes under it.
4. The user's UNet and text encoder (`backend.frozen_fingerprint()`) and VAE are bit-identical afterwards.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import comfy.sd
import numpy as np
import torch
from comfyui_face2diffusion.f2d_core.identity.mapper import F2DMapper
from comfyui_face2diffusion.f2d_core.training.data.cache import module_fingerprint
from comfyui_face2diffusion.f2d_core.training.data.dataset import TrainingSet
from comfyui_face2diffusion.f2d_core.training.data.report import DatasetReport
from comfyui_face2diffusion.f2d_core.training.state_file import STATE_FILE
from comfyui_face2diffusion.f2d_core.training.trainer import MapperTrainer, TrainSettings, sample_batch
from comfyui_face2diffusion.f2d_core.weight_files import read_weights
from comfyui_face2diffusion.nodes.training.comfy_backend import ComfyDiffusionBackend
from PIL import Image

CROP = 64


def _latents(vae, photos: list[str]) -> torch.Tensor:
    """VAE latents [N, 1, 4, 8, 8] of the photos at CROP x CROP (as the dataset node hands them to the VAE)."""
    images = [np.asarray(Image.open(p).convert("RGB").resize((CROP, CROP)), np.float32) / 255 for p in photos]
    with torch.no_grad():  # outside ComfyUI's executor nothing else keeps the VAE's graph out of the latents
        return vae.encode(torch.from_numpy(np.stack(images))).float()[:, None]


def _training_set(latents: torch.Tensor, nan_rows: list[int]) -> TrainingSet:
    """N samples x 1 view with seeded identity vectors, face masks over the middle, the given rows NaN."""
    n = latents.shape[0]
    latents = latents.clone()
    latents[nan_rows] = float("nan")
    masks = torch.zeros(n, 1, 1, *latents.shape[-2:])
    masks[..., 2:-2, 2:-2] = 1
    return TrainingSet(
        idvec=torch.randn(n, 1, 1536, generator=torch.Generator().manual_seed(0)),
        expression=None,
        latents=latents,
        masks=masks,
        person=[""] * n,
        files=[f"{i}.png" for i in range(n)],
        report=DatasetReport(folder="synthetic"),
    )


def _nan_steps(data: TrainingSet, settings: TrainSettings) -> list[int]:
    """0-based steps whose batch holds a NaN sample."""
    return [s for s in range(settings.steps) if sample_batch(data, settings, s).latents.isnan().any()]


def _seed_with_good_and_nan_steps(data: TrainingSet, settings: TrainSettings) -> int:
    """A seed whose batches mix skipped and trained steps, so both paths run."""
    for seed in range(100):
        nan = _nan_steps(data, replace(settings, seed=seed))
        if 0 < len(nan) < settings.steps and nan[0] > 0:  # a state exists before the first skipped step
            return seed
    raise AssertionError("no seed mixes NaN and good batches")


def _state_summary(path: Path) -> dict:
    """The saved step and a digest of every tensor (mapper, moments, losses) of a state file."""
    tensors, metadata = read_weights(path)
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].numpy().tobytes())
    return {"step": int(metadata["step"]), "tensors": digest.hexdigest(), "loss_scale": metadata.get("loss_scale")}


def _loss_scale_resume(model, clip, data: TrainingSet, run_dir: Path) -> dict:
    """Two fp16 steps under a scale of 2^10 (as if halved six times), saved; a new trainer resumes for one more."""
    backend = ComfyDiffusionBackend(model, clip, training_dtype="fp16 + loss scaling")
    settings = TrainSettings(steps=2, batch_size=1, checkpoint_every=1)
    torch.manual_seed(0)
    first = MapperTrainer(F2DMapper().to(backend.device), backend, data, settings, run_dir)
    first.loss_scale.scale = 2.0**10
    first.run(resume=False)
    saved = _state_summary(run_dir / STATE_FILE)
    torch.manual_seed(0)
    resumed = MapperTrainer(F2DMapper().to(backend.device), backend, data, replace(settings, steps=3), run_dir)
    result = resumed.run(resume=True)
    return {"saved": saved["loss_scale"], "status": result.status, "after_resume": resumed.loss_scale.state_dict()}


def _train(backend, data: TrainingSet, settings: TrainSettings, run_dir: Path) -> dict:
    torch.manual_seed(0)  # the same starting mapper each time: a resume checks the run's identity
    mapper = F2DMapper().to(backend.device)
    start = module_fingerprint(mapper)
    result = MapperTrainer(mapper, backend, data, settings, run_dir).run(resume=True)
    return {
        "status": result.status,
        "step": result.step,
        "losses": result.losses,
        "mapper_changed": module_fingerprint(result.mapper) != start,
        "mapper_finite": all(bool(p.isfinite().all()) for p in result.mapper.parameters()),
    }


def main(checkpoint: str, photos: list[str], work_dir: str, steps: int = 3, max_bad_steps: int = 2) -> dict:
    """Run the three checks; return what the test asserts on."""
    work = Path(work_dir)
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)
    vae_before = module_fingerprint(vae.first_stage_model)
    latents = _latents(vae, photos[:2])
    backend = ComfyDiffusionBackend(model, clip)
    frozen_before = backend.frozen_fingerprint()
    out: dict = {}

    mixed = _training_set(latents, nan_rows=[1])
    settings = TrainSettings(steps=steps, batch_size=1, checkpoint_every=1, max_bad_steps=steps + 1)
    settings = replace(settings, seed=_seed_with_good_and_nan_steps(mixed, settings))
    nan_sample = _train(backend, mixed, settings, work / "nan_sample")
    out["nan_sample"] = {**nan_sample, "nan_steps": _nan_steps(mixed, settings)}

    good_steps, run_dir = 1, work / "diverged"
    _train(backend, _training_set(latents, nan_rows=[]), replace(settings, steps=good_steps, seed=0), run_dir)
    state = run_dir / STATE_FILE
    saved = _state_summary(state)
    all_nan = _training_set(latents, nan_rows=[0, 1])
    diverged = _train(backend, all_nan, replace(settings, steps=100, seed=0, max_bad_steps=max_bad_steps), run_dir)
    after = _state_summary(state)
    out["diverged"] = {**diverged, "good_steps": good_steps, "state_before": saved, "state_after": after}

    out["loss_scale"] = _loss_scale_resume(model, clip, _training_set(latents, nan_rows=[]), work / "loss_scale")
    out["frozen"] = {"before": frozen_before, "after": backend.frozen_fingerprint()}
    out["vae"] = {"before": vae_before, "after": module_fingerprint(vae.first_stage_model)}
    return out
