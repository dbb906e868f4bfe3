"""Verification AUC (Mann-Whitney, ties half) and best-threshold accuracy against hand counts and brute force."""

from __future__ import annotations

import itertools

import pytest
import torch

from f2d_core.msid_training.verification.metrics import verification_metrics


def brute_force(scores: torch.Tensor, same: torch.Tensor) -> tuple[float, float]:
    """AUC by counting every (same, different) pair, accuracy by trying every threshold and +inf."""
    pos, neg = scores[same].tolist(), scores[~same].tolist()
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    accuracy = max(((scores >= t) == same).double().mean().item() for t in [*scores.tolist(), float("inf")])
    return wins / (len(pos) * len(neg)), accuracy


def test_perfect_separation():
    result = verification_metrics(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([True, True, False, False]))
    assert result.auc == 1.0 and result.accuracy == 1.0
    assert result.threshold == pytest.approx(0.8)  # the lowest threshold that separates them
    assert (result.same_pairs, result.different_pairs) == (2, 2)


def test_reversed_scores_give_auc_zero_and_all_different_accuracy():
    """Same pairs scoring lowest: AUC 0; the best threshold calls every pair different (2 of 3 right)."""
    result = verification_metrics(torch.tensor([0.1, 0.5, 0.6]), torch.tensor([True, False, False]))
    assert result.auc == 0.0
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.threshold == float("inf")


def test_one_inversion_by_hand():
    """same 0.9, 0.4; different 0.5, 0.1: 3 of 4 orderings right -> AUC 0.75; threshold 0.9 or 0.4: 3 of 4."""
    scores = torch.tensor([0.9, 0.4, 0.5, 0.1])
    same = torch.tensor([True, True, False, False])
    result = verification_metrics(scores, same)
    assert result.auc == pytest.approx(0.75)
    assert result.accuracy == pytest.approx(0.75)


def test_ties_count_half():
    """All scores equal: every (same, different) comparison is a tie -> AUC exactly 0.5."""
    result = verification_metrics(torch.full((6,), 0.3), torch.tensor([True, False, True, False, True, True]))
    assert result.auc == 0.5
    assert result.accuracy == pytest.approx(4 / 6)  # call all same: the 4 same pairs right
    tied = verification_metrics(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([True, False, False]))
    assert tied.auc == pytest.approx(0.75)  # (0.5 tie + 1 win) / 2


@pytest.mark.parametrize("same", [[True, True, True], [False, False]])
def test_one_class_is_an_error(same):
    with pytest.raises(ValueError, match="both kinds of pair"):
        verification_metrics(torch.rand(len(same)), torch.tensor(same))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 scores but 2"):
        verification_metrics(torch.rand(3), torch.tensor([True, False]))


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_brute_force_on_random_data(seed):
    """Random scores, rounded so that ties occur, against the pairwise count and the threshold sweep."""
    generator = torch.Generator().manual_seed(seed)
    n = 40 + seed * 7
    same = torch.rand(n, generator=generator) < 0.4
    same[0], same[1] = True, False
    scores = (torch.randn(n, generator=generator) + same.float()).mul(4).round().div(4)
    result = verification_metrics(scores, same)
    auc, accuracy = brute_force(scores.double(), same)
    assert result.auc == pytest.approx(auc, abs=1e-12)
    assert result.accuracy == pytest.approx(accuracy, abs=1e-12)
    called_same = scores.double() >= result.threshold
    assert (called_same == same).double().mean().item() == pytest.approx(result.accuracy)


def test_ten_fold_accuracy_is_insightfaces_protocol_on_a_hand_computed_case():
    """10 pairs, one per fold: 5 same (cos 0.75, d = 2 - 2 cos = 0.5), 4 different (cos 0.25, d = 1.5) and, last,
    a different pair that looks alike (cos 0.875, d = 0.25). On any 9 training pairs the best threshold of
    np.arange(0, 4, 0.01) is 0.51 (the first above 0.5: same pairs right, plain different pairs right, only the
    look-alike wrong, or with it held out all 9 right). Held out, each pair but the look-alike is then right:
    accuracies 1 x 9 and 0, mean 0.9, population std sqrt((9 x 0.01 + 0.81) / 10) = 0.3."""
    from f2d_core.msid_training.verification.metrics import fold_slices, ten_fold_accuracy

    scores = torch.tensor([0.75] * 5 + [0.25] * 4 + [0.875], dtype=torch.float64)
    same = torch.tensor([True] * 5 + [False] * 5)
    folded = ten_fold_accuracy(scores, same)
    assert folded.fold_accuracies == (1.0,) * 9 + (0.0,)
    assert folded.fold_thresholds == pytest.approx((0.51,) * 10)
    assert folded.mean == pytest.approx(0.9) and folded.std == pytest.approx(0.3)
    assert verification_metrics(scores, same).folded == folded  # reported beside the best-threshold accuracy
    assert verification_metrics(scores, same).accuracy == pytest.approx(0.9)
    # scikit-learn's KFold(10) on 23 pairs: the first 3 folds hold 3 pairs, the other 7 hold 2.
    assert [s.stop - s.start for s in fold_slices(23)] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert fold_slices(23)[-1].stop == 23
    with pytest.raises(ValueError, match="at least 10 pairs"):
        ten_fold_accuracy(scores[:9], same[:9])
