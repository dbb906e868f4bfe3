"""Library script (run by tests/support/comfy_library_run.py): the SDXL training backend against ComfyUI itself.

- T3: `ComfySDXLBackend.text_context` with S* equals `clip.encode_from_tokens` of the same prompt with
  the same vectors as tensor tokens at the identifier (both towers), in cond and in pooled;
- T4: the batched y equals `model.model.encode_adm` per sample;
- U9 on the real backend: one CGDR gradient with micro-batches of 1 equals the whole batch of 2's.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy.sd
import torch
from comfyui_face2diffusion.f2d_core.training.data.dataset import TrainingSet
from comfyui_face2diffusion.f2d_core.training.data.report import DatasetReport
from comfyui_face2diffusion.f2d_core.training.trainer import MapperTrainer, TrainSettings
from comfyui_face2diffusion.nodes.training.comfy_backend_sdxl import ComfySDXLBackend, make_backend
from torch import nn

PROMPT = "A photo of f l as a knight"


class TwoWords(nn.Module):
    """A small two-head stand-in for the SDXL mapper: idvec -> {"l": [B, 2, 768], "g": [B, 2, 1280]}."""

    def __init__(self) -> None:
        super().__init__()
        self.l, self.g = nn.Linear(1536, 2 * 768), nn.Linear(1536, 2 * 1280)

    def forward(self, idvec, expression=None, keep=None):
        return {"l": 0.05 * self.l(idvec).view(-1, 2, 768), "g": 0.05 * self.g(idvec).view(-1, 2, 1280)}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def main(checkpoint: str, te_options: str, work_dir: str) -> dict:
    options = {**json.loads(Path(te_options).read_text()), "dtype": torch.float32}
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(
        checkpoint, output_vae=True, output_clip=True, te_model_options=options
    )
    out: dict = {}
    with torch.inference_mode(False):
        backend = make_backend(model, clip)
        out["backend"] = type(backend).__name__
        g = torch.Generator().manual_seed(0)
        s_star = {"l": 0.02 * torch.randn(2, 2, 768, generator=g), "g": 0.02 * torch.randn(2, 2, 1280, generator=g)}
        with torch.no_grad():
            ours = backend.text_context(PROMPT, s_star, pooled=True)
            plain = backend.text_context("A photo of a person", pooled=True)
        positions = backend._tokens(PROMPT)[1]
    out["positions"] = positions
    cond_diff, pooled_diff = 0.0, 0.0
    for b in range(2):
        tokens = clip.tokenize(PROMPT)
        for tower in ("l", "g"):
            for k, pos in enumerate(positions):
                tokens[tower][0][pos] = (s_star[tower][b, k], 1.0)
        comfy_out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        cond_diff = max(cond_diff, _max_diff(ours.context[b], comfy_out["cond"][0]))
        pooled_diff = max(pooled_diff, _max_diff(ours.pooled[b], comfy_out["pooled_output"][0]))
    reference = clip.encode_from_tokens(clip.tokenize("A photo of a person"), return_pooled=True, return_dict=True)
    out["t3"] = {
        "cond_max_diff": cond_diff,
        "pooled_max_diff": pooled_diff,
        "plain_cond_max_diff": _max_diff(plain.context[0], reference["cond"][0]),
        "plain_pooled_max_diff": _max_diff(plain.pooled[0], reference["pooled_output"][0]),
        "cond_shape": list(ours.context.shape),
        "s_star_moves_pooled": _max_diff(ours.pooled[0], plain.pooled[0]),
    }
    sizes = torch.tensor(
        [[700.0, 640.0, 0.0, 0.0, 1024.0, 1024.0], [256, 300, 16, 8, 768, 512], [4096, 4096, 0, 0, 64, 64]]
    )
    pooled = torch.randn(3, 1280, generator=g)
    y = backend.y_vector(pooled, sizes)
    per_sample = torch.cat([
        model.model.encode_adm(
            pooled_output=pooled[i : i + 1], height=int(h), width=int(w), crop_h=int(ch), crop_w=int(cw),
            target_height=int(th), target_width=int(tw),
        )
        for i, (h, w, ch, cw, th, tw) in enumerate(sizes.tolist())
    ])  # fmt: skip
    out["t4"] = {"y_shape": list(y.shape), "max_diff": _max_diff(y, per_sample)}
    with torch.inference_mode(False):
        out["micro_batch"] = _micro_batch(backend, Path(work_dir))
    return out


def _micro_batch(backend: ComfySDXLBackend, work_dir: Path) -> dict:
    g = torch.Generator().manual_seed(1)
    n = 2
    data = TrainingSet(
        idvec=torch.randn(n, 1, 1536, generator=g),
        expression=None,
        latents=torch.randn(n, 1, 4, 8, 8, generator=g).half(),
        masks=torch.ones(n, 1, 1, 8, 8, dtype=torch.uint8),
        person=[""] * n,
        files=[f"{i}.png" for i in range(n)],
        report=DatasetReport(folder="synthetic"),
        source_side=torch.tensor([[300.0], [900.0]]),
    )
    grads, losses = {}, {}
    for micro in (0, 1):
        torch.manual_seed(0)
        mapper = TwoWords()
        settings = TrainSettings(batch_size=2, micro_batch=micro, seed=0)
        trainer = MapperTrainer(mapper, backend, data, settings, work_dir / f"m{micro}")
        with torch.no_grad():
            class_cond = backend.text_context(settings.class_prompt, pooled=True)
        loss, _ = trainer.gradients(0, class_cond)
        losses[micro] = loss.item()
        grads[micro] = torch.cat([p.grad.flatten() for p in mapper.parameters()])
    scale = grads[0].abs().max().item()
    return {
        "loss_full": losses[0],
        "loss_micro": losses[1],
        "grad_rel_diff": (grads[1] - grads[0]).abs().max().item() / scale,
        "grad_scale": scale,
    }
