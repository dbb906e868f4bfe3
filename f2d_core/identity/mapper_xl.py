"""The SDXL mapper: one shared `null_exp` and two heads, `l` (2 x 768, CLIP-L) and `g` (2 x 1280, OpenCLIP bigG).

Design (shared docs sdxl.md section 2.2-2.3, decisions D2-D4):
- each head is the official pair of `WordMLP`s (1600 -> 1536 -> 1536 -> D), so `heads.l.*` has the official
  `mapping.pt` key layout and can be warm-started from it (`warm_start_l_head`);
- SDXL's S* lives in **token-embedding space**: the text model adds the position embedding wherever the
  identifier lands, exactly as for a textual-inversion vector (a saved SDXL face is a ComfyUI embedding file);
- anchored initialisation: each head's output starts at a per-tower anchor `A_t[k]` (the mean of the k-th
  content token of celebrity names in that tower's token table: Cross-Initialization, StableIdentity-SDXL,
  UniID `get_celeb_col_mean`), plus an identity-dependent residual of ~1-3 % of its norm.
Parameters: 2 x 6,000,384 (l) + 2 x 6,787,328 (g) + 64 = 25,575,488.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .mapper import EXPRESSION_DIM, ExpressionMixing, F2DMapper, WordMLP
from .msid_encoder import IDVEC_DIM

SDXL_WIDTHS: dict[str, int] = {"l": 768, "g": 1280}  # tower key (ComfyUI's token dict) -> word width
WORDS = 2  # "f l": two identifier tokens, one WordMLP each
POOLED_SOURCES = ("class_prompt", "identity_prompt")  # where SDXL's pooled vector comes from (sdxl.md D5)
DEFAULT_POOLED_SOURCE = "class_prompt"
ANCHOR_GAMMA = 0.01  # fc_out.weight scale at anchored initialisation (sdxl.md 2.3)
OFFICIAL_POSITIONS = (4, 5)  # "A photo of S*": S1*, S2* sit at token positions 4 and 5 in the official training prompt


class WordHeads(nn.Module):
    """The official pair of word MLPs for one tower: `i2t_first` -> S*[0], `i2t_last` -> S*[1]."""

    def __init__(self, in_dim: int, hidden_dim: int, word_dim: int) -> None:
        super().__init__()
        self.i2t_first = WordMLP(in_dim, hidden_dim, word_dim)
        self.i2t_last = WordMLP(in_dim, hidden_dim, word_dim)

    def words(self) -> tuple[WordMLP, WordMLP]:
        """The word MLPs in identifier order."""
        return self.i2t_first, self.i2t_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1600] -> [B, 2, word_dim]."""
        return torch.stack([self.i2t_first(x), self.i2t_last(x)], dim=1)


