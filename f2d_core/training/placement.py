"""Where training runs, and the warning when that is the CPU although a GPU was expected."""

from __future__ import annotations

import torch


def cpu_training_warning(device: torch.device, gpu_expected: bool, reason: str) -> str | None:
    """A warning when training runs on the CPU while a GPU was expected; None otherwise.

    `reason` says why the weights are on the CPU (e.g. "ComfyUI was started with --novram").
    A CPU step of the full SD1.5 UNet at 512² takes minutes where a GPU takes a fraction of a second.
    """
    if device.type != "cpu" or not gpu_expected:
        return None
    return (
        f"Training runs on the CPU: {reason}. A step of a full SD1.x UNet takes minutes there instead of "
        "a fraction of a second on the GPU. To train on the GPU, restart without that option (or run "
        "cli/train_mapper.py, which loads the model on the GPU itself)."
    )
