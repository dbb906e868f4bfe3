"""The trainer's diffusion backend for SDXL on ComfyUI objects (docs/sdxl.md section 3.2).

The same discipline as the SD1 backend (`comfy_backend.py`, whose helpers this module uses): private,
non-inference copies of the UNet and of both text towers, taken to the CPU first, the user's models
unloaded, then the copies moved to the device in the training dtype (the towers keep their own dtype
and compute in fp32); out-of-place text layers; PyTorch SDPA for the UNet's attention.

SDXL's text path, as ComfyUI's `SDXLClipModel` runs it (comfy/sdxl_clip.py, comfy/sd1_clip.py):
both towers (CLIP-L 768 wide, OpenCLIP bigG 1280 wide) read the same BPE tokens; S* is written at the
identifier's positions in token-embedding space (D2: the text model adds the position embedding, as
for a textual-inversion word); each tower stops after its penultimate block (`layer_idx` -2, or the
CLIP's clip-skip layer) with no final LayerNorm; the context is l | g concatenated [B, 77, 2048]. The
pooled vector is bigG's last block + final LayerNorm at the first end token, projected by
`text_projection` [B, 1280]. The UNet takes y = pooled | 6 x Timestep(256) of the size conditioning
(comfy/model_base.py `SDXL.encode_adm`), batched here per sample.
"""

from __future__ import annotations

import logging

import comfy.model_base
import torch
from comfy.ldm.modules.attention import optimized_attention_for_device

from ...f2d_core.conditioning.injection import DEFAULT_IDENTIFIER, find_identifier
from ...f2d_core.errors import F2DError
from ...f2d_core.training.backend import TextCond
from ..clip_tokens import identifier_ids, special_tokens
from .comfy_backend import ComfyDiffusionBackend, check_trainable_attention, check_trainable_model, training_copies

log = logging.getLogger(__name__)

TOWERS = ("l", "g")
PENULTIMATE = -2  # SDXL's default text layer in both towers (comfy/sdxl_clip.py)


def check_sdxl_model(model) -> None:
    """F2DError unless MODEL is an SDXL base UNet that CGDR can train (not the refiner, v-prediction or EDM)."""
    base = model.model
    if isinstance(base, comfy.model_base.SDXLRefiner):
        raise F2DError(
            "This MODEL is the SDXL refiner: train the SDXL mapper with the SDXL base checkpoint. The mapper it "
            "gives also drives the refiner (its bigG half)."
        )
    if not isinstance(base, comfy.model_base.SDXL):
        raise F2DError(f"This MODEL is {type(base).__name__}, not SDXL: give the SDXL base checkpoint's MODEL.")
    check_trainable_model(model, "SDXL", "SDXL base 1.0")


