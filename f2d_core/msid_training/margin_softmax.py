"""Model-parallel margin softmax: the class centres sharded across ranks, with optional Partial FC.

The classifier of a face-recognition set is large (Glint360K: 360 K identities x 1536 = 553 M
parameters, 6.6 GB with AdamW's moments in fp32), so no rank holds all of it. As insightface's
arcface_torch does (`partial_fc_v2.py`; An et al., "Killing Two Birds with One Stone: Efficient and
Robust Training of Face Recognition CNNs by Partial FC", CVPR 2022, arXiv 2203.15565):

- rank r holds the centres of classes [start_r, start_r + count_r), about C / world_size rows;
- every rank's embeddings are all-gathered (with autograd: the backward sums each rank's part of the
  gradient and returns each rank its own rows), and every rank scores all of them against its rows;
- the softmax is completed across ranks: the row maxima are all-reduced (MAX), then the sums of
  exponentials (SUM), and the target logit from the rank that holds the target class (SUM);
- Partial FC (sample_rate < 1): each step a rank keeps the centres of the classes in the gathered
  batch (positives) and a random subset of the others, `int(sample_rate * count_r)` rows in all (at least
  one, and at least the batch's size: see `_sampled_centres`), drawn on the device.

The loss each rank returns is the global batch's mean loss, and the gradients (of this rank's centres,
of this rank's embeddings) are those of that one loss: with one rank it is `arcface_loss`.
The encoder's gradients must therefore be summed across ranks, not averaged (see `sum_gradients_hook`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .arcface_loss import DEFAULT_MARGIN, DEFAULT_SCALE, arcface_logits

CENTRE_INIT_STD = 0.01  # arcface_torch: torch.normal(0, 0.01, (num_local, embedding_size))


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first class, number of classes) of `rank`'s shard: the first C % W ranks take one extra class."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


class _GatherRows(torch.autograd.Function):
    """Every rank's rows [B, D] concatenated [W*B, D]; the backward sums the ranks' gradients and keeps ours."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, group, rank: int, world_size: int) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(world_size)]
        dist.all_gather(parts, rows.contiguous(), group=group)
        ctx.rank, ctx.count, ctx.group = rank, rows.shape[0], group
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.contiguous().clone()
        dist.all_reduce(total, group=ctx.group)
        return total[ctx.rank * ctx.count : (ctx.rank + 1) * ctx.count], None, None, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over rows whose logits are split by columns across the ranks of `group`."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, local_labels: torch.Tensor, group, distributed: bool) -> torch.Tensor:
        row_max = logits.max(dim=1, keepdim=True).values
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        exp = (logits - row_max).exp()
        sum_exp = exp.sum(dim=1, keepdim=True)
        has_target = local_labels >= 0
        target = torch.where(has_target, logits.gather(1, local_labels.clamp_min(0)[:, None])[:, 0], 0.0)
        if distributed:
            dist.all_reduce(sum_exp, group=group)
            dist.all_reduce(target, group=group)
        ctx.save_for_backward(exp.div_(sum_exp), local_labels)
        return (sum_exp[:, 0].log() + row_max[:, 0] - target).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, local_labels = ctx.saved_tensors
        # minus 1 at each row's target column where this rank holds it: a scatter, not nonzero() (a host sync)
        has_target = (local_labels >= 0).to(softmax.dtype)[:, None]
        softmax.scatter_add_(1, local_labels.clamp_min(0)[:, None], -has_target)
        return softmax * (grad / softmax.shape[0]), None, None, None


