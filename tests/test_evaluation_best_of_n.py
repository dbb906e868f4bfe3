"""Best of N: the paper's per-image means, ranking, and the exact best-of-N expectation."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from f2d_core.errors import EvaluationError
from f2d_core.evaluation.benchmark_table import best_of_n_by_setting, best_of_n_table, results_table, summarize
from f2d_core.evaluation.best_of_n import (
    best_of_n_curve,
    choose_best,
    expected_best_of_n,
    geometric_mean,
    harmonic_mean,
    keep_best,
    ranking_scores,
)
from f2d_core.evaluation.plots import best_of_n_plot, identity_vs_text_plot


def test_means_are_per_image_and_zero_when_a_score_is_zero() -> None:
    identity, clip = torch.tensor([0.5, 0.0, 0.3]), torch.tensor([0.25, 0.3, -0.1])
    assert harmonic_mean(identity, clip).tolist() == pytest.approx([2 / (1 / 0.5 + 1 / 0.25), 0.0, 0.0])
    assert geometric_mean(identity, clip).tolist() == pytest.approx([math.sqrt(0.125), 0.0, 0.0])


def test_keep_best_orders_by_score_with_earlier_images_first_on_ties() -> None:
    assert keep_best(torch.tensor([0.1, 0.9, 0.5, 0.9]), 3).tolist() == [1, 3, 2]
    assert keep_best(torch.tensor([0.2]), 5).tolist() == [0]
    with pytest.raises(EvaluationError, match="keep at least 1"):
        keep_best(torch.tensor([0.2]), 0)


def test_ranking_needs_the_scores_it_ranks_by() -> None:
    identity, prompt = torch.tensor([0.4, 0.2]), torch.tensor([0.2, 0.3])
    assert ranking_scores(identity, None, "identity").tolist() == pytest.approx([0.4, 0.2])
    assert ranking_scores(identity, prompt, "harmonic mean").tolist() == pytest.approx(
        harmonic_mean(identity, prompt).tolist()
    )
    with pytest.raises(EvaluationError, match="needs prompt scores: connect CLIP Score"):
        ranking_scores(identity, None, "harmonic mean")
    with pytest.raises(EvaluationError, match="needs identity scores"):
        ranking_scores(None, prompt, "identity")
    with pytest.raises(EvaluationError, match="identity scores for 2 images but prompt scores for 1"):
        ranking_scores(identity, prompt[:1], "prompt")


def test_no_face_in_any_image_ranks_by_prompt_or_keeps_the_whole_batch() -> None:
    """Every identity score 0: identity cannot choose, so prompt scores do, or nothing is thrown away."""
    identity, prompt = torch.zeros(4), torch.tensor([0.1, 0.4, 0.2, 0.3])
    for rank_by in ("identity", "harmonic mean"):
        choice = choose_best(identity, prompt, rank_by, 2)
        assert choice.kept.tolist() == [1, 3] and choice.rank_by == "prompt"
        assert "(no face found in any of the 4 image(s)): ranked by prompt instead" in choice.note
    choice = choose_best(identity, None, "identity", 1)
    assert choice.kept.tolist() == [0, 1, 2, 3] and "kept the whole batch" in choice.note
    some_face = choose_best(torch.tensor([0.0, 0.0, 0.5, 0.0]), None, "identity", 1)
    assert some_face.kept.tolist() == [2] and some_face.note == "" and some_face.rank_by == "identity"
    with pytest.raises(EvaluationError, match="keep at least 1"):
        choose_best(identity, None, "identity", 0)


def test_expected_best_of_n_equals_enumerating_every_subset() -> None:
    rank = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2]
    value = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for n in range(1, 7):
        subsets = list(itertools.combinations(range(6), n))
        brute = sum(value[max(s, key=lambda i: rank[i])] for s in subsets) / len(subsets)
        assert expected_best_of_n(rank, value, n) == pytest.approx(brute)
    assert best_of_n_curve([(rank, rank)], (1, 2, 4, 8)).keys() == {1, 2, 4}  # 8 > 6 images: left out


def _rows() -> list[dict]:
    rows = []
    for setting, base in (("official", 0.2), ("pooling", 0.3)):
        for face, prompt, seed in itertools.product(("a", "b"), (0, 1), (0, 1)):
            identity = base + 0.1 * seed
            rows.append(
                {"setting": setting, "face": face, "prompt_index": prompt, "seed": seed, "face_found": 1,
                 "identity": identity, "clip": 0.25, "dclip": 0.1, "hmean": identity / 2, "gmean": identity / 3}
            )  # fmt: skip
    return rows


def test_tables_average_per_setting_and_plots_are_written(tmp_path: Path) -> None:
    summaries = summarize(_rows())
    assert [s.setting for s in summaries] == ["official", "pooling"]
    assert summaries[0].means["identity"] == pytest.approx(0.25) and summaries[0].images == 8
    table = results_table(summaries)
    assert "| official | 0.2500 | 0.2500 | 0.1000 | 0.1250 | 0.0833 | 100% | 8 |" in table
    curves = best_of_n_by_setting(_rows())
    assert curves["official"] == pytest.approx({1: 0.125, 2: 0.15})
    assert "| official | 0.1250 | 0.1500 | — | — | — |" in best_of_n_table(curves)
    for path in (
        identity_vs_text_plot({"official": (0.25, 0.25), "pooling": (0.35, 0.24)}, tmp_path / "a.png", note="tiny"),
        best_of_n_plot(curves, tmp_path / "b.png", note="tiny"),
    ):
        with Image.open(path) as image:
            assert image.size == (560, 400) and image.getextrema() != ((255, 255),) * 3
