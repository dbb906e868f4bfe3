"""Out of GPU memory in a node: give back everything the failed call held before saying what to change.

ComfyUI unloads its models on an out-of-memory error, but while the exception lives its traceback keeps
every frame of the failed call alive: the activations, and in training the private UNet and text-encoder
copies with their optimizer state. Emptying the cache then frees nothing, and the next run starts short
of memory and runs out again. Here the error is caught, its frames are let go (the `except` block ends
before anything else happens), models are unloaded and the cache emptied, and a short F2DError naming
the widget to change is raised in its place.
"""

from __future__ import annotations

import gc
import logging

import comfy.model_management
import torch

from ..f2d_core.errors import F2DError

log = logging.getLogger(__name__)

# torch >= 2.5 names it torch.OutOfMemoryError; torch.cuda.OutOfMemoryError is the same class, and older.
OUT_OF_MEMORY: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def summary(error: BaseException) -> str:
    """The first line of an out-of-memory message ("CUDA out of memory. Tried to allocate 2.00 GiB ...")."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def released_out_of_memory(node: str, what_happened: str, what_to_change: str) -> F2DError:
    """After an out-of-memory error has been let go: unload the models, empty the cache, and return the
    F2DError to raise, e.g. "Train F2D Mapper ran out of GPU memory (CUDA out of memory ...). Lower batch_size."
    """
    gc.collect()  # frames of the failed call caught in reference cycles
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    log.warning("%s ran out of GPU memory; its memory and all loaded models were released", node)
    return F2DError(
        f"{node} ran out of GPU memory ({what_happened}). {what_to_change} Everything it held was released, "
        "so the next run starts with the memory free."
    )
