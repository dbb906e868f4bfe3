"""Train the MSID identity encoder (paper Sec. 3.2): one process, or one per GPU through torchrun.

    python cli/train_msid.py --data ~/faces_ms1mv3 --out msid_ms1mv3.safetensors --run-dir runs/msid
    torchrun --nproc_per_node 8 cli/train_msid.py --data ~/glint360k --partial-fc 0.3 ...same...
    python cli/train_msid.py --data ~/vggface2_train --insightface-root ~/ComfyUI/models/insightface \\
        --init msid:msid.pt --epochs 2 --lr 1e-4 --out msid_finetuned.safetensors --run-dir runs/ft

`--data` is a folder of insightface record files (train.rec, train.idx, property: MS1MV2/MS1MV3,
Glint360K) or a folder with one subfolder per identity (aligned 112x112 crops, or photos: these are
detected and aligned once with the pack's detector, which needs --insightface-root, and cached).
`--batch-size` is the global batch: each of the N ranks takes batch/N images per step. The encoder is
replicated (DDP, gradients summed across ranks); the ArcFace class centres are sharded, each rank
holding C/N of them (model-parallel margin softmax), so Glint360K's 360 K x 1536 centres fit on 8
GPUs. Loose photos are detected and aligned in shares, each rank with its own detector on its own GPU
(cuda:LOCAL_RANK), the ranks meeting in torchrun's store (no collective, so no timeout however long it
takes); rank 0 packs the crops, which the others map. Only then does the process group start. Before
all that, rank 0 takes --run-dir's lock (run.lock): a run folder another training holds stops every
rank at once with its message.

The run folder holds the resumable state; running the same command again continues where it stopped
(the same data, starting weights, loss, margin, scale, Partial FC rate, batch and seed; a changed --lr,
--epochs or --weight-decay is used; another number of processes reshards the classifier). On the CPU it
continues with exactly the losses an uninterrupted run would have had; on a GPU only with --deterministic
(attention backward, cuDNN and TF32 are not deterministic otherwise) and the same number of processes.
Ctrl-C (SIGINT) or SIGTERM saves the state (within --stop-check-every steps) and exits with 130. The
output is a `.safetensors` in msid.pt's key layout: Load MSID Encoder and `train_mapper.py --msid` read it.
A new encoder needs its own mapper: train one with cli/train_mapper.py --msid OUT --from-scratch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

if __package__:
    from .help_format import DefaultsHelp
    from .rank_sync import RankFailed, RankSync, rank_0_holds
    from .train_mapper import Ranks, StopRequest, per_rank_batch, setup_logging, start_process_group, start_ranks
else:  # run as a script: cli/ is sys.path[0]; f2d_core never imports ComfyUI, so the repository root may go there
    from help_format import DefaultsHelp
    from rank_sync import RankFailed, RankSync, rank_0_holds
    from train_mapper import Ranks, StopRequest, per_rank_batch, setup_logging, start_process_group, start_ranks

    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from f2d_core.errors import F2DError
from f2d_core.msid_training.arcface_loss import DEFAULT_MARGIN, DEFAULT_SCALE
from f2d_core.msid_training.trainer import LOSSES, WEIGHT_DECAY, MSIDTrainSettings
from f2d_core.run_lock import run_lock
from f2d_core.training.run_identity import run_dir_spelling

log = logging.getLogger("f2d.train_msid")

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
WRITER = "cli/train_msid.py"  # who holds the run's lock, in the other writer's message (the trainer's name)
DTYPES = ("auto", "bf16", "fp32")
EXAMPLE = """examples:
  python cli/train_msid.py --data ~/faces_ms1mv3 --out msid_ms1mv3.safetensors --run-dir runs/msid
  # the same on 8 GPUs of one machine (--batch-size is split across them; class centres are sharded):
  torchrun --nproc_per_node 8 cli/train_msid.py --data ~/faces_ms1mv3 --out msid_ms1mv3.safetensors \\
      --run-dir runs/msid
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description="Train the Face2Diffusion MSID identity encoder with ArcFace.",
        formatter_class=DefaultsHelp,
        epilog=EXAMPLE,
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="Training faces: a folder with train.rec/train.idx/property (insightface record files), or one "
        "subfolder per identity of aligned 112x112 crops or photos.",
    )
    p.add_argument("--out", type=Path, required=True, help="The trained encoder (.safetensors, msid.pt's key layout).")
    p.add_argument(
        "--run-dir",
        type=run_dir_spelling,
        required=True,
        help="Resumable state; an existing one is continued (see --resume).",
    )
    p.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="auto",
        help="auto: continue the state in --run-dir if there is one (default); never: refuse to start over an "
        "existing state.",
    )
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default="msid",
        help="msid: ArcFace on the four taps' concatenated 1536-d v_id (the paper); plain_arcface: on the last "
        "tap only (the paper's baseline).",
    )
    p.add_argument(
        "--init",
        default="random",
        help="Starting weights: random, timm:FILE (a timm ViT-S state dict; patch and position embeddings are "
        "resampled), or msid:FILE (msid.pt or a trained .safetensors: fine-tuning).",
    )
    p.add_argument("--epochs", type=int, default=30, help="Passes over the data (paper: 30).")
    p.add_argument("--batch-size", type=int, default=1024, help="Global batch, split across ranks (paper: 1024).")
    p.add_argument("--lr", type=float, default=1e-3, help="Peak AdamW learning rate (paper: 1e-3).")
    p.add_argument(
        "--weight-decay", type=float, default=WEIGHT_DECAY, help="AdamW weight decay (arcface_torch's ViTs: 0.1)."
    )
    p.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.1,
        help="Share of the steps spent warming up linearly; then linear decay to 0 (arcface_torch: a tenth).",
    )
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="ArcFace angular margin m in radians.")
    p.add_argument("--scale", type=float, default=DEFAULT_SCALE, help="ArcFace logit scale s.")
    p.add_argument(
        "--partial-fc",
        type=float,
        default=1.0,
        help="Partial FC: the share of each rank's class centres used per step (positives always); 1 = all. "
        "0.1-0.3 for millions of identities.",
    )
    p.add_argument("--no-flip", action="store_true", help="Do not mirror half of the faces at random.")
    p.add_argument("--seed", type=int, default=0, help="Seeds the data order, flips, Partial FC and a random start.")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="What the encoder computes in: auto = bf16 autocast where the GPU computes bf16 natively, else fp32.",
    )
    p.add_argument("--workers", type=int, default=8, help="Decoding processes per rank (data loader workers).")
    p.add_argument(
        "--worker-start",
        choices=("fork", "spawn", "forkserver"),
        help="How the decoding processes start (default: the platform's: spawn on Windows and macOS, forkserver "
        "on Linux from Python 3.14, else fork). All three give the same batches.",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="Bit-exact resumes on a GPU too: deterministic kernels (torch.use_deterministic_algorithms, cuDNN "
        "deterministic, the math attention kernel) and no TF32. Slower; see docs/msid_training.md. On the CPU "
        "training is deterministic without it.",
    )
    p.add_argument(
        "--stop-check-every",
        type=int,
        default=10,
        help="Look for a stop request (Ctrl-C, SIGTERM) every N steps: with several GPUs each look is a "
        "collective and a host sync.",
    )
    p.add_argument("--checkpoint-every", type=int, default=2000, help="Save the resumable state every N steps.")
    p.add_argument("--max-steps", type=int, help="Stop (and save) after this many steps in all: a short session.")
    p.add_argument(
        "--cache-dir", type=run_dir_spelling, help="Aligned-crop cache for photo folders (default: RUN_DIR/cache)."
    )
    p.add_argument("--insightface-root", type=Path, help="Folder holding models/<pack>/ (to align loose photos).")
    p.add_argument("--pack", default="buffalo_l", help="insightface pack whose detector aligns loose photos.")
    p.add_argument("--det-size", type=int, default=640, help="Face detector input size.")
    p.add_argument("--cpu", action="store_true", help="Train on the CPU (automatic without CUDA).")
    p.add_argument(
        "--dist-timeout",
        type=float,
        help="Seconds a collective may wait during training (default: torch's); preparing the data happens "
        "before the process group starts and has no timeout.",
    )
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line."""
    return build_parser().parse_args(argv)


def compute_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: the mapper trainer's rule (`resolve_training_dtype`), fp16 not offered."""
    from f2d_core.training.precision import resolve_training_dtype

    return resolve_training_dtype(choice, device)


