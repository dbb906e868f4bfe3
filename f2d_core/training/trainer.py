"""The CGDR mapper training loop: only the mapper (and null_exp) learns; UNet, text encoder and VAE stay frozen."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..conditioning.injection import DEFAULT_IDENTIFIER
from ..errors import F2DError
from ..identity.mapper import F2DMapper
from ..identity.norm_match import mapper_anchors
from .backend import POOLED_SOURCES, DiffusionBackend, SStar, TextCond
from .data.cache import module_fingerprint
from .losses import LOSSES, anchor_regularisation, denoising_loss, needs_class_prediction
from .precision import LossScale, dtype_name
from .run_identity import RunIdentity, dataset_digest, names_only_dataset_digest
from .size_conditioning import SIZE_CONDITIONINGS, size_ids
from .state_file import STATE_FILE, check_free_disk, load_state, save_state, state_bytes

log = logging.getLogger(__name__)

NUM_TIMESTEPS = 1000
LOG_EVERY_SECONDS = 10.0
EVAL_STEP = 1 << 40  # the fixed evaluation batch is drawn as if at this step


@dataclass
class TrainSettings:
    """The run's hyper-parameters; the paper's values are the defaults (FFHQ, 100K steps at batch 32)."""

    steps: int = 100_000
    batch_size: int = 32
    learning_rate: float = 1e-5
    weight_decay: float = 1e-2
    loss: str = "cgdr"
    expression_dropout: float = 0.2
    shuffle_identities: bool = False
    seed: int = 0
    checkpoint_every: int = 1000
    prompt: str = f"A photo of {DEFAULT_IDENTIFIER}"
    class_prompt: str = "A photo of a person"
    max_bad_steps: int = 10
    max_zero_gradient_steps: int = 10  # stop when the mapper's gradient is exactly zero this many steps in a row
    pooled_source: str = "class_prompt"  # SDXL: pooled vector of the class prompt or of the S* prompt (D5)
    size_conditioning: str = "source"  # SDXL: original size = the face's size in the photo, or the crop's
    micro_batch: int = 0  # samples per forward/backward (gradients accumulated); 0 = the whole batch at once
    anchor_reg: float = 0.0  # SDXL: lambda of the pull of S* towards the mapper's anchors (docs/sdxl.md 2.3)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise F2DError(f"loss must be one of {LOSSES}, not {self.loss!r}")
        if self.pooled_source not in POOLED_SOURCES:
            raise F2DError(f"pooled_source must be one of {POOLED_SOURCES}, not {self.pooled_source!r}")
        if self.size_conditioning not in SIZE_CONDITIONINGS:
            raise F2DError(f"size_conditioning must be one of {SIZE_CONDITIONINGS}, not {self.size_conditioning!r}")
        if self.micro_batch < 0 or (self.micro_batch and self.batch_size % self.micro_batch):
            raise F2DError(
                f"micro_batch {self.micro_batch} must divide the batch of {self.batch_size} samples per process "
                "(0 = the whole batch in one pass)."
            )
        if not (math.isfinite(self.anchor_reg) and self.anchor_reg >= 0):
            raise F2DError(f"anchor_reg must be a finite number >= 0 (0 = off), not {self.anchor_reg}")
        if min(self.steps, self.batch_size, self.checkpoint_every, self.max_zero_gradient_steps) < 1:
            raise F2DError("steps, batch_size, checkpoint_every and max_zero_gradient_steps must be at least 1")
        if not 0 <= self.expression_dropout <= 1:
            raise F2DError(f"expression_dropout must be in [0, 1], not {self.expression_dropout}")


@dataclass
class TrainResult:
    """How a run ended."""

    mapper: F2DMapper
    step: int
    losses: list[float] = field(default_factory=list)
    status: str = "completed"  # completed | interrupted | diverged | zero_gradient | nothing_to_train
    state_path: Path | None = None
    eval_loss_start: float = math.nan  # loss on one fixed batch (samples, noise, timesteps) when this run began
    eval_loss_end: float = math.nan  # ... and when it ended: comparable, unlike the noisy per-step losses
    grad_norms: list[float] = field(default_factory=list)  # the mapper's gradient norm of each step of this session
    identity: RunIdentity | None = None
    message: str = ""  # for the user, when the status is not "completed"


@dataclass
class Batch:
    """One step's samples: what the mapper sees (reference) and what the UNet must denoise (target)."""

    idvec: torch.Tensor  # [B, 1536]
    expression: torch.Tensor | None  # [B, 64]
    keep_expression: torch.Tensor  # [B] 1 = use the expression, 0 = null_exp (dropout)
    latents: torch.Tensor  # [B, 4, h, w]
    masks: torch.Tensor  # [B, 1, h, w]
    size_ids: torch.Tensor  # [B, 6] SDXL size conditioning (size_conditioning.size_ids); unused by SD1

    def __len__(self) -> int:
        return self.latents.shape[0]

    def part(self, rows: slice) -> Batch:
        """The samples `rows` of this batch (a micro-batch)."""
        expression = None if self.expression is None else self.expression[rows]
        return Batch(
            self.idvec[rows],
            expression,
            self.keep_expression[rows],
            self.latents[rows],
            self.masks[rows],
            self.size_ids[rows],
        )


def sample_batch(data, settings: TrainSettings, step: int, rank: int = 0, world_size: int = 1) -> Batch:
    """The samples of `step` for `rank`: a fixed function of (seed, step), so a resumed run sees the same data."""
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    n, views = data.idvec.shape[0], data.idvec.shape[1]
    picks = torch.randint(0, n, (world_size, settings.batch_size), generator=generator)[rank]
    view = torch.randint(0, views, (world_size, settings.batch_size), generator=generator)[rank]
    drop = torch.rand(world_size, settings.batch_size, generator=generator)[rank] < settings.expression_dropout
    targets = picks.tolist()
    refs = [data.reference_index(i, generator) if settings.shuffle_identities else i for i in targets]
    has_expression = data.expression is not None
    crop_size = data.latents.shape[-1] * 8
    source_side = getattr(data, "source_side", None)  # [N, V] photo pixels; sets without it: the crop size
    sides = torch.full((len(targets),), float(crop_size)) if source_side is None else source_side[targets, view]
    return Batch(
        idvec=data.idvec[refs, view],
        expression=data.expression[refs, view] if has_expression else None,
        keep_expression=(~drop).float() if has_expression else torch.zeros(len(refs)),
        latents=data.latents[targets, view].float(),  # stored float16 / uint8 (shared memory map): per batch
        masks=data.masks[targets, view].float(),
        size_ids=size_ids(sides.float(), crop_size, settings.size_conditioning),
    )


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNGs (CPU, and `device`'s when it is a CUDA device) for the block, then put back
    the state they had: modules that draw from them (the mapper's `nn.Dropout`) give the same masks for
    the same seed, whatever ran before in the process (other prompts, other runs), and nothing outside
    the block sees a changed random state. Gradient checkpointing's recomputation restores the RNG
    state of the forward pass itself (torch.utils.checkpoint's preserve_rng_state)."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for index in devices:  # not torch.manual_seed: that would re-seed every GPU, outside the fork too
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


def check_anchors(mapper: nn.Module) -> None:
    """Refuse `anchor_reg` for a mapper without anchors (`identity.norm_match.mapper_anchors` finds none).

    Raises F2DError for an SD1.x mapper (its S* lives in CLIP-L's input space with the position embedding added,
    where no anchor is defined), or an SDXL mapper whose anchors are missing or zero (one made without the
    anchored initialisation, docs/sdxl.md 2.3).
    """
    if mapper_anchors(mapper) is not None:
        return
    if getattr(mapper, "anchor", None) is None:
        raise F2DError(
            "anchor_reg pulls S* towards the anchors an SDXL mapper starts at; "
            "this mapper is for SD1.x and has none. Set anchor_reg to 0 for SD1.x training."
        )
    raise F2DError(
        "anchor_reg pulls S* towards the starting mapper's anchors, and this SDXL mapper records none (its "
        "anchor tensors are zero). Start from scratch (S* then starts at the class noun's word and records "
        "it), or set anchor_reg to 0."
    )


class MapperTrainer:
    """Runs `TrainSettings` on a prepared training set through a frozen diffusion backend."""

    def __init__(
        self,
        mapper: F2DMapper,
        backend: DiffusionBackend,
        data,
        settings: TrainSettings,
        run_dir: Path,
        trainable: nn.Module | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.mapper, self.backend, self.data, self.settings = mapper, backend, data, settings
        self.trainable = trainable or mapper  # a DistributedDataParallel wrapper under torchrun
        self.run_dir, self.rank, self.world_size = Path(run_dir), rank, world_size
        self._last_log: float | None = None  # when progress was last logged, and at which step
        self._last_step = 0
        self.optimizer = torch.optim.AdamW(
            mapper.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.training_dtype: torch.dtype = getattr(backend, "training_dtype", torch.float32)
        self.loss_scale = LossScale(enabled=self.training_dtype == torch.float16)
        self.identity: RunIdentity | None = None  # set when `run` starts, from the mapper it was given
        if settings.anchor_reg:
            check_anchors(mapper)  # refused now, before any step, when the mapper has none

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def _save(self, step: int, losses: list[float]) -> None:
        if self.rank == 0:
            save_state(
                self.state_path,
                self.mapper,
                self.optimizer,
                step,
                losses,
                asdict(self.settings),
                self.identity,
                self.loss_scale,
            )

    @property
    def family(self) -> str:
        return getattr(self.backend, "family", "sd1")

    def _s_star(self, batch: Batch, dropout_seeds: list[int]) -> SStar:
        """S* of each sample, the mapper run per sample with its dropout drawn from its own seed.

        The global RNG is seeded with the sample's seed (and restored after), so a step is a function of
        (seed, step, rank): a resumed run, the node and the CLI repeat it, and a sample's dropout mask does
        not depend on the micro-batch it falls in (micro-batching gives the whole batch's update).
        """
        device = self.backend.device
        words = []
        for i, seed in enumerate(dropout_seeds):
            with seeded_global_rng(seed, device):
                words.append(
                    self.trainable(
                        batch.idvec[i : i + 1].to(device),
                        None if batch.expression is None else batch.expression[i : i + 1].to(device),
                        batch.keep_expression[i : i + 1].to(device),
                    )
                )
        if isinstance(words[0], torch.Tensor):
            return torch.cat(words)
        return {t: torch.cat([w[t] for w in words]) for t in words[0]}

    def _identity_cond(self, s_star: SStar, class_cond: TextCond) -> TextCond:
        """The S* prompt's conditioning; gradients reach the mapper through the text encoder."""
        from_identity = self.settings.pooled_source == "identity_prompt"
        cond = self.backend.text_context(self.settings.prompt, s_star, pooled=from_identity)
        if class_cond.pooled is not None and not from_identity:  # SDXL, D5: y from the class prompt, no gradient
            cond = cond.with_pooled(class_cond.pooled.expand(cond.context.shape[0], -1))
        return cond

    def _chunk_loss(
        self,
        batch: Batch,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        class_cond: TextCond,
        dropout_seeds: list[int],
    ) -> torch.Tensor:
        """The loss of one micro-batch (a mean over its samples), with the anchor term when anchor_reg > 0."""
        device = self.backend.device
        s_star = self._s_star(batch, dropout_seeds)
        cond = self._identity_cond(s_star, class_cond)
        latents, timesteps = batch.latents.to(device), timesteps.to(device)
        noisy = self.backend.noisy_latents(latents, noise.to(device), timesteps)
        sizes = batch.size_ids.to(device)
        eps_class = None
        if needs_class_prediction(self.settings.loss):
            with torch.no_grad():
                eps_class = self.backend.predict_noise(noisy, timesteps, class_cond.expand(len(batch)), sizes)
        eps_hat = self.backend.predict_noise(noisy, timesteps, cond, sizes)
        loss = denoising_loss(self.settings.loss, eps_hat, noise.to(device), batch.masks.to(device), eps_class)
        if self.settings.anchor_reg:
            loss = loss + self.settings.anchor_reg * anchor_regularisation(
                s_star, dict(self.mapper.anchor.named_buffers())
            )
        return loss

    def micro_batches(self, size: int) -> list[slice]:
        """The rows of each micro-batch of a batch of `size` samples (one slice without micro-batching)."""
        step = self.settings.micro_batch or size
        return [slice(i, min(i + step, size)) for i in range(0, size, step)]

    def step_loss(
        self, batch: Batch, class_cond: TextCond, generator: torch.Generator, backward: bool = False
    ) -> torch.Tensor:
        """Loss of one batch (detached); with `backward`, its gradient accumulated into the mapper.

        Noise, timesteps and each sample's dropout seed are drawn for the whole batch first, then sliced into
        micro-batches, so
        the loss and the gradient are the whole batch's up to the order of the sums (docs/sdxl.md 3.2):
        each micro-batch's mean loss is weighted by its share of the batch. Under DDP, only the last
        micro-batch's backward all-reduces the gradients: the others run forward and backward inside
        `no_sync()`, since DDP decides at the forward whether the next backward synchronizes (PyTorch's
        `DistributedDataParallel.no_sync`: "The forward pass should be included inside the context manager").
        The backward runs under `self.loss_scale`.
        """
        noise = torch.randn(batch.latents.shape, generator=generator)
        timesteps = torch.randint(0, NUM_TIMESTEPS, (len(batch),), generator=generator)
        dropout_seeds = torch.randint(0, 2**62, (len(batch),), generator=generator).tolist()  # one per sample
        parts = self.micro_batches(len(batch))
        total = torch.zeros((), device=self.backend.device)
        no_sync = getattr(self.trainable, "no_sync", None)
        for i, rows in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if not backward or last or no_sync is None else no_sync():
                loss = self._chunk_loss(batch.part(rows), noise[rows], timesteps[rows], class_cond, dropout_seeds[rows])
                if len(parts) > 1:
                    loss = loss * ((rows.stop - rows.start) / len(batch))
                if backward:
                    self.loss_scale.scaled(loss).backward()
            total = total + loss.detach()
        return total

    def _log_progress(self, step: int, loss: float, grad_norm: float) -> None:
        """Log the first step, then at most every LOG_EVERY_SECONDS, and the last (rank 0 only)."""
        now = time.monotonic()
        first = self._last_log is None
        if self.rank == 0 and (first or now - self._last_log >= LOG_EVERY_SECONDS or step == self.settings.steps):
            rate = "" if first else f", {(step - self._last_step) / (now - self._last_log):.2f} steps/s"
            log.info("step %d/%d: loss %.5f, grad norm %.3g%s", step, self.settings.steps, loss, grad_norm, rate)
            self._last_log, self._last_step = now, step

    def evaluate(self, class_context: TextCond) -> float:
        """Loss of the fixed evaluation batch (no expression dropout, mapper in eval mode, no gradients)."""
        batch = sample_batch(self.data, replace(self.settings, expression_dropout=0.0), EVAL_STEP)
        was_training = self.mapper.training
        self.mapper.eval()
        with torch.no_grad():
            loss = self.step_loss(batch, class_context, torch.Generator().manual_seed(self.settings.seed + 424_242))
        self.mapper.train(was_training)
        return loss.item()

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank: under DDP all ranks must skip a step together."""
        finite = torch.tensor(float(math.isfinite(loss.item())), device=loss.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def gradients(self, step: int, class_context: TextCond) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Loss of `step`'s batch and the mapper's gradient norm (None when the loss is not finite on some rank).

        The backward runs in the backend's training dtype, one micro-batch at a time; in fp16 under
        `self.loss_scale`, and the gradients left in the mapper's (fp32) parameters are unscaled.
        """
        batch = sample_batch(self.data, self.settings, step, self.rank, self.world_size)
        step_seed = self.settings.seed * 7_919 + step * 101 + self.rank
        generator = torch.Generator().manual_seed(step_seed)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.step_loss(batch, class_context, generator, backward=True)
        if not self._finite_everywhere(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return loss, None
        self.loss_scale.unscale_(self.mapper.parameters())
        return loss, torch.nn.utils.clip_grad_norm_(self.mapper.parameters(), float("inf"))

    def _train_step(self, step: int, class_context: TextCond) -> tuple[float, float] | None:
        """One optimizer step: (loss, gradient norm); None (and no update) when the loss or gradient is not finite."""
        loss, grad_norm = self.gradients(step, class_context)
        if grad_norm is None:
            log.warning("step %d: the loss is not finite (here: %s); step skipped", step + 1, loss.item())
            return None
        finite = bool(torch.isfinite(grad_norm))
        self.loss_scale.update(finite)
        if not finite:
            if self.loss_scale.enabled and self.loss_scale.scale >= 1:
                log.info("step %d: fp16 gradient overflow; skipped, loss scale now %g", step + 1, self.loss_scale.scale)
                return loss.item(), math.nan  # not a bad step: the scale adapts
            log.warning("step %d: the gradient is not finite; step skipped", step + 1)
            return None
        self.optimizer.step()
        return loss.item(), grad_norm.item()

    def _note_changed_hyper_parameters(self, saved: dict[str, object]) -> None:
        """Log each hyper-parameter that differs from the saved run's: the current value is the one used."""
        current = asdict(self.settings)
        for key in sorted(set(current) - {"steps", "loss", "batch_size", "seed"}):
            if key in saved and saved[key] != current[key]:
                log.info("%s: %s (the saved run used %s); the new value is used", key, current[key], saved[key])

    def _run_identity(self, digest=dataset_digest) -> RunIdentity:
        return RunIdentity(
            dataset=digest(self.data),
            start_mapper=module_fingerprint(self.mapper),
            loss=self.settings.loss,
            global_batch_size=self.settings.batch_size * self.world_size,
            seed=self.settings.seed,
            world_size=self.world_size,
            family=self.family,
            pooled_source=self.settings.pooled_source if self.family == "sdxl" else "",
        )

    def run(
        self,
        resume: bool = True,
        progress: Callable[[int, int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        """Train until `settings.steps`, saving every `checkpoint_every` steps, when stopped, and on any error.

        The caller holds the run folder's lock (f2d_core/run_lock.py: the node, or rank 0 of the CLI from
        its start), so that no other live process trains in it.
        """
        settings = self.settings
        check_free_disk(self.run_dir, 2 * state_bytes(self.mapper) + (64 << 20))
        self.identity = self._run_identity()
        step, losses = 0, []
        if resume and self.state_path.exists():
            names_only = self._run_identity(names_only_dataset_digest)
            point = load_state(self.state_path, self.mapper, self.optimizer, self.identity, names_only)
            step, losses = point.step, point.losses
            if point.loss_scale is not None:
                self.loss_scale.load_state_dict(point.loss_scale)
            self._note_changed_hyper_parameters(point.settings)
        if step >= settings.steps:
            message = (
                f"Nothing to train: the run in {self.run_dir} is already at step {step} of {settings.steps}. "
                "Raise steps to train on, or choose a new run name."
            )
            log.warning("%s", message)
            self.mapper.eval()
            return TrainResult(
                self.mapper, step, losses, "nothing_to_train", self.state_path, identity=self.identity, message=message
            )
        if self.rank == 0:
            scale = f" under a loss scale of {self.loss_scale.scale:g}" if self.loss_scale.enabled else ""
            log.info("training in %s%s on %s", dtype_name(self.training_dtype), scale, self.backend.device)
        self.mapper.train()
        with torch.no_grad():  # the class prompt: CGDR's class branch, and SDXL's pooled vector (D5)
            class_context = self.backend.text_context(settings.class_prompt, pooled=True).detach()
        eval_start = self.evaluate(class_context)
        bad_steps, zero_steps, status, grad_norms = 0, 0, "completed", []
        try:
            while step < settings.steps:
                if should_stop is not None and should_stop():
                    status = "interrupted"
                    break
                outcome = self._train_step(step, class_context)
                step += 1
                trained = outcome is not None and not math.isnan(outcome[1])  # nan: an fp16 overflow, scale halved
                if outcome is None:
                    bad_steps += 1
                    if bad_steps >= settings.max_bad_steps:
                        status = "diverged"
                        break
                elif trained:
                    loss, grad_norm = outcome
                    bad_steps = 0
                    zero_steps = zero_steps + 1 if grad_norm == 0 else 0
                    if zero_steps >= settings.max_zero_gradient_steps:
                        status = "zero_gradient"
                        break
                    losses.append(loss)
                    grad_norms.append(grad_norm)
                    self._log_progress(step, loss, grad_norm)
                if step % settings.checkpoint_every == 0:  # a skipped step leaves the mapper as it was: saved too
                    self._save(step, losses)
                if trained and progress is not None:
                    progress(step, settings.steps, loss, grad_norm)  # may raise (ComfyUI's interrupt): saved below
        except BaseException:
            log.info("Training stopped by an exception at step %d; saving the state first.", step)
            try:
                self._save(step, losses)
            except F2DError as failed:  # e.g. the disk is full: the original exception is the one to raise
                log.error("%s", failed)
            raise
        self.mapper.eval()
        message = ""
        if status == "diverged":
            message = f"the loss or its gradient was not finite {bad_steps} times in a row"
            log.error("Stopped: %s; the last saved state is kept.", message)
        elif status == "zero_gradient":
            message = (
                f"the mapper's gradient was exactly zero {zero_steps} steps in a row "
                f"(training in {dtype_name(self.training_dtype)}): it cannot learn"
            )
            log.error("Stopped: %s; the last saved state is kept.", message)
        else:
            self._save(step, losses)
        eval_end = self.evaluate(class_context)
        log.info("fixed-batch loss: %.5f at the start of this run, %.5f at step %d", eval_start, eval_end, step)
        state = self.state_path if self.state_path.exists() else None
        return TrainResult(
            self.mapper, step, losses, status, state, eval_start, eval_end, grad_norms, self.identity, message
        )
