"""The dtype training computes its gradient in, and the loss scale an fp16 backward needs.

An SD1.x UNet on an NVIDIA GPU runs in fp16 by ComfyUI's default. The CGDR loss is a mean over
B*4*64*64 elements, so its gradient per element (2r/N, about 1e-6 at batch 8) lies below fp16's
smallest normal number (6.1e-5) and mostly flushes to zero in an fp16 backward. Training therefore
runs the UNet in bf16 (fp32's exponent range) or fp32, or keeps fp16 and multiplies the loss by a
dynamic scale before the backward and divides the mapper's gradient by it afterwards (Micikevicius et
al. 2018, "Mixed Precision Training"; the constants are torch.amp.GradScaler's defaults).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import F2DError

log = logging.getLogger(__name__)

TRAINING_DTYPES: tuple[str, ...] = ("auto", "bf16", "fp32", "fp16 + loss scaling")
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16 + loss scaling": torch.float16}

FP16_SMALLEST_NORMAL = torch.finfo(torch.float16).tiny  # 6.1e-5
INITIAL_LOSS_SCALE = 2.0**16
LOSS_SCALE_GROWTH_INTERVAL = 2000  # good steps before the scale doubles again


# ROCm architectures with native bf16 arithmetic (matrix cores / WMMA): CDNA2 (MI200: gfx90a),
# CDNA3 (MI300: gfx94x), CDNA4 (MI350: gfx95x), RDNA3 (gfx11xx) and RDNA4 (gfx12xx). Source: AMD's
# ROCm "Precision support" table (rocm.docs.amd.com, reference/precision-support). Older ones
# (gfx906 / MI50, gfx908 / MI100, RDNA1-2 gfx10xx) are left out: fp32 is the safe choice there.
ROCM_NATIVE_BF16_ARCHS: tuple[str, ...] = ("gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")
NVIDIA_NATIVE_BF16_CAPABILITY = (8, 0)  # Ampere (A100, RTX 30xx) and newer; Turing / Volta only emulate it


def bf16_supported(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively; CPUs (and MPS) emulate it slowly, so no.

    Decided from the device itself, not from `torch.cuda.is_bf16_supported()`, which says yes where bf16
    only works emulated (torch 2.3-2.4 on a T4, a V100, RTX 20xx) and for every ROCm device:
    NVIDIA: compute capability >= 8.0; ROCm (`torch.version.hip`): an architecture of
    `ROCM_NATIVE_BF16_ARCHS` (`gcnArchName` of the device properties).
    """
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if getattr(torch.version, "hip", None):
        arch = str(getattr(torch.cuda.get_device_properties(index), "gcnArchName", "")).split(":")[0]
        return arch.startswith(ROCM_NATIVE_BF16_ARCHS)
    return tuple(torch.cuda.get_device_capability(index)) >= NVIDIA_NATIVE_BF16_CAPABILITY


def resolve_training_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The dtype the UNet computes in while training on `device`, for one of `TRAINING_DTYPES`.

    auto: bf16 where the device computes it natively (`bf16_supported`), else fp32. An explicit bf16
    on a GPU without native bf16 is used as asked, with a warning (emulated: slow, and some kernels
    may lack it). Unknown names raise F2DError.
    """
    if choice == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if choice not in _DTYPES:
        raise F2DError(f"training_dtype must be one of {TRAINING_DTYPES}, not {choice!r}")
    if choice == "bf16" and device.type == "cuda" and not bf16_supported(device):
        log.warning(
            "%s has no native bf16: training_dtype bf16 runs emulated there (slow, and some kernels may lack it). "
            "Choose fp32, or fp16 + loss scaling (less memory, same gradient).",
            torch.cuda.get_device_name(device),
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

    def state_dict(self) -> dict[str, float]:
        """What a resumable state keeps: the scale and the finite steps since it last changed."""
        return {"scale": self.scale, "finite_steps": self._finite_steps}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from `state_dict()`'s values (a disabled scale stays 1)."""
        if self.enabled:
            self.scale, self._finite_steps = float(state["scale"]), int(state["finite_steps"])

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
