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


def checkpoint_loader(ckpt_name: str = CHECKPOINT) -> dict[str, Any]:
    """CheckpointLoaderSimple on the tiny SD1.5 (MODEL 0, CLIP 1, VAE 2)."""
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}}


def encode_face(f2d_model: list, image: list) -> dict[str, Any]:
    """Encode Face with its default widgets on `image` (largest face, error when none, normalized mean)."""
    return {
        "class_type": "F2DEncodeFace",
        "inputs": {
            "f2d_model": f2d_model,
            "image": image,
            "face_index": 0,
            "if_no_face": "error",
            "pooling": "normalized_mean",
        },
    }


def encode_faces(graph: Graph, photos: dict[str, str], f2d_model: list) -> Graph:
    """For each uploaded photo `key: name`, LoadImage ("3<key>") -> Encode Face ("4<key>") into `graph`."""
    for key, image in photos.items():
        graph[f"3{key}"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        graph[f"4{key}"] = encode_face(f2d_model, [f"3{key}", 0])
    return graph


def encode_face_graph(image: str, text: str = "a photo of f l", **loader_files: str) -> Graph:
    """Checkpoint + Load MSID Encoder + LoadImage -> Encode Face -> Apply F2D Tokens (node "5")."""
    return {
        "1": checkpoint_loader(),
        "2": loader(**loader_files),
        "3": {"class_type": "LoadImage", "inputs": {"image": image}},
        "4": encode_face(["2", 0], ["3", 0]),
        "5": {"class_type": "F2DApplyTokens", "inputs": {"clip": ["1", 1], "text": text, "f2d_face": ["4", 0]}},
    }


def save_conditioning(graph: Graph, source: list, name: str, node_id: str) -> Graph:
    """Add the test probe node that writes the conditioning of `source` to `<output>/<name>.safetensors`."""
    graph[node_id] = {"class_type": "F2DTestSaveConditioning", "inputs": {"conditioning": source, "name": name}}
    return graph


def training_graph(
    folder: str,
    run_name: str,
    steps: int = 2,
    batch_size: int = 2,
    learning_rate: float = 1e-5,
    loss: str = "cgdr",
    checkpoint_every: int = 1000,
    crop_size: int = 64,
    save_as: str | None = None,
    checkpoint: dict[str, Any] | None = None,
    expression_model: str = "epoch_20.pth",
    start_from: str = "f2d_model mapper",
    gradient_checkpointing: bool = True,
    **train: Any,
) -> Graph:
    """Checkpoint + Load MSID Encoder -> F2D Training Dataset ("3") -> Train F2D Mapper ("4") [-> Save ("5")].

    checkpoint: the loader node "1" (MODEL, CLIP, VAE outputs; default the tiny SD1.5's CheckpointLoaderSimple);
    train: more Train F2D Mapper inputs (micro_batch, vae, ...).
    """
    graph: Graph = {
        "1": checkpoint or checkpoint_loader(),
        "2": loader(),
        "3": {
            "class_type": "F2DTrainingDataset",
            "inputs": {
                "f2d_model": ["2", 0],
                "vae": ["1", 2],
                "folder": folder,
                "face_parser": "79999_iter.pth",
                "expression_model": expression_model,
                "crop_size": crop_size,
                "flip": True,
                "face_index": 0,
            },
        },
        "4": {
            "class_type": "F2DTrainMapper",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "dataset": ["3", 0],
                "f2d_model": ["2", 0],
                "start_from": start_from,
                "steps": steps,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "loss": loss,
                "expression_dropout": 0.2,
                "shuffle_identities": False,
                "seed": 0,
                "checkpoint_every": checkpoint_every,
                "run_name": run_name,
                "resume": True,
                "gradient_checkpointing": gradient_checkpointing,
                **train,
            },
        },
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }
    if save_as is not None:
        graph["5"] = {"class_type": "F2DSaveMapper", "inputs": {"trained_mapper": ["4", 0], "name": save_as}}
    return graph
