"""The mapper a training run starts from, for the MODEL's family (SD1.x: `F2DMapper`, SDXL: `F2DMapperXL`).

SDXL (docs/sdxl.md section 2.3): a copy of a loaded SDXL mapper, or a seeded `F2DMapperXL` whose S*
starts at each tower's token row of the class noun ("person": `init = "class"`, no names list
needed), or that plus the official SD1 mapper's CLIP-L head warm-started into `heads.l`
(`warm_start_l_head`: bias shifted by CLIP-L's position embedding at "A photo of S*"'s positions 4, 5).
"""

from __future__ import annotations

import torch

from ...f2d_core.checkpoints import FAMILY_NAMES
from ...f2d_core.errors import F2DError
from ...f2d_core.identity.mapper import ExpressionMixing, F2DMapper
from ...f2d_core.identity.mapper_xl import F2DMapperXL, class_anchors, warm_start_l_head
from ...f2d_core.identity.text_fingerprint import fingerprint_keys, text_encoder_fingerprint
from ..clip_tokens import identifier_ids

START_FROM = ("f2d_model mapper", "scratch", "CLIP-L head of the f2d_model mapper (SDXL)")
L_HEAD = START_FROM[2]


def check_mapper_family(mapper: ExpressionMixing, family: str, what: str = "The starting mapper") -> None:
    """F2DError unless `mapper` is for `family` ("sd1" / "sdxl"), naming both and what to do."""
    if mapper.family == family:
        return
    hint = (
        f"choose start_from '{L_HEAD}' to start the SDXL mapper's CLIP-L head from this SD1.x mapper, or 'scratch'"
        if family == "sdxl"
        else "load an SD1.x mapper (e.g. the official mapping.pt), or choose start_from 'scratch'"
    )
    raise F2DError(
        f"{what} is for {FAMILY_NAMES[mapper.family]} but the MODEL to train is {FAMILY_NAMES[family]}: {hint}."
    )


def _seeded(kind: type, seed: int, **kwargs) -> ExpressionMixing:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return kind(**kwargs)


def starting_mapper(
    backend, source: ExpressionMixing | None, start_from: str, seed: int, pooled_source: str, class_prompt: str
) -> ExpressionMixing:
    """A trainable fp32 CPU mapper for `backend.family`, a function of its arguments (so a resume finds its run).

    source: the loaded mapper (None for 'scratch' from the CLI). start_from: one of START_FROM.
    Raises F2DError when the source mapper's family does not fit.
    """
    family = getattr(backend, "family", "sd1")
    if start_from not in START_FROM:
        raise F2DError(f"start_from must be one of {START_FROM}, not {start_from!r}")
    if family == "sd1":
        if start_from == L_HEAD:
            raise F2DError(f"start_from '{L_HEAD}' is for SDXL; the MODEL is SD1.x: choose 'f2d_model mapper'.")
        mapper = _seeded(F2DMapper, seed)
        if start_from == START_FROM[0]:
            check_mapper_family(source, family)
            mapper.load_state_dict(_copy(source))
        return mapper
    if start_from == START_FROM[0]:
        check_mapper_family(source, family)
        mapper = _seeded(F2DMapperXL, seed, pooled_source=pooled_source)
        mapper.load_state_dict(_copy(source))
        mapper.text_encoder_fingerprint = towers_fingerprint(backend)
        return mapper
    mapper = _seeded(F2DMapperXL, seed, pooled_source=pooled_source)
    mapper.text_encoder_fingerprint = towers_fingerprint(backend)
    noun = identifier_ids(backend.clip, class_prompt.split()[-1])[0]
    tables = {t: tower.text_model.embeddings.token_embedding.weight for t, tower in backend.towers.items()}
    mapper.init_from_anchors({t: class_anchors(table, noun) for t, table in tables.items()})
    if start_from == L_HEAD:
        if source is None or source.family != "sd1":
            found = "none" if source is None else FAMILY_NAMES[source.family]
            raise F2DError(f"start_from '{L_HEAD}' needs an SD1.x mapper (e.g. mapping.pt); the one given is {found}.")
        position = backend.towers["l"].text_model.embeddings.position_embedding.weight.detach().float().cpu()
        official = F2DMapper()
        official.load_state_dict(_copy(source))  # never the user's loaded mapper itself
        warm_start_l_head(mapper, official, position)
    return mapper


def towers_fingerprint(backend) -> str | None:
    """The `text_encoder_fingerprint` of the towers the SDXL mapper trains with (the backend's copies, as loaded):
    Apply F2D Tokens warns when a CLIP's towers differ (a fine-tuned checkpoint's). None (nothing recorded) for
    towers loaded in bf16 or fp8, which have none."""
    tensors = {}
    for tower, model in backend.towers.items():
        weights = model.text_model
        state = dict(weights.named_parameters())
        tensors |= {f"{tower}/{k}": state[k] for k in fingerprint_keys(len(weights.encoder.layers))}
    return text_encoder_fingerprint(tensors)


def _copy(source: ExpressionMixing) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().float().cpu() for k, v in source.state_dict().items()}
