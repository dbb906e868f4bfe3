"""Library script (run by bench/training_peak_memory.py): the device's peak while training builds its UNet copy.

The checkpoint's UNet is loaded in fp16 (what ComfyUI keeps on an NVIDIA GPU) and loaded onto the device
as the sampler leaves it. Then the training copy is built two ways, each from that same state:
- before (the code before issue 13's fix): a deepcopy of the loaded UNet on the device, cast there to the
  training dtype, and only then is the user's UNet unloaded;
- after (`nodes.training.comfy_backend`, what ComfyDiffusionBackend does): a copy on the CPU in the weights'
  own dtype, the user's UNet unloaded, then the copy moved to the device tensor by tensor in the training
  dtype.
On CUDA the peak is `torch.cuda.max_memory_allocated` over the build. On a CPU, where device and host are
one memory, the device's bytes are accounted at each stage: the user's UNet while ComfyUI lists it as
loaded, plus the training copy's tensors once they are on the device (the old way's deepcopy, the new
way's moved copy); the largest sum is the peak. The stage sums are exact for the old way's deepcopy and
the two ends of each cast; a cast's transient adds one tensor (the largest, reported).
"""

from __future__ import annotations

import copy
import gc

import comfy.model_management as mm
import comfy.sd
import torch
from comfyui_face2diffusion.nodes.training.comfy_backend import host_copy, to_training_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def _user_unet_loaded(model) -> bool:
    return any(loaded.model is model for loaded in mm.current_loaded_models)


class DevicePeak:
    """The device's peak bytes: measured (CUDA) or accounted at stage boundaries (CPU)."""

    def __init__(self, model, device: torch.device) -> None:
        self.model, self.device, self.stages, self.cuda = model, device, [], device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()

    def stage(self, name: str, copy_on_device: torch.nn.Module | None) -> None:
        user = _bytes(self.model.model.diffusion_model) if _user_unet_loaded(self.model) else 0
        copy_bytes = _bytes(copy_on_device) if copy_on_device is not None else 0
        self.stages.append({"stage": name, "user_unet": user, "copy": copy_bytes, "sum": user + copy_bytes})

    def peak(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return max(s["sum"] for s in self.stages)


def _load_as_the_sampler_left_it(model) -> torch.device:
    mm.load_models_gpu([model], force_full_load=True)
    return next(model.model.diffusion_model.parameters()).device


def build_before(model, dtype: torch.dtype) -> dict:
    """The old way: deepcopy on the device while the user's UNet is loaded, cast there, then unload."""
    device = _load_as_the_sampler_left_it(model)
    peak = DevicePeak(model, device)
    peak.stage("loaded", None)
    with torch.inference_mode(False):
        unet = copy.deepcopy(model.model.diffusion_model)
        peak.stage("deepcopy on the device", unet)
        unet.to(dtype)
        peak.stage("cast on the device", unet)
    mm.unload_all_models()
    peak.stage("user's UNet unloaded", unet)
    result = {"peak_bytes": peak.peak(), "stages": peak.stages}
    del unet
    gc.collect()
    return result


def build_after(model, dtype: torch.dtype) -> dict:
    """The new way, as ComfyDiffusionBackend does it."""
    device = _load_as_the_sampler_left_it(model)
    peak = DevicePeak(model, device)
    peak.stage("loaded", None)
    unet = host_copy(model.model.diffusion_model)
    peak.stage("copy on the CPU", None)
    mm.unload_all_models()
    mm.soft_empty_cache()
    peak.stage("user's UNet unloaded", None)
    unet = to_training_device(unet, device, dtype)
    peak.stage("copy moved to the device", unet)
    result = {"peak_bytes": peak.peak(), "stages": peak.stages}
    del unet
    gc.collect()
    return result


def main(checkpoint: str, dtypes: list[str]) -> dict:
    """Peak device bytes of both ways per training dtype, with the UNet's fp16 size for scale."""
    model, _clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(
        checkpoint, output_vae=False, output_clip=False, model_options={"dtype": torch.float16}
    )
    unet = model.model.diffusion_model
    device = mm.get_torch_device()
    out = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "",
        "measured": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "tensor bytes accounted per stage",
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "unet_fp16_bytes": _bytes(unet),
        "largest_tensor_fp32_bytes": max(t.numel() * 4 for t in unet.parameters()),
        "runs": {},
    }
    for name in dtypes:
        out["runs"][name] = {"before": build_before(model, DTYPES[name]), "after": build_after(model, DTYPES[name])}
    return out
