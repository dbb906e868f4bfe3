"""The mapper's training losses: CGDR (the paper's) and the two baselines it is compared with."""

from __future__ import annotations

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
