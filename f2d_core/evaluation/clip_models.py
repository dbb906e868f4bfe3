"""A CLIP model for prompt-fidelity scoring, loaded from a local folder: `transformers` or `open_clip` format.

- transformers: a folder written by `CLIPModel.save_pretrained` + the tokenizer's `save_pretrained`
  (`config.json` with `model_type: clip`, `model.safetensors`, `vocab.json`, `merges.txt`, and
  optionally `preprocessor_config.json` for the image mean/std/size).
- open_clip: a Hugging Face hub folder in open_clip's layout (`open_clip_config.json`,
  `open_clip_model.safetensors`), e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the paper's model;
  needs the `open_clip_torch` package.

Nothing is downloaded; weights are read from `.safetensors` only. Images are preprocessed in torch
as CLIP's own processors do: bicubic resize of the short side, centre crop, mean/std normalisation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

from ..errors import EvaluationError, WeightFileError

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's published preprocessing constants
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WHAT_TO_GIVE = (
    "Give a CLIP model folder: one saved with transformers' CLIPModel.save_pretrained (config.json, "
    "model.safetensors, tokenizer files) or an open_clip hub folder (open_clip_config.json, "
    "open_clip_model.safetensors), e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K."
)


class CLIPNetworks(nn.Module):
    """The CLIP model as one plain module, so that a memory manager can load and offload it (a transformers
    model's read-only `device` property cannot be set by one)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.clip = model


def weights_device(module: nn.Module) -> torch.device:
    """Where a module's first parameter (or buffer) is now: where it computes."""
    return next(iter([*module.parameters(), *module.buffers()])).device


class CLIPScorer:
    """Unit-length CLIP embeddings of images and texts, computed wherever `networks` is.

    `encode_images`: IMAGE [B, H, W, 3] float in [0, 1] -> [B, D] float32.
    `encode_texts`: list of P prompts -> [P, D] float32.
    `prepare()` runs before every forward pass (the node layer makes it load the weights onto
    ComfyUI's device); the inputs then go where the weights are.
    """

    def __init__(
        self,
        name: str,
        image_tower: Callable[[torch.Tensor], torch.Tensor],
        text_tower: Callable[[list[str]], torch.Tensor],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        networks: nn.Module,
    ) -> None:
        self.name, self.image_size, self.networks = name, image_size, networks
        self._image_tower, self._text_tower = image_tower, text_tower
        self.prepare: Callable[[], object] = lambda: None
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        """Where the CLIP weights are now."""
        return weights_device(self.networks)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE [B, H, W, C] in [0, 1] -> normalised [B, 3, S, S] on the scorer's device: resize the short
        side to S, centre crop.

        The resize runs on the CPU (where ComfyUI's IMAGE already is): Apple's MPS has no antialiased
        bicubic kernel before torch 2.8 (pytorch/pytorch#149378), and only the small crop travels.
        """
        x = images[..., :3].permute(0, 3, 1, 2).to("cpu", torch.float32)
        height, width = x.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.image_size, round(height * scale)), max(self.image_size, round(width * scale)))
        x = functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
        x = x[..., top : top + self.image_size, left : left + self.image_size]
        return ((x - self._mean) / self._std).to(self.device)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings [B, D] float32 (CPU) of an IMAGE batch [B, H, W, C] in [0, 1]."""
        self.prepare()
        return functional.normalize(self._image_tower(self.preprocess(images)).float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings [P, D] float32 (CPU); prompts longer than the context are truncated."""
        self.prepare()
        return functional.normalize(self._text_tower(list(prompts)).float(), dim=-1).cpu()


def _features(output: object) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 wraps them as `pooler_output`."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _preprocessing(folder: Path, default_size: int) -> tuple[int, Sequence[float], Sequence[float]]:
    """Crop size, mean and std from `preprocessor_config.json` (CLIP's published values without it)."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return default_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    config = json.loads(file.read_text(encoding="utf-8"))
    crop = config.get("crop_size", default_size)
    size = crop.get("height", default_size) if isinstance(crop, dict) else int(crop)
    return size, config.get("image_mean", OPENAI_CLIP_MEAN), config.get("image_std", OPENAI_CLIP_STD)


def _transformers_scorer(folder: Path, device: torch.device) -> CLIPScorer:
    from transformers import AutoTokenizer, CLIPModel

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    kind = config.get("model_type", "?")
    if kind != "clip":
        what = {
            "clip_vision_model": "a CLIP image tower only (no text tower)",
            "clip_text_model": "a CLIP text tower only (no image tower)",
            "siglip": "a SigLIP model (sigmoid scores, not CLIP's)",
        }.get(kind, f"a {kind!r} model")
        raise WeightFileError(
            f"{folder} holds {what}; prompt fidelity needs a full CLIP (text and image). {_WHAT_TO_GIVE}"
        )
    if not any(folder.glob("*.safetensors")):
        raise WeightFileError(
            f"{folder} has no .safetensors weights (only pickled ones, which this pack never loads). Re-save the "
            "model with save_pretrained(..., safe_serialization=True)."
        )
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True).eval().to(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/TypeError for missing or broken files
        raise WeightFileError(
            f"{folder}: no usable tokenizer ({exc}). Save the CLIP tokenizer into the same folder "
            "(tokenizer.save_pretrained)."
        ) from exc
    max_length = min(int(getattr(tokenizer, "model_max_length", 77)), model.config.text_config.max_position_embeddings)

    def texts(prompts: list[str]) -> torch.Tensor:
        tokens = tokenizer(prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return _features(model.get_text_features(**tokens.to(weights_device(model))))

    size, mean, std = _preprocessing(folder, model.config.vision_config.image_size)
    image_tower = lambda x: _features(model.get_image_features(pixel_values=x))  # noqa: E731
    return CLIPScorer(folder.name, image_tower, texts, size, mean, std, CLIPNetworks(model))


def _open_clip_scorer(folder: Path, device: torch.device) -> CLIPScorer:
    try:
        import open_clip
    except ImportError as exc:
        raise WeightFileError(
            f"{folder} is an open_clip model, but the open_clip_torch package is not installed: "
            "pip install open_clip_torch (or use a transformers CLIP folder)."
        ) from exc
    if not (folder / "open_clip_model.safetensors").is_file():
        raise WeightFileError(
            f"{folder} has no open_clip_model.safetensors (only pickled weights, which this pack never loads)."
        )
    name = f"local-dir:{folder}"
    model, _, _ = open_clip.create_model_and_transforms(name, device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    config = model.visual.preprocess_cfg if hasattr(model.visual, "preprocess_cfg") else {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean, std = config.get("mean", OPENAI_CLIP_MEAN), config.get("std", OPENAI_CLIP_STD)
    return CLIPScorer(
        folder.name,
        model.encode_image,
        lambda prompts: model.encode_text(tokenizer(prompts).to(weights_device(model))),
        size,
        mean,
        std,
        CLIPNetworks(model),
    )


def load_clip_scorer(path: Path | str, device: torch.device | str = "cpu") -> CLIPScorer:
    """A CLIPScorer from a transformers or open_clip folder; WeightFileError naming the folder otherwise."""
    folder = Path(path)
    if folder.is_file():
        raise WeightFileError(
            f"{folder} is a single file; CLIP scoring needs the whole model folder with its tokenizer. {_WHAT_TO_GIVE}"
        )
    if not folder.is_dir():
        raise WeightFileError(f"CLIP model folder {folder} does not exist. {_WHAT_TO_GIVE}")
    path, where = folder, torch.device(device)
    if (path / "config.json").is_file():
        scorer = _transformers_scorer(path, where)
    elif (path / "open_clip_config.json").is_file():
        scorer = _open_clip_scorer(path, where)
    else:
        names = ", ".join(sorted(f.name for f in path.iterdir())[:8]) or "nothing"
        raise WeightFileError(f"{path} is not a CLIP model folder (it holds {names}). {_WHAT_TO_GIVE}")
    log.info("CLIP scorer %s loaded (%dpx) on %s", path.name, scorer.image_size, where)
    return scorer


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """The prompts, stripped; EvaluationError when the list or a prompt is empty."""
    cleaned = [p.strip() for p in prompts]
    if not cleaned:
        raise EvaluationError("the prompt list is empty: give at least one prompt to score against")
    empty = [i + 1 for i, p in enumerate(cleaned) if not p]
    if empty:
        raise EvaluationError(f"prompt(s) {empty} are empty: every image needs a prompt to score against")
    return cleaned
