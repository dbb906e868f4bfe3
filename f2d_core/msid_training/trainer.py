"""The MSID training loop (paper Sec. 3.2): ArcFace on the concatenated multi-scale v_id, or on the last tap.

Each step: a batch of aligned 112x112 faces (uint8, from the loader's workers) goes to the device, is
normalised to [-1, 1] and flipped at random there (one vectorised op for the batch, no per-image work
on this thread), the encoder gives the embedding (MSID: the four scales' 1536-d v_id; plain ArcFace:
the last tap's 384-d), the sharded margin softmax gives the loss, AdamW updates the encoder and this
rank's class centres at the warm-up + linear-decay rate (schedule.py), the encoder's gradient norm
clipped at 5 (arcface_torch `train_v2.py`). Under bf16 autocast where the device computes bf16
natively (`resolve_training_dtype("auto", ...)`), else fp32.

The step fixes everything random about it (flips, Partial FC's negatives, the batch: the loader is
indexed by epoch and batch), so an interrupted run resumed from its state continues exactly as an
uninterrupted one would: bit for bit on the CPU; on CUDA only under deterministic kernels (cli/train_msid.py
--deterministic: attention backward, cuDNN and TF32 are not deterministic otherwise) and the same number
of processes (flips and Partial FC are drawn per rank).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import F2DError
from ..identity.msid_encoder import MSIDEncoder
from ..training.precision import dtype_name
from .arcface_loss import DEFAULT_MARGIN, DEFAULT_SCALE
from .margin_softmax import ShardedMarginSoftmax
from .run_state import MSIDRunIdentity, load_run_state, save_run_state
from .schedule import WARMUP_FRACTION, learning_rate

log = logging.getLogger(__name__)

LOSSES = ("msid", "plain_arcface")
LOG_EVERY_SECONDS = 10.0
CLIP_GRAD_NORM = 5.0  # arcface_torch train_v2.py: clip_grad_norm_(backbone.parameters(), 5)
WEIGHT_DECAY = 0.1  # arcface_torch's AdamW configurations

# A loader for one rank: (epoch, first batch) -> that rank's batches of the epoch from that batch on,
# each (uint8 [b, 3, 112, 112] RGB, int64 [b] labels), b = global batch / world size.
BatchSource = Callable[[int, int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class MSIDTrainSettings:
    """The run's hyper-parameters; defaults as the paper (30 epochs, batch 1024, lr 1e-3, AdamW)."""

    epochs: int = 30
    batch_size: int = 1024  # global: split over the ranks
    learning_rate: float = 1e-3
    weight_decay: float = WEIGHT_DECAY
    warmup_fraction: float = WARMUP_FRACTION
    loss: str = "msid"
    margin: float = DEFAULT_MARGIN
    scale: float = DEFAULT_SCALE
    partial_fc: float = 1.0
    flip: bool = True
    seed: int = 0
    checkpoint_every: int = 2000  # steps
    max_steps: int | None = None  # stop (and save) after this many steps in all: a short run or a test
    # Ask `should_stop` every this many steps only: with several ranks it is an all-reduce and a host sync,
    # which would otherwise stall the device queue every step. A stop request is acted on within N steps.
    stop_check_every: int = 10

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise F2DError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if (
            min(self.epochs, self.batch_size, self.checkpoint_every, self.stop_check_every) < 1
            or self.learning_rate <= 0
        ):
            raise F2DError(
                "epochs, batch size, checkpoint and stop-check intervals must be at least 1, the learning rate above 0"
            )
        if not 0 < self.partial_fc <= 1:
            raise F2DError(f"the Partial FC rate must be in (0, 1], not {self.partial_fc}")

    def loss_spec(self) -> str:
        """The loss as the run identity records it: kind, margin, scale, Partial FC rate."""
        return f"{self.loss} m={self.margin:g} s={self.scale:g} partial_fc={self.partial_fc:g}"


@dataclass
class MSIDTrainResult:
    """How a run ended: the step reached, every step's loss, why it stopped."""

    step: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    status: str = "completed"  # completed | stopped (max_steps or a stop request) | nothing_to_train
    identity: MSIDRunIdentity | None = None


def embedding_width(encoder: MSIDEncoder, loss: str) -> int:
    """D of the embedding the loss sees: all taps concatenated (msid) or the last tap (plain_arcface)."""
    width = encoder.embed_dim
    return width * len(encoder.tap_blocks) if loss == "msid" else width


def freeze_unused(encoder: MSIDEncoder, loss: str) -> None:
    """Stop gradients to parameters the loss never reaches (DDP insists all others get one).

    The final `norm` is unused by MSID; plain ArcFace also leaves the shallow taps' norms out of its loss
    (their BatchNorm statistics still follow the data, so their features can be analysed as in Fig. 4).
    """
    encoder.norm.requires_grad_(False)
    if loss == "plain_arcface":
        for i in encoder.tap_blocks[:-1]:
            encoder.norms[f"layer_{i}"].requires_grad_(False)


