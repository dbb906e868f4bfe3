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


def partial_fc_rank(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """4 classes over 2 ranks at rate 0.3 (int(0.3 x 2) = 0 centres a rank) and a batch of rank 0's classes only."""
    generator = torch.Generator().manual_seed(rank)
    head = ShardedMarginSoftmax(4, DIM, sample_rate=0.3, rank=rank, world_size=world_size, scale=16.0)
    embeddings = torch.randn(3, DIM, generator=generator, requires_grad=True)
    loss = head(embeddings, torch.tensor([0, 1, 0]), step=3)
    loss.backward()
    return {"loss": loss.detach(), "embeddings": embeddings.grad, "centres": head.weight.grad}


def test_partial_fc_samples_a_class_on_a_rank_whose_classes_are_not_in_the_batch(tmp_path):
    """Issue 18: rank 1 had an empty logit matrix and raised while rank 0 waited in its all-reduce."""
    ranks = run_on_ranks(partial_fc_rank, 2, tmp_path)
    assert torch.isfinite(ranks[0]["loss"]) and torch.equal(ranks[0]["loss"], ranks[1]["loss"])
    for got in ranks:
        assert torch.isfinite(got["embeddings"]).all() and torch.isfinite(got["centres"]).all()


def test_partial_fc_sampling_reads_nothing_back_from_the_device(monkeypatch):
    """Issue 18: the sampling ran on the CPU (torch.unique(...).cpu()) every step: a host sync on a GPU."""
    head = ShardedMarginSoftmax(40, DIM, sample_rate=0.2)
    labels = torch.tensor([3, 3, 17, -1, 39])
    moved = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: moved.append(1) or original(self, *a, **k))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: moved.append(1))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: moved.append(1))
    index, renumbered = head._sampled_centres(labels, step=1)
    assert moved == []
    assert len(index) == 8 and {3, 17, 39} <= set(original(index).numpy().tolist())
    assert torch.equal(index[renumbered[renumbered >= 0]], labels[labels >= 0])


def test_arcface_at_the_edges_gives_finite_loss_and_gradients():
    """cos = +1 (the embedding is its centre), cos = -1 (its opposite), and a zero-norm embedding."""
    centres = torch.randn(5, DIM, generator=torch.Generator().manual_seed(0))
    embeddings = torch.stack([centres[0], -centres[1], torch.zeros(DIM), centres[3] * 1e-30]).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3])
    for margin in (0.0, 0.5):
        loss = arcface_loss(embeddings, centres.requires_grad_(True), labels, margin, 64.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all() and torch.isfinite(centres.grad).all()
        embeddings.grad = centres.grad = None
        head = ShardedMarginSoftmax(5, DIM, margin=margin, sample_rate=0.5)
        with torch.no_grad():
            head.weight.copy_(centres)
        loss = head(embeddings, labels)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()
        embeddings.grad = None


def test_the_margin_softmax_backward_reads_nothing_back_from_the_device(monkeypatch):
    """Issue 18: torch.nonzero in the backward was a host sync every step on a GPU."""
    embeddings, labels, centres = _problem(1)
    head = ShardedMarginSoftmax(CLASSES, DIM, scale=16.0)
    with torch.no_grad():
        head.weight.copy_(centres)
    loss = head(embeddings.requires_grad_(True), labels)
    synced = []
    real_nonzero = torch.nonzero
    monkeypatch.setattr(torch, "nonzero", lambda *a, **k: synced.append(1) or real_nonzero(*a, **k))
    loss.backward()
    assert synced == []
    torch.testing.assert_close(head.weight.grad, _full(1, 0.5, 16.0)[2], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_embeddings_under_an_autocast_give_the_float32_loss(dtype):
    """The margin softmax in a caller's autocast (as a mixed-precision loop opens one), on half-precision
    embeddings of a large norm: its cosines stay float32, so the loss is the float32 loss, not one blurred by
    a bf16 product (8 significant bits times s=64) or off by fp16's rounding of the margin's angles."""
    torch.manual_seed(0)
    head = ShardedMarginSoftmax(500, 64)
    embeddings = (torch.randn(32, 64) * 1e4).to(dtype)
    labels = torch.randint(500, (32,))
    reference = head(embeddings.float(), labels)
    with torch.autocast("cpu", dtype=dtype):
        mixed = head(embeddings, labels)
    assert torch.isfinite(mixed) and mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, atol=1e-5, rtol=1e-5)
