"""Train the F2D mapper outside the server: ComfyUI as a library, one process, or one per GPU through torchrun.

    cd ~/ComfyUI/custom_nodes/comfyui-face2diffusion   # or any folder: give the script's full path
    M=~/ComfyUI/models
    python cli/train_mapper.py --comfyui ~/ComfyUI --checkpoint $M/checkpoints/v1-5-pruned-emaonly.safetensors \\
        --msid $M/face2diffusion/msid.pt --mapper $M/face2diffusion/mapping.pt \\
        --insightface-root $M/insightface --pack buffalo_l --folder ~/faces \\
        --face-parser $M/face2diffusion/79999_iter.pth --expression-model $M/face2diffusion/epoch_20.pth \\
        --steps 100000 --batch-size 32 --lr 1e-5 --run-dir ~/f2d_runs/ffhq --out $M/face2diffusion/ffhq.safetensors
    torchrun --nproc_per_node 4 cli/train_mapper.py ...same arguments...   # DDP: 8 photos per GPU

File paths are read relative to the folder the command runs in (as any command's); the script finds
the node pack and ComfyUI itself, so it runs from any folder.

`--batch-size` is the global batch: each of the N ranks takes batch/N samples of every step and DDP
averages the gradients, so one update is the same as a single process's at the full batch. The
trainer, the losses and the diffusion backend are the ones the Train F2D Mapper node runs
(`nodes.training.comfy_backend` on ComfyUI's own checkpoint loader). Every rank prepares its share
of the photos (cached in `--cache-dir`) with its own GPU, the ranks wait for each other through
torchrun's store without a timeout (see rank_sync.py), rank 0 packs the set into one file that all
ranks memory-map, and only then is the process group (and its `--dist-timeout`) started. Before all that,
rank 0 takes `--run-dir`'s lock (run.lock): a run folder another training holds stops every rank at once
with its message. Only rank 0 writes the resumable state in `--run-dir` and the final `--out`; running
the same command again continues from the saved state (the same dataset, starting mapper, loss, batch,
seed and number of processes; a changed --lr or --weight-decay is used). Ctrl-C (SIGINT) or SIGTERM saves the state and
exits with 130. The UNet computes the gradient in --training-dtype (auto: bf16 where the GPU has it,
else fp32; fp16 only under a loss scale), never in a plain fp16 backward, where it underflows.

SDXL: give an SDXL base checkpoint; the family is read from it (docs/training.md, "SDXL"). The crop
size defaults to 1024 (512 for SD1.x); start from an SDXL mapper (--mapper), from scratch (S* starts
at the class noun's word in each text encoder), or with --init-l-from mapping.pt (the official SD1
mapper's CLIP-L head). --micro-batch splits each rank's batch into passes whose gradients add up to
the batch's (less memory, no extra compute: use it before --gradient-checkpointing, and
--checkpoint-granularity transformer_block after that). --anchor-reg pulls S* towards the words it
started at (docs/sdxl.md 2.3); it is recorded with the run and in the mapper's metadata.

    python cli/train_mapper.py --checkpoint $M/checkpoints/sd_xl_base_1.0.safetensors --from-scratch \
        --micro-batch 4 --batch-size 32 ...the other arguments as above...
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

if __package__:
    from .comfy_library import PACK_NAME, ComfyLibraryError, bootstrap, pack_module
    from .help_format import DefaultsHelp
    from .rank_sync import RankFailed, RankSync, rank_0_holds, rendezvous_store
else:  # run as a script: cli/ is sys.path[0] (comfy_library takes it off before importing ComfyUI)
    from comfy_library import PACK_NAME, ComfyLibraryError, bootstrap, pack_module
    from help_format import DefaultsHelp
    from rank_sync import RankFailed, RankSync, rank_0_holds, rendezvous_store

log = logging.getLogger("f2d.train_mapper")

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
WRITER = "cli/train_mapper.py"  # who holds the run's lock, in the other writer's message
TRAINING_DTYPE_FLAGS = {"auto": "auto", "bf16": "bf16", "fp32": "fp32", "fp16": "fp16 + loss scaling"}
EXAMPLE = """example (in the ComfyUI folder):
  M=models
  python custom_nodes/comfyui-face2diffusion/cli/train_mapper.py --comfyui . \\
      --checkpoint $M/checkpoints/v1-5-pruned-emaonly.safetensors \\
      --msid $M/face2diffusion/msid.pt --mapper $M/face2diffusion/mapping.pt \\
      --insightface-root $M/insightface --folder ~/faces \\
      --run-dir ~/f2d_runs/mine --out $M/face2diffusion/mine.safetensors
  # the same arguments on 4 GPUs of one machine (--batch-size is split across them):
  torchrun --nproc_per_node 4 custom_nodes/comfyui-face2diffusion/cli/train_mapper.py --comfyui . ...
