"""The training dtype and the loss scale, on the fp16 underflow they exist for (pure PyTorch, CPU)."""

from __future__ import annotations

import logging
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
    bf16_supported,
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


def _pretend_gpu(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int] = (0, 0), rocm_arch: str = "") -> None:
    """torch.cuda as it reports one GPU: NVIDIA of `capability`, or a ROCm GPU of `rocm_arch` (gcnArchName).

    `torch.cuda.is_bf16_supported()` says yes as torch 2.3-2.4 did on a T4 or V100 and as it does for every
    ROCm device: the decision must not rest on it.
    """
    monkeypatch.setattr(torch.version, "hip", "6.2.0" if rocm_arch else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    properties = SimpleNamespace(major=capability[0], minor=capability[1], gcnArchName=rocm_arch)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(
        torch.cuda, "get_device_name", lambda device=None: rocm_arch or f"a sm_{capability[0]}{capability[1]} GPU"
    )
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.mark.parametrize(
    ("capability", "rocm_arch", "native"),
    [
        ((7, 5), "", False),  # T4, RTX 20xx (Turing)
        ((7, 0), "", False),  # V100 (Volta)
        ((6, 1), "", False),  # GTX 10xx (Pascal)
        ((8, 0), "", True),  # A100
        ((8, 6), "", True),  # RTX 30xx
        ((9, 0), "", True),  # H100
        ((0, 0), "gfx906:sramecc+:xnack-", False),  # MI50
        ((0, 0), "gfx908:sramecc+:xnack-", False),  # MI100
        ((0, 0), "gfx1030", False),  # RX 6800 (RDNA2)
        ((0, 0), "gfx90a:sramecc+:xnack-", True),  # MI210 / MI250
        ((0, 0), "gfx942:sramecc+:xnack-", True),  # MI300
        ((0, 0), "gfx950", True),  # MI350
        ((0, 0), "gfx1100", True),  # RX 7900 (RDNA3)
        ((0, 0), "gfx1201", True),  # RX 9070 (RDNA4)
    ],
)
def test_auto_is_bf16_only_on_gpus_that_compute_it_natively(monkeypatch, capability, rocm_arch, native):
    """Issue 13, point 2: from the device's capability, never from torch.cuda.is_bf16_supported()."""
    _pretend_gpu(monkeypatch, capability, rocm_arch)
    assert bf16_supported(torch.device("cuda", 0)) is native
    assert resolve_training_dtype("auto", torch.device("cuda", 0)) == (torch.bfloat16 if native else torch.float32)
    assert resolve_training_dtype("auto", torch.device("cuda")) == (torch.bfloat16 if native else torch.float32)


def test_an_explicit_bf16_on_a_gpu_without_it_warns_and_is_used(monkeypatch, caplog):
    cuda = torch.device("cuda", 0)
    _pretend_gpu(monkeypatch, (7, 5))
    with caplog.at_level(logging.WARNING, logger="f2d_core.training.precision"):
        assert resolve_training_dtype("bf16", cuda) == torch.bfloat16
    assert "sm_75 GPU has no native bf16" in caplog.text and "Choose fp32" in caplog.text
    caplog.clear()
    _pretend_gpu(monkeypatch, (8, 6))
    with caplog.at_level(logging.WARNING, logger="f2d_core.training.precision"):
        assert resolve_training_dtype("bf16", cuda) == torch.bfloat16
    assert caplog.text == ""


def test_cpu_training_warns_only_when_a_gpu_was_expected():
    warning = cpu_training_warning(CPU, True, "ComfyUI was started with --novram")
    assert "Training runs on the CPU: ComfyUI was started with --novram" in warning
    assert cpu_training_warning(CPU, False, "no GPU") is None
    assert cpu_training_warning(torch.device("cuda", 0), True, "x") is None
