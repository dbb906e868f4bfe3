"""Train F2D Mapper: CGDR training of the mapper inside ComfyUI's executor, resumable and interruptible."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io
from server import PromptServer

from ...f2d_core.errors import F2DError
from ...f2d_core.run_lock import run_lock
from ...f2d_core.training.backend import POOLED_SOURCES
from ...f2d_core.training.data.cache import module_fingerprint
from ...f2d_core.training.losses import LOSSES
from ...f2d_core.training.precision import TRAINING_DTYPES
from ...f2d_core.training.size_conditioning import SIZE_CONDITIONINGS
from ...f2d_core.training.trainer import MapperTrainer, TrainSettings
from ..model_paths import training_run_dir
from ..out_of_memory import OUT_OF_MEMORY, released_out_of_memory
from ..out_of_memory import summary as memory_error_summary
from ..sockets import F2DDatasetSocket, F2DModel, F2DModelSocket, F2DTrainedMapperSocket, TrainedMapper
from .comfy_backend import computation_record
from .comfy_backend_sdxl import make_backend
from .options_node import F2DTrainingOptionsSocket, TrainingOptions
from .starting_mapper import START_FROM, starting_mapper

log = logging.getLogger(__name__)

PROGRESS_EVENT = "f2d.training.progress"
SDXL_SMALL_CROP = 768  # an SDXL run on smaller crops is warned: SDXL generates at 1024 (docs/sdxl.md 3.4)
WRITER = "Train F2D Mapper (ComfyUI)"  # who holds the run's lock, in the other writer's message


def check_dataset_vae(dataset, vae) -> None:
    """F2DError when the training set's latents were made by another VAE than `vae` (another base model's)."""
    key = dataset.settings.get("latent_key")
    if vae is None or key is None:
        return
    ours = f"vae:{module_fingerprint(vae.first_stage_model)}"
    if key != ours:
        raise F2DError(
            f"This training set was made with another VAE ({key[:16]}...) than the one given ({ours[:16]}...): a "
            "dataset made for another base model (SD1.x latents for SDXL or the reverse) teaches the mapper "
            "nothing. Connect the same checkpoint's VAE to F2D Training Dataset and prepare the set again."
        )


class _Reporter:
    """Progress bar plus a throttled loss event for the graph's live loss plot (js/f2d_training_loss.js)."""

    def __init__(self, node_id: str | None, total: int) -> None:
        self.node_id, self.bar, self.last = node_id, comfy.utils.ProgressBar(total), 0.0

    def __call__(self, step: int, total: int, loss: float, grad_norm: float) -> None:
        self.bar.update_absolute(step, total)
        now = time.monotonic()
        if self.node_id is not None and (now - self.last > 0.25 or step == total):
            self.last = now
            PromptServer.instance.send_sync(
                PROGRESS_EVENT,
                {"node": self.node_id, "step": step, "total": total, "loss": loss, "grad_norm": grad_norm},
            )