"""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the run: rank, world size, the device it trains on, torchrun's store."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    store: dist.Store | None = None  # the rendezvous store (several ranks only): the process group starts later

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description="Train the Face2Diffusion mapper with CGDR (one or many GPUs, or CPU).",
        formatter_class=DefaultsHelp,
        epilog=EXAMPLE,
    )
    p.add_argument("--comfyui", help="ComfyUI checkout (default: $COMFYUI_PATH).")
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="SD1.x or SDXL base checkpoint file to train for: a .safetensors (a .ckpt is a pickle file, read only "
        "under torch >= 2.10, the rule the pack keeps for its own .pt files).",
    )
    p.add_argument(
        "--te-model-options",
        help="JSON passed to ComfyUI's checkpoint loader as te_model_options (for tests and odd checkpoints, "
        "e.g. text encoders of another depth); a path to a .json file works too.",
    )
    p.add_argument("--msid", type=Path, required=True, help="MSID encoder: msid.pt or a combined .safetensors.")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--mapper", type=Path, help="Starting mapper: mapping.pt or a trained .safetensors.")
    start.add_argument("--from-scratch", action="store_true", help="Start from a freshly initialised mapper.")
    start.add_argument(
        "--init-l-from",
        type=Path,
        help="SDXL: start from scratch, with the CLIP-L head copied from this SD1.x mapper (mapping.pt).",
    )
    p.add_argument("--insightface-root", type=Path, required=True, help="Folder holding models/<pack>/.")
    p.add_argument("--pack", default="buffalo_l", help="insightface pack that finds the faces.")
    p.add_argument("--det-size", type=int, default=640, help="Face detector input size.")
    p.add_argument("--folder", type=Path, required=True, help="Face photos: directly, or one subfolder per person.")
    p.add_argument("--face-parser", type=Path, help="BiSeNet 79999_iter.pth for the face mask (else an ellipse).")
    p.add_argument("--expression-model", type=Path, help="Deep3DFaceRecon epoch_20.pth (else null_exp only).")
    p.add_argument(
        "--crop-size", type=int, help="Training crop size (default: 512 for SD1.x as the paper, 1024 for SDXL)."
    )
    p.add_argument("--no-flip", action="store_true", help="Do not add mirrored views.")
    p.add_argument("--cache-dir", type=Path, help="Prepared-photo cache (default: RUN_DIR/dataset_cache).")
    p.add_argument("--steps", type=int, default=100_000, help="Total steps (paper: 100,000).")
    p.add_argument("--batch-size", type=int, default=32, help="Global batch, split across ranks (paper: 32).")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (paper: 1e-5).")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay.")
    p.add_argument("--loss", default="cgdr", help="cgdr | reconstruction | masked_reconstruction.")
    p.add_argument("--expression-dropout", type=float, default=0.2, help="P(null_exp instead of the expression).")
    p.add_argument("--shuffle-identities", action="store_true", help="Encode another photo of the same person.")
    p.add_argument("--seed", type=int, default=0, help="Seeds batches, noise, timesteps and a scratch mapper.")
    p.add_argument("--checkpoint-every", type=int, default=1000, help="Save the resumable state every N steps.")
    p.add_argument("--max-bad-steps", type=int, default=10, help="Stop after this many non-finite losses in a row.")
    p.add_argument(
        "--max-zero-gradient-steps", type=int, default=10, help="Stop after this many exactly-zero gradients in a row."
    )
    p.add_argument(
        "--training-dtype",
        choices=list(TRAINING_DTYPE_FLAGS),
        default="auto",
        help="What the UNet computes the gradient in: auto = bf16 where the GPU has it, else fp32; fp16 = under a "
        "dynamic loss scale.",
    )
    p.add_argument("--micro-batch", type=int, default=0, help="Samples per pass of each rank (0 = its whole batch).")
    p.add_argument(
        "--pooled-source",
        choices=["class_prompt", "identity_prompt"],
        default="class_prompt",
        help="SDXL: the pooled text vector from 'A photo of a person' or from the prompt with S*.",
    )
    p.add_argument(
        "--size-conditioning",
        choices=["source", "target"],
        default="source",
        help="SDXL: original size = the face's size in its photo (source) or the crop size (target).",
    )
    p.add_argument(
        "--anchor-reg",
        type=float,
        default=0.0,
        help="SDXL: adds anchor_reg * mean ||S* - anchor||^2 to the loss, pulling S* towards the words it started "
        "at (Cross-Initialization's regulariser; 0 = off). Needs a mapper with anchors (--from-scratch, or an SDXL "
        "mapper trained from scratch).",
    )
    p.add_argument("--run-dir", type=Path, required=True, help="Resumable state; an existing one is continued.")
    p.add_argument("--out", type=Path, required=True, help="The trained mapper (.safetensors).")
    p.add_argument("--gradient-checkpointing", action="store_true", help="Recompute UNet activations (less memory).")
    p.add_argument(
        "--checkpoint-granularity",
        choices=["block", "transformer_block"],
        help="With --gradient-checkpointing: recompute each ResBlock and whole SpatialTransformer (block, the "
        "default) or each transformer block inside them (transformer_block: a smaller peak, for SDXL at 1024).",
    )
    p.add_argument("--cpu", action="store_true", help="Train on the CPU (automatic without CUDA).")
    p.add_argument(
        "--dist-timeout",
        type=float,
        help="Seconds a DDP collective may wait during training (default: torch's; preparing the photos "
        "happens before the process group starts and has no timeout).",
    )
    args = p.parse_args(argv)
    if args.checkpoint_granularity and not args.gradient_checkpointing:
        p.error("--checkpoint-granularity goes with --gradient-checkpointing (without it nothing is recomputed)")
    return args


def setup_logging(rank: int, world_size: int) -> None:
    """Plain lines on stderr; ranks other than 0 show only warnings and this tool's own lines."""
    prefix = f"[rank {rank}] " if world_size > 1 else ""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"{prefix}%(message)s")
    log.setLevel(logging.INFO)


