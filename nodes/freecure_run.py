"""FreeCure's two stages in ComfyUI: sample the foundation, parse it, sample the personalised branch with FASA.

Routes (docs/freecure.md):
- "fast": stage 1 samples the foundation (FD) branch alone (batch k) while recording its self-attention keys
  and values at the FASA layers; stage 2 samples only the personalised (PD) rows (batch k), FASA reading the
  recorded FD keys inside the mask. 2 UNet rows a step per image in each stage: about 2x plain F2D. The FD
  keys are those of the very run the mask is parsed from, so they line up with the mask for every sampler.
- "straightforward": the port of FreeCure's code: both stages sample the [PD x k, FD x k] batch (batch_index
  duplicated: each pair starts from the same noise), the second with FASA. About 4x plain F2D.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..f2d_core.conditioning.identity_start import class_prompt
from ..f2d_core.errors import F2DError
from ..f2d_core.faces.face_parsing import CELEBAMASK_HQ_CLASSES
from ..f2d_core.freecure.attributes import FASA_ATTRIBUTES, AttributeChoice
from ..f2d_core.freecure.foundation_cache import FoundationCache
from ..f2d_core.freecure.gating import SigmaWindow
from ..f2d_core.freecure.masks import LayerMasks, attribute_mask, quarter_resolution
from ..f2d_core.freecure.patch import FasaPatch
from .freecure_apg import text_conditioning
from .freecure_model import PlainAttention, cache_budget, ksample, masked_attention, patched, up_block_layers

log = logging.getLogger(__name__)

ROUTES = ("auto", "fast", "straightforward")
ADAPTIVE_SAMPLERS = ("dpm_adaptive",)  # choose their own sigmas from x: PD and FD would not meet at the same ones


class FreeCureInputError(F2DError, ValueError):
    """Inputs of the FreeCure sampler that break the PD/FD pairing."""


@dataclass
class Sampling:
    """The KSampler settings both stages share."""

    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str


@dataclass
class FasaSettings:
    """FASA's knobs (specification Sec. 2)."""

    omega: float = 0.5
    style_fidelity: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    layers: str = "F2D default (last two up levels)"
    route: str = "auto"

    def __post_init__(self) -> None:
        # ComfyUI's range check lets NaN through (NaN < min is False), and a NaN bias makes every latent NaN
        if math.isnan(self.omega) or self.omega == math.inf:
            raise FreeCureInputError(
                f"mask_weight is {self.omega}: give a number (the paper's range 1.8-2.4, 0.5 in F2D's example)."
            )


@dataclass
class FreeCureResult:
    """Stage outputs (latent tensors [k, C, h, w]), masks [k, H, W] float at image size, and the report."""

    refined: torch.Tensor
    foundation: torch.Tensor
    masks: torch.Tensor
    route: str
    report: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    personalized_stage1: torch.Tensor | None = None  # straightforward route only
    foundation_stage2: torch.Tensor | None = None  # straightforward route only
    patch_stats: object | None = None


def check_one_person(positive: list) -> None:
    """FreeCure pairs one PD prompt with one FD prompt; regional (Add F2D Person) or area entries are refused."""
    for entry in positive:
        if "mask" in entry[1] or "area" in entry[1]:
            raise FreeCureInputError(
                "F2D FreeCure Sampler takes one person's prompt; this conditioning has regional entries (Add F2D "
                "Person or ConditioningSetMask/Area). Run FreeCure on one person at a time (e.g. one per crop), "
                "or sample the group without FreeCure."
            )
        if entry[0].shape[0] != 1:
            raise FreeCureInputError(
                f"F2D FreeCure Sampler: the positive conditioning has a batch of {entry[0].shape[0]} prompts; "
                "it needs one prompt (the latent's batch gives the images)."
            )


def foundation_conditioning(clip, positive: list, text: str, identifier: str, class_noun: str) -> list:
    """The foundation (FD) branch's conditioning: every positive entry with its text encoding replaced by that
    of the prompt with the class noun for the identifier ('f l with red hair' -> 'woman with red hair').
    Everything else on the entries (ControlNet, timestep ranges) stays, so both branches get the same control."""
    return text_conditioning(clip, positive, class_prompt(text, identifier, class_noun))


