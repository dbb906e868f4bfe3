"""The pack's weights under ComfyUI's model management, loaded once per file version.

Every torch model of the pack (MSID + mapper, the expression regressor, the face parser) is wrapped
in a `comfy.model_patcher.ModelPatcher`, as core wraps CLIP vision and VAE models, with
load_device = `get_torch_device()` and offload_device = `unet_offload_device()`. `load_on_device`
(`load_models_gpu`) runs before each use, so "Free model and node cache", `--lowvram`, `--novram` and
other models' memory needs offload them like any ComfyUI model.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import torch
from torch import nn

from ..f2d_core.errors import WeightFileError
from .model_paths import weight_path

Loader = Callable[[Path], nn.Module]
FileIdentity = tuple[int, int, int, int]


def file_identity(path: Path) -> FileIdentity:
    """(size, mtime_ns, inode, ctime_ns) of a file, so that a replaced file counts as a new version even
    with its modification time preserved: moved into place (an unzip, `rsync -t`, a download manager)
    it is a new inode; overwritten in place (`cp -p`) its status-change time moves, which no tool can
    set back. A chmod or a new hard link also moves ctime: one needless reload, never a stale model."""
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns


def managed(module: nn.Module) -> comfy.model_patcher.ModelPatcher:
    """`module` (on the offload device) handed to ComfyUI's model management."""
    return comfy.model_patcher.ModelPatcher(
        module,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def load_on_device(patcher: comfy.model_patcher.ModelPatcher) -> torch.device:
    """Load a model for use (`load_models_gpu`, freeing others as needed); return where its weights are.

    Loaded whole (`force_full_load`): the pack's modules are plain torch layers, which cannot run
    partly offloaded as ComfyUI's own cast-on-the-fly layers can. Under `--novram` ComfyUI moves no
    such weights to the GPU, so they stay, and compute, on the offload device (the CPU).
    """
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return next(patcher.model.parameters()).device


def _load_before_forward(patcher: comfy.model_patcher.ModelPatcher) -> Callable:
    """A forward pre-hook that loads the model whole and moves tensor arguments to its device.

    Other models' loads may offload part of ours between two of its calls (a VAE encode in the middle
    of dataset preparation); this puts it back before it runs. It holds the patcher weakly, so the
    module and its patcher form no reference cycle.
    """
    patcher_ref = weakref.ref(patcher)

    def hook(module: nn.Module, args: tuple) -> tuple:
        current = patcher_ref()
        if current is None:
            return args
        device = load_on_device(current)
        return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)

    return hook


@lru_cache(maxsize=4)
def _managed_file(loader: Loader, path: Path, identity: FileIdentity) -> comfy.model_patcher.ModelPatcher:
    del identity  # part of the cache key only
    module = loader(path).to(comfy.model_management.unet_offload_device()).eval()
    patcher = managed(module)
    for entry in (module, *module.children()):  # callers may call the module or its network (FaceParser.bisenet)
        entry.register_forward_pre_hook(_load_before_forward(patcher))
    return patcher


def load_weight_file(loader: Loader, filename: str, how_to_get: str) -> nn.Module:
    """`loader(path)` of a file in the face2diffusion folders, loaded onto ComfyUI's device for use now.

    Read from disk once per file version (`file_identity`). ComfyUI may offload it afterwards; every
    forward call of the module (or of its direct submodules) loads it back first.
    """
    path = weight_path(filename, how_to_get)
    patcher = _managed_file(loader, path, file_identity(path))
    load_on_device(patcher)
    return patcher.model


def weight_file_version(filename: str, how_to_get: str) -> FileIdentity | tuple[str, str]:
    """`file_identity` of a weight file for a node's fingerprint; a missing file is a version too."""
    try:
        return file_identity(weight_path(filename, how_to_get))
    except WeightFileError:  # a missing file: the node's own run reports it with the how-to
        return ("missing", filename)
