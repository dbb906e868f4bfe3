"""The trained encoder as a `.safetensors` in `msid.pt`'s key layout, with what it was trained on and how."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..checkpoints import save_f2d_safetensors
from ..identity.msid_encoder import MSIDEncoder
from .trainer import MSIDTrainResult, MSIDTrainSettings


def save_trained_encoder(
    path: Path | str,
    encoder: MSIDEncoder,
    result: MSIDTrainResult,
    settings: MSIDTrainSettings,
    data,
    init: str,
) -> Path:
    """Write `msid.*` tensors (float32, eval-mode BatchNorm statistics included) atomically.

    The file loads wherever `msid.pt` does (Load MSID Encoder, `load_msid`, mapper training's --msid)
    when the encoder has the official architecture. Metadata: `contents` "msid", `trained_on` (the
    data's source, image and identity counts), `loss`, `trained_steps` of `total_steps`, `final_loss`,
    `init`, `training_settings` (JSON) and `run_identity` (JSON).
    """
    trained_on = {"source": str(getattr(data, "source", "")), "images": len(data), "identities": data.num_classes}
    metadata = {
        "contents": "msid",
        "trained_on": json.dumps(trained_on),
        "loss": settings.loss_spec(),
        "trained_steps": str(result.step),
        "total_steps": str(result.total_steps),
        "final_loss": f"{result.losses[-1]:.6g}" if result.losses else "",
        "init": init,
        "training_settings": asdict(settings),
        "run_identity": result.identity.to_json() if result.identity else "",
    }
    report = getattr(data, "report", None)
    if hasattr(report, "summary"):
        metadata["dataset_report"] = report.summary()
    return save_f2d_safetensors(path, msid=encoder.eval(), metadata=metadata)