def _repeat_tokens(t: torch.Tensor, length: int) -> torch.Tensor:
    """[1, L, C] -> [1, length, C] by repeating whole 77-token chunks (as ComfyUI concatenates prompts)."""
    return t.repeat(1, length // t.shape[1], 1)


def pair_conditioning(positive: list, foundation: list, pairs: int) -> list:
    """Entries whose text tensor is [PD x k, FD x k] (straightforward route); lengths matched by repetition."""
    out = []
    for (pd, options), (fd, fd_options) in zip(positive, foundation, strict=True):
        length = math.lcm(pd.shape[1], fd.shape[1])
        tensor = torch.cat(
            [_repeat_tokens(pd, length).repeat(pairs, 1, 1), _repeat_tokens(fd, length).repeat(pairs, 1, 1)]
        )
        entry = dict(options)
        if "pooled_output" in options and "pooled_output" in fd_options:
            entry["pooled_output"] = torch.cat(
                [options["pooled_output"].repeat(pairs, 1), fd_options["pooled_output"].repeat(pairs, 1)]
            )
        out.append([tensor, entry])
    return out


def pair_latent(latent: dict) -> dict:
    """The [PD x k, FD x k] latent with batch_index duplicated, so each pair draws the same noise."""
    samples = latent["samples"]
    k = samples.shape[0]
    index = list(latent.get("batch_index", range(k)))
    out = {**latent, "samples": torch.cat([samples, samples]), "batch_index": index + index}
    if isinstance(latent.get("noise_mask"), torch.Tensor) and latent["noise_mask"].shape[0] == k:
        out["noise_mask"] = torch.cat([latent["noise_mask"]] * 2)
    return out


def sigma_window(model, settings: FasaSettings) -> SigmaWindow:
    """The sigmas FASA acts at, from start/end fractions of sampling (core's percent_to_sigma)."""
    if not 0.0 <= settings.start_percent <= settings.end_percent <= 1.0:
        raise FreeCureInputError(
            f"start_percent {settings.start_percent} and end_percent {settings.end_percent}: need 0 <= start <= "
            "end <= 1."
        )
    sampling = model.get_model_object("model_sampling")
    return SigmaWindow(
        high=float(sampling.percent_to_sigma(settings.start_percent)),
        low=float(sampling.percent_to_sigma(settings.end_percent)),
    )


def _external_mask(mask: torch.Tensor | None, pairs: int, size: tuple[int, int]) -> torch.Tensor | None:
    """An optional MASK [B, H', W'] as bool [pairs, H, W]; B is 1 (all pairs) or the number of images."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape[0] not in (1, pairs):
        raise FreeCureInputError(
            f"attribute_mask has {mask.shape[0]} masks for {pairs} images: give one mask, or one per image."
        )
    resized = F.interpolate(mask[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0] >= 0.5
    return resized.expand(pairs, *size).cpu()


def foundation_masks(
    vae, parser, foundation: torch.Tensor, choice: AttributeChoice, external: torch.Tensor | None
) -> tuple[LayerMasks, torch.Tensor, list[str]]:
    """Decode the FD latents, parse them, build the masks. Returns (LayerMasks at image/4, the masks FASA uses
    nearest-resized to image size as float [k, H, W], report lines with per-attribute pixel counts)."""
    images = vae.decode(foundation)
    images = images.reshape(-1, *images.shape[-3:])[:, :, :, :3]
    pairs, height, width = images.shape[0], images.shape[1], images.shape[2]
    labels = parser.parse(images.movedim(-1, 1).clamp(0, 1).float()).cpu()
    full = attribute_mask(labels, choice.class_ids)
    extra = _external_mask(external, pairs, (height, width))
    if extra is not None:
        full = full | extra
    small = quarter_resolution(full)
    lines = []
    if external is not None and tuple(external.shape[-2:]) != (height, width):
        mask_h, mask_w = external.shape[-2:]
        stretched = abs((mask_w / mask_h) / (width / height) - 1) > 0.02
        line = f"attribute_mask {mask_w}x{mask_h} was resized to the image's {width}x{height}"
        if stretched:
            line = f"Warning: {line} and stretched (another aspect ratio): is it this image's mask?"
        lines.append(line)
    nothing_asked = not choice.attributes and extra is None
    if nothing_asked:
        lines.append(
            "Warning: the prompt names no attribute FASA restores (" + ", ".join(FASA_ATTRIBUTES) + ") and no "
            "attribute_mask is connected, so the mask is empty and the image is the plain F2D one: name the "
            "attribute in the prompt or in attributes, or connect an attribute_mask."
        )
    for j in range(pairs):
        counts = [
            f"{name} {int(torch.isin(labels[j], torch.tensor(ids)).sum())} px"
            for name, ids in choice.attributes.items()
        ]
        if extra is not None:
            counts.append(f"attribute_mask {int(extra[j].sum())} px")
        used = int(small[j].sum())
        lines.append(
            f"image {j + 1}: {', '.join(counts) or 'no attribute'}; FASA mask {used} of {small[j].numel()} cells "
            f"at {small.shape[1]}x{small.shape[2]}"
        )
        if used == 0 and not nothing_asked:
            what = ", ".join([*choice.attributes, *(["attribute_mask"] if extra is not None else [])])
            lines.append(
                f"Warning: the foundation image {j + 1} shows no {what}; FASA does nothing for it (try another seed, "
                "a gendered class_noun such as 'woman', or an attribute_mask)."
            )
    shown = F.interpolate(small[:, None].float(), size=(height, width), mode="nearest")[:, 0]
    present = sorted({int(i) for i in labels.unique()})
    lines.append("parser classes in the foundation images: " + ", ".join(CELEBAMASK_HQ_CLASSES[i] for i in present))
    return LayerMasks(small), shown, lines


def choose_route(route: str, sampler_name: str) -> str:
    """'auto' -> 'fast', except for adaptive samplers, whose sigmas depend on the branch."""
    if route not in ROUTES:
        raise FreeCureInputError(f"route must be one of {', '.join(ROUTES)}, got {route!r}.")
    if route == "auto":
        return "straightforward" if sampler_name in ADAPTIVE_SAMPLERS else "fast"
    return route


def run_freecure(
    model,
    vae,
    parser,
    positive: list,
    foundation: list,
    negative: list,
    latent: dict,
    sampling: Sampling,
    settings: FasaSettings,
    choice: AttributeChoice,
    external_mask: torch.Tensor | None = None,
) -> FreeCureResult:
    """Both stages; `model` is never modified (patches go on clones)."""
    check_one_person(positive)
    pairs = latent["samples"].shape[0]
    layers = up_block_layers(model, settings.layers)
    window = sigma_window(model, settings)
    route = choose_route(settings.route, sampling.sampler_name)
    latent_hw = tuple(latent["samples"].shape[-2:])
    plain = PlainAttention(model)
    common = {
        "pairs": pairs, "plain_attention": plain, "attention": masked_attention(), "window": window,
        "omega": settings.omega, "style_fidelity": settings.style_fidelity, "latent_hw": latent_hw,
        "rows_independent": plain.rows_independent,
    }  # fmt: skip
    s = sampling
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if route == "fast":
        cache = FoundationCache(budget_bytes=lambda: cache_budget(model))  # read once the UNet is loaded
        # Released however the stages end. After an error (out of memory) ComfyUI's executor keeps the traceback,
        # and with it this frame, in a reference cycle until its next gc.collect (execution.py:567, main.py:232)
        # and unloads models meanwhile (execution.py:579-582); a cancel's traceback lives to the prompt's end.
        try:
            recorder = FasaPatch("record", cache=cache, **common)
            fd = ksample(patched(model, recorder, layers), s.seed, s.steps, s.cfg, s.sampler_name, s.scheduler,
                         foundation, negative, latent)  # fmt: skip
            seconds["foundation"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            masks, shown, lines = foundation_masks(vae, parser, fd, choice, external_mask)
            recorded = cache.nbytes
            cache.gather(masks)
            seconds["masks"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            fasa = FasaPatch("cached", masks=masks, cache=cache, **common)
            refined = ksample(patched(model, fasa, layers), s.seed, s.steps, s.cfg, s.sampler_name, s.scheduler,
                              positive, negative, latent)  # fmt: skip
            seconds["personalised"] = time.perf_counter() - t2
            lines.append(
                f"foundation keys cached: {recorded / 2**20:.1f} MiB over {cache.calls} layer calls, "
                f"{cache.nbytes / 2**20:.1f} MiB inside the masks"
            )
            if cache.misses:
                lines.append(
                    f"Warning: {cache.misses} layer calls of the personalised run found no recorded foundation step "
                    "(a sampler whose steps depend on the image?); they stayed plain: use route 'straightforward'."
                )
            result = FreeCureResult(refined, fd, shown, route, lines, seconds, patch_stats=fasa.stats)
        finally:
            cache.clear()
    else:
        batch = pair_latent(latent)
        conds = pair_conditioning(positive, foundation, pairs)
        both = ksample(model, s.seed, s.steps, s.cfg, s.sampler_name, s.scheduler, conds, negative, batch)
        seconds["stage 1 (PD+FD)"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        masks, shown, lines = foundation_masks(vae, parser, both[pairs:], choice, external_mask)
        seconds["masks"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        fasa = FasaPatch("pairs", masks=masks, **common)
        again = ksample(patched(model, fasa, layers), s.seed, s.steps, s.cfg, s.sampler_name, s.scheduler,
                        conds, negative, batch)  # fmt: skip
        seconds["stage 2 (PD+FD, FASA)"] = time.perf_counter() - t2
        drift = float((again[pairs:] - both[pairs:]).abs().max())
        lines.append(f"foundation branch, stage 2 vs stage 1: max abs difference {drift:.3g}")
        result = FreeCureResult(
            again[:pairs], both[pairs:], shown, route, lines, seconds, both[:pairs], again[pairs:], fasa.stats
        )
    names = ", ".join(f"{n} ({', '.join(map(str, ids))})" for n, ids in choice.attributes.items()) or "none"
    first = layers[0][1], layers[-1][1]
    result.report = [
        f"F2D FreeCure, route {route}: attributes {names}; mask weight {settings.omega}, style fidelity "
        f"{settings.style_fidelity}, {len(layers)} layers (output blocks {first[0]}-{first[1]})",
        *result.report,
        f"FASA acted in {result.patch_stats.fasa_calls} layer calls, left {result.patch_stats.plain_calls} plain"
        + (" (every mask empty: no change)" if not bool(result.masks.any()) else ""),
        "seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()),
    ]
    return result
