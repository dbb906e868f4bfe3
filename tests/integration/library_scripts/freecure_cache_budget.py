"""Library script (run by tests/support/comfy_library_run.py): when the fast route reads its cache budget.

The budget is a share of the sampling device's free memory, so it must be read after the sampler has loaded the
UNet (comfy.sample -> load_models_gpu); read before, it counts the UNet's weights as free. The script wraps
`freecure_run.cache_budget` to note whether ComfyUI holds the UNet as loaded at each read.
"""

from __future__ import annotations

import comfy.model_management
import comfy.sd
import torch
from comfyui_face2diffusion.f2d_core.faces.face_parsing import load_face_parser
from comfyui_face2diffusion.f2d_core.freecure.attributes import parse_attribute_list
from comfyui_face2diffusion.nodes import freecure_run

PROMPT = "a photo of f l with blonde curly hair"


def main(checkpoint: str, parser_path: str, steps: int = 2, size: int = 64) -> dict:
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:3]
    parser = load_face_parser(parser_path)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    foundation = freecure_run.foundation_conditioning(clip, positive, PROMPT, "f l", "woman")
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    reads = []
    unwrapped = freecure_run.cache_budget

    def noting_budget(m) -> int:
        patchers = [lm.model for lm in comfy.model_management.current_loaded_models]  # ModelPatchers (or None)
        reads.append(any(p is not None and p.model is model.model for p in patchers))
        return unwrapped(m)

    freecure_run.cache_budget = noting_budget
    try:
        freecure_run.run_freecure(
            model, vae, parser, positive, foundation, negative, latent,
            freecure_run.Sampling(0, steps, 7.0, "euler", "normal"), freecure_run.FasaSettings(route="fast"),
            parse_attribute_list("auto", PROMPT),
        )  # fmt: skip
    finally:
        freecure_run.cache_budget = unwrapped
    return {"reads": reads}
