"""F2D FreeCure Sampler: FreeCure's foundation-aware self-attention (and APG) around one F2D prompt."""

from __future__ import annotations

import logging

import comfy.samplers
import torch
from comfy_api.latest import io

from ..f2d_core.conditioning.identity_start import DEFAULT_CLASS_NOUN, class_prompt
from ..f2d_core.conditioning.injection import DEFAULT_IDENTIFIER
from ..f2d_core.faces.face_parsing import load_face_parser
from ..f2d_core.freecure.apg import template_prompt
from ..f2d_core.freecure.attributes import parse_attribute_list
from ..f2d_core.identity.s_star_family import s_star_family
from .apply_tokens import s_star_for_prompt
from .face_conditioning import (
    expression_inputs,
    face_conditioning,
    identifier_check,
    identifier_inputs,
    prompt_input,
)
from .freecure_apg import APG_MODES, run_apg, text_conditioning
from .freecure_model import LAYER_CHOICES, check_sd1_freecure
from .freecure_run import ROUTES, FasaSettings, Sampling, foundation_conditioning, run_freecure
from .model_cache import load_weight_file
from .model_paths import weight_files
from .sockets import F2DExpression, F2DFace, F2DFaceSocket
from .training.dataset_node import PARSER_FILE, PARSER_HOW_TO_GET

log = logging.getLogger(__name__)


