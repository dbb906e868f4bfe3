"""API-format graph pieces for the pack's nodes, shared by the integration tests."""

from __future__ import annotations

from typing import Any

CHECKPOINT = "f2d_tiny_sd15.safetensors"
PACK = "buffalo_l"
Graph = dict[str, dict[str, Any]]


def loader(msid: str = "msid.pt", mapper: str = "mapping.pt") -> dict[str, Any]:
    """Load MSID Encoder on the test models."""
    return {
        "class_type": "F2DLoadMSIDEncoder",
        "inputs": {
            "msid_file": msid,
            "mapper_file": mapper,
            "insightface_pack": PACK,
            "detector_device": "auto",
            "precision": "fp32",
            "detection_size": 640,
        },
    }


def encode_face_graph(image: str, text: str = "a photo of f l", **loader_files: str) -> Graph:
    """Checkpoint + Load MSID Encoder + LoadImage -> Encode Face -> Apply F2D Tokens (node "5")."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": loader(**loader_files),
        "3": {"class_type": "LoadImage", "inputs": {"image": image}},
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
        "5": {"class_type": "F2DApplyTokens", "inputs": {"clip": ["1", 1], "text": text, "f2d_face": ["4", 0]}},
    }


def save_conditioning(graph: Graph, source: list, name: str, node_id: str) -> Graph:
    """Add the test probe node that writes the conditioning of `source` to `<output>/<name>.safetensors`."""
    graph[node_id] = {"class_type": "F2DTestSaveConditioning", "inputs": {"conditioning": source, "name": name}}
    return graph
