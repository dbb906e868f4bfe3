"""The resumable training state: mapper, optimizer moments, step, loss history, the run's identity and the
fp16 loss scale; one safetensors file, written atomically."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic_io import atomic_write
from ..errors import F2DError, WeightFileError
from ..identity.mapper import F2DMapper
from ..weight_files import read_weights
from .precision import LossScale
from .run_identity import RunIdentity, RunMismatch

log = logging.getLogger(__name__)

STATE_FORMAT = "face2diffusion-training-state"
STATE_FILE = "training_state.safetensors"
_OPTIMIZER_HYPER = ("lr", "weight_decay", "betas", "eps")


@dataclass
class ResumePoint:
    """What a saved state says about the run it came from."""

    step: int
    losses: list[float]
    settings: dict[str, object]
    identity: RunIdentity | None  # None in states written before identities were recorded
    optimizer_hyper: list[dict[str, object]]  # the saved param groups' lr, weight_decay, betas, eps
    loss_scale: dict[str, float] | None = None  # LossScale.state_dict() of an fp16 run; None otherwise


def state_bytes(mapper: F2DMapper) -> int:
    """Size of one state file: the mapper and AdamW's two moments, float32."""
    return 3 * sum(p.numel() * 4 for p in mapper.parameters())


def check_free_disk(directory: Path, needed: int) -> None:
    """Refuse to start a run that could not write its checkpoints (the temp copy counts too)."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise F2DError(
            f"Not enough free disk for training checkpoints in {directory}: {needed / 2**20:.0f} MiB needed, "
            f"{free / 2**20:.0f} MiB free. Free some space or choose another run folder."
        )


def save_state(
    path: Path,
    mapper: F2DMapper,
    optimizer: torch.optim.Optimizer,
    step: int,
    losses: list[float],
    settings: dict,
    identity: RunIdentity | None = None,
    loss_scale: LossScale | None = None,
) -> Path:
    """Write the state atomically: a crash mid-write leaves the previous state intact.

    An enabled `loss_scale` (fp16 training) is kept too, so a resumed run does not restart at 2^16
    and overflow its way down again. Raises `errors.WriteError` (an F2DError) when the file
    cannot be written (a full disk, a read-only folder); the previous state is then left as it was.
    """
    tensors = {f"mapper.{k}": v.detach().float().cpu().contiguous() for k, v in mapper.state_dict().items()}
    names = {id(p): n for n, p in mapper.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{names[id(p)]}.{key}"] = (
                        value.detach().float().cpu().reshape(value.shape).contiguous()
                    )
    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    metadata = {
        "format": STATE_FORMAT,
        "step": str(step),
        "settings": json.dumps(settings, default=str),
        "optimizer": json.dumps(hyper, default=str),
    }
    if identity is not None:
        metadata["identity"] = identity.to_json()
    if loss_scale is not None and loss_scale.enabled:
        metadata["loss_scale"] = json.dumps(loss_scale.state_dict())
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata), "training state")


def _check_format(path: Path, metadata: dict) -> None:
    if metadata.get("format") != STATE_FORMAT:
        raise WeightFileError(f"{path} is not a Face2Diffusion training state; delete it or pick another run name.")


def load_state(
    path: Path,
    mapper: F2DMapper,
    optimizer: torch.optim.Optimizer,
    identity: RunIdentity | None = None,
    names_only_identity: RunIdentity | None = None,
) -> ResumePoint:
    """Restore the mapper and AdamW's moments from `save_state`'s file; return where the run stood.

    With `identity`, a state recording another run identity raises `RunMismatch` (naming what
    differs) before anything is restored; a state recording none (older files) is resumed with a
    warning, and so is one that matches `names_only_identity` (the identity as versions before photo
    contents were hashed recorded it: the dataset by file names only). The optimizer's hyper-parameters
    (learning rate, weight decay, ...) are not restored: the caller's current ones win; the saved ones
    come back in `ResumePoint.optimizer_hyper`.
    """
    tensors, metadata = read_weights(path)
    _check_format(path, metadata)
    saved_identity = RunIdentity.from_json(metadata["identity"]) if "identity" in metadata else None
    if identity is not None and saved_identity is None:
        log.warning("%s records no run identity (written by an older version): resuming it unchecked", path)
    elif identity is not None and identity.differences(saved_identity):
        if names_only_identity is None or names_only_identity.differences(saved_identity):
            raise RunMismatch(path.parent, identity.differences(saved_identity))
        log.warning(
            "%s was written by an older version that identified the photos by file name only: resuming it "
            "without checking that the photos' contents are the same",
            path,
        )
    mapper.load_state_dict({k.removeprefix("mapper."): v for k, v in tensors.items() if k.startswith("mapper.")})
    params = dict(mapper.named_parameters())
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, state_key = key.removeprefix("optim.").rsplit(".", 1)
            # As Optimizer.load_state_dict places them: moments on the parameter's device, AdamW's step
            # counter on the CPU (non-capturable AdamW reads it as a number each step).
            device = "cpu" if state_key == "step" else params[name].device
            optimizer.state[params[name]][state_key] = value.to(device)
    hyper = [{k: v for k, v in g.items() if k in _OPTIMIZER_HYPER} for g in json.loads(metadata["optimizer"])]
    step = int(metadata["step"])
    log.info("Resuming from %s at step %d", path, step)
    return ResumePoint(
        step=step,
        losses=tensors["losses"].tolist(),
        settings=json.loads(metadata["settings"]),
        identity=saved_identity,
        optimizer_hyper=hyper,
        loss_scale=json.loads(metadata["loss_scale"]) if "loss_scale" in metadata else None,
    )