class ComfySDXLBackend(ComfyDiffusionBackend):
    """`f2d_core.training.DiffusionBackend` for an SDXL base (eps-prediction) ComfyUI MODEL and CLIP."""

    family = "sdxl"

    def __init__(
        self,
        model,
        clip,
        gradient_checkpointing: bool = False,
        identifier: str = DEFAULT_IDENTIFIER,
        training_dtype: str = "auto",
        checkpoint_granularity: str = "block",
    ) -> None:
        check_sdxl_model(model)
        if type(clip.cond_stage_model).__name__ != "SDXLClipModel":
            raise F2DError(
                f"This CLIP is {type(clip.cond_stage_model).__name__}, not SDXL's two text encoders: give the "
                "SDXL checkpoint's CLIP together with its MODEL."
            )
        check_trainable_attention()
        base = model.model
        towers = clip.cond_stage_model
        self._frozen = (base.diffusion_model, towers.clip_l.transformer, towers.clip_g.transformer)
        copies = training_copies(
            model, clip, self._frozen, training_dtype, gradient_checkpointing, checkpoint_granularity, "SDXL UNet"
        )
        self.unet, self.towers = copies.unet, dict(zip(TOWERS, copies.text_models, strict=True))
        self.training_dtype, self.device = copies.training_dtype, copies.device
        self.checkpointing = copies.checkpointing  # granularity, None when off
        self.model_sampling = model.get_model_object("model_sampling")
        self.latent_format = base.latent_format
        self.embedder = base.embedder  # Timestep(256): no weights
        self.clip, self.identifier = clip, identifier
        self.layer_idx = PENULTIMATE if clip.layer_idx is None else clip.layer_idx

    def _tokens(self, prompt: str) -> tuple[dict[str, torch.Tensor], list[int], int]:
        """Token ids per tower [77], the identifier's positions, and the first end token's position (pooling)."""
        tokens = self.clip.tokenize(prompt)
        if len(tokens["l"]) != 1 or len(tokens["g"]) != 1:
            raise F2DError(f"The training prompt {prompt!r} is longer than 75 tokens; shorten it.")
        ids = {t: torch.tensor([int(x) for x, *_ in tokens[t][0]], device=self.device) for t in TOWERS}
        found = find_identifier(tokens["l"], identifier_ids(self.clip, self.identifier), special_tokens(self.clip))
        end = int((ids["g"] == self.clip.tokenizer.clip_g.end_token).nonzero()[0])
        return ids, [pos for occurrence in found for _, pos in occurrence], end

    def text_context(
        self, prompt: str, s_star: dict[str, torch.Tensor] | None = None, pooled: bool = False
    ) -> TextCond:
        """CLIP-L | bigG penultimate states [B, 77, 2048], and with `pooled` the bigG pooled vector [B, 1280].

        s_star: {"l": [B, 2, 768], "g": [B, 2, 1280]} written at the identifier's token positions in
        token-embedding space (no position subtracted), differentiably.
        """
        ids, positions, end = self._tokens(prompt)
        if s_star is not None:
            if not isinstance(s_star, dict) or set(s_star) != set(TOWERS):
                raise F2DError("The SDXL trainer needs an SDXL mapper (S* for both text towers, 'l' and 'g').")
            if len(positions) % 2 or not positions:
                raise F2DError(f"The training prompt {prompt!r} must contain the identifier {self.identifier!r}.")
        states, pooled_out = [], None
        for name in TOWERS:
            tower = self.towers[name]
            embeddings = tower.text_model.embeddings
            x = embeddings.token_embedding(ids[name][None], out_dtype=torch.float32)
            if s_star is not None:
                x = x.expand(s_star[name].shape[0], -1, -1).clone()
                for k, pos in enumerate(positions):
                    x[:, pos] = s_star[name][:, k % 2].to(x.dtype)
            x = x + embeddings.position_embedding.weight.to(self.device, torch.float32)[None]
            hidden, last = self._encode_tower(tower, x, pooled and name == "g")
            states.append(hidden)
            if last is not None:
                final = tower.text_model.final_layer_norm(last)[:, end]
                pooled_out = tower.text_projection(final).float()  # ComfyUI's ops cast the weight to fp32
        return TextCond(torch.cat(states, dim=-1), pooled_out)

    def _encode_tower(self, tower, x: torch.Tensor, to_the_end: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(states after the clip-skip layer, no final LayerNorm; the last block's states when `to_the_end`)."""
        layers = tower.text_model.encoder.layers
        stop = len(layers) + self.layer_idx if self.layer_idx < 0 else self.layer_idx
        mask = torch.full((x.shape[1], x.shape[1]), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device)
        mask = mask.triu_(1)
        attention = optimized_attention_for_device(x.device, mask=True, small_input=True)
        hidden = None
        for i, layer in enumerate(layers):
            x = x + layer.self_attn(layer.layer_norm1(x), mask, attention)
            x = x + layer.mlp(layer.layer_norm2(x))
            if i == stop:
                hidden = x
                if not to_the_end:
                    return hidden, None
        return hidden, x

    def y_vector(self, pooled: torch.Tensor, size_ids: torch.Tensor) -> torch.Tensor:
        """SDXL's y [B, 2816]: pooled [B, 1280] | Timestep(256) of each of the 6 sizes [B, 6] (encode_adm's layout)."""
        sizes = self.embedder(size_ids.flatten().float()).reshape(size_ids.shape[0], -1)
        return torch.cat([pooled.float(), sizes.to(pooled.device)], dim=1)

    def predict_noise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: TextCond, size_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The UNet's eps for z_t with the context, the pooled vector and each sample's size conditioning."""
        if cond.pooled is None or size_ids is None:
            raise F2DError("SDXL's UNet needs the pooled text vector and the size conditioning (y).")
        x_in, t, options = self.unet_inputs(noisy, timesteps)
        y = self.y_vector(cond.pooled, size_ids).to(self.training_dtype)
        context = cond.context.to(self.training_dtype)
        return self.unet(x_in, t, context=context, y=y, transformer_options=options).float()


def model_family(model) -> str:
    """ "sdxl" for an SDXL base or refiner MODEL, else "sd1" (what the trainer's SD1 backend then checks)."""
    return "sdxl" if isinstance(model.model, (comfy.model_base.SDXL, comfy.model_base.SDXLRefiner)) else "sd1"


def make_backend(model, clip, **options) -> ComfyDiffusionBackend:
    """The training backend of MODEL's family: SDXL (`ComfySDXLBackend`) or SD1.x (`ComfyDiffusionBackend`).

    Raises F2DError when MODEL and CLIP are of different families, or MODEL cannot be trained.
    """
    base = model.model
    sdxl_model = isinstance(base, (comfy.model_base.SDXL, comfy.model_base.SDXLRefiner))
    clip_kind = type(clip.cond_stage_model).__name__
    if sdxl_model and clip_kind != "SDXLClipModel" and not isinstance(base, comfy.model_base.SDXLRefiner):
        raise F2DError(
            f"The MODEL is SDXL but the CLIP is {clip_kind} (not SDXL's two text encoders): give the CLIP of "
            "the same checkpoint as the MODEL."
        )
    if not sdxl_model and clip_kind == "SDXLClipModel":
        raise F2DError(
            f"The CLIP is SDXL's but the MODEL is {type(base).__name__} (not SDXL): give the MODEL of the same "
            "checkpoint as the CLIP."
        )
    return (ComfySDXLBackend if sdxl_model else ComfyDiffusionBackend)(model, clip, **options)
