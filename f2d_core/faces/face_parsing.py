"""BiSeNet face parsing (face-parsing.PyTorch, 19 CelebAMask-HQ classes) and the CGDR face mask M.

The network's key names match the published `79999_iter.pth` exactly (a plain state dict,
`cp.resnet.*`, `cp.arm16.*`, ..., `ffm.*`, `conv_out*.*`). Only the main head runs at inference;
the two auxiliary training heads (`conv_out16`, `conv_out32`) are kept so the file loads strictly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import F2DError, WeightFileError
from ..weight_files import check_state_dict, read_weights

log = logging.getLogger(__name__)

# Label order of face-parsing.PyTorch (its prepropess_data.py): 0 is background, then the
# CelebAMask-HQ part masks in the order they were painted (a later part overwrites an earlier one).
CELEBAMASK_HQ_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip

# The face region M of CGDR: the parts that carry identity, hole-free. Glasses (eye_g) are in
# because they cover the eyes (leaving them out would punch holes at the most identity-bearing
# spot); ears are in as part of the face's shape. Out: background, hair, hat, neck, cloth, earrings
# (ear_r) and necklace (neck_l): they belong to this one photo, not to the person, and CGDR exists to
# hand exactly such regions to the class prompt so that text can change them.
_FACE_CLASS_NAMES = (
    "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "nose", "mouth", "u_lip", "l_lip",
)  # fmt: skip
FACE_CLASSES: Mapping[str, int] = MappingProxyType(
    {name: CELEBAMASK_HQ_CLASSES.index(name) for name in _FACE_CLASS_NAMES}
)

NUM_CLASSES = len(CELEBAMASK_HQ_CLASSES)
INPUT_SIZE = 512  # face-parsing.PyTorch's test.py resizes every photo to 512x512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_WHAT = "a BiSeNet face-parsing model"
WEIGHTS_HINT = (
    "BiSeNet's 79999_iter.pth from zllrunning/face-parsing.PyTorch (19 CelebAMask-HQ classes, "
    "about 53 MB), or a .safetensors conversion of it"
)


class FaceParsingInputError(F2DError, ValueError):
    """Images or a class set given to the face parser cannot be used."""


class ConvBNReLU(nn.Module):
    """Conv (no bias), BatchNorm, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class AttentionRefinement(nn.Module):
    """ARM: a conv, then channels reweighted by a sigmoid of their global average."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True)))
        return feat * torch.sigmoid(atten)


class ContextPath(nn.Module):
    """ResNet-18 features at 1/8, 1/16, 1/32 with attention refinement and a global context."""

    def __init__(self) -> None:
        super().__init__()
        # timm's resnet18 has torchvision's key names (conv1, bn1, layerN.M.convK, downsample.0/1).
        self.resnet = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ResNet features at 1/8 [B,128], context features at 1/8 [B,128])."""
        r = self.resnet
        x = r.maxpool(r.act1(r.bn1(r.conv1(x))))
        feat8 = r.layer2(r.layer1(x))
        feat16 = r.layer3(feat8)
        feat32 = r.layer4(feat16)

        context = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))  # [B,128,1,1], broadcast
        up32 = F.interpolate(self.arm32(feat32) + context, size=feat16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[2:], mode="nearest")
        return feat8, self.conv_head16(up16)


class FeatureFusion(nn.Module):
    """FFM: concatenated features, a 1x1 conv, then a squeeze-excite style residual reweighting."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, kernel=1)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat * atten + feat


class SegmentationHead(nn.Module):
    """A 3x3 ConvBNReLU, then a 1x1 classifier (no bias) to per-class logits."""

    def __init__(self, in_ch: int, mid_ch: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch)
        self.conv_out = nn.Conv2d(mid_ch, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """face-parsing.PyTorch's BiSeNet; `forward` gives the main head's logits at 1/8 resolution."""

    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = SegmentationHead(256, 256, n_classes)
        self.conv_out16 = SegmentationHead(128, 64, n_classes)  # training-only auxiliary head
        self.conv_out32 = SegmentationHead(128, 64, n_classes)  # training-only auxiliary head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB [B,3,S,S] -> logits [B,n_classes,S/8,S/8] (not yet upsampled)."""
        feat8, context8 = self.cp(x)  # the ResNet's 1/8 features stand in for the spatial path
        return self.conv_out(self.ffm(feat8, context8))


