"""Verification metrics of cosine scores over face pairs: ROC AUC and best-threshold accuracy.

The paper's Fig. 4 reports, per tapped layer, the AUC of same- vs different-identity cosine similarity;
insightface's `eval/verification.py` reports accuracy at the best threshold. Both are computed here
from the scores alone, without scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VerificationResult:
    """AUC in [0, 1], accuracy in [0, 1] at `threshold` (a cosine), and the pair counts."""

    auc: float
    accuracy: float
    threshold: float
    same_pairs: int
    different_pairs: int


def verification_metrics(scores: torch.Tensor, same: torch.Tensor) -> VerificationResult:
    """AUC and best-threshold accuracy of pair scores.

    Args:
        scores: [N] float, higher = more alike (cosine similarity of the two faces' features).
        same: [N] bool, True where the pair shows one identity.

    AUC is the Mann-Whitney statistic P(score_same > score_different) with ties counted half
    (equal to the area under the ROC curve). Accuracy is the best over thresholds placed at every
    score and above the highest (every pair called different, as insightface's threshold sweep
    includes): a pair is called "same" when its score is >= the threshold. Ties in accuracy go to the
    lowest threshold; `threshold` is +inf when calling every pair different is best.

    Raises:
        ValueError: shapes differ, or either class is empty (AUC is undefined).
    """
    scores = scores.detach().double().flatten().cpu()
    same = same.detach().bool().flatten().cpu()
    if scores.shape != same.shape:
        raise ValueError(f"{scores.numel()} scores but {same.numel()} same/different labels")
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if n_same == 0 or n_diff == 0:
        raise ValueError(f"verification needs both kinds of pair: {n_same} same, {n_diff} different")
    # Average ranks (1-based) with ties shared: the Mann-Whitney U of the "same" pairs.
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    unique, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1
    mean_rank = first.double() + (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    auc = (ranks[same].sum().item() - n_same * (n_same + 1) / 2) / (n_same * n_diff)
    # Accuracy at threshold t = unique[j]: same pairs at or above t plus different pairs below t.
    same_sorted = same[order].double()
    same_below = torch.cumsum(same_sorted, 0) - same_sorted  # same pairs strictly before each position
    diff_below = torch.arange(scores.numel(), dtype=torch.float64) - same_below
    correct = (n_same - same_below[first - 1]) + diff_below[first - 1]
    correct = torch.cat([correct, torch.tensor([float(n_diff)], dtype=torch.float64)])  # threshold +inf
    thresholds = torch.cat([unique, torch.tensor([float("inf")], dtype=torch.float64)])
    best = int(torch.argmax(correct))
    return VerificationResult(
        auc=float(auc),
        accuracy=float(correct[best].item() / scores.numel()),
        threshold=float(thresholds[best].item()),
        same_pairs=n_same,
        different_pairs=n_diff,
    )
