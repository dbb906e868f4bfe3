"""ArcFace: the additive angular margin loss (Deng et al., CVPR 2019, arXiv 1801.07698, eq. 3).

    L = -log( e^{s cos(theta_y + m)} / (e^{s cos(theta_y + m)} + sum_{k != y} e^{s cos theta_k}) )

with theta_k the angle between the L2-normalised embedding and the L2-normalised class centre k, y
the label, margin m (radians) and scale s. The defaults m = 0.5, s = 64 are insightface's
(`recognition/arcface_torch/configs/base.py`, `margin_list = (1.0, 0.5, 0.0)`, `losses.py` s=64).

Past theta_y = pi - m, cos(theta_y + m) rises again with theta_y, rewarding the worst samples. As
arcface_torch's `ArcFace` did (`losses.py` until 2022: `torch.where(cos > th, cos_theta_m, cos - sinmm)`),
the target logit there becomes cos(theta_y) - m sin(m), which keeps falling with theta_y. The two pieces
do not meet: at theta_y = pi - m the first ends at cos(pi) = -1 and the second starts at
-cos(m) - m sin(m) (-1.117 for m = 0.5), a downward step of cos(m) + m sin(m) - 1 (0.117, times s in the
logit); the target logit is monotone but not continuous there, as in insightface's. (The current
arcface_torch applies the margin without a gradient, a straight-through estimate; here the margin's exact
gradient is used.)
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

DEFAULT_MARGIN = 0.5  # radians
DEFAULT_SCALE = 64.0
_SIN_FLOOR = 1e-12  # keeps d sin(theta) / d cos(theta) finite where cos(theta) = +-1


def angular_margin_target(cos_target: torch.Tensor, margin: float) -> torch.Tensor:
    """cos(theta + m) of target cosines [N] (float32), or cos(theta) - m sin(m) past theta = pi - m.

    Computed as cos(theta) cos(m) - sin(theta) sin(m), differentiable; `margin` in radians, 0 <= m < pi/2.

    Raises:
        ValueError: margin outside [0, pi/2).
    """
    if not 0 <= margin < math.pi / 2:
        raise ValueError(f"ArcFace margin must be in [0, pi/2) radians, not {margin}")
    sin_target = (1 - cos_target.pow(2)).clamp_min(_SIN_FLOOR).sqrt()
    shifted = cos_target * math.cos(margin) - sin_target * math.sin(margin)
    return torch.where(cos_target > math.cos(math.pi - margin), shifted, cos_target - margin * math.sin(margin))


def arcface_logits(cosine: torch.Tensor, labels: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """Scaled logits [N, C]: s cos(theta), with the target column of each row given the angular margin.

    Args:
        cosine: [N, C] float32 cosines between embeddings and class centres, in [-1, 1].
        labels: [N] int64 target column per row, or -1 where the row's class is not among the C
            columns (a shard of the classifier that does not hold it): that row gets no margin.
        margin, scale: ArcFace's m (radians) and s.
    """
    has_target = labels >= 0
    column = labels.clamp_min(0)[:, None]
    target = cosine.gather(1, column)[:, 0]
    with_margin = torch.where(has_target, angular_margin_target(target, margin), target)
    return cosine.scatter(1, column, with_margin[:, None]) * scale


def arcface_loss(
    embeddings: torch.Tensor,
    centres: torch.Tensor,
    labels: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    scale: float = DEFAULT_SCALE,
) -> torch.Tensor:
    """The mean ArcFace loss of a batch against every class centre, in one process (the reference).

    Args:
        embeddings: [N, D] features (any scale: L2-normalised here), float.
        centres: [C, D] class centres (L2-normalised here).
        labels: [N] int64 in [0, C).

    Returns a scalar float32. The model-parallel `ShardedMarginSoftmax` computes the same value.
    """
    cosine = F.linear(F.normalize(embeddings.float()), F.normalize(centres.float())).clamp(-1, 1)
    return F.cross_entropy(arcface_logits(cosine, labels, margin, scale), labels)
