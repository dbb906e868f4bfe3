"""Memory per DDP rank of the training set: the shared memory-mapped packed file against a float32 copy per rank.

    python bench/train_set_memory.py                       # 20,000 photos x 2 views at 512 px, 1 and 2 ranks
    python bench/train_set_memory.py --photos 2000 --ranks 1 2 4 --modes mapped

Builds a synthetic prepared set directly in the on-disk format (`write_training_set`, the file that
preparation writes: random identity vectors, expression codes, float16 latents [2, 4, 64, 64] and
uint8 masks per photo, two photos per person), not through detection. Then, for each mode and rank
count, torchrun starts that many CPU ranks (gloo) of train_set_memory_worker.py, which open the set,
draw `--steps` batches with the trainer's `sample_batch` and report their peak RSS (ru_maxrss), and
again after touching every row once. `mapped` is how training opens the set now; `in_ram` is the
straightforward way (each rank holds a float32 copy, as before). No models are loaded: the figures
are the set's cost on top of Python and torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.training.data.report import DatasetReport
from f2d_core.training.data.training_set import write_training_set

log = logging.getLogger("bench.train_set_memory")
WORKER = Path(__file__).with_name("train_set_memory_worker.py")


def synthetic_rows(photos: int, views: int, latent: int):
    """Random rows in the packed dtypes, one per photo (seeded per row: the same set every time)."""
    for i in range(photos):
        g = torch.Generator().manual_seed(i)
        masks = torch.zeros(views, 1, latent, latent, dtype=torch.uint8)
        masks[..., latent // 4 : -latent // 4, latent // 4 : -latent // 4] = 1
        yield {
            "idvec": torch.randn(views, 1536, generator=g),
            "expression": torch.randn(views, 64, generator=g),
            "latents": torch.randn(views, 4, latent, latent, generator=g).mul_(4).half(),
            "masks": masks,
        }


def build_set(path: Path, photos: int, views: int, latent: int) -> Path:
    """The synthetic packed set at `path` (kept when it exists with the same size)."""
    files = [f"p{i // 2:05d}/{i:05d}.png" for i in range(photos)]
    person = [f.split("/")[0] for f in files]
    report = DatasetReport(folder="synthetic", total_files=photos, used=files, mask_source="synthetic")
    settings = {"synthetic": True, "views": views, "latent": latent}
    write_training_set(path, synthetic_rows(photos, views, latent), files, person, report, settings)
    return path


def run_ranks(set_path: Path, mode: str, ranks: int, steps: int, batch: int, out: Path) -> list[dict]:
    """Start `ranks` CPU ranks with torchrun; their JSON reports, by rank."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    argv += [str(WORKER), "--set", str(set_path), "--mode", mode, "--steps", str(steps), "--batch", str(batch)]
    argv += ["--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} x {ranks} ranks failed:\n{done.stderr[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=20_000)
    p.add_argument("--views", type=int, default=2, help="2 with the flip (the default), 1 without")
    p.add_argument("--crop-size", type=int, default=512)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=["mapped", "in_ram"], choices=["mapped", "in_ram"])
    p.add_argument("--steps", type=int, default=20, help="loader steps per rank")
    p.add_argument("--batch", type=int, default=32, help="global batch (paper: 32), split over the ranks")
    p.add_argument("--work", type=Path, default=None, help="where the set is written (default: a temp folder)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="f2d_set_memory_"))
    set_path = work / "sets" / "synthetic-set.safetensors"
    start = time.perf_counter()
    build_set(set_path, args.photos, args.views, args.crop_size // 8)
    size_mb = set_path.stat().st_size / (1 << 20)
    log.info("synthetic set: %d photos x %d views, %.0f MiB, written in %.1f s", args.photos, args.views, size_mb,
             time.perf_counter() - start)  # fmt: skip
    results = []
    for mode in args.modes:
        for ranks in args.ranks:
            for r in run_ranks(set_path, mode, ranks, args.steps, args.batch, work / f"{mode}-{ranks}"):
                results.append(r)
                log.info(
                    "%-6s %d rank(s), rank %d: peak RSS %7.0f MiB after %d steps (PSS %6.0f, private %6.0f); "
                    "%7.0f MiB after touching every row (PSS %6.0f, private %6.0f); at start %4.0f MiB",
                    mode, ranks, r["rank"], r["after_steps"]["peak_rss_mb"], r["steps"],
                    r["after_steps"].get("pss_mb", float("nan")), r["after_steps"].get("private_mb", float("nan")),
                    r["after_full_pass"]["peak_rss_mb"], r["after_full_pass"].get("pss_mb", float("nan")),
                    r["after_full_pass"].get("private_mb", float("nan")), r["at_start"]["peak_rss_mb"],
                )  # fmt: skip
    summary = {"set_mib": size_mb, "photos": args.photos, "views": args.views, "ranks": results}
    print(json.dumps(summary, indent=1) if args.json is None else f"written {args.json}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
