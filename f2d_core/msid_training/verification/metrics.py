"""Verification metrics of cosine scores over face pairs: ROC AUC, best-threshold and 10-fold accuracy.

The paper's Fig. 4 reports, per tapped layer, the AUC of same- vs different-identity cosine similarity.
Published verification accuracies (LFW, CFP-FP, AgeDB-30) follow insightface's `eval/verification.py`
(`calculate_roc`): the pairs in their file order are split into 10 folds (scikit-learn's `KFold(10,
shuffle=False)`: the first N mod 10 folds hold one pair more), the threshold on the squared distance
of the L2-normalised features, d = 2 - 2 cos, is chosen from `np.arange(0, 4, 0.01)` as the best on the
other 9 folds (a pair is "same" when d < threshold; ties to the lowest threshold), and the accuracy is
that of the held-out fold; the mean and the (population) standard deviation over the 10 folds are
reported. `verification_metrics` also gives the best accuracy over every threshold on all the pairs
at once (an optimistic figure: the threshold is chosen on the pairs it is measured on). All from the
scores alone, without scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FOLDS = 10  # insightface eval/verification.py: nrof_folds=10
THRESHOLD_STEP = 0.01  # np.arange(0, 4, 0.01): squared-distance thresholds


@dataclass(frozen=True)
class FoldedAccuracy:
    """insightface's 10-fold verification accuracy: the mean and population std over the folds (in [0, 1]),
    each held-out fold's accuracy and the squared-distance threshold chosen on the other folds."""

    mean: float
    std: float
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]


@dataclass(frozen=True)
class VerificationResult:
    """AUC in [0, 1], accuracy in [0, 1] at `threshold` (a cosine), the pair counts, and insightface's
    10-fold accuracy (`folded`; None with fewer than 10 pairs)."""

    auc: float
    accuracy: float
    threshold: float
    same_pairs: int
    different_pairs: int
    folded: FoldedAccuracy | None = None


def fold_slices(count: int, folds: int = FOLDS) -> list[slice]:
    """The contiguous folds of `count` pairs as scikit-learn's KFold(folds, shuffle=False) cuts them."""
    sizes = [count // folds + (1 if k < count % folds else 0) for k in range(folds)]
    starts = [sum(sizes[:k]) for k in range(folds)]
    return [slice(s, s + n) for s, n in zip(starts, sizes, strict=True)]


def ten_fold_accuracy(scores: torch.Tensor, same: torch.Tensor, folds: int = FOLDS) -> FoldedAccuracy:
    """insightface's k-fold verification accuracy (eval/verification.py `calculate_roc`) of cosine scores.

    Args:
        scores: [N] float cosine similarities of the pairs, in the pairs' file order (the folds are
            contiguous, as in a .bin file; LFW's 6000 pairs are 10 folds of 300 same + 300 different).
        same: [N] bool, True where the pair shows one identity.
        folds: the number of folds (10).

    Per fold: d = 2 - 2 cos (the squared distance of unit vectors); on the other folds, the threshold
    of `np.arange(0, 4, 0.01)` with the highest accuracy (d < threshold is "same"; the first, lowest,
    among equals, as np.argmax); the fold's accuracy at that threshold.

    Raises:
        ValueError: shapes differ, or fewer pairs than folds.
    """
    scores = scores.detach().double().flatten().cpu()
    same = same.detach().bool().flatten().cpu()
    if scores.shape != same.shape:
        raise ValueError(f"{scores.numel()} scores but {same.numel()} same/different labels")
    if scores.numel() < folds:
        raise ValueError(f"{folds}-fold accuracy needs at least {folds} pairs, got {scores.numel()}")
    distance = 2.0 - 2.0 * scores
    thresholds = torch.arange(0, round(4 / THRESHOLD_STEP), dtype=torch.float64) * THRESHOLD_STEP  # [T]
    correct = (distance[None, :] < thresholds[:, None]) == same[None, :]  # [T, N]
    accuracies, chosen = [], []
    for held_out in fold_slices(scores.numel(), folds):
        train = torch.ones(scores.numel(), dtype=torch.bool)
        train[held_out] = False
        best = int(torch.argmax(correct[:, train].double().mean(dim=1)))  # first maximum: the lowest threshold
        accuracies.append(float(correct[best, held_out].double().mean()))
        chosen.append(float(thresholds[best]))
    mean = sum(accuracies) / folds
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / folds)  # np.std: population
    return FoldedAccuracy(mean, std, tuple(accuracies), tuple(chosen))


def verification_metrics(scores: torch.Tensor, same: torch.Tensor) -> VerificationResult:
    """AUC and best-threshold accuracy of pair scores.

    Args:
        scores: [N] float, higher = more alike (cosine similarity of the two faces' features).
        same: [N] bool, True where the pair shows one identity.

    AUC is the Mann-Whitney statistic P(score_same > score_different) with ties counted half
    (equal to the area under the ROC curve). Accuracy is the best over thresholds placed at every
    score and above the highest (every pair called different, as insightface's threshold sweep
    includes): a pair is called "same" when its score is >= the threshold. Ties in accuracy go to the
    lowest threshold; `threshold` is +inf when calling every pair different is best. `folded` is
    `ten_fold_accuracy` (the figure published results report) when there are at least 10 pairs.

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
        folded=ten_fold_accuracy(scores, same) if scores.numel() >= FOLDS else None,
    )
