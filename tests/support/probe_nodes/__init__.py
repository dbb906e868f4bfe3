"""A test-only ComfyUI node pack: writes what flows along a CONDITIONING socket to a file tests can read,
and answers `GET /f2d_test/loaded_models` with the models in ComfyUI's model management.

Loaded next to the real pack in integration tests (ComfyUI's own execution tests use test nodes the
same way); it is never shipped to users.
"""

import json
import os

import comfy.model_management
import folder_paths
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
            entries.append({k: v for k, v in options.items() if isinstance(v, (bool, int, float, str))})
            entries[-1]["tensor_options"] = sorted(k for k, v in options.items() if hasattr(v, "shape"))
            entries[-1]["cond_dtype"] = str(conditioning[i][0].dtype)
        path = os.path.join(folder_paths.get_output_directory(), f"{name}.safetensors")
        save_file(tensors, path, metadata={"entries": json.dumps(entries)})
        return {"ui": {"text": [os.path.basename(path)]}}


NODE_CLASS_MAPPINGS = {"F2DTestSaveConditioning": F2DTestSaveConditioning}