def _class_ids(classes: Iterable[str | int]) -> list[int]:
    """Class indices from names (or indices) of CELEBAMASK_HQ_CLASSES."""
    ids = []
    for c in classes:
        if isinstance(c, str):
            if c not in CELEBAMASK_HQ_CLASSES:
                raise FaceParsingInputError(
                    f"classes: unknown face-parsing class {c!r}; the names are {', '.join(CELEBAMASK_HQ_CLASSES)}."
                )
            ids.append(CELEBAMASK_HQ_CLASSES.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < NUM_CLASSES:
            ids.append(int(c))
        else:
            raise FaceParsingInputError(f"classes: {c!r} is neither a class name nor an index 0..{NUM_CLASSES - 1}.")
    if not ids:
        raise FaceParsingInputError(
            "classes is empty, so the mask would be all zeros; pass FACE_CLASSES or some class names."
        )
    return sorted(set(ids))


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """(h, w) from an int or a pair."""
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise FaceParsingInputError(f"size must be positive, got {size!r}.")
    return int(h), int(w)


def downsample_mask(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a {0,1} mask [B,1,H,W]: a cell is 1 when at least half its area is 1 (area vote).

    Chosen over max-pooling: max-pooling grows the face by up to a whole latent cell (8 image pixels
    for SD's VAE) on every side and lets one stray pixel claim a cell, so hair and background at the
    border would be trained to reconstruct the photo, the leak CGDR is there to stop. The area vote
    keeps the mask's area unbiased and works for any size ratio (adaptive average pooling).
    """
    fraction = F.adaptive_avg_pool2d(mask.float(), _as_size(size))
    return (fraction >= 0.5).to(mask.dtype)


class FaceParser(nn.Module):
    """A frozen BiSeNet face parser: images in 0..1 to class labels and face-region masks."""

    def __init__(self, bisenet: BiSeNet, input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        if input_size < 32:
            raise FaceParsingInputError(f"input_size must be at least 32 (BiSeNet downsamples 32x), got {input_size}.")
        self.bisenet = bisenet.requires_grad_(False)
        self.input_size = int(input_size)
        self.eval()

    def train(self, mode: bool = True) -> FaceParser:
        """Stay in eval mode whatever is asked: the parser is frozen, BatchNorm uses running stats."""
        return super().train(False)

    def _check(self, images: torch.Tensor) -> None:
        """Raise FaceParsingInputError unless images is float [B,3,H,W] in 0..1."""
        shape = list(images.shape)
        if images.ndim != 4 or shape[1] != 3:
            hint = " (ComfyUI's IMAGE layout? use images.movedim(-1, 1))" if shape[-1:] == [3] else ""
            raise FaceParsingInputError(f"images must be [B,3,H,W] RGB, got shape {shape}{hint}.")
        if not images.is_floating_point():
            raise FaceParsingInputError(f"images must be float in 0..1, got {images.dtype}: divide by 255.")
        if images.numel() == 0:
            raise FaceParsingInputError(f"images is empty (shape {shape}).")
        lo, hi = images.amin().item(), images.amax().item()
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise FaceParsingInputError(
                f"images must be in 0..1, got values in [{lo:.3g}, {hi:.3g}]: "
                "divide 0..255 images by 255, map -1..1 images with (x + 1) / 2."
            )

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at 1/8 of input_size, float32, on the parser's device."""
        self._check(images)
        weight = self.bisenet.cp.resnet.conv1.weight
        x = images.to(dtype=torch.float32)
        s = self.input_size
        if x.shape[-2:] != (s, s):  # like test.py's PIL bilinear resize (antialiased when shrinking)
            # On the CPU: Apple's MPS has no antialiased bilinear kernel before torch 2.7 (pytorch/pytorch#145526).
            x = F.interpolate(x.cpu(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        x = x.to(weight.device)
        # Resize and normalise in float32 whatever the parser's dtype, then cast for the network.
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        return self.bisenet(x.to(weight.dtype)).float()

    @staticmethod
    def _upsample(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits to `size`, bilinear with align_corners=True as face-parsing.PyTorch does."""
        return F.interpolate(features, size=size, mode="bilinear", align_corners=True)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in 0..1 -> class logits [B,19,H,W] float32 on the parser's device."""
        return self._upsample(self._features(images), tuple(images.shape[-2:]))

    def parse(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in 0..1 -> labels [B,H,W] int64 (CELEBAMASK_HQ_CLASSES indices)."""
        features = self._features(images)
        size = tuple(images.shape[-2:])
        # One image at a time: the upsampled [19,H,W] logits are the big tensor here.
        return torch.stack([self._upsample(f[None], size).argmax(dim=1)[0] for f in features])

    def face_mask(
        self,
        images: torch.Tensor,
        classes: Iterable[str | int] = FACE_CLASSES,
        size: int | tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Images [B,3,H,W] in 0..1 -> mask [B,1,h,w] in {0,1}, images' dtype, parser's device.

        A pixel is 1 when its label is one of `classes` (names or indices; default FACE_CLASSES).
        With `size` (e.g. 64 for a 512 image's SD latent) the mask is resized by `downsample_mask`.
        """
        ids = _class_ids(classes)
        labels = self.parse(images)
        mask = torch.isin(labels, torch.tensor(ids, device=labels.device)).unsqueeze(1).float()
        if size is not None:
            mask = downsample_mask(mask, size)
        return mask.to(images.dtype)


def load_face_parser(path: Path | str, input_size: int = INPUT_SIZE) -> FaceParser:
    """A FaceParser (CPU, float32, eval) from `79999_iter.pth` or a `.safetensors` of it."""
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(
            f"Face-parsing weights {path} not found. Put {WEIGHTS_HINT} in ComfyUI's models/face2diffusion/ folder."
        )
    sd, _ = read_weights(path)
    classifier = sd.get("conv_out.conv_out.weight")
    if classifier is not None and classifier.ndim == 4 and classifier.shape[0] != NUM_CLASSES:
        raise WeightFileError(
            f"{path} is a face parser with {classifier.shape[0]} classes (conv_out.conv_out.weight "
            f"{tuple(classifier.shape)}); the face mask needs the {NUM_CLASSES} CelebAMask-HQ classes "
            f"of {WEIGHTS_HINT}."
        )
    net = BiSeNet()
    if any(k.startswith("cp.resnet.") for k in sd):  # a BiSeNet file: BatchNorm step counters are
        for key, value in net.state_dict().items():  # unused at inference and some conversions drop them
            if key.endswith("num_batches_tracked"):
                sd.setdefault(key, value)
    check_state_dict(sd, net, path, WEIGHTS_WHAT)
    net.load_state_dict(sd, strict=True)
    log.info("Loaded face parser %s (%d tensors)", path, len(sd))
    return FaceParser(net, input_size)
