"""Library script (run by tests/support/comfy_library_run.py): training under a forward-only global attention,
and the training copies freed the moment the backend is dropped.

1. ComfyUI's global attention (`comfy.ldm.modules.attention.optimized_attention`, what a server started
   with --use-sage-attention or --use-flash-attention uses) is replaced by a forward-only one: wrapped
   in ComfyUI's own `wrap_attn`, as sage and flash are, and computing under `torch.no_grad()`. A plain
   UNet call then gives no gradient at all (recorded in `global_attention_has_grad`); the trainer must
   still learn: non-zero gradient norms and a changed mapper.
2. With gradient checkpointing on, every module and weight of the backend's UNet and text-encoder
   copies is dead (weakref) right after `del`, with Python's cycle collector off: nothing but
   reference counting frees them. The user's UNet keeps its own block classes.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import comfy.ldm.modules.attention as attention
import comfy.sd
import torch
from comfyui_face2diffusion.f2d_core.errors import F2DError
from comfyui_face2diffusion.f2d_core.identity.mapper import F2DMapper
from comfyui_face2diffusion.f2d_core.training.data.dataset import TrainingSet
from comfyui_face2diffusion.f2d_core.training.data.report import DatasetReport
from comfyui_face2diffusion.f2d_core.training.trainer import MapperTrainer, TrainSettings
from comfyui_face2diffusion.nodes.training.comfy_backend import ComfyDiffusionBackend


@attention.wrap_attn
def forward_only_attention(q, k, v, heads, **kwargs):
    """SDPA with no backward: what sage attention is to autograd."""
    with torch.no_grad():
        return attention.attention_pytorch(q, k, v, heads, **kwargs)


def _training_set(n: int = 2, latent: int = 8) -> TrainingSet:
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(n, 1, 1, latent, latent)
    masks[..., latent // 4 : -latent // 4, latent // 4 : -latent // 4] = 1.0
    return TrainingSet(
        idvec=torch.randn(n, 1, 1536, generator=g),
        expression=None,
        latents=5 * torch.randn(n, 1, 4, latent, latent, generator=g),
        masks=masks,
        person=[""] * n,
        files=[f"{i}.png" for i in range(n)],
        report=DatasetReport(folder="synthetic"),
    )


def _global_attention_has_grad(backend: ComfyDiffusionBackend) -> bool:
    """Whether the UNet called without the pack's override gives an output that depends on the context."""
    context = torch.randn(1, 77, 768, requires_grad=True)
    x = torch.randn(1, 4, 8, 8)
    out = backend.unet(x, torch.tensor([500.0]), context=context)
    return out.requires_grad


def main(checkpoint: str, work_dir: str, steps: int = 3) -> dict:
    """Train a few steps under the forward-only global attention; then check the copies are freed."""
    attention.optimized_attention = attention.optimized_attention_masked = forward_only_attention
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=False, output_clip=True)
    data = _training_set()
    settings = TrainSettings(steps=steps, batch_size=2, learning_rate=1e-3, checkpoint_every=10**6)
    out: dict = {}
    with torch.inference_mode(False):
        backend = ComfyDiffusionBackend(model, clip, gradient_checkpointing=True, training_dtype="fp32")
        out["global_attention_has_grad"] = _global_attention_has_grad(backend)
        torch.manual_seed(0)
        mapper = F2DMapper()
        before = {k: v.clone() for k, v in mapper.state_dict().items()}
        trainer = MapperTrainer(mapper, backend, data, settings, Path(work_dir) / "run")
        result = trainer.run(resume=False)
        out["status"], out["grad_norms"] = result.status, result.grad_norms
        out["mapper_change"] = max((v - before[k]).abs().max().item() for k, v in mapper.state_dict().items())
        user_blocks = [type(m) for m in model.model.diffusion_model.modules()]
        out["user_unet_blocks_patched"] = any(getattr(t, "_f2d_checkpointed", False) for t in user_blocks)
        out["copy_blocks_checkpointed"] = sum(
            getattr(type(m), "_f2d_checkpointed", False) for m in backend.unet.modules()
        )
        copies = [weakref.ref(m) for copy in (backend.unet, backend.text_model) for m in copy.modules()]
        copies += [weakref.ref(t) for copy in (backend.unet, backend.text_model) for t in copy.parameters()]
        gc.collect()
        gc.disable()  # from here only reference counting frees anything
        try:
            del backend, trainer, result
            out["copies_alive_after_del"] = sum(ref() is not None for ref in copies)
        finally:
            gc.enable()
        out["old_comfyui_with_sage"] = _old_comfyui_with_sage(model, clip)
    return out


def _old_comfyui_with_sage(model, clip) -> str:
    """A ComfyUI from before `wrap_attn` (no override honoured) started with sage attention: the message."""
    wrap_attn = attention.wrap_attn
    del attention.wrap_attn

    def attention_sage(q, k, v, heads, **kwargs):  # the name ComfyUI's sage attention has
        return forward_only_attention(q, k, v, heads, **kwargs)

    attention.optimized_attention = attention_sage
    try:
        ComfyDiffusionBackend(model, clip, training_dtype="fp32")
    except F2DError as refused:
        return str(refused)
    finally:
        attention.wrap_attn = wrap_attn
    return ""
