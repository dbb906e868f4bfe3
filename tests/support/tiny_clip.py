"""Tiny CLIP models in the real files' formats, written at test time (no CLIP weights exist offline).

- `write_transformers_clip(folder)`: `CLIPModel.save_pretrained` (config.json with model_type clip,
  model.safetensors) and a CLIPTokenizer's `save_pretrained` over a byte-level vocabulary without
  merges (every character is a token), as a real CLIP folder holds them.
- `write_open_clip(folder)`: an open_clip hub folder (`open_clip_config.json`,
  `open_clip_model.safetensors`) of a tiny ViT CLIP using open_clip's own bundled tokenizer.
Seeded random weights: the towers tell images and texts apart, they know nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PROJECTION_DIM = 16
IMAGE_SIZE = 32


def _byte_characters() -> list[str]:
    """GPT-2/CLIP's byte -> printable-character table (the base of CLIP's BPE vocabulary)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_transformers_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers CLIP folder (text + image towers, tokenizer, safetensors weights)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_characters()
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt")).save_pretrained(str(folder))
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(vocab),
            "max_position_embeddings": 77,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={**tower, "image_size": IMAGE_SIZE, "patch_size": 8},
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_clip_vision_only(folder: Path, seed: int = 0) -> Path:
    """A CLIP image tower alone (model_type clip_vision_model), as IP-Adapter packs ship: the wrong kind."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=PROJECTION_DIM,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


OPEN_CLIP_CONFIG = {
    "embed_dim": PROJECTION_DIM,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_open_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny open_clip hub folder: open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**OPEN_CLIP_CONFIG)
    config = {
        "model_cfg": OPEN_CLIP_CONFIG,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder
