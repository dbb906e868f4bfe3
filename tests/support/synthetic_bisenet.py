"""Stand-ins for face-parsing.PyTorch's `79999_iter.pth`: its key layout, deterministic weights, writers.

The layout is written out here from the reference code (model.py, resnet.py), independently of
f2d_core, so a test can pin that f2d_core's BiSeNet loads the published file's keys.
The published file is a plain `state_dict()` (no `module.` prefix, BatchNorm `num_batches_tracked`
included) saved by torch 1.0 in 2019, i.e. in the legacy (pre-zip) pickle format.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

Layout = list[tuple[str, tuple[int, ...]]]

N_CLASSES = 19


def _conv(name: str, out_ch: int, in_ch: int, k: int) -> Layout:
    return [(f"{name}.weight", (out_ch, in_ch, k, k))]


def _bn(name: str, ch: int) -> Layout:
    stats = ("weight", "bias", "running_mean", "running_var")
    return [(f"{name}.{s}", (ch,)) for s in stats] + [(f"{name}.num_batches_tracked", ())]


def _conv_bn_relu(name: str, in_ch: int, out_ch: int, k: int) -> Layout:
    return _conv(f"{name}.conv", out_ch, in_ch, k) + _bn(f"{name}.bn", out_ch)


def _resnet18(prefix: str) -> Layout:
    rows = _conv(f"{prefix}.conv1", 64, 3, 7) + _bn(f"{prefix}.bn1", 64)
    in_ch = 64
    for layer, out_ch in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            b = f"{prefix}.layer{layer}.{block}"
            rows += _conv(f"{b}.conv1", out_ch, in_ch, 3) + _bn(f"{b}.bn1", out_ch)
            rows += _conv(f"{b}.conv2", out_ch, out_ch, 3) + _bn(f"{b}.bn2", out_ch)
            if in_ch != out_ch:
                rows += _conv(f"{b}.downsample.0", out_ch, in_ch, 1) + _bn(f"{b}.downsample.1", out_ch)
            in_ch = out_ch
    return rows


def _arm(name: str, in_ch: int, out_ch: int) -> Layout:
    return (
        _conv_bn_relu(f"{name}.conv", in_ch, out_ch, 3)
        + _conv(f"{name}.conv_atten", out_ch, out_ch, 1)
        + _bn(f"{name}.bn_atten", out_ch)
    )


def _head(name: str, in_ch: int, mid_ch: int, n_classes: int) -> Layout:
    return _conv_bn_relu(f"{name}.conv", in_ch, mid_ch, 3) + _conv(f"{name}.conv_out", n_classes, mid_ch, 1)


def published_layout(n_classes: int = N_CLASSES) -> Layout:
    """(key, shape) of every tensor of `79999_iter.pth`, in the file's order (191 tensors)."""
    return (
        _resnet18("cp.resnet")
        + _arm("cp.arm16", 256, 128)
        + _arm("cp.arm32", 512, 128)
        + _conv_bn_relu("cp.conv_head32", 128, 128, 3)
        + _conv_bn_relu("cp.conv_head16", 128, 128, 3)
        + _conv_bn_relu("cp.conv_avg", 512, 128, 1)
        + _conv_bn_relu("ffm.convblk", 256, 256, 1)
        + _conv("ffm.conv1", 64, 256, 1)
        + _conv("ffm.conv2", 256, 64, 1)
        + _head("conv_out", 256, 256, n_classes)
        + _head("conv_out16", 128, 64, n_classes)
        + _head("conv_out32", 128, 64, n_classes)
    )


def _tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Kaiming-scaled convs; BatchNorm near identity with a little spread."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(80000, dtype=torch.int64)
    u = torch.rand(shape, generator=gen) * 2 - 1  # [-1, 1)
    if key.endswith("running_var"):
        return 1 + 0.5 * u
    if key.endswith("running_mean"):
        return 0.1 * u
    if key.endswith(".bias"):
        return 0.1 * u
    if len(shape) == 1:  # BatchNorm gamma
        return 1 + 0.1 * u
    fan_in = shape[1] * shape[2] * shape[3]
    return torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5


def synthetic_state_dict(seed: int = 0, n_classes: int = N_CLASSES) -> OrderedDict[str, torch.Tensor]:
    """A state dict in the published layout with deterministic (seeded) weights."""
    gen = torch.Generator().manual_seed(seed)
    return OrderedDict((k, _tensor(k, shape, gen)) for k, shape in published_layout(n_classes))


def rig_class(state: dict[str, torch.Tensor], index: int) -> OrderedDict[str, torch.Tensor]:
    """A copy whose main head predicts class `index` at every pixel, whatever the image.

    The head's ConvBNReLU gets BatchNorm gamma 0 and beta 1, so its output is 1 everywhere; the
    1x1 classifier then gives logit 256 to `index` and 0 to every other class.
    """
    rigged = OrderedDict((k, v.clone()) for k, v in state.items())
    rigged["conv_out.conv.bn.weight"].zero_()
    rigged["conv_out.conv.bn.bias"].fill_(1.0)
    classifier = rigged["conv_out.conv_out.weight"]
    classifier.zero_()
    classifier[index] = 1.0
    return rigged


def write_checkpoint(path: Path, state: dict[str, torch.Tensor] | None = None, fmt: str = "legacy") -> Path:
    """Write `state` (default: seed 0) as the published `.pth` ("legacy"), a zip `.pth`, or safetensors."""
    state = synthetic_state_dict() if state is None else state
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt in ("legacy", "zip"):
        torch.save(OrderedDict(state), path, _use_new_zipfile_serialization=fmt == "zip")
    else:
        raise ValueError(f"fmt must be legacy, zip or safetensors, not {fmt!r}")
    return path
