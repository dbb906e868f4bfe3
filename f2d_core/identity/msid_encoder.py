"""The multi-scale identity (MSID) encoder: a face-recognition ViT read out at four depths."""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.nn import functional as F

MSID_TAP_BLOCKS = (2, 5, 8, 11)  # 0-based blocks whose CLS token is read out
MSID_WIDTH = 384
IDVEC_DIM = MSID_WIDTH * len(MSID_TAP_BLOCKS)  # 1536
MSID_IMAGE_SIZE = 112


def cls_token_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """`block(x)[:, :1]` (eval mode), computing only what the CLS token needs.

    The last tapped block's other outputs are never read, so it needs keys and values of every token
    but a single query, and its projection and MLP for one token: about 7% of the encoder's work saved.
    """
    attn = block.attn
    h = block.norm1(x)
    width = h.shape[-1]
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(h[:, :1], weight[:width], None if bias is None else bias[:width])
    kv = F.linear(h, weight[width:], None if bias is None else bias[width:])
    q = rearrange(q, "b n (heads d) -> b heads n d", heads=attn.num_heads)
    k, v = rearrange(kv, "b n (two heads d) -> two b heads n d", two=2, heads=attn.num_heads)
    out = F.scaled_dot_product_attention(attn.q_norm(q), attn.k_norm(k), v)
    out = getattr(attn, "norm", nn.Identity())(rearrange(out, "b heads n d -> b n (heads d)"))
    cls = x[:, :1] + block.ls1(attn.proj(out))
    return cls + block.ls2(block.mlp(block.norm2(cls)))


def _scale_norm(width: int) -> nn.Sequential:
    """BatchNorm1d (eval: running stats) then LayerNorm, as `norms.layer_i` in `msid.pt`."""
    return nn.Sequential(nn.BatchNorm1d(width), nn.LayerNorm(width, eps=1e-5))


class MSIDEncoder(VisionTransformer):
    """timm ViT (112 px, patch 8, width 384, depth 12) whose key names match the official `msid.pt`.

    Input: aligned faces [B, 3, 112, 112] in [-1, 1]. Output: identity vectors [B, 1536], the four
    CLS tokens after blocks 2, 5, 8, 11, each through its `norms.layer_i`, concatenated.

    The defaults are the official architecture (the only one the loaders build); `width`, `depth`,
    `heads` and `tap_blocks` give the same structure smaller, for tests and benchmarks of training.
    The output is then [B, width * len(tap_blocks)].
    """

    def __init__(
        self,
        width: int = MSID_WIDTH,
        depth: int = 12,
        heads: int = 12,
        tap_blocks: tuple[int, ...] = MSID_TAP_BLOCKS,
    ) -> None:
        if not tap_blocks or max(tap_blocks) >= depth or list(tap_blocks) != sorted(set(tap_blocks)):
            raise ValueError(f"tap_blocks {tap_blocks} must be increasing block indices below depth {depth}")
        super().__init__(
            img_size=MSID_IMAGE_SIZE,
            patch_size=8,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_classes=0,
        )
        self.tap_blocks = tuple(tap_blocks)
        self.norms = nn.ModuleDict({f"layer_{i}": _scale_norm(width) for i in self.tap_blocks})

    def scale_tokens(self, faces: torch.Tensor) -> list[torch.Tensor]:
        """The CLS token after each tapped block, through BatchNorm only: four [B, 384] (one [B, width] per tap)."""
        x = self._pos_embed(self.patch_embed(faces))
        x = self.norm_pre(x)
        tokens = []
        last = self.tap_blocks[-1]
        for i, block in enumerate(self.blocks[: last + 1]):
            use_cls_path = i == last and not self.training and getattr(block.attn, "gate", None) is None
            x = cls_token_block(block, x) if use_cls_path else block(x)
            if i in self.tap_blocks:
                tokens.append(self.norms[f"layer_{i}"][0](x[:, 0]))
        return tokens

    def layer_norms(self) -> list[nn.LayerNorm]:
        """The LayerNorm of each scale, in tap order."""
        return [self.norms[f"layer_{i}"][1] for i in self.tap_blocks]

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Identity vectors [B, 1536] of aligned faces [B, 3, 112, 112] in [-1, 1]."""
        scales = zip(self.scale_tokens(faces), self.layer_norms(), strict=True)
        return torch.cat([norm(token) for token, norm in scales], dim=-1)

    def pooled_identity(self, faces: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """One identity vector [1536] for several photos of one person ("normalized mean").

        Per scale, each photo's token is standardized (LayerNorm without its affine), the
        standardized tokens are averaged (optionally weighted), and the scale's LayerNorm is applied
        to the average. Every scale of the result thus has the statistics of a single photo's
        identity vector, the input distribution the mapper was trained on, while a plain mean of
        identity vectors shrinks towards the LayerNorm bias as photos disagree. For one photo it
        equals `forward` to float precision.
        """
        pooled = []
        for token, norm in zip(self.scale_tokens(faces), self.layer_norms(), strict=True):
            standardized = F.layer_norm(token, norm.normalized_shape, eps=norm.eps)
            if weights is None:
                mean = standardized.mean(dim=0, keepdim=True)
            else:
                w = (weights / weights.sum()).to(standardized)
                mean = (standardized * w[:, None]).sum(dim=0, keepdim=True)
            pooled.append(norm(mean))
        return torch.cat(pooled, dim=-1)[0]
