"""Best of N: rank a batch by identity, prompt fidelity or their harmonic mean, keep the best k.

The paper combines its identity and text scores by harmonic and geometric mean, per image (a missed
face scores 0 and so does the image's mean), and its upper-bound analysis keeps the best of N images
by hMean (Face2Diffusion Sec. 4, N = 1, 2, 4, 8, 16).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import EvaluationError

RANK_BY = ("identity", "prompt", "harmonic mean")
BEST_OF_N = (1, 2, 4, 8, 16)


def harmonic_mean(*scores: torch.Tensor) -> torch.Tensor:
    """Per-element harmonic mean of score tensors [B] (each clipped at 0); 0 where any score is 0."""
    stacked = torch.stack([s.float().clamp(min=0.0) for s in scores])  # [S, B]
    safe = stacked.clamp(min=1e-12)
    mean = stacked.shape[0] / (1.0 / safe).sum(dim=0)
    return torch.where((stacked > 0).all(dim=0), mean, torch.zeros_like(mean))


def geometric_mean(*scores: torch.Tensor) -> torch.Tensor:
    """Per-element geometric mean of score tensors [B] (each clipped at 0); 0 where any score is 0."""
    stacked = torch.stack([s.float().clamp(min=0.0) for s in scores])
    return stacked.prod(dim=0).pow(1.0 / stacked.shape[0])


def ranking_scores(identity: torch.Tensor | None, prompt: torch.Tensor | None, rank_by: str) -> torch.Tensor:
    """The score [B] a batch is ranked by; EvaluationError naming the missing input for `rank_by`."""
    if rank_by not in RANK_BY:
        raise EvaluationError(f"rank_by must be one of {RANK_BY}, not {rank_by!r}")
    needs_identity, needs_prompt = rank_by in ("identity", "harmonic mean"), rank_by in ("prompt", "harmonic mean")
    if needs_identity and identity is None:
        raise EvaluationError(f"ranking by {rank_by} needs identity scores: connect Face Similarity's scores")
    if needs_prompt and prompt is None:
        raise EvaluationError(
            f"ranking by {rank_by} needs prompt scores: connect CLIP Score's scores, or rank by identity"
        )
    if identity is not None and prompt is not None and identity.shape != prompt.shape:
        raise EvaluationError(
            f"identity scores for {identity.shape[0]} images but prompt scores for {prompt.shape[0]}: "
            "score the same batch"
        )
    if rank_by == "identity":
        return identity.float()
    if rank_by == "prompt":
        return prompt.float()
    return harmonic_mean(identity, prompt)


def keep_best(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [min(k, B)] int64 of the k highest scores, best first (ties: the earlier image first)."""
    if k < 1:
        raise EvaluationError(f"keep {k} images? keep at least 1")
    order = sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(order[:k], dtype=torch.int64)


@dataclass
class BestOfN:
    """What Best of N kept: `kept` [k] int64 indices best first, the `ranking` [B] they were ranked by,
    the `rank_by` actually used, and a `note` for the user ("" when the ranking went as asked)."""

    kept: torch.Tensor
    ranking: torch.Tensor
    rank_by: str
    note: str = ""


def choose_best(
    identity: torch.Tensor | None,
    prompt: torch.Tensor | None,
    rank_by: str,
    k: int,
    face_found: torch.Tensor | None = None,
) -> BestOfN:
    """The k best images of a batch by `rank_by`, never a choice among ties of 0.

    When every identity score [B] is 0 and the ranking uses identity, identity cannot choose: with
    prompt scores the batch is ranked by prompt instead; without them the whole batch is kept in its
    order, so no image is lost. A score is 0 when no face was found (a helmet, a turned face) or when
    the faces found look nothing like the reference (cosine similarity at or below 0, clipped):
    `face_found` [B] bool (Face Similarity's "face" column), when given, tells the two apart. The
    `note` says which happened. EvaluationError as `ranking_scores` and `keep_best`.
    """
    ranking = ranking_scores(identity, prompt, rank_by)
    if k < 1:
        raise EvaluationError(f"keep {k} images? keep at least 1")
    if rank_by == "prompt" or bool((identity > 0).any()):
        return BestOfN(keep_best(ranking, k), ranking, rank_by)
    count = identity.shape[0]
    found = 0 if face_found is None else int(face_found.bool().sum())
    why = f"every identity score is 0 (no face found in any of the {count} image(s))"
    if found:
        why = (
            f"every identity score is 0 (faces found in {found} of {count} image(s), but none looks like the "
            "reference: similarity at or below 0)"
        )
    if prompt is not None:
        ranking = prompt.float()
        return BestOfN(keep_best(ranking, k), ranking, "prompt", f"{why}: ranked by prompt instead")
    note = f"{why}: kept the whole batch in its order; connect CLIP Score's scores to rank by prompt instead"
    return BestOfN(torch.arange(count), ranking, rank_by, note)


def expected_best_of_n(rank: Sequence[float], value: Sequence[float], n: int) -> float:
    """E[value of the image with the best `rank`] over a uniformly random n-subset of M images.

    Exact, by order statistics: with ranks sorted ascending, the i-th (1-based) is the best of the
    subset with probability C(i-1, n-1) / C(M, n). Ties in rank go to the earlier image.
    """
    count = len(rank)
    if not 1 <= n <= count:
        raise EvaluationError(f"best of {n} needs at least {n} images, got {count}")
    order = sorted(range(count), key=lambda i: (float(rank[i]), -i))
    total = math.comb(count, n)
    return sum(float(value[j]) * math.comb(i, n - 1) / total for i, j in enumerate(order))


def best_of_n_curve(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]], ns: Sequence[int] = BEST_OF_N
) -> dict[int, float]:
    """Mean over groups (one group = the images of one face and prompt) of `expected_best_of_n`.

    Each group is (rank scores, values). N larger than the smallest group is left out.
    """
    if not groups:
        return {}
    smallest = min(len(rank) for rank, _ in groups)
    return {
        n: sum(expected_best_of_n(rank, value, n) for rank, value in groups) / len(groups) for n in ns if n <= smallest
    }