class ShardedMarginSoftmax(nn.Module):
    """This rank's shard of the ArcFace classifier; `forward` gives the global batch's mean loss.

    Args:
        num_classes: C, identities in the whole training set.
        embedding_dim: D (1536 for MSID's v_id, 384 for the last tap alone).
        margin, scale: ArcFace's m (radians) and s.
        sample_rate: Partial FC's share of this rank's centres used per step (1: all, plain model parallel).
        rank, world_size, group: this rank in the process group that shares the classifier
            (world_size 1: no collectives, the whole classifier here).
        seed: seeds the centres' initialisation (per rank) and the Partial FC sampling (per rank, step).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        margin: float = DEFAULT_MARGIN,
        scale: float = DEFAULT_SCALE,
        sample_rate: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
        group: dist.ProcessGroup | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"Partial FC sample rate must be in (0, 1], not {sample_rate}")
        if num_classes < world_size:
            raise ValueError(f"{num_classes} classes cannot be sharded over {world_size} ranks")
        self.num_classes, self.margin, self.scale, self.sample_rate = num_classes, margin, scale, sample_rate
        self.rank, self.world_size, self.group, self.seed = rank, world_size, group, seed
        self.start, self.count = shard_range(num_classes, rank, world_size)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        self.weight = nn.Parameter(torch.randn(self.count, embedding_dim, generator=generator) * CENTRE_INIT_STD)
        self._generator: torch.Generator | None = None  # Partial FC's, on the weight's device

    def _sampled_centres(self, local_labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Partial FC: (rows of `weight` used this step, sorted int64 [K], labels renumbered into them, -1 kept).

        Everything stays on the device, with no host sync: the positives are marked by an index fill, every
        class gets a random priority from a generator on the device seeded by (seed, step, rank), the
        positives priority 2, and the K highest are kept. K = max(1, int(rate x count), min(count, B)) for B
        gathered labels is known without reading the labels back: every positive (there are at most
        min(count, B)) and at least one class, so no rank ever scores an empty logit matrix. (arcface_torch
        keeps max(int(rate x count), positives), which needs the positives' count on the host; the two agree
        whenever int(rate x count) >= B, the usual case: 0.1 x 45 K classes a rank > a batch of 1024.)
        """
        device = local_labels.device
        num_sample = max(1, int(self.sample_rate * self.count), min(self.count, local_labels.numel()))
        positive = torch.zeros(self.count + 1, dtype=torch.bool, device=device)
        positive.index_fill_(0, torch.where(local_labels >= 0, local_labels, self.count), True)  # deterministic
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed((self.seed * 1_000_003 + step) * 4099 + self.rank)
        priority = torch.rand(self.count, generator=self._generator, device=device)
        priority = torch.where(positive[: self.count], 2.0, priority)  # positives are always kept
        index = priority.topk(num_sample).indices.sort().values
        renumbered = torch.where(local_labels >= 0, torch.searchsorted(index, local_labels.clamp_min(0)), -1)
        return index, renumbered

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Mean ArcFace loss of every rank's batch (a float32 scalar, the same on every rank).

        Args:
            embeddings: [B, D] this rank's features (any dtype; L2-normalised here). B must be the
                same on every rank.
            labels: [B] int64 global class ids in [0, num_classes).
            step: the training step, which seeds Partial FC's choice of negatives (a resumed run
                draws the same ones).
        """
        if self.world_size > 1:
            embeddings = _GatherRows.apply(embeddings, self.group, self.rank, self.world_size)
            gathered = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(gathered, labels, group=self.group)
            labels = torch.cat(gathered)
        in_shard = (labels >= self.start) & (labels < self.start + self.count)
        local_labels = torch.where(in_shard, labels - self.start, -1)
        weight = self.weight
        if self.sample_rate < 1:
            index, local_labels = self._sampled_centres(local_labels, step)
            weight = weight[index]
        # float32 cosines, also under an autocast the caller opened (bf16 or fp16): in bf16 (8 significant
        # bits) s=64 would blur the logits by +-0.25, and fp16 loses the margin's small angles.
        with torch.autocast(embeddings.device.type, enabled=False):
            cosine = F.linear(F.normalize(embeddings.float()), F.normalize(weight.float())).clamp(-1, 1)
        logits = arcface_logits(cosine, local_labels, self.margin, self.scale)
        return _ShardedCrossEntropy.apply(logits, local_labels, self.group, self.world_size > 1)


def sum_gradients_hook(process_group, bucket):  # unannotated: DDP rejects string annotations here
    """A DDP communication hook that sums the encoder's gradients across ranks instead of averaging.

    (process_group: dist.ProcessGroup or None, bucket: dist.GradBucket) -> torch.futures.Future of the
    bucket's summed gradient.

    With the sharded classifier every rank's loss is the global batch's loss and each rank's backward
    gives the encoder's gradient through its own samples only, so the true gradient is their sum
    (`DistributedDataParallel.register_comm_hook(None, sum_gradients_hook)`).
    """
    group = process_group or dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda future: future.value()[0])
