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
import sys
import weakref

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


_HELD_BY_FAILED_CALLS: list = []  # weak references to what an injected out-of-memory call held


@PromptServer.instance.routes.post("/f2d_test/out_of_memory_once")
async def out_of_memory_once(request):
    """The pack's next `FaceEncoder.identity` call raises torch's out-of-memory error, as a GPU that ran out
    mid-encode does, while its frame holds a 64 MiB tensor (standing for the activations of a real one)."""
    (module,) = [m for name, m in list(sys.modules.items()) if name.endswith("f2d_core.identity.face_encoder")]
    encoder_class = module.FaceEncoder
    original = encoder_class.identity
    error = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    def failing(self, *args, **kwargs):
        encoder_class.identity = original
        held = torch.zeros(16 * 2**20)
        _HELD_BY_FAILED_CALLS.append(weakref.ref(held))
        raise error("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")

    encoder_class.identity = failing
    return web.json_response({"patched": f"{module.__name__}.FaceEncoder.identity"})


@PromptServer.instance.routes.get("/f2d_test/out_of_memory_held")
async def out_of_memory_held(request):
    """How many tensors held by injected out-of-memory calls are still alive (no garbage collection first:
    what only a collection would free is still held when the next prompt allocates)."""
    return web.json_response({"alive": sum(ref() is not None for ref in _HELD_BY_FAILED_CALLS)})


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


class _SharperSelfAttention:
    """An attn1_replace patch that another node could have set: self-attention with the queries scaled (a
    sharper softmax), through ComfyUI's attention backend. Deep-copied with the model options, as any patch."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        return optimized_attention(q * self.scale, k, v, extra_options["n_heads"])


class F2DTestSharperSelfAttention:
    """A MODEL clone with `_SharperSelfAttention` as attn1_replace on every up-block transformer (the blocks
    FreeCure patches): stands for another node that uses the same attn1_replace slots."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scale": ("FLOAT", {"default": 1.5, "min": 0.0, "max": 10.0})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, scale):
        from comfy.ldm.modules.attention import SpatialTransformer

        clone = model.clone()
        patch = _SharperSelfAttention(scale)
        for i, block in enumerate(model.get_model_object("diffusion_model").output_blocks):
            for module in block:
                if isinstance(module, SpatialTransformer):
                    for d in range(len(module.transformer_blocks)):
                        clone.set_model_attn1_replace(patch, "output", i, d)
        return (clone,)


NODE_CLASS_MAPPINGS = {
    "F2DTestSaveConditioning": F2DTestSaveConditioning,
    "F2DTestTinySDXLCheckpointLoader": F2DTestTinySDXLCheckpointLoader,
    "F2DTestSharperSelfAttention": F2DTestSharperSelfAttention,
}
