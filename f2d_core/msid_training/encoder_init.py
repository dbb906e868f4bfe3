"""Where MSID training starts: random weights, a timm ViT checkpoint the user has, or an MSID encoder.

`--init random` (timm's ViT initialisation, seeded), `--init timm:FILE` (a timm VisionTransformer state
dict, e.g. ViT-S/16 ImageNet weights: its blocks, patch and position embeddings; the patch embedding and
the position grid are resampled with timm's own helpers when they differ, the classifier head is
dropped, and the MSID norms start fresh), or `--init msid:FILE` (`msid.pt` or a trained MSID
`.safetensors`: fine-tuning, every tensor as saved).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from ..checkpoints import load_msid, sha256_of
from ..errors import F2DError, WeightFileError
from ..identity.msid_encoder import MSIDEncoder
from ..weight_files import read_weights

log = logging.getLogger(__name__)

INIT_KINDS = ("random", "timm", "msid")


@dataclass(frozen=True)
class EncoderInit:
    """A parsed `--init`: kind (random | timm | msid) and the file for timm / msid."""

    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> EncoderInit:
        """'random', 'timm:FILE' or 'msid:FILE'; F2DError for anything else or a missing file."""
        kind, _, path = text.partition(":")
        if kind not in INIT_KINDS or (kind == "random") != (path == ""):
            raise F2DError(f"--init must be 'random', 'timm:FILE' or 'msid:FILE', not {text!r}")
        if kind == "random":
            return cls("random")
        if not Path(path).is_file():
            raise F2DError(f"--init {text}: the file {path} does not exist.")
        return cls(kind, Path(path))

    def digest(self, seed: int) -> str:
        """What the run's identity records: the file's SHA-256, or the seed of a random start."""
        if self.path is None:
            return f"random:seed={seed}"
        return f"{self.kind}:{sha256_of(self.path)}"


def _grid(tokens: int) -> int:
    side = round(tokens**0.5)
    if side * side != tokens:
        raise WeightFileError(f"a position embedding of {tokens} patch tokens is not a square grid")
    return side


def timm_to_msid(sd: dict[str, torch.Tensor], encoder: MSIDEncoder, path: Path | str) -> dict[str, torch.Tensor]:
    """A timm ViT state dict mapped onto `encoder`'s keys (the same names: timm's VisionTransformer).

    Dropped: the classification head (`head.*`) and `fc_norm.*`. The patch embedding's kernel is resampled
    to 8x8 (`timm.layers.resample_patch_embed`, FlexiViT's pseudo-inverse resize) and the position grid to
    14x14 (`resample_abs_pos_embed`, bicubic) when they differ. Keys the file lacks (the MSID `norms.*`)
    keep `encoder`'s fresh values.

    Raises:
        WeightFileError: another width or depth, no class token, or not a ViT at all.
    """
    own = encoder.state_dict()
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise WeightFileError(f"{path} is not a timm VisionTransformer checkpoint (no patch_embed / pos_embed).")
    mapped = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
    width = mapped["patch_embed.proj.weight"].shape[0]
    if width != own["cls_token"].shape[-1]:
        raise WeightFileError(
            f"{path} is a ViT of width {width}; the MSID encoder is {own['cls_token'].shape[-1]} wide (ViT-S). "
            "Use a ViT-S checkpoint, or start from random weights."
        )
    kernel = own["patch_embed.proj.weight"].shape[-2:]
    if mapped["patch_embed.proj.weight"].shape[-2:] != kernel:
        log.info("resampling the patch embedding %s -> %s", tuple(mapped["patch_embed.proj.weight"].shape[-2:]), kernel)
        mapped["patch_embed.proj.weight"] = resample_patch_embed(mapped["patch_embed.proj.weight"], list(kernel))
    tokens = mapped["pos_embed"].shape[1]
    want = own["pos_embed"].shape[1]
    if tokens != want:
        old = _grid(tokens - 1)  # timm's ViTs with a class token carry it in pos_embed
        log.info("resampling the position embedding %dx%d -> %dx%d", old, old, _grid(want - 1), _grid(want - 1))
        mapped["pos_embed"] = resample_abs_pos_embed(mapped["pos_embed"], [_grid(want - 1)] * 2, [old, old], 1)
    depth = 1 + max(int(k.split(".")[1]) for k in mapped if k.startswith("blocks."))
    if depth < len(encoder.blocks):
        raise WeightFileError(f"{path} has {depth} blocks; the MSID encoder needs {len(encoder.blocks)}.")
    unknown = sorted(k for k in mapped if k not in own)
    if unknown:
        raise WeightFileError(
            f"{path} has keys the MSID ViT does not: {', '.join(unknown[:4])} (another ViT variant?)."
        )
    wrong = [k for k, v in mapped.items() if v.shape != own[k].shape]
    if wrong:
        key = wrong[0]
        raise WeightFileError(f"{path}: {key} is {tuple(mapped[key].shape)}, expected {tuple(own[key].shape)}.")
    return {**own, **mapped}


def initial_encoder(init: EncoderInit, seed: int = 0, **architecture) -> MSIDEncoder:
    """The encoder training starts from, in train mode, float32 on the CPU.

    `architecture` (width, depth, heads, tap_blocks) is for random starts only (tests, benchmarks);
    timm and msid starts are the official architecture.
    """
    if init.kind == "msid":
        return load_msid(init.path).train()
    torch.manual_seed(seed)
    encoder = MSIDEncoder(**architecture)
    if init.kind == "timm":
        sd, _ = read_weights(init.path)
        encoder.load_state_dict(timm_to_msid(sd, encoder, init.path))
        log.info("starting from the timm ViT %s", init.path.name)
    return encoder.train()
