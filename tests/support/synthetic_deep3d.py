"""Deep3DFaceRecon checkpoints in the published `epoch_20.pth` format, on seeded random weights.

The published file is `torch.save({"net_recon": ..., "opt_00": ..., "sched_00": ...})` as
`models/base_model.py::save_networks` of sicxu/Deep3DFaceRecon_pytorch writes it (trained with
PyTorch 1.6: zip serialization, Adam's `step` a Python int). `net_recon` is `ReconNetWrapper`'s
state dict: a torchvision-style ResNet-50 under `backbone.` (no `fc`) and seven 1x1 heads under
`final_layers.`. The key table below is written out from that layout, independently of the model
class under test.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)  # identity, expression, texture, angles, lighting, txy, tz
_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # ResNet-50: (planes, blocks), bottleneck expansion 4
_TRAIN_STEPS = 187_500  # any count; stored in num_batches_tracked and Adam's step


def _batch_norm(name: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{name}.weight", (channels,)),
        (f"{name}.bias", (channels,)),
        (f"{name}.running_mean", (channels,)),
        (f"{name}.running_var", (channels,)),
        (f"{name}.num_batches_tracked", ()),
    ]


def net_recon_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of `net_recon` in epoch_20.pth: (key, shape) in state-dict order (332 entries)."""
    rows: list[tuple[str, tuple[int, ...]]] = [("backbone.conv1.weight", (64, 3, 7, 7))]
    rows += _batch_norm("backbone.bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(_STAGES, start=1):
        for block in range(blocks):
            name = f"backbone.layer{stage}.{block}"
            rows.append((f"{name}.conv1.weight", (planes, inplanes, 1, 1)))
            rows += _batch_norm(f"{name}.bn1", planes)
            rows.append((f"{name}.conv2.weight", (planes, planes, 3, 3)))
            rows += _batch_norm(f"{name}.bn2", planes)
            rows.append((f"{name}.conv3.weight", (planes * 4, planes, 1, 1)))
            rows += _batch_norm(f"{name}.bn3", planes * 4)
            if block == 0:
                rows.append((f"{name}.downsample.0.weight", (planes * 4, inplanes, 1, 1)))
                rows += _batch_norm(f"{name}.downsample.1", planes * 4)
            inplanes = planes * 4
    for index, size in enumerate(HEAD_SIZES):
        rows += [(f"final_layers.{index}.weight", (size, 2048, 1, 1)), (f"final_layers.{index}.bias", (size,))]
    return rows


def _value(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One tensor: He-uniform convolutions, BatchNorm statistics near identity, small heads."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(_TRAIN_STEPS, dtype=torch.int64)
    u = torch.rand(shape, generator=generator).mul_(2).sub_(1)  # uniform in [-1, 1), float32
    if key.startswith("final_layers."):
        v = u * 0.1 if key.endswith("bias") else u * math.sqrt(3.0 / 2048)
    elif len(shape) == 4:
        v = u * math.sqrt(3.0) * math.sqrt(2.0 / math.prod(shape[1:]))
    elif key.endswith("running_var"):
        v = 1 + 0.5 * u
    elif key.endswith("running_mean"):
        v = 0.1 * u
    elif key.endswith("bias"):
        v = 0.05 * u
    elif ".bn3." in key or ".downsample.1." in key:  # residual branch outputs: kept small so 16 blocks stay tame
        v = 0.3 + 0.05 * u
    else:
        v = 1 + 0.1 * u
    return v.to(torch.float32)


@functools.lru_cache(maxsize=2)
def _generated(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: _value(key, shape, generator) for key, shape in net_recon_shapes()}


def net_recon_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """`net_recon` of epoch_20.pth with deterministic random weights (same seed, same torch: same tensors).

    A fresh copy each call (generated once per seed), so callers may change it freely.
    """
    return {key: value.clone() for key, value in _generated(seed).items()}


def _adam_state(net_recon: dict[str, torch.Tensor], full: bool) -> dict:
    """`opt_00`: Adam's state dict over the parameters (not the BatchNorm buffers), as PyTorch 1.6 saved it.

    Moments are zeros; unless `full`, each is a stride-0 view of one zero, so the file stays small.
    """
    params = [v for k, v in net_recon.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]

    def zeros(p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p) if full else torch.zeros(()).expand(p.shape)

    return {
        "state": {i: {"step": _TRAIN_STEPS, "exp_avg": zeros(p), "exp_avg_sq": zeros(p)} for i, p in enumerate(params)},
        "param_groups": [
            {
                "lr": 4e-06,
                "betas": (0.9, 0.999),
                "eps": 1e-08,
                "weight_decay": 0,
                "amsgrad": False,
                "params": list(range(len(params))),
            }
        ],
    }


def _step_lr_state() -> dict:
    """`sched_00`: StepLR(step_size=10, gamma=0.2) after 20 epochs, the training defaults."""
    return {
        "step_size": 10,
        "gamma": 0.2,
        "base_lrs": [0.0001],
        "last_epoch": 20,
        "_step_count": 21,
        "_get_lr_called_within_step": False,
        "_last_lr": [4e-06],
    }


def published_checkpoint(seed: int = 0, *, full_optimizer_state: bool = False) -> dict:
    """The dict epoch_20.pth holds: `net_recon`, `opt_00`, `sched_00`."""
    net_recon = net_recon_state_dict(seed)
    return {
        "net_recon": net_recon,
        "opt_00": _adam_state(net_recon, full_optimizer_state),
        "sched_00": _step_lr_state(),
    }


def write_published_checkpoint(path: Path | str, seed: int = 0, *, full_optimizer_state: bool = False) -> Path:
    """Write `epoch_20.pth` in the published format; `full_optimizer_state` makes it full size (about 3x)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(published_checkpoint(seed, full_optimizer_state=full_optimizer_state), path)
    return path


def write_safetensors_checkpoint(path: Path | str, seed: int = 0, prefix: str = "") -> Path:
    """Write the same `net_recon` tensors as `.safetensors`, keys optionally prefixed (`face_3drecon.`: SadTalker)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in net_recon_state_dict(seed).items()}, str(path))
    return path
