"""The pack's weights under ComfyUI's model management, loaded once per file version.

Every torch model of the pack (MSID + mapper, the expression regressor, the face parser) is wrapped
in a `comfy.model_patcher.ModelPatcher`, as core wraps CLIP vision and VAE models, with
load_device = `get_torch_device()` and offload_device = `unet_offload_device()`. `load_on_device`
(`load_models_gpu`) runs before each use, so "Free model and node cache", `--lowvram`, `--novram` and
other models' memory needs offload them like any ComfyUI model.

`cached` keeps one cache per model kind, holding its models weakly: a model lives as long as ComfyUI
holds it (the output cache of the node that loaded it, or the node running with it), as ComfyUI's own
checkpoints do. "Free model and node cache" (`POST /free` with `free_memory`) clears that node cache,
so it frees the pack's models too; ComfyUI's model management (`LoadedModel`) holds them weakly as well.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import comfy.model_management
import comfy.model_patcher
import torch
from torch import nn

from ..f2d_core.errors import WeightFileError
from .model_paths import weight_path

Loader = Callable[[Path], nn.Module]
FileIdentity = tuple[int, int, int, int]
Model = TypeVar("Model")

_CACHES: dict[str, weakref.WeakValueDictionary] = {}


def cached(kind: str, key: Hashable, build: Callable[[], Model]) -> Model:
    """The model of `kind` for `key` (file versions, settings), built by `build()` unless one is alive.

    One cache per kind ("msid_encoder", "face_detector", "face_recognizer", "clip_scorer", "weight_file"),
    holding models weakly: whoever uses a model holds it (see the module docstring). Models are built and
    used on ComfyUI's one execution thread.
    """
    models = _CACHES.setdefault(kind, weakref.WeakValueDictionary())
    model = models.get(key)
    if model is None:
        model = build()
        models[key] = model
    return model


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


class ReleasingPatcher(comfy.model_patcher.ModelPatcher):
    """A placeholder in ComfyUI's model management for memory torch does not see (an onnxruntime session):
    when ComfyUI unloads it ("Unload models", `POST /free`, another model's memory needs) it calls
    `release`; `load_on_device` before the next use puts it back, and the owner reopens what it released."""

    def __init__(self, release: Callable[[], None]) -> None:
        super().__init__(
            nn.Module(),
            load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        self._release = release

    def detach(self, unpatch_all: bool = True):
        self._release()
        return super().detach(unpatch_all)


def load_on_device(patcher: comfy.model_patcher.ModelPatcher) -> torch.device:
    """Load a model for use (`load_models_gpu`, freeing others as needed); return where its weights are.

    Loaded whole (`force_full_load`): the pack's modules are plain torch layers, which cannot run
    partly offloaded as ComfyUI's own cast-on-the-fly layers can. Under `--novram` ComfyUI moves no
    such weights to the GPU, so they stay, and compute, on the offload device (the CPU).
    """
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return next(patcher.model.parameters(), torch.empty(0, device=patcher.load_device)).device


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


def _managed_file(loader: Loader, path: Path) -> comfy.model_patcher.ModelPatcher:
    module = loader(path).to(comfy.model_management.unet_offload_device()).eval()
    patcher = managed(module)
    for entry in (module, *module.children()):  # callers may call the module or its network (FaceParser.bisenet)
        entry.register_forward_pre_hook(_load_before_forward(patcher))
    return patcher


def load_weight_file(loader: Loader, filename: str, how_to_get: str) -> comfy.model_patcher.ModelPatcher:
    """`loader(path)` of a file in the face2diffusion folders, under ComfyUI's model management, loaded
    onto ComfyUI's device for use now; the module is the patcher's `.model`.

    Hold the patcher while using the module: it is cached weakly (`cached`), once per file version
    (`file_identity`), and freed when its user lets go. ComfyUI may offload it meanwhile; every forward
    call of the module (or of its direct submodules) loads it back first.
    """
    path = weight_path(filename, how_to_get)
    patcher = cached("weight_file", (loader, path, file_identity(path)), lambda: _managed_file(loader, path))
    load_on_device(patcher)
    return patcher


def weight_file_version(filename: str, how_to_get: str) -> FileIdentity | tuple[str, str]:
    """`file_identity` of a weight file for a node's fingerprint; a missing file is a version too."""
    try:
        return file_identity(weight_path(filename, how_to_get))
    except WeightFileError:  # a missing file: the node's own run reports it with the how-to
        return ("missing", filename)
