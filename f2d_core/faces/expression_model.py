"""Deep3DFaceRecon's coefficient regressor (ResNet-50 + seven 1x1 heads -> 257 BFM coefficients) and its loader.

Published checkpoint: `epoch_20.pth` of sicxu/Deep3DFaceRecon_pytorch, a `torch.save` of
`{"net_recon": state dict, "opt_00": Adam state, "sched_00": StepLR state}`. `net_recon` holds
`backbone.*` (a torchvision-named ResNet-50 without `fc`: 318 tensors, the names timm's `resnet50`
uses too) and `final_layers.{0..6}.{weight, bias}`: 1x1 convolutions 2048 -> 80 identity, 64
expression, 80 texture, 3 angles, 27 lighting, 2 + 1 translation, concatenated in that order.
Face2Diffusion's expression code is coefficients 80..143.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import timm
import torch
from torch import nn

from ..errors import WeightFileError
from ..images import ImageLike
from ..progress import Progress, in_chunks
from ..weight_files import StateDict, describe_weights, key_problems, read_weights
from .expression_alignment import deep3d_crops

log = logging.getLogger(__name__)

COEFFICIENT_GROUPS: tuple[tuple[str, int], ...] = (
    ("identity", 80),
    ("expression", 64),
    ("texture", 80),
    ("angle", 3),
    ("lighting", 27),
    ("translation_xy", 2),
    ("translation_z", 1),
)
EXPRESSION_SLICE = slice(80, 144)
FEATURE_DIM = 2048
MODEL_FOLDER = "models/face2diffusion/"
HOW_TO_GET = (
    "Download epoch_20.pth of Deep3DFaceRecon_pytorch (github.com/sicxu/Deep3DFaceRecon_pytorch, "
    f"'Inference with a pre-trained model') and put it in ComfyUI's {MODEL_FOLDER}"
)
# Keys a file may nest the regressor under: a flattened epoch_20.pth, SadTalker's combined safetensors.
_NESTING_PREFIXES = ("net_recon.", "face_3drecon.")


class ExpressionRegressor(nn.Module):
    """Deep3DFaceRecon's `ReconNetWrapper` (ResNet-50): RGB face crops in [0, 1] -> 257 BFM coefficients."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="avg")
        self.final_layers = nn.ModuleList(nn.Conv2d(FEATURE_DIM, n, kernel_size=1) for _, n in COEFFICIENT_GROUPS)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """crops [B, 3, 224, 224] (from `deep3d_crops`) -> coefficients [B, 257]."""
        features = self.backbone(crops)[:, :, None, None]  # [B, 2048, 1, 1], after global average pooling
        return torch.cat([head(features) for head in self.final_layers], dim=1).flatten(1)

    def coefficients(self, crops: torch.Tensor) -> torch.Tensor:
        """All 257 coefficients [B, 257]: identity, expression, texture, angles, lighting, translation."""
        return self(crops)

    def expression(self, crops: torch.Tensor) -> torch.Tensor:
        """The 64 expression coefficients [B, 64] (80..143) that Face2Diffusion conditions on."""
        return self(crops)[:, EXPRESSION_SLICE]


def _strip_prefixes(sd: StateDict) -> StateDict:
    """Keys as ReconNetWrapper names them: drop a nesting prefix (selecting those keys) and DDP's `module.`."""
    for prefix in _NESTING_PREFIXES:
        nested = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
        if nested:
            sd = nested
            break
    if all(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    return sd


def _check_keys(sd: StateDict, want: StateDict, path: Path) -> None:
    """Raise a WeightFileError naming the file for another model's weights, missing/unexpected keys or shapes."""
    if not any(k.startswith(("backbone.", "final_layers.")) for k in sd):
        guess = describe_weights(list(sd))
        looks = f"it holds {guess}" if guess else f"its keys ({', '.join(list(sd)[:3])}, ...) belong to another model"
        if "conv1.weight" in sd and "fc.weight" in sd:
            looks = "it holds an ImageNet ResNet classifier (such as resnet50-0676ba61.pth, the training init)"
        raise WeightFileError(f"{path} is not Deep3DFaceRecon's face reconstruction network: {looks}. {HOW_TO_GET}.")
    problems = key_problems(sd, want)
    if problems:
        raise WeightFileError(
            f"{path} does not match Deep3DFaceRecon's ResNet-50 regressor (epoch_20.pth): {'; '.join(problems)}. "
            f"A different network variant (resnet18, use_last_fc) or a damaged file? {HOW_TO_GET}."
        )


def read_expression_state_dict(path: str | Path) -> StateDict:
    """The regressor's tensors (ReconNetWrapper key names) from epoch_20.pth, a state dict or a .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"The expression model {path} does not exist. {HOW_TO_GET}.")
    sd, _ = read_weights(path, select="net_recon", hint=f"{HOW_TO_GET}.")
    return _strip_prefixes(sd)


def load_expression_model(path: str | Path) -> ExpressionRegressor:
    """Deep3DFaceRecon's regressor from `epoch_20.pth` (as published) or a `.safetensors`, in eval mode on the CPU."""
    sd = read_expression_state_dict(path)
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = ExpressionRegressor()
    _check_keys(sd, model.state_dict(), Path(path))
    model = model.to_empty(device="cpu")
    model.load_state_dict(sd, strict=True)
    log.info("Loaded the Deep3DFaceRecon expression model from %s", path)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def expression_codes(
    model: ExpressionRegressor,
    images: ImageLike | Sequence[ImageLike],
    lm5: torch.Tensor | np.ndarray,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Expression codes [B, 64] of faces, on the model's device: Deep3DFaceRecon's crop, then its regressor.

    images: a batch [B, H, W, C] or a list of B RGB photos (uint8 0..255 or float 0..1, channels last);
    lm5: [B, 5, 2] landmarks in the photos' pixels (insightface `kps` order, y down). The regressor runs
    CHUNK crops at a time, with `progress(done, B)` after each (`f2d_core.progress`); what it raises stops it.
    """
    parameter = next(model.parameters())
    crops = deep3d_crops(images, lm5)
    return torch.cat(
        [model.expression(chunk.to(parameter.device, parameter.dtype)) for chunk in in_chunks(crops, progress)]
    )
