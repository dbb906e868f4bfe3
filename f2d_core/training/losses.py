"""The mapper's training losses: CGDR (the paper's) and the two baselines it is compared with."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn import functional as F

LOSSES: tuple[str, ...] = ("cgdr", "reconstruction", "masked_reconstruction")


def needs_class_prediction(kind: str) -> bool:
    """CGDR needs the UNet's noise prediction for the class prompt ("A photo of a person")."""
    return kind == "cgdr"


def denoising_loss(
    kind: str,
    eps_hat: torch.Tensor,
    eps: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps_class: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error in eps space, one of `LOSSES`.

    - cgdr: ||eps_hat - (eps * M + eps_class * (1 - M))||^2: the face region is reconstructed, the rest
      is pulled towards what the class prompt predicts, so S* does not absorb background or pose.
    - reconstruction: ||eps - eps_hat||^2 (plain textual-inversion style).
    - masked_reconstruction: ||(eps - eps_hat) * M||^2.
    """
    eps_hat = eps_hat.float()
    if kind == "reconstruction":
        return F.mse_loss(eps_hat, eps.float())
    if mask is None:
        raise ValueError(f"the {kind} loss needs the face mask M")
    mask = mask.to(eps_hat)
    if kind == "masked_reconstruction":
        return F.mse_loss(eps_hat * mask, eps.float() * mask)
    if kind == "cgdr":
        if eps_class is None:
            raise ValueError("the cgdr loss needs the class prompt's noise prediction")
        target = eps.float() * mask + eps_class.detach().float() * (1 - mask)
        return F.mse_loss(eps_hat, target)
    raise ValueError(f"loss must be one of {LOSSES}, not {kind!r}")


def anchor_regularisation(s_star: Mapping[str, torch.Tensor], anchors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """sum over towers t of mean over samples b and words k of ||S*_t[b, k] - A_t[k]||^2, float32 scalar.

    s_star: tower -> [B, 2, D] (SDXL: "l" 768, "g" 1280, token-embedding space); anchors: tower -> [2, D], the
    anchors the mapper's S* started at (`F2DMapperXL.anchor`). Multiplied by `anchor_reg` (lambda) it is the
    regulariser of docs/sdxl.md 2.3, `lambda * mean_k ||S*_t[k] - A_t[k]||^2`: Cross-Initialization's pull of
    the learned embedding towards its initialisation (lyuPang/CrossInitialization train_cross_init.py:418-419,
    there an unsquared L2 norm). A mean over samples, so micro-batches weighted by their share add up to the
    batch's. Raises KeyError when a tower of `anchors` has no S*.
    """
    terms = [
        (s_star[t].float() - a.float().to(s_star[t].device)).square().sum(dim=-1).mean() for t, a in anchors.items()
    ]
    return torch.stack(terms).sum()
