"""MSID training's resumable state, written atomically, and the run identity checked on resume.

A run folder holds `msid_training_state.safetensors` (rank 0: the encoder, its AdamW moments, the
step, the loss of every step, the settings and the run's identity) and one
`classifier_rank<r>_step<S>.safetensors` per rank (that rank's shard of the class centres and their
moments). The shards are written first, then the main state, which names the step: a crash at any
point leaves a main state whose shards are all on disk. Older shards are deleted afterwards.

The identity is what the saved weights were computed from (dataset, starting weights, loss with its
margin, scale and Partial FC rate, global batch, seed, architecture); resuming with another raises
`MSIDRunMismatch`. The number of processes may change: a state saved by 4 ranks resumes on 2 or 8, each
rank reading its new shard's rows (centres and their AdamW moments) from the old shards' files
(`_resharded`). The global batches stay the same images (the loader splits each global batch over the
ranks), but flips and Partial FC's negatives are drawn per rank, so such a run continues validly without
repeating the losses an unchanged run would have had. Learning rate, weight decay, epochs and the like may change
between sessions (the current values win, as in mapper training).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic_io import atomic_write
from ..errors import F2DError, WeightFileError, WriteError
from ..training.run_identity import free_run_name
from ..weight_files import read_weights

log = logging.getLogger(__name__)

STATE_FORMAT = "face2diffusion-msid-training-state"
STATE_FILE = "msid_training_state.safetensors"
IDENTITY_LABELS = {
    "dataset": "dataset",
    "init": "starting weights",
    "loss": "loss",
    "global_batch_size": "batch size",
    "seed": "seed",
    "architecture": "encoder architecture",
}


@dataclass(frozen=True)
class MSIDRunIdentity:
    """The run a state belongs to."""

    dataset: str
    init: str
    loss: str
    global_batch_size: int
    seed: int
    world_size: int
    architecture: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MSIDRunIdentity:
        values = json.loads(text)
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def differences(self, saved: MSIDRunIdentity) -> list[str]:
        """'loss (saved run: msid ..., now: plain_arcface ...)' for every field that differs."""
        out = []
        for name, label in IDENTITY_LABELS.items():
            old, new = getattr(saved, name), getattr(self, name)
            if old != new:
                out.append(f"{label} (saved run: {str(old)[:40]}, now: {str(new)[:40]})")
        return out


class MSIDRunMismatch(F2DError):
    """A resume whose run identity differs from the saved state's."""

    def __init__(self, run_dir: Path, differences: list[str]) -> None:
        self.differences = differences
        super().__init__(
            f"The saved MSID run in {run_dir} was trained with another " + "; another ".join(differences) + ". "
            "Resuming it would mix two runs. Choose a new --run-dir "
            f"(e.g. '{run_dir.parent / free_run_name(run_dir)}'), or delete the old state to start over."
        )


@dataclass
class SavedRun:
    """Where a saved run stood: the next step to train and the loss of every step so far."""

    step: int
    losses: list[float]
    settings: dict


def _shard_path(run_dir: Path, rank: int, step: int) -> Path:
    return run_dir / f"classifier_rank{rank}_step{step}.safetensors"