def open_data(args: argparse.Namespace, ranks: Ranks):
    """The training set, each rank detecting its share of loose photos on its own device, meeting in torchrun's
    store (no collective, no timeout); rank 0 packs the crops, the others map them."""
    from f2d_core.msid_training.data.face_dataset import open_training_data_on_ranks

    detector = None
    if args.insightface_root is not None:
        from f2d_core.faces.face_detection import FaceDetector

        detector = FaceDetector(args.insightface_root, args.pack, det_size=args.det_size, device=ranks.device)
    sync = RankSync(ranks.store, ranks.rank, ranks.world_size) if ranks.distributed else None
    try:
        return open_training_data_on_ranks(
            args.data,
            rank=ranks.rank,
            world_size=ranks.world_size,
            sync=sync,
            cache_dir=args.cache_dir or args.run_dir / "cache",
            detector=detector,
        )
    except RankFailed as e:
        sync.stop(e)


def batch_source(data, args: argparse.Namespace, ranks: Ranks):
    """(epoch, first batch) -> this rank's batches, decoded by persistent worker processes into pinned memory."""
    from f2d_core.msid_training.data.loader import make_training_loader

    loader = make_training_loader(
        data,
        per_rank_batch(args.batch_size, ranks.world_size),
        rank=ranks.rank,
        world_size=ranks.world_size,
        seed=args.seed,
        workers=args.workers,
        pin_memory=ranks.device.type == "cuda",
        drop_last=True,
        start_method=args.worker_start,
    )

    def batches(epoch: int, first: int):
        loader.sampler.set_epoch(epoch, first)
        return loader

    return batches