def start_ranks(cpu: bool) -> Ranks:
    """Meet the other ranks in torchrun's rendezvous store, or be the only rank; no process group yet."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if not cpu:
        torch.cuda.set_device(local_rank)  # before ComfyUI's model_management picks its device
        device = torch.device("cuda", local_rank)
    store = None
    if world_size > 1:
        store, rank, world_size = rendezvous_store()
    return Ranks(rank, world_size, local_rank, device, store)


def start_process_group(ranks: Ranks, timeout_s: float | None) -> None:
    """The DDP process group (gloo on CPU, nccl on CUDA) on the rendezvous store, once the data is ready."""
    if not ranks.distributed:
        return
    timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
    store = dist.PrefixStore("default_pg", ranks.store)  # the keys init_process_group itself would use
    backend = "gloo" if ranks.device.type == "cpu" else "nccl"
    dist.init_process_group(backend, store=store, rank=ranks.rank, world_size=ranks.world_size, timeout=timeout)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Samples each rank takes per step; the global batch must split evenly."""
    if global_batch < world_size or global_batch % world_size:
        raise SystemExit(
            f"--batch-size {global_batch} does not split over {world_size} processes: give a multiple of {world_size}."
        )
    return global_batch // world_size


def rank_detector(detection, args: argparse.Namespace, device: torch.device):
    """The pack's face detector on this rank's own device (`cuda:<local rank>` or the CPU), never GPU 0 for all."""
    return detection.FaceDetector(args.insightface_root, args.pack, det_size=args.det_size, device=device)


