"""The training dtype and the loss scale, on the fp16 underflow they exist for (pure PyTorch, CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from f2d_core.errors import F2DError
from f2d_core.training.placement import cpu_training_warning
from f2d_core.training.precision import (
    FP16_SMALLEST_NORMAL,
    LossScale,
    dtype_name,
    resolve_training_dtype,
)

CPU = torch.device("cpu")


def _output_block(channels: int, dtype: torch.dtype) -> nn.Module:
    """The end of an SD UNet (GroupNorm, SiLU, 3x3 conv to the 4 latent channels), seeded, in `dtype`."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, 4, 3, padding=1))
    return block.to(dtype)


def _input_gradient(dtype: torch.dtype, loss_scale: LossScale, batch: int = 8, size: int = 64) -> torch.Tensor:
    """d(CGDR-style mean squared error)/d(block input) at latent `size`, computed in `dtype` under `loss_scale`."""
    channels = 64
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(batch, channels, size, size, generator=generator)
    target = torch.randn(batch, 4, size, size, generator=generator)
    x = features.to(dtype).requires_grad_()
    eps_hat = _output_block(channels, dtype)(x).float()  # the backend hands the loss an fp32 prediction
    loss = F.mse_loss(eps_hat, target)  # a mean over batch * 4 * size * size elements, as the CGDR loss
    loss_scale.scaled(loss).backward()
    return x.grad.float() / loss_scale.scale


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _median_relative_error(gradient: torch.Tensor, reference: torch.Tensor) -> float:
    return ((gradient - reference).abs() / reference.abs().clamp_min(1e-30)).median().item()


def test_a_plain_fp16_backward_degrades_the_gradient_at_the_papers_size_and_a_loss_scale_keeps_it():
    """Batch 32 at 64x64 latents (the paper's schedule): the gradient lies entirely below fp16's normal range."""
    reference = _input_gradient(torch.float32, LossScale(enabled=False), batch=32)
    assert (reference.abs() < FP16_SMALLEST_NORMAL).float().mean() > 0.99
    plain = _input_gradient(torch.float16, LossScale(enabled=False), batch=32)
    scaled = _input_gradient(torch.float16, LossScale(enabled=True), batch=32)
    # Measured here: 18% of the plain fp16 gradient is exactly zero, the rest off by a median 12%.
    assert (plain == 0).float().mean() > 0.1
    assert _median_relative_error(plain, reference) > 0.05
    # Under the loss scale: no zeros and a median error of 0.06% (fp16's own rounding).
    assert (scaled == 0).float().mean() < 0.001
    assert _median_relative_error(scaled, reference) < 0.005
    assert _cosine(scaled, reference) > 0.999


def test_bf16_keeps_the_gradient_where_fp16_loses_it():
    reference = _input_gradient(torch.float32, LossScale(enabled=False), batch=2, size=32)
    bf16 = _input_gradient(torch.bfloat16, LossScale(enabled=False), batch=2, size=32)
    assert (bf16 == 0).float().mean() < 0.001 and _cosine(bf16, reference) > 0.99


def test_the_loss_scale_halves_on_overflow_and_grows_after_a_run_of_good_steps():
    scale = LossScale(enabled=True, growth_interval=3)
    assert scale.scale == 2.0**16
    scale.update(finite=False)
    assert scale.scale == 2.0**15
    for _ in range(3):
        scale.update(finite=True)
    assert scale.scale == 2.0**16
    off = LossScale(enabled=False)
    loss = torch.tensor(0.5)
    assert off.scale == 1.0 and off.scaled(loss) is loss
    off.update(finite=False)
    assert off.scale == 1.0


def test_unscale_divides_the_parameters_gradients():
    p = nn.Parameter(torch.ones(3))
    scale = LossScale(enabled=True)
    scale.scaled((p * 2).sum()).backward()
    scale.unscale_([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))


def test_training_dtype_choices():
    assert resolve_training_dtype("auto", CPU) == torch.float32  # no native bf16 on a CPU
    assert resolve_training_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_training_dtype("fp32", CPU) == torch.float32
    assert resolve_training_dtype("fp16 + loss scaling", CPU) == torch.float16
    with pytest.raises(F2DError, match="training_dtype must be one of"):
        resolve_training_dtype("fp16", CPU)  # never fp16 without its loss scale
    assert [dtype_name(d) for d in (torch.bfloat16, torch.float16, torch.float32)] == ["bf16", "fp16", "fp32"]


def _pretend_cuda_gpu(monkeypatch: pytest.MonkeyPatch, major: int) -> None:
    """torch.cuda as it reports a GPU of compute capability `major`.x on which bf16 tensors can be made."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"a compute capability {major} GPU")
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # emulation works


def test_auto_is_bf16_only_on_gpus_that_compute_it_natively(monkeypatch):
    """A T4 or V100 (compute capability 7) only emulates bf16; torch.cuda.is_bf16_supported() counts that."""
    cuda = torch.device("cuda", 0)
    _pretend_cuda_gpu(monkeypatch, major=7)
    assert resolve_training_dtype("auto", cuda) == torch.float32
    with pytest.raises(F2DError, match="has no bf16"):
        resolve_training_dtype("bf16", cuda)
    _pretend_cuda_gpu(monkeypatch, major=8)  # Ampere and newer
    assert resolve_training_dtype("auto", cuda) == torch.bfloat16
    assert resolve_training_dtype("bf16", cuda) == torch.bfloat16


def test_cpu_training_warns_only_when_a_gpu_was_expected():
    warning = cpu_training_warning(CPU, True, "ComfyUI was started with --novram")
    assert "Training runs on the CPU: ComfyUI was started with --novram" in warning
    assert cpu_training_warning(CPU, False, "no GPU") is None
    assert cpu_training_warning(torch.device("cuda", 0), True, "x") is None
