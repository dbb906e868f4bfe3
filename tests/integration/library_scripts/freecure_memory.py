"""Library script (run by tests/support/comfy_library_run.py): the memory FreeCure's fast route holds.

The fast route on the tiny SD1.5 checkpoint, cancelled at the last step of stage 1 the way the server cancels: the
user's Cancel sets ComfyUI's interrupt flag and the progress hook the server installs raises
InterruptProcessingException at the next step (main.py `hijack_progress`: `throw_exception_if_processing_interrupted`).
The exception is then held as ComfyUI's executor holds it while it reports and unloads (execution.py keeps
`sys.exc_info()` in its frame); the script reports what the FoundationCache objects reachable from that traceback
still hold. On the way it notes, at each read of the cache budget (a share of the device's free memory, so it must
be read once the sampler has loaded the UNet: comfy.sample -> load_models_gpu), whether ComfyUI holds the UNet as
loaded.
"""

from __future__ import annotations

import sys

import comfy.model_management
import comfy.sd
import comfy.utils
import torch
from comfyui_face2diffusion.f2d_core.faces.face_parsing import load_face_parser
from comfyui_face2diffusion.f2d_core.freecure.attributes import parse_attribute_list
from comfyui_face2diffusion.f2d_core.freecure.foundation_cache import FoundationCache
from comfyui_face2diffusion.nodes import freecure_run

PROMPT = "a photo of f l with blonde curly hair"


def _caches_in(traceback) -> list[FoundationCache]:
    """Every FoundationCache a frame of `traceback` still refers to (what stays alive with the traceback)."""
    found: dict[int, FoundationCache] = {}
    while traceback is not None:
        for value in traceback.tb_frame.f_locals.values():
            if isinstance(value, FoundationCache):
                found[id(value)] = value
        traceback = traceback.tb_next
    return list(found.values())


def main(checkpoint: str, parser_path: str, steps: int = 2, size: int = 64) -> dict:
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:3]
    parser = load_face_parser(parser_path)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    foundation = freecure_run.foundation_conditioning(clip, positive, PROMPT, "f l", "woman")
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    calls = []

    def hook(value, total, preview, prompt_id=None, node_id=None):  # main.py's progress hook, plus the Cancel
        calls.append(value)
        if len(calls) == steps:  # the user presses Cancel during stage 1's last step
            comfy.model_management.interrupt_current_processing(True)
        comfy.model_management.throw_exception_if_processing_interrupted()

    budget_reads = []
    unwrapped_budget = freecure_run.cache_budget

    def noting_budget(m) -> int:
        patchers = [lm.model for lm in comfy.model_management.current_loaded_models]  # ModelPatchers (or None)
        budget_reads.append(any(p is not None and p.model is model.model for p in patchers))
        return unwrapped_budget(m)

    freecure_run.cache_budget = noting_budget
    comfy.utils.set_progress_bar_global_hook(hook)
    result = {"interrupted": False}
    try:
        freecure_run.run_freecure(
            model, vae, parser, positive, foundation, negative, latent,
            freecure_run.Sampling(0, steps, 7.0, "euler", "normal"), freecure_run.FasaSettings(route="fast"),
            parse_attribute_list("auto", PROMPT),
        )  # fmt: skip
    except comfy.model_management.InterruptProcessingException:
        info = sys.exc_info()  # held, as ComfyUI's executor holds it while it reports the failure
        caches = _caches_in(info[2])
        result = {
            "interrupted": True,
            "steps_seen": len(calls),
            "caches": len(caches),
            "held_bytes": sum(c.nbytes for c in caches),
            "held_calls": sum(c.calls for c in caches),
        }
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        freecure_run.cache_budget = unwrapped_budget
    return result | {"budget_reads_with_the_unet_loaded": budget_reads}
