"""A test-only ComfyUI node pack: writes what flows along a CONDITIONING socket to a file tests can read,
answers `GET /f2d_test/loaded_models` with the models in ComfyUI's model management, and
`GET /f2d_test/alive_models` with the pack's model objects still alive in the server process.

Loaded next to the real pack in integration tests (ComfyUI's own execution tests use test nodes the
same way); it is never shipped to users.
"""

import gc
import json
import os
import resource

import comfy.model_management
import folder_paths
import torch
from aiohttp import web
from safetensors.torch import save_file
from server import PromptServer


@PromptServer.instance.routes.get("/f2d_test/loaded_models")
async def loaded_models(request):
    """`comfy.model_management.current_loaded_models`: each model's class, object id and device."""
    models = [loaded.model for loaded in comfy.model_management.current_loaded_models]
    return web.json_response(
        [
            {"class": type(m.model).__name__, "id": id(m.model), "device": str(m.current_loaded_device())}
            for m in models
            if m is not None
        ]
    )


@PromptServer.instance.routes.get("/f2d_test/alive_models")
async def alive_models(request):
    """After a full garbage collection (as ComfyUI runs on /free): the class names of the pack's torch
    modules still alive (classes defined in its f2d_core), and the process's RSS and peak RSS in MiB."""
    gc.collect()
    alive = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.nn.Module) and ".f2d_core." in f".{type(obj).__module__}":
                alive.append(type(obj).__name__)
        except ReferenceError:  # a dead weak proxy
            continue
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return web.json_response({"modules": sorted(alive), "rss_mib": rss, "peak_rss_mib": peak})


class F2DTestSaveConditioning:
    """Save each conditioning tensor of a CONDITIONING as `<output>/<name>.safetensors`.

    Entry i's tensor is `cond_i`, its mask (if any) `mask_i`; the metadata `entries` lists, per entry, the
    JSON-able values of its options (mask_strength, start_percent, ...), the names of its tensor options and the
    dtype of its tensor.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "name": ("STRING", {"default": "cond"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, conditioning, name):
        tensors = {f"cond_{i}": c[0].detach().float().cpu().contiguous() for i, c in enumerate(conditioning)}
        entries = []
        for i, (_, options) in enumerate(conditioning):
            if options.get("mask") is not None:
                tensors[f"mask_{i}"] = options["mask"].detach().float().cpu().clone()
            if options.get("pooled_output") is not None:
                tensors[f"pooled_{i}"] = options["pooled_output"].detach().float().cpu().clone()
            entries.append({k: v for k, v in options.items() if isinstance(v, (bool, int, float, str))})
            entries[-1]["tensor_options"] = sorted(k for k, v in options.items() if hasattr(v, "shape"))
            entries[-1]["cond_dtype"] = str(conditioning[i][0].dtype)
        path = os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors")
        save_file(tensors, path, metadata={"entries": json.dumps(entries)})
        return {"ui": {"text": [os.path.basename(path)]}}


class F2DTestTinySDXLCheckpointLoader:
    """CheckpointLoaderSimple for the tiny SDXL: passes the `te_model_options` of its `.te_options.json` sidecar
    (tiny text towers; the stock loader cannot build them). Embeddings are looked up as the stock loader does."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, ckpt_name):
        import comfy.sd

        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        sidecar = path.removesuffix(".safetensors") + ".te_options.json"
        with open(sidecar) as f:
            te_options = json.load(f)
        out = comfy.sd.load_checkpoint_guess_config(
            path,
            output_vae=True,
            output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
            te_model_options=te_options,
        )
        return out[:3]


NODE_CLASS_MAPPINGS = {
    "F2DTestSaveConditioning": F2DTestSaveConditioning,
    "F2DTestTinySDXLCheckpointLoader": F2DTestTinySDXLCheckpointLoader,
}