class F2DTrainMapper(io.ComfyNode):
    """Train F2D Mapper."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DTrainMapper",
            display_name="Train F2D Mapper",
            category="face2diffusion/training",
            description="Trains the mapper (identity -> S*) with the paper's class-guided denoising "
            "regularization; the UNet, text encoder and VAE stay frozen. Saves a resumable state every "
            "checkpoint_every steps in output/face2diffusion_training/<run_name>; interrupting saves too.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The SD1.x (SD1.4 in the paper) or SDXL base model to train the mapper for."
                ),
                io.Clip.Input("clip", tooltip="Its CLIP."),
                F2DDatasetSocket.Input("dataset", tooltip="From F2D Training Dataset."),
                F2DModelSocket.Input("f2d_model", tooltip="Gives the starting mapper."),
                io.Combo.Input(
                    "start_from",
                    options=list(START_FROM),
                    tooltip="Fine-tune the loaded mapper (e.g. the official mapping.pt) or train from scratch. SDXL: "
                    "from scratch, S* starts at the class noun's word in each text encoder; the third choice also "
                    "starts the CLIP-L head from a loaded SD1.x mapper.",
                ),
                io.Int.Input("steps", default=1000, min=1, max=10_000_000, tooltip="Total steps (paper: 100,000)."),
                io.Int.Input("batch_size", default=8, min=1, max=256, tooltip="Photos per step (paper: 32)."),
                io.Float.Input(
                    "learning_rate",
                    default=1e-5,
                    min=1e-8,
                    max=1e-2,
                    step=1e-6,
                    round=1e-8,
                    tooltip="AdamW learning rate (paper: 1e-5).",
                ),
                io.Combo.Input(
                    "loss",
                    options=list(LOSSES),
                    tooltip="cgdr (the paper's): face reconstructed, the rest pulled towards 'a photo of a "
                    "person'; reconstruction and masked_reconstruction are the baselines it is compared with.",
                ),
                io.Float.Input(
                    "expression_dropout",
                    default=0.2,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Probability of training with null_exp instead of the photo's expression (paper: 0.2).",
                ),
                io.Boolean.Input(
                    "shuffle_identities",
                    default=False,
                    tooltip="Encode another photo of the same person than the one denoised (needs one subfolder "
                    "per person): FaceChain-FACT's shuffle against copying the photo.",
                ),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seeds batches, noise and timesteps."),
                io.Int.Input(
                    "checkpoint_every",
                    default=500,
                    min=1,
                    max=1_000_000,
                    tooltip="Save the resumable state every N steps.",
                ),
                io.String.Input("run_name", default="f2d_mapper", tooltip="Run folder; the same name resumes a run."),
                io.Boolean.Input("resume", default=True, tooltip="Continue from the run's last saved state."),
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=True,
                    tooltip="Recompute UNet activations in backward: far less memory (batch 8 on 12 GB), ~30% slower.",
                ),
                io.Combo.Input(
                    "training_dtype",
                    options=list(TRAINING_DTYPES),
                    default="auto",
                    optional=True,
                    tooltip="What the UNet computes the gradient in. auto: bf16 where the GPU has it, else fp32. "
                    "ComfyUI's fp16 UNet is never used as is: its gradient underflows to zero; 'fp16 + loss "
                    "scaling' keeps fp16 and scales the loss instead.",
                ),
                io.Int.Input(
                    "micro_batch",
                    default=0,
                    min=0,
                    max=256,
                    optional=True,
                    tooltip="Photos per forward/backward pass, gradients summed over the batch (0 = the whole "
                    "batch at once). Same update, less memory, no extra compute: lower it before turning on "
                    "gradient checkpointing (SDXL at 1024: 4 to 8 on 24 GB).",
                ),
                io.Combo.Input(
                    "pooled_source",
                    options=list(POOLED_SOURCES),
                    default="class_prompt",
                    optional=True,
                    tooltip="SDXL only: the pooled text vector comes from 'A photo of a person' (identity only "
                    "through the words) or from the prompt with S* (ComfyUI's plain behaviour). Saved with the "
                    "mapper; Apply F2D Tokens follows it.",
                ),
                io.Combo.Input(
                    "size_conditioning",
                    options=list(SIZE_CONDITIONINGS),
                    default="source",
                    optional=True,
                    tooltip="SDXL only: 'source' tells the UNet each face's size in its photo (a small face is "
                    "labelled low resolution); 'target' says every crop is sharp at the crop size.",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="The model's VAE: when given, a training set made with another VAE (another base "
                    "model) is refused.",
                ),
                F2DTrainingOptionsSocket.Input(
                    "options",
                    optional=True,
                    tooltip="From F2D Training Options: anchor_reg (SDXL) and checkpoint_granularity.",
                ),
            ],
            outputs=[F2DTrainedMapperSocket.Output(display_name="trained_mapper")],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # training writes its resumable state even when nothing consumes the mapper
        )

    @classmethod
    def execute(
        cls,
        model,
        clip,
        dataset,
        f2d_model: F2DModel,
        start_from: str,
        steps: int,
        batch_size: int,
        learning_rate: float,
        loss: str,
        expression_dropout: float,
        shuffle_identities: bool,
        seed: int,
        checkpoint_every: int,
        run_name: str,
        resume: bool,
        gradient_checkpointing: bool,
        training_dtype: str = "auto",
        micro_batch: int = 0,
        pooled_source: str = "class_prompt",
        size_conditioning: str = "source",
        vae=None,
        options: TrainingOptions | None = None,
    ) -> io.NodeOutput:
        check_dataset_vae(dataset, vae)
        options = options or TrainingOptions()
        if options.checkpoint_granularity != TrainingOptions.checkpoint_granularity and not gradient_checkpointing:
            log.warning(
                "checkpoint_granularity %s (F2D Training Options) does nothing with gradient_checkpointing off",
                options.checkpoint_granularity,
            )
        settings = TrainSettings(
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            loss=loss,
            expression_dropout=expression_dropout,
            shuffle_identities=shuffle_identities,
            seed=seed,
            checkpoint_every=checkpoint_every,
            micro_batch=micro_batch,
            pooled_source=pooled_source,
            size_conditioning=size_conditioning,
            anchor_reg=options.anchor_reg,
        )
        run_dir = training_run_dir(run_name)
        note = dataset.shuffle_note() if shuffle_identities else ""
        if note:
            log.warning("%s", note)  # now, in the console; and under the node when training ends
        backend = trainer = None
        out_of_memory = None
        try:
            with torch.inference_mode(False), run_lock(run_dir, WRITER):  # RunLocked: the CLI or another server
                backend = make_backend(
                    model,
                    clip,
                    gradient_checkpointing=gradient_checkpointing,
                    checkpoint_granularity=options.checkpoint_granularity,
                    training_dtype=training_dtype,
                )
                computation = computation_record(backend)
                dtype = computation["training_dtype"]
                source = f2d_model.encoder.mapper
                mapper = starting_mapper(backend, source, start_from, seed, pooled_source, settings.class_prompt)
                mapper = mapper.to(backend.device)
                crop = dataset.latents.shape[-1] * 8
                if backend.family == "sdxl" and crop < SDXL_SMALL_CROP:
                    log.warning(
                        "SDXL mapper trained on %d-pixel crops: SDXL generates at 1024 (use 768 or 1024).", crop
                    )
                trainer = MapperTrainer(mapper, backend, dataset, settings, run_dir)
                result = trainer.run(
                    resume=resume,
                    progress=_Reporter(cls.hidden.unique_id, steps),
                    should_stop=comfy.model_management.processing_interrupted,
                )
            backend_family = backend.family
        except OUT_OF_MEMORY as e:  # let its frames (the training copies) go before anything else
            out_of_memory = memory_error_summary(e)
        finally:
            # The private UNet / text encoder copies: freed here (no reference cycles), also when training
            # raised, so the rest of the graph has the memory back.
            del backend, trainer
            comfy.model_management.soft_empty_cache()
        if out_of_memory is not None:
            raise released_out_of_memory(
                "Train F2D Mapper",
                out_of_memory,
                "Lower batch_size, turn gradient_checkpointing on, or choose training_dtype bf16 (the state saved "
                "so far is kept: resume continues from it).",
            )
        if result.status == "interrupted":
            log.info("Training interrupted at step %d; state saved in %s", result.step, run_dir)
            comfy.model_management.throw_exception_if_processing_interrupted()
        if result.status == "diverged":
            raise F2DError(
                f"Training stopped at step {result.step}: {result.message} (lower learning_rate, or check the "
                f"dataset). The last good state is in {run_dir}; a lower learning_rate is used when you resume."
            )
        if result.status == "zero_gradient":
            raise F2DError(
                f"Training stopped at step {result.step}: {result.message}. Choose training_dtype fp32 (or bf16 on "
                f"a GPU that has it), and check that the dataset's face masks are not empty. The last good state "
                f"is in {run_dir}."
            )
        trained = TrainedMapper(
            mapper=result.mapper.cpu().eval(),
            step=result.step,
            losses=result.losses,
            settings={
                **asdict(settings),
                "start_from": start_from,
                "run_dir": str(run_dir),
                "eval_loss_start": result.eval_loss_start,
                "eval_loss_end": result.eval_loss_end,
                **computation,
                "family": backend_family,
                "run_identity": asdict(result.identity) if result.identity else None,
                **dataset.settings,
            },
            dataset_report=dataset.report.summary(),
        )
        summary = _summary(result, dtype) + (f"\n{note}" if note else "")
        return io.NodeOutput(trained, ui={"text": [summary]})


def _summary(result, dtype: str) -> str:
    """One line for the node: where the run stands, its last loss and gradient norm."""
    if result.status == "nothing_to_train":
        return result.message
    if not result.losses:
        return f"step {result.step}: no step trained ({dtype})"
    norm = f", grad norm {result.grad_norms[-1]:.3g}" if result.grad_norms else ""
    return f"step {result.step}: loss {result.losses[-1]:.5f}{norm} ({dtype})"