def _load_optional(path: Path | None, loader, device: torch.device):
    return None if path is None else loader(path).to(device)


def crop_size(args: argparse.Namespace, family: str) -> int:
    """--crop-size, or the family's default: 1024 for SDXL (docs/sdxl.md 3.4), 512 for SD1.x (the paper)."""
    return args.crop_size or (1024 if family == "sdxl" else 512)


def prepare_training_set(args: argparse.Namespace, vae, ranks: Ranks, family: str = "sd1"):
    """The training set: each rank prepares its share into the cache, rank 0 packs it, every rank maps it."""
    checkpoints = pack_module("f2d_core.checkpoints")
    detection = pack_module("f2d_core.faces.face_detection")
    dataset = pack_module("f2d_core.training.data.dataset")
    fingerprint = pack_module("f2d_core.training.data.cache").module_fingerprint
    msid = checkpoints.load_msid(args.msid)
    models = checkpoints.F2DModels(msid, pack_module("f2d_core.identity.mapper").F2DMapper(), {"msid": args.msid.name})
    encoder = pack_module("f2d_core.identity.face_encoder").FaceEncoder(models, ranks.device)
    detector = rank_detector(detection, args, ranks.device)
    parser = _load_optional(args.face_parser, pack_module("f2d_core.faces.face_parsing").load_face_parser, ranks.device)
    regressor = _load_optional(
        args.expression_model, pack_module("f2d_core.faces.expression_model").load_expression_model, ranks.device
    )
    inputs = (
        args.folder,
        encoder,
        detector,
        lambda crops: vae.encode(crops.permute(0, 2, 3, 1)),
        f"vae:{fingerprint(vae.first_stage_model)}",  # the node's key: a cache shared with the server works
    )
    options = {
        "cache_dir": args.cache_dir or args.run_dir / "dataset_cache",
        "face_parser": parser,
        "expression_model": regressor,
        "crop_size": crop_size(args, family),
        "flip": not args.no_flip,
    }
    if not ranks.distributed:
        return dataset.prepare_dataset(*inputs, **options)
    sync = RankSync(ranks.store, ranks.rank, ranks.world_size)
    try:
        start = time.monotonic()
        share = dataset.prepare_share(*inputs, rank=ranks.rank, world_size=ranks.world_size, **options)
        log.info("prepared my share (%d files) in %.1f s", share.total_files, time.monotonic() - start)
        log.info("waited %.1f s for the other ranks' shares", sync.meet("shares"))
        if ranks.rank == 0:
            data = dataset.prepare_dataset(*inputs, **options)  # everything is cached now: read and packed
            sync.publish("set", "" if data.path is None else str(data.path))
            return data
        path, waited = sync.read("set")
        log.info("waited %.1f s for rank 0 to pack the training set; mapping %s", waited, path or "(in memory)")
        return dataset.open_training_set(Path(path)) if path else dataset.prepare_dataset(*inputs, **options)
    except RankFailed as e:
        sync.stop(e)
    except BaseException as e:  # the others must hear of it instead of waiting forever
        sync.fail(f"rank {ranks.rank} could not prepare the training set: {type(e).__name__}: {e}")
        raise


class StopRequest:
    """SIGINT / SIGTERM ask the run to stop; every rank learns of it at the same step."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks, self.requested = ranks, False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if not self.requested:
            log.warning("%s: stopping after this step and saving the state", signal.Signals(signum).name)
        self.requested = True

    def __call__(self) -> bool:
        if not self.ranks.distributed:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=self.ranks.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def starting_mapper(args: argparse.Namespace, backend, settings):
    """The mapper to train: from --mapper, freshly initialised from --seed, or with --init-l-from's CLIP-L head."""
    start = pack_module("nodes.training.starting_mapper")
    source_path = args.mapper or args.init_l_from
    source = None if source_path is None else pack_module("f2d_core.checkpoints").load_mapper(source_path)
    choice = start.START_FROM[0] if args.mapper else start.L_HEAD if args.init_l_from else start.START_FROM[1]
    return start.starting_mapper(backend, source, choice, args.seed, settings.pooled_source, settings.class_prompt)


