"""Library script (run by tests/support/comfy_library_run.py): SDXL S* on the refiner and on fine-tuned text towers.

On the tiny SDXL (its file and te_options sidecar), loaded as ComfyUI loads a checkpoint, with fp32 towers:
1. `refiner`: a tiny refiner built in memory from the SDXL file's bigG weights (refiner prefix) and a seeded
   refiner UNet (`refiner_unet_config`), which ComfyUI detects as SDXLRefiner. The SDXL face's S* goes into its
   bigG list only: the conditioning [1, 77, 1280] equals the g half (columns 768:) of the SDXL conditioning; the
   l list is left as tokenized; the pooled vector equals the SDXL one.
2. `fine_tuned`: the same checkpoint with other text-tower weights (a Pony / Illustrious-style fine-tune): S* is
   injected the same way, the conditioning equals that checkpoint's own `embedding:face` encode exactly, and
   differs from the base checkpoint's; a face whose mapper recorded the base towers' fingerprint warns there only.
3. Clip skip: the warning for CLIP Set Last Layer None, -2, -1, -3 on the SDXL CLIP.
4. Family checks on real objects, each refused naming both families (or the width) before ComfyUI sees a tensor:
   an SD1.x face on the SDXL CLIP and on the refiner, an SDXL face on an SD1.x CLIP (CLIP-L alone, the tiny SDXL's
   CLIP-L weights) and on a Flux CLIP (CLIP-L + a one-layer T5), an SD1.x face on Flux, and wrong-width S*.
5. `flavours` (T6, docs/sdxl.md section 5): the checkpoint as a v-prediction, EDM v-prediction and Playground
   EDM SDXL (the keys ComfyUI reads, comfy/supported_models.py `SDXL.model_type`) and with a 9-channel
   (inpainting) input convolution: S* goes into their CLIP as into the base's (the conditioning is the
   base's), while `make_backend` refuses to train them (eps only; inpainting), and refuses the refiner.
"""

from __future__ import annotations

import json
from pathlib import Path

import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.text_encoders.flux
import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfyui_face2diffusion.f2d_core.errors import F2DError, PromptError
from comfyui_face2diffusion.nodes.clip_tokens import (
    clip_skip_warning,
    clip_text_fingerprint,
    fine_tuned_towers_warning,
    tokens_with_face,
)
from comfyui_face2diffusion.nodes.training.comfy_backend_sdxl import make_backend
from safetensors.torch import save_file

PROMPT = "a photo of f l as a knight"
L_PREFIX, G_PREFIX, REFINER_G = (
    "conditioner.embedders.0.transformer.",
    "conditioner.embedders.1.model.",
    "conditioner.embedders.0.model.",
)


def _encode(clip, tokens):
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    return out["cond"], out["pooled_output"]


def _refusal(clip, s_star) -> str:
    """The error `tokens_with_face` gives for `s_star` on `clip`, or "accepted"."""
    try:
        tokens_with_face(clip, PROMPT, s_star, "f l")
    except F2DError as e:
        return f"{type(e).__name__}: {e}"
    return "accepted"


def _clip(tokenizer, model, model_options: dict):
    """A ComfyUI CLIP object of `model` (fp32, CPU) with `model_options` (tiny tower configs)."""
    target = comfy.supported_models_base.ClipTarget(tokenizer, model)
    return comfy.sd.CLIP(target, model_options={**model_options, "dtype": torch.float32})


def family_refusals(sd: dict, options: dict, sdxl_clip, face: dict) -> dict[str, str]:
    """Every family mismatch on real CLIP objects: {case: the error message}."""
    sd1 = _clip(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel, options)
    sd1.load_sd({k.removeprefix(L_PREFIX): v for k, v in sd.items() if k.startswith(L_PREFIX)})
    t5 = {"num_layers": 1, "d_model": 64, "d_ff": 64, "num_heads": 2, "d_kv": 32}
    flux = _clip(
        comfy.text_encoders.flux.FluxTokenizer,
        comfy.text_encoders.flux.FluxClipModel,
        {"clip_l_model_config": options["clip_l_model_config"], "t5xxl_model_config": t5},
    )
    sd1_face = torch.randn(2, 768)
    return {
        "sd1_face_on_sdxl": _refusal(sdxl_clip, sd1_face),
        "sdxl_face_on_sd1": _refusal(sd1, face),
        "sdxl_face_on_flux": _refusal(flux, face),
        "sd1_face_on_flux": _refusal(flux, sd1_face),
        "narrow_g_on_sdxl": _refusal(sdxl_clip, {"l": face["l"], "g": face["g"][:, :1024]}),
        "wide_sd1_face_on_sd1": _refusal(sd1, torch.randn(2, 1024)),
        "sd1_face_on_sd1": _refusal(sd1, sd1_face),
        "sdxl_face_on_sdxl": _refusal(sdxl_clip, face),
    }


def _clip_skip(clip, layer: int | None) -> str | None:
    """Apply F2D Tokens' clip-skip warning after CLIP Set Last Layer `layer` (None: no such node)."""
    if layer is not None:
        clip = clip.clone()
        clip.clip_layer(layer)  # what CLIPSetLastLayer does (nodes.py)
    return clip_skip_warning(clip)


def _seeded_unet(config: dict) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        unet = UNetModel(**config, device="meta", operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model." + k: (torch.rand(v.shape, generator=g) - 0.5).mul(0.02).half()
        for k, v in unet.state_dict().items()
    }


