"""Asymmetric prompt guidance (APG, FreeCure paper Sec. 4.2): for expressions, which have no parser mask.

The FASA result is inverted along the sampling ODE with a template prompt that lacks the expression words,
up to gamma of the schedule (gamma = 0.5, the paper's value, stable in 0.5-0.6), then denoised from there
with the prompt that has them. The paper gives no sampler or CFG for either half (its released code has no
APG): here both use deterministic Euler steps on the user's schedule, the inversion at CFG 1 (faithful
inversion, specification Sec. 5.7) and the denoising at the user's CFG. Cost: gamma*T one-row steps plus
gamma*T two-row steps, 0.75x a plain generation at gamma = 0.5.
"""

from __future__ import annotations

import re

import torch

from .attributes import EXPRESSION_WORDS, _words_pattern

DEFAULT_GAMMA = 0.5
INVERSION_OFFSET = 1e-4  # sigma_min > 0 for the first inversion step (x / sigma)
_EXPRESSIONS = _words_pattern(EXPRESSION_WORDS)


def template_prompt(prompt: str) -> str:
    """The prompt without its expression words, tidied: 'a woman with red hair, laughing' -> 'a woman with red
    hair'. Separators left dangling (', ,', trailing ',' or 'and') are removed."""
    text = _EXPRESSIONS.sub("", prompt)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,(\s*,)+", ",", text)  # ", ," -> ","
    text = re.sub(r"\b(and|with|while|looking)\s*(?=,|$)", "", text)
    text = re.sub(r"^[\s,]+|[\s,]+$", "", text)
    return re.sub(r"\s+,", ",", text).strip()


def start_index(steps: int, gamma: float) -> int:
    """Index into the schedule where APG's denoising starts: steps - round(gamma * steps), in [0, steps - 1].

    Raises ValueError unless 0 < gamma <= 1 and steps >= 1."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"apg_gamma must be in (0, 1], got {gamma}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return min(steps - 1, max(0, steps - round(gamma * steps)))


def inversion_sigmas(sigmas: torch.Tensor, start: int) -> torch.Tensor:
    """The schedule's tail sigmas[start:] (ending in 0) reversed, offset by 1e-4: the inversion's increasing
    sigmas from ~0 up to sigmas[start] + 1e-4 (ComfyUI_Noise's Unsampler pattern). Returns [T - start + 1]."""
    return sigmas[start:].flip(0) + INVERSION_OFFSET
