"""The dtype training computes its gradient in, and the loss scale an fp16 backward needs.

An SD1.x UNet on an NVIDIA GPU runs in fp16 by ComfyUI's default. The CGDR loss is a mean over
B*4*64*64 elements, so its gradient per element (2r/N, about 1e-6 at batch 8) lies below fp16's
smallest normal number (6.1e-5) and mostly flushes to zero in an fp16 backward. Training therefore
runs the UNet in bf16 (fp32's exponent range) or fp32, or keeps fp16 and multiplies the loss by a
dynamic scale before the backward and divides the mapper's gradient by it afterwards (Micikevicius et
al. 2018, "Mixed Precision Training"; the constants are torch.amp.GradScaler's defaults).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import F2DError

TRAINING_DTYPES: tuple[str, ...] = ("auto", "bf16", "fp32", "fp16 + loss scaling")
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16 + loss scaling": torch.float16}

FP16_SMALLEST_NORMAL = torch.finfo(torch.float16).tiny  # 6.1e-5
INITIAL_LOSS_SCALE = 2.0**16
LOSS_SCALE_GROWTH_INTERVAL = 2000  # good steps before the scale doubles again


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (CUDA: Ampere or newer, or ROCm); CPUs emulate it slowly, so no.

    `torch.cuda.is_bf16_supported()` also says yes where bf16 only works emulated (Turing, Volta,
    Pascal: a T4, a V100; cuDNN has no bf16 convolutions there), so it is asked without emulation.
    """
    if device.type != "cuda":
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch: no such argument, and it counts native bf16 only
        return torch.cuda.is_bf16_supported()


def resolve_training_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The dtype the UNet computes in while training on `device`, for one of `TRAINING_DTYPES`.

    auto: bf16 where the device supports it, else fp32. bf16 on a device without it and unknown
    names raise F2DError saying what to choose instead.
    """
    if choice == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if choice not in _DTYPES:
        raise F2DError(f"training_dtype must be one of {TRAINING_DTYPES}, not {choice!r}")
    if choice == "bf16" and device.type == "cuda" and not bf16_supported(device):
        raise F2DError(
            f"{torch.cuda.get_device_name(device)} has no bf16: choose training_dtype fp32, or fp16 + loss scaling "
            "(less memory, same gradient)."
        )
    return _DTYPES[choice]


def dtype_name(dtype: torch.dtype) -> str:
    """'bf16', 'fp16', 'fp32' (what the log and the saved settings say)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


@dataclass
class LossScale:
    """Dynamic loss scaling: disabled (scale 1) unless the backward runs in fp16.

    `scaled(loss)` before `backward()`, `unscale_(params)` after it, then `update(finite)`: a
    non-finite gradient halves the scale (the step is skipped), every `growth_interval` finite
    steps double it.
    """

    enabled: bool
    scale: float = INITIAL_LOSS_SCALE
    growth_interval: int = LOSS_SCALE_GROWTH_INTERVAL
    _finite_steps: int = 0

    def __post_init__(self) -> None:
        if not self.enabled:
            self.scale = 1.0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate."""
        return loss * self.scale if self.enabled else loss

    def unscale_(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Divide the parameters' gradients (fp32) by the scale, in place."""
        if self.enabled:
            for p in parameters:
                if p.grad is not None:
                    p.grad.div_(self.scale)

    def update(self, finite: bool) -> None:
        """Halve the scale after an overflow; double it after `growth_interval` finite steps."""
        if not self.enabled:
            return
        if not finite:
            self.scale, self._finite_steps = self.scale / 2, 0
            return
        self._finite_steps += 1
        if self._finite_steps % self.growth_interval == 0:
            self.scale *= 2