class F2DFreeCureSampler(io.ComfyNode):
    """F2D FreeCure Sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DFreeCureSampler",
            display_name="F2D FreeCure Sampler",
            category="face2diffusion",
            description="A KSampler for one F2D prompt that keeps more of the prompt (hair, glasses, eyes, hats...): "
            "it samples the same prompt with a plain noun instead of the person (the foundation image), finds the "
            "asked-for attributes there with the face parser, and samples the person again letting its "
            "self-attention look at those attributes (FreeCure, NeurIPS 2025). About 2x the time of a KSampler.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x model (LoRA etc. applied as usual)."),
                io.Clip.Input("clip", tooltip="The CLIP of the same SD1.x checkpoint."),
                io.Vae.Input("vae", tooltip="Decodes the foundation image for the face parser."),
                F2DFaceSocket.Input("f2d_face", tooltip="From Encode Face (the face as S*) or Load F2D Face."),
                prompt_input(
                    f"The prompt, with the identifier ('{DEFAULT_IDENTIFIER}') where the person goes, as for Apply "
                    "F2D Tokens. Its attribute words choose what FreeCure restores.",
                    default=f"a photo of {DEFAULT_IDENTIFIER} with blonde curly hair, wearing sunglasses",
                ),
                io.Conditioning.Input("negative", tooltip="The negative prompt (CLIPTextEncode)."),
                io.Latent.Input("latent_image", tooltip="Empty Latent Image: its batch is the number of images."),
                io.Combo.Input(
                    "face_parser",
                    options=weight_files(PARSER_FILE, "iter"),
                    tooltip="BiSeNet face parser (79999_iter.pth) that finds the attributes in the foundation image.",
                ),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=30, min=1, max=10000),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default="euler",
                    tooltip="Any sampler; the official F2D setting is euler_ancestral.",
                ),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal"),
                io.String.Input(
                    "attributes",
                    default="auto",
                    tooltip="'auto': the attribute words of the prompt (hair, glasses, eyes, hat, earrings, ...; "
                    "'chair' is not hair). Or a comma list of attributes, parser classes or class ids "
                    "('hair, glasses', 'hat', '17'); empty is 'auto'.",
                ),
                io.Float.Input(
                    "mask_weight",
                    default=0.5,
                    min=-10.0,
                    max=10.0,
                    step=0.05,
                    tooltip="omega: extra attention to the foundation image's attribute (a logit bias; each of its "
                    "tokens weighs e^omega). FreeCure's F2D example uses 0.5, its paper 2.0.",
                ),
                *expression_inputs(),
                io.Conditioning.Input(
                    "positive",
                    optional=True,
                    tooltip="Instead of encoding the text here: the person's conditioning from Apply F2D Tokens "
                    "(e.g. after Apply ControlNet). The foundation branch copies its ControlNet and timing.",
                ),
                io.Mask.Input(
                    "attribute_mask",
                    optional=True,
                    tooltip="Added to the parsed mask: for what the parser cannot see (a beard, a face mask), from "
                    "any segmentation node. One mask, or one per image.",
                ),
                *identifier_inputs(
                    "The foundation prompt's word for the person ('woman', 'man' often give a better foundation "
                    "image than 'person'); also used by identity_start."
                ),
                io.Float.Input(
                    "style_fidelity",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    optional=True,
                    tooltip="1: the unconditional pass stays plain (FreeCure's setting); lower values also apply "
                    "FASA there, which cancels part of its effect.",
                ),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, optional=True),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, optional=True),
                io.Combo.Input("layers", options=list(LAYER_CHOICES), default=LAYER_CHOICES[0], optional=True),
                io.Combo.Input(
                    "apg",
                    options=list(APG_MODES),
                    default="auto",
                    optional=True,
                    tooltip="Asymmetric prompt guidance for expressions ('laughing', 'angry'): the result is "
                    "partly un-sampled with the prompt without those words and sampled again with them (about "
                    "0.75x a KSampler more). auto: on when the prompt has expression words and no Expression "
                    "Reference is connected.",
                ),
                io.Float.Input(
                    "apg_gamma",
                    default=0.5,
                    min=0.05,
                    max=1.0,
                    step=0.05,
                    optional=True,
                    tooltip="Fraction of the schedule APG re-runs (the paper: 0.5, stable 0.5-0.6).",
                ),
                io.Boolean.Input(
                    "apg_keep_identity",
                    default=False,
                    optional=True,
                    tooltip="APG with the person's S* in both prompts (a deviation from the paper, which uses "
                    "text alone): keeps the likeness when the re-run part is large.",
                ),
                io.Combo.Input(
                    "route",
                    options=list(ROUTES),
                    default="auto",
                    optional=True,
                    tooltip="fast: the foundation alone, then the person reusing its attention keys (about 2x a "
                    "KSampler). straightforward: FreeCure's own order, both branches twice (about 4x). auto: fast, "
                    "except for adaptive samplers.",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The person, with the prompt's attributes restored."),
                io.Latent.Output(display_name="foundation", tooltip="The foundation images (no identity)."),
                io.Mask.Output(display_name="mask", tooltip="Where FASA looked in each foundation image."),
                io.String.Output(display_name="report"),
                io.Conditioning.Output(
                    display_name="positive",
                    tooltip="The person's prompt as Apply F2D Tokens encodes it: a KSampler with it (same seed) "
                    "gives the image without FreeCure, for comparison.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, identifier: str = DEFAULT_IDENTIFIER) -> bool | str:
        return identifier_check(identifier)

    @classmethod
    def execute(
        cls,
        model,
        clip,
        vae,
        f2d_face: F2DFace,
        text: str,
        negative: list,
        latent_image: dict,
        face_parser: str,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        attributes: str,
        mask_weight: float,
        expression: F2DExpression | None = None,
        expression_strength: float = 1.0,
        positive: list | None = None,
        attribute_mask: torch.Tensor | None = None,
        identifier: str = DEFAULT_IDENTIFIER,
        identity_start: float = 0.0,
        class_noun: str = DEFAULT_CLASS_NOUN,
        style_fidelity: float = 1.0,
        start_percent: float = 0.0,
        end_percent: float = 1.0,
        layers: str = LAYER_CHOICES[0],
        apg: str = "auto",
        apg_gamma: float = 0.5,
        apg_keep_identity: bool = False,
        route: str = "auto",
    ) -> io.NodeOutput:
        check_sd1_freecure(model, s_star_family(f2d_face.face.s_star))
        identifier = identifier.strip()
        choice = parse_attribute_list(attributes, text)
        s_star = s_star_for_prompt(f2d_face, expression, expression_strength)
        notes = []
        if positive is None:
            positive = face_conditioning(clip, text, s_star, identifier, identity_start, class_noun)
        elif identity_start > 0:
            notes.append(
                f"Note: positive is connected, so identity_start {identity_start} here is not used: set it on the "
                "Apply F2D Tokens that makes positive."
            )
        foundation = foundation_conditioning(clip, positive, text, identifier, class_noun)
        parser = load_weight_file(load_face_parser, face_parser, PARSER_HOW_TO_GET)  # held while it runs
        result = run_freecure(
            model,
            vae,
            parser.model,
            positive,
            foundation,
            negative,
            latent_image,
            Sampling(seed, steps, cfg, sampler_name, scheduler),
            FasaSettings(mask_weight, style_fidelity, start_percent, end_percent, layers, route),
            choice,
            attribute_mask,
        )
        result.report += notes
        if choice.unparsed and attribute_mask is None:
            result.report.append(
                f"Note: the face parser has no class for {', '.join(choice.unparsed)}: connect an attribute_mask."
            )
        samples = result.refined
        if apg == "on" or (apg == "auto" and choice.expressions and expression is None):
            fd_text = class_prompt(text, identifier, class_noun)
            if apg_keep_identity:
                template = face_conditioning(
                    clip, template_prompt(text), s_star, identifier, identity_start, class_noun
                )
                target = positive
            else:
                template = text_conditioning(clip, positive, template_prompt(fd_text))
                target = foundation
            samples, line = run_apg(model, samples, template, target, negative, steps, cfg, scheduler, apg_gamma)
            result.report.append(f"{line}: '{template_prompt(fd_text)}' -> '{fd_text}'")
            if not choice.expressions:
                result.report.append("Note: APG is on but the prompt has no expression word; it only re-samples.")
        elif choice.expressions:
            why = "an Expression Reference is connected" if expression is not None else "apg is off"
            result.report.append(f"APG off ({why}); expression words: {', '.join(choice.expressions)}")
        report = "\n".join(result.report)
        log.info("%s", report)
        out = {k: v for k, v in latent_image.items() if k != "samples"}
        return io.NodeOutput(
            {**out, "samples": samples},
            {**out, "samples": result.foundation},
            result.masks,
            report,
            positive,
            ui={"text": [report]},
        )
