"""One rank of bench/train_set_memory.py (started by torchrun): open the training set, run loader steps, report memory.

Modes: `mapped` opens the packed file as training does (`open_training_set`: a memory map shared by
all ranks); `in_ram` is the straightforward way this pack used before: every rank holds its own
float32 copy of the whole set (here filled row by row, so the copy is all it holds). Then `--steps`
batches are drawn with the trainer's own `sample_batch` (as float32, as the trainer gets them). The
rank writes rank<N>.json to --out: peak RSS (ru_maxrss) after the steps and after touching every row,
and the proportional (PSS) and private memory Linux accounts to it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.training.data.training_set import TrainingSet, open_training_set
from f2d_core.training.trainer import TrainSettings, sample_batch


def memory() -> dict[str, float]:
    """Peak RSS (ru_maxrss) and the current RSS / PSS / private memory of this process, in MiB."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rollup = Path("/proc/self/smaps_rollup")
    if rollup.exists():
        fields = {}
        for line in rollup.read_text().splitlines()[1:]:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) / 1024  # kB -> MiB
        out["rss_mb"] = fields.get("Rss", 0.0)
        out["pss_mb"] = fields.get("Pss", 0.0)
        out["private_mb"] = fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)
    return out


def in_ram_copy(mapped: TrainingSet) -> TrainingSet:
    """The old layout: the whole set as float32 tensors owned by this process (filled row by row)."""
    copies = {}
    for name in ("idvec", "expression", "latents", "masks"):
        source = getattr(mapped, name)
        if source is None:
            copies[name] = None
            continue
        copy = torch.empty(source.shape, dtype=torch.float32)
        for start in range(0, len(source), 512):
            copy[start : start + 512] = source[start : start + 512].float()
        copies[name] = copy
    return TrainingSet(**copies, person=mapped.person, files=mapped.files, report=mapped.report)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--set", type=Path, required=True)
    p.add_argument("--mode", choices=("mapped", "in_ram"), required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=32, help="global batch, split over the ranks")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    start = memory()
    data = open_training_set(args.set)
    if args.mode == "in_ram":
        data = in_ram_copy(data)
    opened = memory()
    settings = TrainSettings(batch_size=args.batch // world, shuffle_identities=True)
    checksum = 0.0
    for step in range(args.steps):
        batch = sample_batch(data, settings, step, rank, world)
        checksum += float(batch.latents.sum() + batch.masks.sum() + batch.idvec.sum())
    after_steps = memory()
    for start_row in range(0, len(data), 512):  # every row once: what a long run touches eventually
        checksum += float(data.latents[start_row : start_row + 512].float().sum())
    after_pass = memory()
    if world > 1:
        dist.barrier()  # every rank still maps the set while the others measure
    result = {
        "rank": rank,
        "world_size": world,
        "mode": args.mode,
        "rows": len(data),
        "steps": args.steps,
        "batch_per_rank": settings.batch_size,
        "at_start": start,
        "after_open": opened,
        "after_steps": after_steps,
        "after_full_pass": after_pass,
        "checksum": checksum,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
