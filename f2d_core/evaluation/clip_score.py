"""Prompt fidelity as the paper measures it: CLIP score and directional CLIP.

- CLIP score: cosine of the image's and the prompt's CLIP embeddings.
- Directional CLIP (Face2Diffusion Sec. 4, after Gal et al.'s StyleGAN-NADA direction): cosine of
  the image change (generated image minus the image generated from "A photo of S*") and the text
  change (prompt minus the reference prompt "A photo of a person").
The identifier (`f l`) means nothing to CLIP, so it is scored as the class phrase "a person".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch.nn import functional

from ..errors import EvaluationError
from ..progress import Progress, in_chunks
from .clip_models import CLIPScorer, check_prompts

REFERENCE_PROMPT = "A photo of a person"
IDENTIFIER = "f l"
CLASS_PHRASE = "a person"


def scoring_prompt(prompt: str, identifier: str = IDENTIFIER, class_phrase: str = CLASS_PHRASE) -> str:
    """The prompt as CLIP scores it: the identifier (weights like `(f l:1.2)` too) becomes `class_phrase`."""
    weighted = re.compile(r"\(\s*" + re.escape(identifier) + r"\s*(:\s*[0-9.]+)?\s*\)")
    text = weighted.sub(class_phrase, prompt)
    text = re.sub(r"(?<![\w])" + re.escape(identifier) + r"(?![\w])", class_phrase, text)
    return re.sub(r"\s+", " ", text).strip()


def per_image_prompts(prompts: Sequence[str], count: int) -> list[str]:
    """One prompt per image: one prompt for all, or exactly `count`; EvaluationError otherwise."""
    prompts = check_prompts(prompts)
    if len(prompts) == 1:
        return prompts * count
    if len(prompts) != count:
        raise EvaluationError(f"{len(prompts)} prompts for {count} images: give one prompt, or one per image")
    return prompts


def image_embeddings(scorer: CLIPScorer, images: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """`scorer.encode_images` of an IMAGE batch [B, H, W, C], CHUNK images at a time with `progress(done, B)`
    after each (`f2d_core.progress`; what it raises stops it): [B, D] float32."""
    return torch.cat([scorer.encode_images(chunk) for chunk in in_chunks(images, progress)])


def clip_scores(
    scorer: CLIPScorer, images: torch.Tensor, prompts: Sequence[str], progress: Progress | None = None
) -> torch.Tensor:
    """CLIP score [B] float32 (cosine, in [-1, 1]) of each image [B, H, W, C] with its prompt.

    `progress`: see `image_embeddings`.
    """
    texts = [scoring_prompt(p) for p in per_image_prompts(prompts, images.shape[0])]
    return (image_embeddings(scorer, images, progress) * scorer.encode_texts(texts)).sum(dim=-1)


def directional_clip_scores(
    scorer: CLIPScorer,
    images: torch.Tensor,
    prompts: Sequence[str],
    reference_image: torch.Tensor,
    reference_prompt: str = REFERENCE_PROMPT,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Directional CLIP [B] float32 in [-1, 1]: cos(E_I(image) - E_I(reference image), E_T(prompt) - E_T(ref prompt)).

    `reference_image` [1, H, W, C]: the same face generated from "A photo of S*". `progress`: see
    `image_embeddings`.
    """
    if reference_image.ndim != 4 or reference_image.shape[0] != 1:
        raise EvaluationError(
            f"directional CLIP needs one reference image (generated from 'A photo of f l'), got shape "
            f"{list(reference_image.shape)}"
        )
    texts = [scoring_prompt(p) for p in per_image_prompts(prompts, images.shape[0])]
    text_embeddings = scorer.encode_texts([*texts, reference_prompt])
    text_change = text_embeddings[:-1] - text_embeddings[-1:]
    image_change = image_embeddings(scorer, images, progress) - scorer.encode_images(
        reference_image
    )  # sizes may differ
    return functional.cosine_similarity(image_change, text_change, dim=-1, eps=1e-8)