def dataset_digest(data) -> str:
    """The training set's digest: its `fingerprint` when it has one, else its source, size and labels."""
    fingerprint = getattr(data, "fingerprint", None)
    if fingerprint:
        return str(fingerprint)
    digest = hashlib.sha256(f"{getattr(data, 'source', '')}|{len(data)}|{data.num_classes}".encode())
    digest.update(torch.as_tensor(data.labels, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def architecture_of(encoder: MSIDEncoder) -> str:
    """'width 384, depth 12, heads 12, taps 2,5,8,11'."""
    heads = encoder.blocks[0].attn.num_heads
    taps = ",".join(map(str, encoder.tap_blocks))
    return f"width {encoder.embed_dim}, depth {len(encoder.blocks)}, heads {heads}, taps {taps}"


def to_encoder_input(images: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
    """uint8 [B, 3, H, W] RGB -> float32 in [-1, 1] ((x / 255 - 0.5) / 0.5), mirrored where flip [B] is True."""
    faces = images.float().div(127.5).sub_(1.0)  # out of place first: a float input is never changed
    if flip is not None:
        faces = torch.where(flip[:, None, None, None], faces.flip(-1), faces)
    return faces


class MSIDTrainer:
    """Trains an MSIDEncoder with ArcFace on one rank of `world_size` (DDP for the encoder, sharded centres)."""

    def __init__(
        self,
        encoder: MSIDEncoder,
        data,
        batches: BatchSource,
        settings: MSIDTrainSettings,
        run_dir: Path,
        *,
        init_digest: str,
        device: torch.device | str = "cpu",
        compute_dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if settings.batch_size % world_size:
            raise F2DError(
                f"--batch-size {settings.batch_size} does not split over {world_size} processes: give a multiple "
                f"of {world_size}"
            )
        self.settings, self.data, self.batches = settings, data, batches
        self.run_dir, self.rank, self.world_size = Path(run_dir), rank, world_size
        self.device, self.compute_dtype = torch.device(device), compute_dtype
        self.steps_per_epoch = len(data) // settings.batch_size
        if self.steps_per_epoch < 1:
            raise F2DError(f"{len(data)} images are fewer than one batch of {settings.batch_size}: lower --batch-size")
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.encoder = encoder.to(self.device).train()
        freeze_unused(encoder, settings.loss)
        self.classifier = ShardedMarginSoftmax(
            data.num_classes,
            embedding_width(encoder, settings.loss),
            margin=settings.margin,
            scale=settings.scale,
            sample_rate=settings.partial_fc,
            rank=rank,
            world_size=world_size,
            seed=settings.seed,
        ).to(self.device)
        self.trainable: nn.Module = encoder
        if world_size > 1:
            from .margin_softmax import sum_gradients_hook

            device_ids = None if self.device.type == "cpu" else [self.device.index]
            self.trainable = nn.parallel.DistributedDataParallel(encoder, device_ids=device_ids)
            self.trainable.register_comm_hook(None, sum_gradients_hook)
        self.encoder_params = [p for p in encoder.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            [{"params": self.encoder_params}, {"params": list(self.classifier.parameters())}],
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
        )
        self.identity = MSIDRunIdentity(
            dataset=dataset_digest(data),
            init=init_digest,
            loss=settings.loss_spec(),
            global_batch_size=settings.batch_size,
            seed=settings.seed,
            world_size=world_size,
            architecture=architecture_of(encoder),
        )

    def _agree(self, ok: bool) -> bool:
        """Whether `ok` holds on every rank (an all-reduce of the flag; a barrier that carries a failure)."""
        if self.world_size == 1:
            return ok
        flag = torch.tensor([float(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _save(self, step: int, losses: list[float]) -> None:
        save_run_state(
            self.run_dir,
            step,
            self.encoder,
            self.classifier,
            self.optimizer,
            losses,
            asdict(self.settings),
            self.identity,
            self.rank,
            self._agree,
        )

    def _flips(self, step: int, count: int) -> torch.Tensor | None:
        if not self.settings.flip:
            return None
        generator = torch.Generator().manual_seed((self.settings.seed * 1_000_003 + step) * 4099 + self.rank)
        return (torch.rand(count, generator=generator) < 0.5).to(self.device, non_blocking=True)

    def train_step(self, step: int, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One update at 0-based `step`; the loss (a detached device scalar: no host sync here)."""
        warmup = int(self.settings.warmup_fraction * self.total_steps)
        rate = learning_rate(step, self.total_steps, warmup, self.settings.learning_rate)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        faces = to_encoder_input(images, self._flips(step, len(images)))
        with torch.autocast(self.device.type, self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            embeddings = self.trainable(faces)
        if self.settings.loss == "plain_arcface":
            embeddings = embeddings[:, -self.encoder.embed_dim :]
        loss = self.classifier(embeddings, labels, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.encoder_params, CLIP_GRAD_NORM)
        self.optimizer.step()
        return loss.detach()

    def _check_finite(self, pending: list[torch.Tensor], first_step: int) -> list[float]:
        values = torch.stack(pending).float().cpu().tolist() if pending else []
        for offset, value in enumerate(values):
            if not math.isfinite(value):
                raise F2DError(
                    f"the loss was not finite at step {first_step + offset + 1}: the run diverged. The last saved "
                    f"state in {self.run_dir} is kept; lower --lr or check the data, then run the command again."
                )
        return values

    def run(self, should_stop: Callable[[], bool] | None = None) -> MSIDTrainResult:
        """Train to the end, `max_steps` or a stop request; save every `checkpoint_every` steps and at the end.

        `should_stop` is asked every `stop_check_every` steps (on every rank at the same steps: it may be a
        collective); when it says so, the state is saved and the run ends with status "stopped".

        The caller holds the run folder's lock (f2d_core/run_lock.py: rank 0 of cli/train_msid.py, from its
        start), so that no other live process trains in it.
        """
        settings = self.settings
        saved = load_run_state(self.run_dir, self.encoder, self.classifier, self.optimizer, self.identity, self.rank)
        step, losses = (saved.step, saved.losses) if saved else (0, [])
        last = min(self.total_steps, settings.max_steps or self.total_steps)
        if step >= last:
            log.warning("nothing to train: %s is at step %d of %d", self.run_dir, step, last)
            return MSIDTrainResult(step, self.total_steps, losses, "nothing_to_train", self.identity)
        if self.rank == 0:
            log.info(
                "training steps %d-%d of %d (%d per epoch), %s, on %s in %s",
                step + 1,
                last,
                self.total_steps,
                self.steps_per_epoch,
                settings.loss_spec(),
                self.device,
                dtype_name(self.compute_dtype),
            )
        progress = _Progress(self.rank, step, last, settings.batch_size)
        pending: list[torch.Tensor] = []  # losses not yet read back from the device

        def flush() -> None:
            nonlocal pending
            losses.extend(self._check_finite(pending, step - len(pending)))
            pending = []

        status = "completed" if last == self.total_steps else "stopped"
        while step < last:
            epoch, first = divmod(step, self.steps_per_epoch)
            start = step
            for images, labels in self.batches(epoch, first):
                pending.append(self.train_step(step, images, labels))
                step += 1
                stop = (
                    step < last
                    and should_stop is not None
                    and step % settings.stop_check_every == 0  # the same steps on every rank
                    and should_stop()
                )
                if stop or step == last or step % settings.checkpoint_every == 0:
                    flush()
                    self._save(step, losses)
                if progress.due(step):
                    flush()
                    progress.log(step, losses[-1], self.optimizer.param_groups[0]["lr"])
                if stop:
                    status, last = "stopped", step
                if step == last or step % self.steps_per_epoch == 0:
                    break
            if step == start:
                raise F2DError(f"the loader gave no batch for epoch {epoch + 1} from batch {first}")
        return MSIDTrainResult(step, self.total_steps, losses, status, self.identity)


class _Progress:
    """Logs (rank 0) every LOG_EVERY_SECONDS: step, epoch, loss, rate, images/s and time left."""

    def __init__(self, rank: int, start: int, last: int, batch_size: int) -> None:
        self.rank, self.last, self.batch_size = rank, last, batch_size
        self.t0, self.s0 = time.monotonic(), start
        self.next_log = self.t0  # the first step logs at once

    def due(self, step: int) -> bool:
        return time.monotonic() >= self.next_log or step == self.last

    def log(self, step: int, loss: float, rate: float) -> None:
        now = time.monotonic()
        self.next_log = now + LOG_EVERY_SECONDS
        if self.rank != 0:
            return
        done, elapsed = step - self.s0, max(now - self.t0, 1e-9)
        images_per_s = done * self.batch_size / elapsed
        left = (self.last - step) * elapsed / max(done, 1)
        width = 30
        bar = "#" * int(width * step / self.last) + "." * (width - int(width * step / self.last))
        log.info(
            "[%s] step %d/%d  loss %.4f  lr %.2e  %.1f images/s  %s left",
            bar,
            step,
            self.last,
            loss,
            rate,
            images_per_s,
            _duration(left),
        )


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
