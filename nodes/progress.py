"""ComfyUI's progress bar and Cancel button for the pack's loops over a batch (see `f2d_core.progress`)."""

from __future__ import annotations

import comfy.model_management
import comfy.utils

from ..f2d_core.progress import Progress


def comfy_progress() -> Progress:
    """A `progress(done, total)` callback for f2d_core loops: it moves the running node's progress bar and
    raises ComfyUI's InterruptProcessingException once the user pressed Cancel (POST /interrupt), so
    the loop stops after the image it is on. A new `total` (the next stage of a node) starts the bar over."""
    bar = comfy.utils.ProgressBar(1)

    def report(done: int, total: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, max(total, 1))

    return report
