"""Benchmark one MSID training step: images/s and MFU, this pack's step against the straightforward one.

    python bench/msid_train_step.py                                  # GPU: ViT-S, batch 256 and 1024, bf16
    python bench/msid_train_step.py --device cpu                     # CPU: tiny width (64, depth 4), batch 32
    python bench/msid_train_step.py --classes 360232 --partial-fc 0.3 --batch 1024   # Glint360K's classifier

Ours: `MSIDTrainer.train_step` as training runs it: uint8 faces normalised and flipped on the
device, bf16 autocast where the GPU computes it natively, TF32 for the float32 cosines, the margin
softmax of `ShardedMarginSoftmax` (one rank here), AdamW (foreach) with clipping. Straightforward: a
plain fp32 eager loop: the faces normalised and flipped on the host and copied as float32, fp32
forward and backward, an `nn.Linear`-style full classifier through `arcface_loss`, the same AdamW.
Both on the same random faces, labels and weights, alternating, after warm-up steps; the median
step time is reported.

Partial FC's sampling is also timed alone (`--sampling-classes`, default Glint360K's 360,232 identities
over 8 ranks, a global batch of 1024): ours (`ShardedMarginSoftmax._sampled_centres`, on the device,
nothing read back) against the former way (positives read back to the host with `torch.unique(...).cpu()`,
a CPU generator, the index copied back), 50 calls in a row each, alternating, synchronised only at the
end of each series, so a host round trip per call shows on a GPU.

FLOPs are counted analytically (multiply-add = 2 FLOPs; backward = 2x forward, so training = 3x):
per image, the patch embedding 2*P*(3*p*p)*d, and per block with N tokens of width d,
qkv 6*N*d^2 + attention scores and values 4*N^2*d + projection 2*N*d^2 + MLP 16*N*d^2, i.e.
24*N*d^2 + 4*N^2*d; the classifier 2*D*C. MFU = achieved FLOP/s / the GPU's dense bf16 peak (H100 and
H200 SXM: 989 TFLOP/s; A100: 312); on the CPU only the achieved GFLOP/s is given unless --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.identity.msid_encoder import MSIDEncoder
from f2d_core.msid_training.arcface_loss import arcface_loss
from f2d_core.msid_training.trainer import MSIDTrainer, MSIDTrainSettings, embedding_width
from f2d_core.training.precision import dtype_name, resolve_training_dtype

log = logging.getLogger("bench.msid_train_step")

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0}
MS1MV3_IMAGES, MS1MV3_CLASSES = 5_179_510, 93_431


def vit_forward_flops(width: int, depth: int, image: int = 112, patch: int = 8) -> float:
    """FLOPs of one image's ViT forward (every block; see the module docstring)."""
    patches = (image // patch) ** 2
    tokens = patches + 1
    embed = 2 * patches * 3 * patch * patch * width
    return embed + depth * (24 * tokens * width**2 + 4 * tokens**2 * width)


def train_flops_per_image(width: int, depth: int, embedding: int, classes: int, sample_rate: float = 1.0) -> float:
    """Forward + backward FLOPs per image: 3x (ViT forward + classifier forward)."""
    return 3 * (vit_forward_flops(width, depth) + 2 * embedding * classes * sample_rate)


class _Data:
    """The trainer needs a set's size and class count only: the batches are given directly."""

    def __init__(self, size: int, classes: int) -> None:
        self.size, self.num_classes = size, classes
        self.labels = torch.arange(size) % classes
        self.source = "random"

    def __len__(self) -> int:
        return self.size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_batch(args: argparse.Namespace, device: torch.device, batch: int) -> dict:
    """Median step seconds of ours and of the straightforward loop at one batch size."""
    arch = {"width": args.width, "depth": args.depth, "heads": args.heads, "tap_blocks": tuple(args.taps)}
    dtype = resolve_training_dtype("auto", device) if args.dtype == "auto" else torch.float32
    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8)
    labels = torch.randint(0, args.classes, (batch,))
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()
    settings = MSIDTrainSettings(epochs=1000, batch_size=batch, partial_fc=args.partial_fc)
    trainer = MSIDTrainer(
        MSIDEncoder(**arch),
        _Data(batch * 10, args.classes),
        lambda e, f: [],
        settings,
        Path(tempfile.mkdtemp()),
        init_digest="random",
        device=device,
        compute_dtype=dtype,
    )
    counter = iter(range(1 << 30))

    def ours() -> None:
        torch.backends.cuda.matmul.allow_tf32 = not args.deterministic  # as cli/train_msid.py sets it on CUDA
        trainer.train_step(next(counter), images, labels)

    encoder = MSIDEncoder(**arch).to(device).train()
    encoder.norm.requires_grad_(False)
    centres = torch.nn.Parameter(torch.randn(args.classes, embedding_width(encoder, "msid"), device=device) * 0.01)
    params = [p for p in encoder.parameters() if p.requires_grad] + [centres]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1)

    def plain() -> None:
        torch.backends.cuda.matmul.allow_tf32 = False  # torch's default
        faces = (images.float() / 255 - 0.5) / 0.5  # on the host, as a plain Dataset's transform would
        flip = torch.rand(len(faces)) < 0.5  # RandomHorizontalFlip, on the host too
        faces = torch.where(flip[:, None, None, None], faces.flip(-1), faces)
        loss = arcface_loss(encoder(faces.to(device)), centres, labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 5.0)
        optimizer.step()

    for fn in (ours, plain):
        _timed(fn, device, args.warmup)
    ours_times, plain_times = [], []
    for _ in range(args.steps):  # alternate, so both see the same machine load
        ours_times += _timed(ours, device, 1)
        plain_times += _timed(plain, device, 1)
    flops = train_flops_per_image(args.width, args.depth, embedding_width(encoder, "msid"), args.classes)
    ours_flops = train_flops_per_image(
        args.width, args.depth, embedding_width(encoder, "msid"), args.classes, args.partial_fc
    )
    row = {"batch": batch, "dtype": dtype_name(dtype), "classes": args.classes, "partial_fc": args.partial_fc}
    for name, times, per_image in (("ours", ours_times, ours_flops), ("plain_fp32", plain_times, flops)):
        seconds = statistics.median(times)
        achieved = per_image * batch / seconds
        row[name] = {
            "step_s": seconds,
            "images_per_s": batch / seconds,
            "tflops": achieved / 1e12,
            "mfu": achieved / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        }
    row["speedup"] = row["plain_fp32"]["step_s"] / row["ours"]["step_s"]
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def host_sampled_centres(head, local_labels: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The former Partial FC sampling: the batch's classes read back to the host, drawn on the CPU, copied back."""
    num_sample = int(head.sample_rate * head.count)
    positives = torch.unique(local_labels[local_labels >= 0]).cpu()
    if num_sample <= len(positives):
        index = positives
    else:
        generator = torch.Generator().manual_seed((head.seed * 1_000_003 + step) * 4099 + head.rank)
        priority = torch.rand(head.count, generator=generator)
        priority[positives] = 2.0
        index = priority.topk(num_sample).indices.sort().values
    index = index.to(local_labels.device)
    renumbered = torch.where(local_labels >= 0, torch.searchsorted(index, local_labels.clamp_min(0)), -1)
    return index, renumbered


def bench_sampling(args: argparse.Namespace, device: torch.device) -> dict:
    """Milliseconds per Partial FC sampling call of rank 0's shard: ours (on the device) and the former (host)."""
    from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax

    ranks, classes = args.sampling_ranks, args.sampling_classes
    head = ShardedMarginSoftmax(classes, 8, sample_rate=args.sampling_rate, rank=0, world_size=ranks).to(device)
    labels = torch.randint(0, classes, (args.sampling_batch,), generator=torch.Generator().manual_seed(0)).to(device)
    local = torch.where(labels < head.count, labels, -1)
    calls = 50

    def series(sample) -> float:
        _sync(device)
        start = time.perf_counter()
        for step in range(calls):
            sample(head, local, step)
        _sync(device)
        return (time.perf_counter() - start) / calls * 1000

    ours_ms, host_ms = [], []
    for _ in range(args.steps):
        ours_ms.append(series(ShardedMarginSoftmax._sampled_centres))
        host_ms.append(series(host_sampled_centres))
    row = {
        "classes": classes,
        "ranks": ranks,
        "classes_per_rank": head.count,
        "batch": args.sampling_batch,
        "rate": args.sampling_rate,
        "ours_ms": statistics.median(ours_ms[1:] or ours_ms),
        "host_ms": statistics.median(host_ms[1:] or host_ms),
    }
    row["speedup"] = row["host_ms"] / row["ours_ms"]
    return row


def ms1mv3_estimate(images_per_s: float) -> dict:
    """Hours for 30 epochs of MS1MV3 at a measured rate, and what the FLOP count alone says for one H100."""
    flops = train_flops_per_image(384, 12, 1536, MS1MV3_CLASSES) * MS1MV3_IMAGES * 30
    return {
        "flops_total": flops,
        "hours_at_measured_rate": MS1MV3_IMAGES * 30 / images_per_s / 3600 if images_per_s else None,
        "hours_h100_at_40pct_mfu": flops / (0.4 * 989e12) / 3600,
        "images_per_s_needed_for_4h": MS1MV3_IMAGES * 30 / (4 * 3600),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu.")
    parser.add_argument("--batch", type=int, nargs="+", help="Batch sizes (GPU: 256 1024; CPU: 32).")
    parser.add_argument("--width", type=int, help="Encoder width (GPU: 384, the official; CPU: 64).")
    parser.add_argument("--depth", type=int, help="Encoder depth (GPU: 12; CPU: 4).")
    parser.add_argument("--heads", type=int, help="Attention heads (GPU: 12; CPU: 4).")
    parser.add_argument("--classes", type=int, help=f"Identities (GPU: {MS1MV3_CLASSES}, MS1MV3; CPU: 1000).")
    parser.add_argument("--partial-fc", type=float, default=1.0, help="Partial FC rate of our step.")
    parser.add_argument("--dtype", choices=("auto", "fp32"), default="auto", help="Our step's autocast rule.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps of each.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps of each first.")
    parser.add_argument("--peak-tflops", type=float, help="Peak bf16 TFLOP/s for MFU (default: from the GPU name).")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--sampling-classes", type=int, default=360_232, help="Partial FC sampling: identities.")
    parser.add_argument("--sampling-ranks", type=int, default=8, help="Partial FC sampling: ranks sharing them.")
    parser.add_argument("--sampling-batch", type=int, default=1024, help="Partial FC sampling: global batch.")
    parser.add_argument("--sampling-rate", type=float, default=0.1, help="Partial FC sampling: rate.")
    parser.add_argument("--only-sampling", action="store_true", help="Time Partial FC's sampling alone.")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="Both steps under cli/train_msid.py --deterministic's kernels: run with and without it to see its cost.",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        from cli.train_msid import use_deterministic_kernels

        use_deterministic_kernels()
    defaults = {"batch": [256, 1024] if gpu else [32], "width": 384 if gpu else 64, "depth": 12 if gpu else 4}
    defaults.update(heads=12 if gpu else 4, classes=MS1MV3_CLASSES if gpu else 1000)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.taps = [2, 5, 8, 11] if args.depth == 12 else list(range(args.depth))
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    if args.peak_tflops is None and gpu:
        args.peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    log.info(
        "%s: width %d, depth %d, %d classes, torch %s", name, args.width, args.depth, args.classes, torch.__version__
    )
    sampling = bench_sampling(args, device)
    log.info(
        "Partial FC sampling, %d classes over %d ranks (%d a rank), batch %d, rate %g: ours %.3f ms, "
        "host round trip %.3f ms a call (%.2fx)",
        sampling["classes"],
        sampling["ranks"],
        sampling["classes_per_rank"],
        sampling["batch"],
        sampling["rate"],
        sampling["ours_ms"],
        sampling["host_ms"],
        sampling["speedup"],
    )
    rows = []
    for batch in [] if args.only_sampling else args.batch:
        row = bench_batch(args, device, batch)
        rows.append(row)
        for kind in ("ours", "plain_fp32"):
            r = row[kind]
            mfu = f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
            log.info(
                "batch %4d %-10s %8.1f images/s  %7.3f s/step  %9.1f GFLOP/s%s",
                batch,
                kind if kind == "plain_fp32" else f"ours {row['dtype']}",
                r["images_per_s"],
                r["step_s"],
                r["tflops"] * 1000,
                mfu,
            )
        log.info("batch %4d ours / plain: %.2fx", batch, row["speedup"])
    result = {"device": name, "width": args.width, "depth": args.depth, "rows": rows, "partial_fc_sampling": sampling}
    if gpu and args.width == 384 and args.depth == 12 and rows:
        result["ms1mv3_30_epochs"] = ms1mv3_estimate(rows[-1]["ours"]["images_per_s"])
    else:
        result["ms1mv3_30_epochs"] = ms1mv3_estimate(0.0)
    estimate = result["ms1mv3_30_epochs"]
    log.info(
        "MS1MV3 x 30 epochs: %.2e FLOPs; an estimate for one H100 at 40%% bf16 MFU: %.1f h (4 h needs %.0f images/s)",
        estimate["flops_total"],
        estimate["hours_h100_at_40pct_mfu"],
        estimate["images_per_s_needed_for_4h"],
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