def te_model_options(value: str | None) -> dict:
    """--te-model-options as a dict: JSON text, or the path of a JSON file."""
    if not value:
        return {}
    import json

    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        options = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"--te-model-options is neither JSON nor a JSON file: {e}") from None
    if not isinstance(options, dict):
        raise SystemExit("--te-model-options must be a JSON object.")
    return options


def load_checkpoint(path: Path, te_options: dict | None = None):
    """MODEL, CLIP and VAE of an SD1.x or SDXL checkpoint, loaded as ComfyUI's CheckpointLoaderSimple does."""
    import comfy.sd
    import folder_paths

    if not path.is_file():
        raise SystemExit(f"--checkpoint {path} does not exist.")
    weight_files = pack_module("f2d_core.weight_files")
    if path.suffix.lower() not in (".safetensors", ".sft") and weight_files.torch_release() < weight_files.SAFE_TORCH:
        safe = ".".join(map(str, weight_files.SAFE_TORCH))
        raise SystemExit(
            f"--checkpoint {path} is a pickle file, and torch {torch.__version__} can be made to run code while "
            f"loading one (CVE-2025-32434, CVE-2026-24747): the pack refuses pickles below torch {safe}, its own "
            f".pt files too. Give the checkpoint's .safetensors (e.g. v1-5-pruned-emaonly.safetensors), or update "
            f"torch to {safe} or newer."
        )
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path),
        output_vae=True,
        output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        te_model_options=te_options or {},
    )
    return model, clip, vae


def save_output(args: argparse.Namespace, result, settings, ranks: Ranks, data, computation: dict) -> Path:
    """The trained mapper with the run's settings in its metadata (what Save F2D Mapper writes); `computation`:
    the backend's `computation_record` (training dtype as resolved, gradient checkpointing)."""
    training_settings = {
        **asdict(settings),
        "global_batch_size": args.batch_size,
        "world_size": ranks.world_size,
        "start_from": "scratch" if args.from_scratch else (args.mapper or args.init_l_from).name,
        "checkpoint": args.checkpoint.name,
        "run_dir": str(args.run_dir),
        "trainer": WRITER,
        **computation,
        "family": result.identity.family if result.identity else "sd1",
        "eval_loss_start": result.eval_loss_start,
        "eval_loss_end": result.eval_loss_end,
        "run_identity": asdict(result.identity) if result.identity else None,
        **data.settings,
    }
    metadata = {
        "contents": "mapper",
        "trained_steps": str(result.step),
        "final_loss": f"{result.losses[-1]:.6g}" if result.losses else "",
        "training_settings": training_settings,
        "dataset_report": data.report.summary(),
    }
    save = pack_module("f2d_core.checkpoints").save_f2d_safetensors
    return save(args.out, mapper=result.mapper.cpu().eval(), metadata=metadata)


