"""ArcFace's margin and the model-parallel margin softmax against the single-process full classifier."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from f2d_core.msid_training.arcface_loss import angular_margin_target, arcface_loss
from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax, shard_range
from tests.support.sharded_ranks import run_on_ranks

CLASSES, DIM, PER_RANK = 11, 24, 6  # 11 classes: the two shards differ in size (6 and 5)


def _problem(world_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embeddings [W*B, D], labels [W*B], full centres [C, D], seeded."""
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(world_size * PER_RANK, DIM, generator=generator)
    labels = torch.randint(CLASSES, (world_size * PER_RANK,), generator=generator)
    centres = torch.randn(CLASSES, DIM, generator=generator)
    return embeddings, labels, centres


def _full(world_size: int, margin: float, scale: float):
    embeddings, labels, centres = _problem(world_size)
    embeddings.requires_grad_(True)
    centres.requires_grad_(True)
    loss = arcface_loss(embeddings, centres, labels, margin, scale)
    loss.backward()
    return loss.detach(), embeddings.grad, centres.grad


def sharded_rank(rank: int, world_size: int, margin: float, scale: float) -> dict[str, torch.Tensor]:
    """One rank's loss and gradients through ShardedMarginSoftmax (run by run_on_ranks)."""
    embeddings, labels, centres = _problem(world_size)
    head = ShardedMarginSoftmax(CLASSES, DIM, margin=margin, scale=scale, rank=rank, world_size=world_size)
    start, count = shard_range(CLASSES, rank, world_size)
    with torch.no_grad():
        head.weight.copy_(centres[start : start + count])
    mine = embeddings[rank * PER_RANK : (rank + 1) * PER_RANK].clone().requires_grad_(True)
    loss = head(mine, labels[rank * PER_RANK : (rank + 1) * PER_RANK])
    loss.backward()
    return {"loss": loss.detach(), "embeddings": mine.grad, "centres": head.weight.grad}


def test_margin_is_cos_theta_plus_m_then_keeps_falling():
    theta = torch.linspace(0.01, math.pi - 0.01, 400, dtype=torch.float64)
    target = angular_margin_target(theta.cos(), 0.5)
    inside = theta < math.pi - 0.5
    torch.testing.assert_close(target[inside], (theta[inside] + 0.5).cos())
    assert (target.diff() < 0).all()  # monotone: past pi - m the target logit does not rise again
    past = ~inside
    torch.testing.assert_close(target[past], theta[past].cos() - 0.5 * math.sin(0.5))


def test_the_fallback_steps_down_at_pi_minus_m_as_the_docstring_says():
    """The docstring once claimed the two pieces meet at pi - m; they do not (insightface's neither)."""
    import f2d_core.msid_training.arcface_loss as module

    m, eps = 0.5, 1e-9
    edge = torch.tensor([math.cos(math.pi - m) + eps, math.cos(math.pi - m) - eps], dtype=torch.float64)
    before, after = angular_margin_target(edge, m).tolist()
    step = math.cos(m) + m * math.sin(m) - 1
    assert before == pytest.approx(-1.0, abs=1e-6) and after == pytest.approx(-1.0 - step, abs=1e-6)
    assert (
        f"{step:.3f}" == "0.117" and "(0.117, times s in the" in module.__doc__ and "not continuous" in module.__doc__
    )


def test_arcface_loss_is_the_formula():
    embeddings, labels, centres = _problem(1)
    cosine = F.normalize(embeddings) @ F.normalize(centres).T
    theta_y = cosine.gather(1, labels[:, None])[:, 0].acos()
    s, m = 64.0, 0.5
    target = s * (theta_y + m).cos()
    others = (s * cosine).exp().sum(1) - (s * cosine.gather(1, labels[:, None])[:, 0]).exp()
    expected = -(target.exp() / (target.exp() + others)).log().mean()
    torch.testing.assert_close(arcface_loss(embeddings, centres, labels, m, s), expected, rtol=1e-4, atol=1e-4)


def test_one_rank_equals_the_full_classifier():
    got = sharded_rank(0, 1, 0.5, 64.0)
    loss, grad_embeddings, grad_centres = _full(1, 0.5, 64.0)
    torch.testing.assert_close(got["loss"], loss)
    torch.testing.assert_close(got["embeddings"], grad_embeddings)
    torch.testing.assert_close(got["centres"], grad_centres)


def test_two_gloo_ranks_equal_the_full_classifier(tmp_path):
    """Centres sharded 6 + 5 over 2 processes: loss and both gradients as one process's full classifier."""
    ranks = run_on_ranks(sharded_rank, 2, tmp_path, 0.5, 16.0)
    loss, grad_embeddings, grad_centres = _full(2, 0.5, 16.0)
    for rank, got in enumerate(ranks):
        start, count = shard_range(CLASSES, rank, 2)
        torch.testing.assert_close(got["loss"], loss, rtol=1e-5, atol=1e-6)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.testing.assert_close(got["embeddings"], grad_embeddings[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["centres"], grad_centres[start : start + count], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("rate", [0.3, 0.6])
def test_partial_fc_keeps_positives_and_scores_the_sampled_centres_only(rate):
    embeddings, labels, centres = _problem(1)
    classes = 40
    centres = torch.randn(classes, DIM, generator=torch.Generator().manual_seed(5))
    head = ShardedMarginSoftmax(classes, DIM, sample_rate=rate, margin=0.5, scale=16.0)
    with torch.no_grad():
        head.weight.copy_(centres)
    index, renumbered = head._sampled_centres(labels, step=7)
    assert len(index) == max(int(rate * classes), len(labels.unique()))
    assert set(labels.tolist()) <= set(index.tolist())
    torch.testing.assert_close(index[renumbered], labels)
    loss = head(embeddings, labels, step=7)
    torch.testing.assert_close(loss, arcface_loss(embeddings, centres[index], renumbered, 0.5, 16.0))
    loss.backward()
    unused = torch.ones(classes, dtype=torch.bool)
    unused[index] = False
    assert (head.weight.grad[unused] == 0).all() and (head.weight.grad[index].abs().sum(1) > 0).all()
    other_step, _ = head._sampled_centres(labels, step=8)
    assert not torch.equal(other_step, index)
