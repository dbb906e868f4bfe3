"""The mapper (official `IMG2TEXTwithEXP`): identity + expression -> the two word embeddings S*."""

from __future__ import annotations

import torch
from torch import nn

from .msid_encoder import IDVEC_DIM

EXPRESSION_DIM = 64
WORD_DIM = 768  # SD1.x CLIP-L token width


class WordMLP(nn.Module):
    """[Linear, Dropout(0.1), LeakyReLU(0.2)] x 2 then `fc_out`: one word embedding."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc_out = nn.Linear(hidden_dim, out_dim)  # declared first: the official key order
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, hidden_dim), nn.Dropout(0.1), nn.LeakyReLU(0.2))
            for d_in in (in_dim, hidden_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc_out(x)


class ExpressionMixing(nn.Module):
    """The learned neutral expression `null_exp` [64] and the mapper input `[idvec, expression]` built from it.

    Shared by the SD1.x mapper (`F2DMapper`) and the SDXL one (`mapper_xl.F2DMapperXL`).
    """

    family = "sd1"  # the base-model family the mapper's S* is for
    s_star_space = "token+position"  # official: S* replaces token + position embedding

    def __init__(self) -> None:
        super().__init__()
        self.null_exp = nn.Parameter(torch.zeros(EXPRESSION_DIM))

    def mixed_expression(
        self, batch: int, expression: torch.Tensor | None, strength: float | torch.Tensor
    ) -> torch.Tensor:
        """`expression * strength + null_exp * (1 - strength)`: the official `mask`, as a float.

        No expression (or strength 0) gives `null_exp`, so the expression follows the prompt.
        """
        null = self.null_exp.expand(batch, -1)
        if expression is None:
            return null
        strength = torch.as_tensor(strength, dtype=null.dtype, device=null.device)
        if strength.ndim == 1:
            strength = strength[:, None]
        return expression.to(null) * strength + null * (1 - strength)

    def mapper_input(
        self, idvec: torch.Tensor, expression: torch.Tensor | None, strength: float | torch.Tensor
    ) -> torch.Tensor:
        """[B, 1600]: identity vectors [B, 1536] followed by the mixed expression [B, 64]."""
        exp = self.mixed_expression(idvec.shape[0], expression, strength)
        return torch.cat([idvec, exp.to(idvec.dtype)], dim=-1)


class F2DMapper(ExpressionMixing):
    """Key-compatible with the official `mapping.pt`: `i2t_first`, `i2t_last`, `null_exp`."""

    def __init__(self, id_dim: int = IDVEC_DIM, hidden_dim: int = IDVEC_DIM, word_dim: int = WORD_DIM) -> None:
        super().__init__()
        self.i2t_first = WordMLP(id_dim + EXPRESSION_DIM, hidden_dim, word_dim)
        self.i2t_last = WordMLP(id_dim + EXPRESSION_DIM, hidden_dim, word_dim)

    def forward(
        self,
        idvec: torch.Tensor,
        expression: torch.Tensor | None = None,
        strength: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """S* [B, 2, 768] from identity vectors [B, 1536] and optional expressions [B, 64]."""
        x = self.mapper_input(idvec, expression, strength)
        return torch.stack([self.i2t_first(x), self.i2t_last(x)], dim=1)