def _resharded(run_dir: Path, step: int, saved_world: int, classifier: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This rank's classifier shard (and its AdamW moments) cut from the `saved_world` shards of another world size.

    Rows of a tensor whose first dimension is an old shard's class count are taken where the old shard's
    classes [start, start + count) meet this rank's (`shard_range`); other tensors (AdamW's step counter)
    come from rank 0's file. Only the needed rows are read (safetensors slices). Raises WeightFileError
    for a missing or unreadable shard file.
    """
    from .margin_softmax import shard_range

    total, start, count = classifier.num_classes, classifier.start, classifier.count
    pieces: dict[str, list[torch.Tensor]] = {}
    whole: dict[str, torch.Tensor] = {}
    for old_rank in range(saved_world):
        path = _shard_path(run_dir, old_rank, step)
        if not path.exists():
            raise WeightFileError(
                f"{run_dir / STATE_FILE} was saved by {saved_world} processes at step {step}, but {path.name} "
                "(one of their classifier shards) is missing: the classifier cannot be resharded."
            )
        old_start, old_count = shard_range(total, old_rank, saved_world)
        low, high = max(start, old_start), min(start + count, old_start + old_count)
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    piece = f.get_slice(key)
                    shape = piece.get_shape()
                    if shape and shape[0] == old_count:
                        if low < high:
                            pieces.setdefault(key, []).append(piece[low - old_start : high - old_start])
                    elif old_rank == 0:
                        whole[key] = f.get_tensor(key)
        except (OSError, SafetensorError) as exc:
            raise WeightFileError(f"{path} cannot be read: {exc}") from None
    whole.update({key: torch.cat(parts) for key, parts in pieces.items()})
    return whole


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in names:
                for key, value in optimizer.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor):
                        out[f"optim.{names[id(p)]}.{key}"] = value.detach().float().cpu().contiguous()
    return out


def _restore_optimizer(optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], tensors) -> None:
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, state_key = key.removeprefix("optim.").rsplit(".", 1)
            if name in params:  # AdamW's step counter lives on the CPU (non-capturable AdamW)
                device = "cpu" if state_key == "step" else params[name].device
                optimizer.state[params[name]][state_key] = value.to(device)


def save_run_state(
    run_dir: Path,
    step: int,
    encoder: torch.nn.Module,
    classifier: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    losses: list[float],
    settings: dict,
    identity: MSIDRunIdentity,
    rank: int = 0,
    agree: Callable[[bool], bool] = lambda ok: ok,
) -> Path:
    """Every rank writes its classifier shard, then rank 0 the main state; returns the main state's path.

    `agree(ok)` meets every rank and returns whether every rank's `ok` was True (in one process:
    `ok`). Call it on every rank at the same step. Raises WriteError on every rank when any rank
    could not write (a full disk, a read-only folder: the failing rank's message names the file),
    so no rank waits for another that failed; the previous state is then still the one on disk.
    """
    run_dir = Path(run_dir)
    shard_params = {id(p): f"classifier.{n}" for n, p in classifier.named_parameters()}
    shard = {f"classifier.{k}": v.detach().float().cpu().contiguous() for k, v in classifier.state_dict().items()}
    shard.update(_optimizer_tensors(optimizer, shard_params))
    failed: WriteError | None = None
    try:
        atomic_write(
            _shard_path(run_dir, rank, step),
            lambda tmp: save_file(shard, str(tmp), {"step": str(step)}),
            f"MSID classifier shard of rank {rank}",
        )
    except WriteError as exc:
        failed = exc
    _agree_or_raise(agree, failed, run_dir, step)
    main = run_dir / STATE_FILE
    if rank == 0:
        tensors = {f"encoder.{k}": v.detach().float().cpu().contiguous() for k, v in encoder.state_dict().items()}
        tensors.update(_optimizer_tensors(optimizer, {id(p): f"encoder.{n}" for n, p in encoder.named_parameters()}))
        tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
        metadata = {
            "format": STATE_FORMAT,
            "step": str(step),
            "settings": json.dumps(settings, default=str),
            "identity": identity.to_json(),
        }
        try:
            atomic_write(main, lambda tmp: save_file(tensors, str(tmp), metadata), "MSID training state")
        except WriteError as exc:
            failed = exc
    _agree_or_raise(agree, failed, run_dir, step)
    for old in run_dir.glob("classifier_rank*_step*.safetensors"):
        old_rank = old.name.removeprefix("classifier_rank").split("_", 1)[0]
        mine = old_rank == str(rank) or (rank == 0 and old_rank.isdigit() and int(old_rank) >= identity.world_size)
        if mine and old != _shard_path(run_dir, rank, step):  # rank 0 also removes those of a former world size
            old.unlink(missing_ok=True)
    return main


def _agree_or_raise(agree: Callable[[bool], bool], failed: WriteError | None, run_dir: Path, step: int) -> None:
    """Meet the other ranks; raise this rank's WriteError, or one saying another rank's write failed."""
    if agree(failed is None) and failed is None:
        return
    if failed is not None:
        raise failed
    raise WriteError(
        f"Could not write the MSID state of step {step} in {run_dir}: another rank's write failed (its log names "
        "the file and why); the previous state there is unchanged. Free some disk space or choose a writable "
        "folder, then run again."
    )


def load_run_state(
    run_dir: Path,
    encoder: torch.nn.Module,
    classifier: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    identity: MSIDRunIdentity,
    rank: int = 0,
) -> SavedRun | None:
    """Restore encoder, this rank's classifier shard and the AdamW moments; None when the folder has no state.

    Raises:
        MSIDRunMismatch: the state belongs to another run (nothing is restored).
        WeightFileError: the file is not an MSID training state, or this rank's shard is missing.
    """
    run_dir = Path(run_dir)
    main = run_dir / STATE_FILE
    if not main.exists():
        return None
    tensors, metadata = read_weights(main)
    if metadata.get("format") != STATE_FORMAT:
        raise WeightFileError(f"{main} is not an MSID training state; delete it or choose another --run-dir.")
    differences = identity.differences(MSIDRunIdentity.from_json(metadata["identity"]))
    if differences:
        raise MSIDRunMismatch(run_dir, differences)
    step = int(metadata["step"])
    saved_world = MSIDRunIdentity.from_json(metadata["identity"]).world_size
    if saved_world != identity.world_size:
        log.info(
            "%s was saved by %d processes; resharding its classifier onto %d", run_dir, saved_world, identity.world_size
        )
        shard = _resharded(run_dir, step, saved_world, classifier)
    else:
        shard_file = _shard_path(run_dir, rank, step)
        if not shard_file.exists():
            raise WeightFileError(
                f"{main} is at step {step}, but {shard_file.name} (rank {rank}'s classifier) is missing."
            )
        shard, _ = read_weights(shard_file)
    encoder.load_state_dict(_part(tensors, "encoder."))
    classifier.load_state_dict(_part(shard, "classifier."))
    params = {f"encoder.{n}": p for n, p in encoder.named_parameters()}
    params.update({f"classifier.{n}": p for n, p in classifier.named_parameters()})
    _restore_optimizer(optimizer, params, tensors)
    _restore_optimizer(optimizer, params, shard)
    log.info("resuming %s at step %d", run_dir, step)
    return SavedRun(step, tensors["losses"].tolist(), json.loads(metadata["settings"]))