class F2DMapperXL(ExpressionMixing):
    """Identity + expression -> S* for SDXL: {"l": [B, 2, 768], "g": [B, 2, 1280]} in token-embedding space.

    Keys: `null_exp`, `heads.{l,g}.{i2t_first,i2t_last}.{layers.0.0,layers.1.0,fc_out}.{weight,bias}`,
    `anchor.{l,g}` [2, D] (the anchors S* started at; zeros when not anchored). `pooled_source` ("class_prompt"
    or "identity_prompt") says where the pooled vector comes from at inference, as trained; it travels in
    the file's metadata, not as a tensor.
    """

    family = "sdxl"
    s_star_space = "token"

    def __init__(
        self,
        id_dim: int = IDVEC_DIM,
        hidden_dim: int = IDVEC_DIM,
        widths: Mapping[str, int] = SDXL_WIDTHS,
        pooled_source: str = DEFAULT_POOLED_SOURCE,
    ) -> None:
        super().__init__()
        if pooled_source not in POOLED_SOURCES:
            raise ValueError(f"pooled_source must be one of {POOLED_SOURCES}, not {pooled_source!r}")
        self.heads = nn.ModuleDict({t: WordHeads(id_dim + EXPRESSION_DIM, hidden_dim, w) for t, w in widths.items()})
        self.anchor = nn.Module()
        for t, w in widths.items():
            self.anchor.register_buffer(t, torch.zeros(WORDS, w))
        self.pooled_source = pooled_source
        self.text_encoder_fingerprint: str | None = None  # of the towers it was trained with (text_fingerprint.py)

    @property
    def widths(self) -> dict[str, int]:
        """Tower key -> word width."""
        return {t: head.i2t_first.fc_out.out_features for t, head in self.heads.items()}

    def forward(
        self,
        idvec: torch.Tensor,
        expression: torch.Tensor | None = None,
        strength: float | torch.Tensor = 1.0,
    ) -> dict[str, torch.Tensor]:
        """S* per tower, {"l": [B, 2, 768], "g": [B, 2, 1280]}, from identity vectors [B, 1536] and optional
        expressions [B, 64] (mixed with `null_exp` as in the official mapper)."""
        x = self.mapper_input(idvec, expression, strength)
        return {t: head(x) for t, head in self.heads.items()}

    @torch.no_grad()
    def init_from_anchors(self, anchors: Mapping[str, torch.Tensor], gamma: float = ANCHOR_GAMMA) -> None:
        """Start S* at the anchors: `fc_out.bias <- A_t[k]`, `fc_out.weight *= gamma` (sdxl.md 2.3, D4).

        anchors: tower -> [2, D] float. A zero weight would stall the trunk's gradient (W^T delta = 0); a small
        gamma keeps every layer learning from the first step. Raises ValueError on a missing tower or wrong shape.
        """
        for t, head in self.heads.items():
            width = self.widths[t]
            if t not in anchors or tuple(anchors[t].shape) != (WORDS, width):
                found = tuple(anchors[t].shape) if t in anchors else "missing"
                raise ValueError(f"anchor for tower '{t}' must be [{WORDS}, {width}], found {found}")
            for k, word in enumerate(head.words()):
                word.fc_out.bias.copy_(anchors[t][k])
                word.fc_out.weight.mul_(gamma)
            getattr(self.anchor, t).copy_(anchors[t])


def token_anchors(token_table: torch.Tensor, names_token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """A_t [2, D] float32: for k = 0, 1 the mean over names of the k-th content token's row of `token_table`.

    token_table: one tower's token-embedding weight [vocab, D] (no position added). names_token_ids: each
    name's content token ids (start / end tokens removed); names shorter than two tokens are skipped.
    Sources: UniID utils.py `get_celeb_col_mean`; StableIdentity-SDXL celeb_embeddings.py (tokens [:, 1:3]).
    Raises ValueError when no name has two tokens.
    """
    pairs = [list(ids[:WORDS]) for ids in names_token_ids if len(ids) >= WORDS]
    if not pairs:
        raise ValueError("no name with at least two tokens to compute the anchors from")
    rows = token_table.detach().float()[torch.tensor(pairs, device=token_table.device)]  # [N, 2, D]
    return rows.mean(dim=0).cpu()


def class_anchors(token_table: torch.Tensor, class_token_id: int) -> torch.Tensor:
    """A_t [2, D]: the class noun's token row for both words (`init = "class"`, no names list needed)."""
    return token_table.detach().float()[class_token_id].expand(WORDS, -1).clone().cpu()


@torch.no_grad()
def warm_start_l_head(
    mapper: F2DMapperXL,
    official: F2DMapper,
    position_embedding: torch.Tensor,
    positions: Sequence[int] = OFFICIAL_POSITIONS,
) -> None:
    """Copy the official SD1 mapper (`mapping.pt`) into `heads.l` and shift it to token space.

    The official S* includes the CLIP-L position embedding of the training prompt "A photo of S*" (S1*, S2*
    at positions 4 and 5); subtracting `position_embedding[4 + k]` [77, 768] from `fc_out.bias` makes
    `S*_xl.l[k] + pos[4 + k] == S*_official[k]` exactly. `null_exp` is copied too. SDXL's CLIP-L is the same
    frozen OpenAI ViT-L/14 (generative-models `FrozenCLIPEmbedder`), but SDXL reads its penultimate layer:
    a starting point, not a port.
    """
    head = mapper.heads["l"]
    for k, (ours, theirs) in enumerate(zip(head.words(), (official.i2t_first, official.i2t_last), strict=True)):
        ours.load_state_dict(theirs.state_dict())
        ours.fc_out.bias.sub_(position_embedding[positions[k]].to(ours.fc_out.bias))
    mapper.null_exp.copy_(official.null_exp)
