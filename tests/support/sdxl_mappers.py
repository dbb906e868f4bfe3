"""Seeded SDXL mappers for tests: one started at anchors, as Train F2D Mapper starts every SDXL mapper."""

from __future__ import annotations

import torch

from f2d_core.identity.mapper_xl import F2DMapperXL

ANCHORED_SDXL_MAPPER = "f2d_test_sdxl_mapper_anchored.safetensors"


def anchored_sdxl_mapper(seed: int = 0, growth: float = 1.5) -> F2DMapperXL:
    """A seeded F2DMapperXL (eval mode) started at seeded anchors whose two words differ in length, then with its
    output biases scaled by `growth`, as training moves the words away from the anchors' lengths. The global
    random state is left as it was."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mapper = F2DMapperXL().eval()
    lengths = torch.tensor([[0.4], [1.7]])
    mapper.init_from_anchors({t: torch.randn(2, w, generator=generator) * lengths for t, w in mapper.widths.items()})
    with torch.no_grad():
        for head in mapper.heads.values():
            for word in head.words():
                word.fc_out.bias.mul_(growth)
    return mapper