def train(args: argparse.Namespace, ranks: Ranks) -> int:
    """Load, prepare, train, save; the exit code."""
    trainer_module = pack_module("f2d_core.training.trainer")
    backend_module = pack_module("nodes.training.comfy_backend_sdxl")
    fingerprint = pack_module("f2d_core.training.data.cache").module_fingerprint
    settings = trainer_module.TrainSettings(
        steps=args.steps,
        batch_size=per_rank_batch(args.batch_size, ranks.world_size),
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        loss=args.loss,
        expression_dropout=args.expression_dropout,
        shuffle_identities=args.shuffle_identities,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        max_bad_steps=args.max_bad_steps,
        max_zero_gradient_steps=args.max_zero_gradient_steps,
        micro_batch=args.micro_batch,
        pooled_source=args.pooled_source,
        size_conditioning=args.size_conditioning,
        anchor_reg=args.anchor_reg,
    )
    if ranks.device.type == "cpu" and not args.cpu:
        reason = f"PyTorch {torch.__version__} sees no CUDA GPU (pass --cpu to train on the CPU on purpose)"
        log.warning("%s", pack_module("f2d_core.training.placement").cpu_training_warning(ranks.device, True, reason))
    if ranks.rank == 0:  # before hours of training, not after
        pack_module("f2d_core.training.mapper_output").check_mapper_destination(args.out, overwrite=True)
    model, clip, vae = load_checkpoint(args.checkpoint, te_model_options(args.te_model_options))
    data = prepare_training_set(args, vae, ranks, backend_module.model_family(model))
    backend = backend_module.make_backend(
        model,
        clip,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_granularity=args.checkpoint_granularity or "block",
        training_dtype=TRAINING_DTYPE_FLAGS[args.training_dtype],
    )
    computation = pack_module("nodes.training.comfy_backend").computation_record(backend)
    mapper = starting_mapper(args, backend, settings).to(backend.device)
    trainable = mapper
    start_process_group(ranks, args.dist_timeout)
    if ranks.distributed:
        device_ids = None if backend.device.type == "cpu" else [backend.device.index]
        trainable = torch.nn.parallel.DistributedDataParallel(mapper, device_ids=device_ids)
    trainer = trainer_module.MapperTrainer(
        mapper,
        backend,
        data,
        settings,
        args.run_dir,
        trainable=trainable,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    if ranks.rank == 0:
        log.info(
            "training %d steps, batch %d (%d per rank x %d), %d photos, loss %s, on %s",
            settings.steps,
            args.batch_size,
            settings.batch_size,
            ranks.world_size,
            len(data),
            settings.loss,
            backend.device,
        )
    result = trainer.run(resume=True, should_stop=StopRequest(ranks))  # rank 0's trainer logs step, loss, steps/s
    log.info("mapper sha256 %s at step %d (%s)", fingerprint(mapper), result.step, result.status)
    if result.status in ("diverged", "zero_gradient"):
        hint = "lower --lr, or check the photos" if result.status == "diverged" else "try --training-dtype fp32"
        log.error(
            "Stopped at step %d: %s (%s). The last good state is kept in %s.",
            result.step,
            result.message,
            hint,
            args.run_dir,
        )
        return EXIT_FAILED
    if result.status == "interrupted":
        log.info("Stopped at step %d; the state is in %s: run the same command to continue.", result.step, args.run_dir)
        return EXIT_INTERRUPTED
    if ranks.rank == 0:
        out = save_output(args, result, settings, ranks, data, computation)
        log.info("trained mapper (step %d): %s", result.step, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: start the ranks, import ComfyUI and the pack, train."""
    args = parse_args(argv)
    cpu = args.cpu or not torch.cuda.is_available()
    ranks = start_ranks(cpu)
    setup_logging(ranks.rank, ranks.world_size)
    try:
        bootstrap(args.comfyui, cpu=cpu)
        spelling = pack_module("f2d_core.training.run_identity").run_dir_spelling  # NFD (macOS) = NFC: one run
        args.run_dir, args.cache_dir = spelling(args.run_dir), args.cache_dir and spelling(args.cache_dir)
        run_lock = pack_module("f2d_core.run_lock").run_lock
        sync = RankSync(ranks.store, ranks.rank, ranks.world_size) if ranks.distributed else None
        with rank_0_holds(lambda: run_lock(args.run_dir, WRITER), sync):  # before the data: refused at once
            return train(args, ranks)
    except ComfyLibraryError as e:
        log.error("%s", e)
        return EXIT_USAGE
    except Exception as e:
        errors = sys.modules.get(f"{PACK_NAME}.f2d_core.errors")
        if errors is None or not isinstance(e, errors.F2DError):
            raise
        log.error("%s", e)  # a problem the message explains (a file, a setting): no traceback
        return EXIT_FAILED
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
