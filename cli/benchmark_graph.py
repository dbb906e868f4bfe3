"""API-format ComfyUI graphs the benchmark queues: one face, one setting, one prompt, a batch of seeds.

The paper's sampler: Euler ancestral, 30 steps, CFG 7, 512x512, an empty negative prompt.
Settings (what each changes against "official"):
- official: the photo alone, S* from the official mapper path, expression from the prompt (null_exp).
- identity_start: S* only after the first `identity_start` fraction of the steps (Apply F2D Tokens'
  `identity_start` input, which comes with the several-people nodes).
- expression: the photo's own expression (Expression Reference, Deep3DFaceRecon) at strength 1.
- pooling: the photo and its mirror image pooled with normalized_mean.
- freecure (freecure_omega<w> with an omega sweep): the F2D FreeCure Sampler in place of the KSampler
  (FreeCure's FASA on the prompt's attributes and APG on its expression words; mask weight omega, default
  0.5 as FreeCure's F2D example, 2.0 in its paper). The paper's Table 1 column "F2D + FreeCure".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Graph = dict[str, dict[str, Any]]
SETTINGS = ("official", "identity_start", "expression", "pooling", "freecure")
FREECURE = "freecure"


def freecure_settings(omegas: list[float]) -> list[str]:
    """The setting names of an omega sweep: [0.5, 2.0] -> ['freecure_omega0.5', 'freecure_omega2']."""
    return [f"{FREECURE}_omega{w:g}" for w in omegas]


def freecure_omega(setting: str, default: float = 0.5) -> float | None:
    """The mask weight of a FreeCure setting (`default` for plain 'freecure'), None for other settings."""
    if setting == FREECURE:
        return default
    if setting.startswith(f"{FREECURE}_omega"):
        return float(setting.removeprefix(f"{FREECURE}_omega"))
    return None


@dataclass(frozen=True)
class Sampling:
    """The paper's sampler settings (overridable for quick runs)."""

    size: int = 512
    steps: int = 30
    cfg: float = 7.0
    sampler: str = "euler_ancestral"
    scheduler: str = "normal"


@dataclass(frozen=True)
class Models:
    """File names as the server lists them."""

    checkpoint: str
    msid: str = "msid.pt"
    mapper: str = "mapping.pt"
    pack: str = "buffalo_l"
    expression_model: str = "epoch_20.pth"
    face_parser: str = "79999_iter.pth"


def generation_graph(
    setting: str,
    face_image: str,
    prompt: str,
    seed: int,
    batch: int,
    models: Models,
    sampling: Sampling,
    prefix: str,
    identity_start: float = 0.2,
) -> Graph:
    """The graph for `batch` images of `prompt` with the face in `face_image` (an uploaded input name)."""
    omega = freecure_omega(setting)
    if setting not in SETTINGS and omega is None:
        raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
    graph: Graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": models.checkpoint}},
        "2": {
            "class_type": "F2DLoadMSIDEncoder",
            "inputs": {
                "msid_file": models.msid,
                "mapper_file": models.mapper,
                "insightface_pack": models.pack,
                "detector_device": "auto",
                "precision": "fp32",
                "detection_size": 640,
            },
        },
        "3": {"class_type": "LoadImage", "inputs": {"image": face_image}},
        "4": {
            "class_type": "F2DEncodeFace",
            "inputs": {
                "f2d_model": ["2", 0],
                "image": ["3", 0],
                "face_index": 0,
                "if_no_face": "error",
                "pooling": "normalized_mean",
            },
        },
        "5": {"class_type": "F2DApplyTokens", "inputs": {"clip": ["1", 1], "text": prompt, "f2d_face": ["4", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": sampling.size, "height": sampling.size,
                                                           "batch_size": batch}},
        "8": {
            "class_type": "KSampler",
            "inputs": {"model": ["1", 0], "seed": seed, "steps": sampling.steps, "cfg": sampling.cfg,
                       "sampler_name": sampling.sampler, "scheduler": sampling.scheduler, "positive": ["5", 0],
                       "negative": ["6", 0], "latent_image": ["7", 0], "denoise": 1.0},
        },
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": prefix}},
    }  # fmt: skip
    if omega is not None:
        del graph["5"]  # the sampler encodes the prompt itself (and its foundation twin)
        sampler = graph["8"]["inputs"]
        del sampler["denoise"], sampler["positive"]
        sampler.update(clip=["1", 1], vae=["1", 2], f2d_face=["4", 0], text=prompt, face_parser=models.face_parser,
                       attributes="auto", mask_weight=omega)  # fmt: skip
        graph["8"]["class_type"] = "F2DFreeCureSampler"
    elif setting == "identity_start":
        graph["5"]["inputs"]["identity_start"] = identity_start
    elif setting == "expression":
        graph["11"] = {
            "class_type": "F2DExpressionReference",
            "inputs": {"f2d_model": ["2", 0], "image": ["3", 0], "expression_model": models.expression_model,
                       "face_index": 0, "strength": 1.0},
        }  # fmt: skip
        graph["5"]["inputs"]["expression"] = ["11", 0]
    elif setting == "pooling":
        graph["12"] = {"class_type": "ImageFlip", "inputs": {"image": ["3", 0], "flip_method": "y-axis: horizontally"}}
        graph["13"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["12", 0]}}
        graph["4"]["inputs"]["image"] = ["13", 0]
    return graph