def use_deterministic_kernels() -> None:
    """Make a CUDA run repeat itself bit for bit (same GPU model, same number of processes, same software).

    torch.use_deterministic_algorithms(True) (index_put / scatter backward sorted instead of atomic adds;
    an operation without a deterministic kernel raises), cuDNN deterministic without autotuning, the math
    kernel of scaled-dot-product attention (flash and memory-efficient backward add atomically), TF32 off
    (matmul and cuDNN: plain float32). CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts: `main`
    sets it when --deterministic is given.
    """
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)


def train(args: argparse.Namespace, ranks: Ranks) -> int:
    """Open the data, build the encoder, train, write --out; the exit code."""
    from f2d_core.msid_training.encoder_init import EncoderInit, initial_encoder
    from f2d_core.msid_training.encoder_output import save_trained_encoder
    from f2d_core.msid_training.run_state import STATE_FILE
    from f2d_core.msid_training.trainer import MSIDTrainer

    init = EncoderInit.parse(args.init)
    if args.resume == "never" and (args.run_dir / STATE_FILE).exists():
        raise F2DError(f"{args.run_dir} already holds a run and --resume never was given: choose another --run-dir.")
    settings = MSIDTrainSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_fraction=args.warmup_fraction,
        loss=args.loss,
        margin=args.margin,
        scale=args.scale,
        partial_fc=args.partial_fc,
        flip=not args.no_flip,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
        stop_check_every=args.stop_check_every,
    )
    per_rank_batch(args.batch_size, ranks.world_size)
    dtype = compute_dtype(args.dtype, ranks.device)
    # The classifier's float32 cosines (margin_softmax.py) on TF32 tensor cores (10 significant bits, as
    # arcface_torch's fp16 product) instead of plain float32 arithmetic: about 8x faster on an H100.
    if args.deterministic:
        use_deterministic_kernels()
    elif ranks.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    data = open_data(args, ranks)
    if ranks.rank == 0:
        log.info("%d images of %d identities from %s", len(data), data.num_classes, args.data)
    encoder = initial_encoder(init, seed=args.seed)
    start_process_group(ranks, args.dist_timeout)
    trainer = MSIDTrainer(
        encoder,
        data,
        batch_source(data, args, ranks),
        settings,
        args.run_dir,
        init_digest=init.digest(args.seed),
        device=ranks.device,
        compute_dtype=dtype,
        rank=ranks.rank,
        world_size=ranks.world_size,
    )
    result = trainer.run(should_stop=StopRequest(ranks))
    if result.status == "stopped" and result.step < (args.max_steps or result.total_steps):
        log.info("Stopped at step %d; the state is in %s: run the same command to continue.", result.step, args.run_dir)
        return EXIT_INTERRUPTED
    if ranks.rank == 0:
        out = save_trained_encoder(args.out, trainer.encoder.cpu(), result, settings, data, args.init)
        log.info("trained encoder (step %d of %d): %s", result.step, result.total_steps, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: start the ranks, train, report a known problem without a traceback."""
    args = parse_args(argv)
    if args.deterministic:  # read when cuBLAS starts: before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cpu = args.cpu or not torch.cuda.is_available()
    ranks = start_ranks(cpu)
    setup_logging(ranks.rank, ranks.world_size)
    log.setLevel(logging.INFO)
    sync = RankSync(ranks.store, ranks.rank, ranks.world_size) if ranks.distributed else None
    try:
        with rank_0_holds(lambda: run_lock(args.run_dir, WRITER), sync):  # before the data: refused at once
            return train(args, ranks)
    except F2DError as e:
        log.error("%s", e)
        return EXIT_FAILED
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