def main(checkpoint: str, te_options: str, refiner_unet_config: dict, embeddings_dir: str) -> dict:
    options = json.loads(Path(te_options).read_text())
    fp32 = {**options, "dtype": torch.float32}
    sd = comfy.utils.load_torch_file(checkpoint)
    g = torch.Generator().manual_seed(1)
    face = {"l": torch.randn(2, 768, generator=g), "g": torch.randn(2, 1280, generator=g)}
    save_file({"clip_l": face["l"], "clip_g": face["g"]}, str(Path(embeddings_dir) / "face.safetensors"))

    _, base_clip, _, _ = comfy.sd.load_state_dict_guess_config(
        dict(sd), output_vae=False, output_model=False, embedding_directory=embeddings_dir, te_model_options=fp32
    )
    base_cond, base_pooled = _encode(base_clip, tokens_with_face(base_clip, PROMPT, face, "f l"))

    # 1. The refiner: bigG at the refiner's prefix, a refiner UNet.
    refiner_sd = {REFINER_G + k.removeprefix(G_PREFIX): v for k, v in sd.items() if k.startswith(G_PREFIX)}
    refiner_sd |= _seeded_unet(refiner_unet_config)
    refiner, refiner_clip, _, _ = comfy.sd.load_state_dict_guess_config(
        refiner_sd,
        output_vae=False,
        te_model_options={"clip_g_model_config": options["clip_g_model_config"], "dtype": torch.float32},
    )
    plain_tokens = refiner_clip.tokenize(PROMPT)
    tokens = tokens_with_face(refiner_clip, PROMPT, face, "f l")
    cond, pooled = _encode(refiner_clip, tokens)
    try:
        tokens_with_face(refiner_clip, PROMPT, torch.randn(2, 768), "f l")
        sd1_on_refiner = "accepted"
    except PromptError as e:
        sd1_on_refiner = str(e)

    # 2. Fine-tuned towers: every text weight moved.
    tuned = dict(sd)
    for k, v in sd.items():
        if k.startswith((L_PREFIX, G_PREFIX)) and v.ndim == 2:
            tuned[k] = (v.float() * 1.1 + 0.01 * torch.randn(v.shape, generator=g)).half()
    _, tuned_clip, _, _ = comfy.sd.load_state_dict_guess_config(
        tuned, output_vae=False, output_model=False, embedding_directory=embeddings_dir, te_model_options=fp32
    )
    tuned_cond, tuned_pooled = _encode(tuned_clip, tokens_with_face(tuned_clip, PROMPT, face, "f l"))
    ti_cond, ti_pooled = _encode(tuned_clip, tuned_clip.tokenize("a photo of embedding:face as a knight"))
    trained_with = {"text_encoder_fingerprint": clip_text_fingerprint(base_clip)}  # as a mapper trained on the base
    refusals = family_refusals(sd, options, base_clip, face)
    flavours = _flavours(sd, fp32, base_cond, face)
    flavours["refiner"] = _training_refusal(refiner, refiner_clip)
    return {
        "flavours": flavours,
        "clip_skip": {str(layer): _clip_skip(base_clip, layer) for layer in (None, -2, -1, -3)},
        "refusals": refusals,
        "refiner_model": type(refiner.model).__name__,
        "refiner_clip": type(refiner_clip.cond_stage_model).__name__,
        "refiner_cond_shape": list(cond.shape),
        "refiner_equals_g_half": bool(torch.equal(cond, base_cond[..., 768:])),
        "refiner_pooled_equals_sdxl": bool(torch.equal(pooled, base_pooled)),
        "refiner_l_untouched": tokens["l"] == plain_tokens["l"],
        "refiner_g_has_s_star": [torch.is_tensor(e[0]) for e in tokens["g"][0][4:6]],
        "sd1_face_on_refiner": sd1_on_refiner,
        "tuned_equals_its_embedding": bool(torch.equal(tuned_cond, ti_cond) and torch.equal(tuned_pooled, ti_pooled)),
        "tuned_differs_from_base": bool((tuned_cond - base_cond).abs().max() > 1e-3),
        "fine_tune_warning_base": fine_tuned_towers_warning(base_clip, trained_with),
        "fine_tune_warning_tuned": fine_tuned_towers_warning(tuned_clip, trained_with),
    }


FLAVOURS = {  # the keys a checkpoint carries for ComfyUI to load it as that kind of SDXL
    "v_pred": {"v_pred": torch.tensor([])},
    "edm_vpred": {"edm_vpred.sigma_max": torch.tensor(120.0), "edm_vpred.sigma_min": torch.tensor(0.002)},
    "playground_edm": {"edm_mean": torch.zeros(1, 4, 1, 1), "edm_std": torch.ones(1, 4, 1, 1)},
}
FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def _training_refusal(model, clip) -> str:
    """make_backend's F2DError message for MODEL and CLIP ("" when it would train them)."""
    try:
        with torch.inference_mode(False):
            make_backend(model, clip, training_dtype="fp32")
    except F2DError as refused:
        return str(refused)
    return ""


def _flavours(sd: dict, te_options: dict, base_cond: torch.Tensor, face: dict) -> dict:
    """Per flavour: ComfyUI's model type, whether S* conditions its CLIP as the base's, and the training refusal."""
    conv = sd[FIRST_CONV]
    inpaint = {FIRST_CONV: torch.cat([conv, 0.01 * torch.ones(conv.shape[0], 5, *conv.shape[2:], dtype=conv.dtype)], 1)}
    out = {}
    for name, extra in {**FLAVOURS, "inpainting": inpaint}.items():
        model, clip, _, _ = comfy.sd.load_state_dict_guess_config(
            {**sd, **extra}, output_vae=False, te_model_options=te_options
        )
        cond, _ = _encode(clip, tokens_with_face(clip, PROMPT, face, "f l"))
        out[name] = {
            "model_type": model.model.model_type.name,
            "in_channels": model.model.model_config.unet_config.get("in_channels"),
            "applies": bool(torch.equal(cond, base_cond)),
            "refusal": _training_refusal(model, clip),
        }
    return out
