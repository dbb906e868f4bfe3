"""Asymmetric prompt guidance in ComfyUI: Euler inversion of a latent with the template prompt, then Euler
denoising with the target prompt from gamma of the schedule (f2d_core.freecure.apg has the method)."""

from __future__ import annotations

import time

import comfy.sample
import comfy.samplers
import torch

from ..f2d_core.freecure.apg import inversion_sigmas, start_index

APG_MODES = ("auto", "off", "on")


def text_conditioning(clip, like: list, prompt: str) -> list:
    """`prompt` encoded by `clip`, one entry per entry of `like`, each keeping that entry's other keys
    (ControlNet, timestep range)."""
    encoded = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
    cond, extras = encoded[0][0], encoded[0][1]
    out = []
    for tensor, options in like:
        entry = dict(options)
        if "pooled_output" in extras:
            entry["pooled_output"] = extras["pooled_output"]
        out.append([cond.to(tensor.dtype), entry])
    return out


def run_apg(
    model,
    samples: torch.Tensor,
    template: list,
    target: list,
    negative: list,
    steps: int,
    cfg: float,
    scheduler: str,
    gamma: float,
) -> tuple[torch.Tensor, str]:
    """(the APG-refined latent samples, a report line). Inversion: Euler, CFG 1, template prompt, from ~0 up to
    the schedule's sigma at steps - round(gamma*steps); denoising: Euler, `cfg`, target prompt, from there."""
    start = start_index(steps, gamma)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps).cpu()
    euler = comfy.samplers.sampler_object("euler")
    zeros = torch.zeros_like(samples)
    t0 = time.perf_counter()
    inverted = comfy.sample.sample_custom(
        model, zeros, 1.0, euler, inversion_sigmas(sigmas, start), template, negative, samples, seed=0
    )
    refined = comfy.sample.sample_custom(model, zeros, cfg, euler, sigmas[start:], target, negative, inverted, seed=0)
    line = (
        f"APG: inverted {steps - start} of {steps} steps (gamma {gamma}, sigma {float(sigmas[start]):.3g}) with the "
        f"template, denoised with the expression prompt, {time.perf_counter() - t0:.2f} s"
    )
    return refined, line
