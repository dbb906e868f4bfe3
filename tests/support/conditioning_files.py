"""Reading back what the probe node F2DTestSaveConditioning wrote: each conditioning entry, whole; and running a
graph with a probe on each conditioning to compare, or expecting a node error instead."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import Graph, save_conditioning


@dataclass
class SavedEntry:
    """One conditioning entry: its tensor [1, 77k, 768 | 2048], its mask (or None) and its plain options."""

    cond: torch.Tensor
    mask: torch.Tensor | None
    options: dict
    pooled: torch.Tensor | None = None  # SDXL's pooled_output [1, 1280]


def read_conditioning(path: Path) -> list[SavedEntry]:
    """The entries of a CONDITIONING saved by the probe node, in order."""
    with safe_open(str(path), framework="pt") as f:
        entries = json.loads(f.metadata()["entries"])
        names = set(f.keys())
        return [
            SavedEntry(
                cond=f.get_tensor(f"cond_{i}"),
                mask=f.get_tensor(f"mask_{i}") if f"mask_{i}" in names else None,
                options=options,
                pooled=f.get_tensor(f"pooled_{i}") if f"pooled_{i}" in names else None,
            )
            for i, options in enumerate(entries)
        ]


def saved_conditionings(server: ComfyServer, graph: Graph, sources: dict[str, list]) -> dict[str, list[SavedEntry]]:
    """Run `graph` with a probe on each source ({file name: [node, output]}); {file name: its entries}."""
    for k, (name, source) in enumerate(sources.items()):
        save_conditioning(graph, source, name, f"9{k}")
    server.run(graph, timeout=300)
    return {name: read_conditioning(Path(server.output_dir) / f"{name}.safetensors") for name in sources}


def node_failure(server: ComfyServer, graph: Graph, source: list, still_serving: str) -> ExecutionFailed:
    """Run `graph` with a probe on `source`, expect a node error, and check the server still answers about the
    node `still_serving`; the error."""
    save_conditioning(graph, source, "never_written", "99")
    with pytest.raises(ExecutionFailed) as info:
        server.run(graph, timeout=300)
    assert server.object_info(still_serving)  # the server keeps serving after the node error
    return info.value
