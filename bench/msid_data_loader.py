"""MSID training data from a record file: the training loader's images/s against a single-process read-and-decode loop.

    python bench/msid_data_loader.py                        # 20,000 crops, batch 256, 0 and all-cores workers
    python bench/msid_data_loader.py --images 5000 --workers 1 2 --batch 128

Synthesises a record directory in insightface's layout (train.rec, train.idx, property; written by
tests/support/record_writer.py): `--images` 112x112 JPEG crops (quality 95) of augmented real photos
(skimage's astronaut, insightface's aligned Tom_Hanks crop and t1.jpg group photo: random scale,
shift, brightness and mirror per crop), 100 identities. Then, side by side in one run, over one
shuffled epoch:

- straightforward: one process reads each record (seek + read at the offset `train.idx` gives),
  parses its header, decodes the JPEG with PIL, and stacks batches of uint8 [B, 3, 112, 112];
- loader: `make_training_loader` (record file memory-mapped, whole batches decoded by `--workers`
  worker processes; 0 decodes them on the calling thread, which separates the gain of decoding a
  batch at once from that of the processes), the same epoch, timed from the first batch on (worker
  start-up is reported apart).

Both read the same epoch's indices; images/s and the ratio are printed (and written as JSON with --json).
The page cache holds the file in both (it is read once before timing).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.msid_training.data.face_dataset import open_training_data
from f2d_core.msid_training.data.loader import make_training_loader
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, GROUP, load_rgb
from tests.support.record_writer import write_record_folder

IDENTITIES = 100


def synthesise(count: int, seed: int = 0) -> list[tuple[bytes, float]]:
    """`count` (JPEG bytes, label) of 112x112 augmented crops of real photos, spread over IDENTITIES labels."""
    group = load_rgb(GROUP)
    sources = [load_rgb(ASTRONAUT)[20:230, 140:330], load_rgb(ALIGNED_CROP), group[: group.shape[0] // 2]]
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        rgb = sources[n % len(sources)]
        height, width = rgb.shape[:2]
        side = int(min(height, width) * rng.uniform(0.6, 0.95))
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(rgb[y : y + side, x : x + side]).resize((112, 112), Image.BILINEAR)
        pixels = np.clip(np.asarray(crop, np.int16) + rng.integers(-30, 31), 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "JPEG", quality=95)
        out.append((buffer.getvalue(), float(n % IDENTITIES)))
    return out


def straightforward(folder: Path, order: np.ndarray, batch: int) -> tuple[float, int]:
    """(seconds, images) of one process reading and decoding the epoch's records in order, batch by batch."""
    offsets = dict(
        (int(k), int(v)) for k, v in (line.split("\t") for line in (folder / "train.idx").read_text().splitlines())
    )
    start, images = time.perf_counter(), 0
    with open(folder / "train.rec", "rb") as f:
        for first in range(0, len(order) - batch + 1, batch):
            crops, labels = [], []
            for key in order[first : first + batch] + 1:  # image keys start at 1 after the meta record
                f.seek(offsets[int(key)])
                _, lrec = struct.unpack("<II", f.read(8))
                payload = f.read(lrec & ((1 << 29) - 1))
                flag, label = struct.unpack_from("<If", payload)
                if flag:
                    label = struct.unpack_from("<f", payload, 24)[0]
                image = Image.open(io.BytesIO(payload[24 + 4 * flag :])).convert("RGB")
                crops.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
                labels.append(int(label))
            torch.stack(crops), torch.tensor(labels)
            images += batch
    return time.perf_counter() - start, images


def with_loader(folder: Path, batch: int, workers: int, seed: int) -> tuple[float, float, int, np.ndarray]:
    """(start-up seconds, seconds from the first batch to the end, images after the first batch, epoch order)."""
    data = open_training_data(folder)
    loader = make_training_loader(data, batch, seed=seed, workers=workers, pin_memory=torch.cuda.is_available())
    order = loader.sampler.epoch_order().ravel()
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    images = 0
    for x, _ in iterator:
        images += len(x)
    return first - start, time.perf_counter() - first, images, order


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, os.cpu_count() or 1])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rec"
        made = time.perf_counter()
        write_record_folder(folder, synthesise(args.images, args.seed), IDENTITIES)
        size = (folder / "train.rec").stat().st_size
        made = time.perf_counter() - made
        print(f"record file: {args.images} JPEG crops, {size / 2**20:.1f} MiB, synthesised in {made:.1f} s")
        (folder / "train.rec").read_bytes()  # into the page cache for both ways
        results = {"images": args.images, "batch": args.batch, "cores": os.cpu_count(), "runs": []}
        results["load_average_before"] = os.getloadavg()
        order = None
        runs = []
        for workers in args.workers:
            startup, seconds, images, order = with_loader(folder, args.batch, workers, args.seed)
            runs.append({"workers": workers, "loader_images_per_s": images / seconds, "startup_s": startup})
        base_seconds, base_images = straightforward(folder, order, args.batch)
        base = base_images / base_seconds
        results["straightforward_images_per_s"] = base
        results["load_average_after"] = os.getloadavg()
        print(f"single-process PIL loop (read, decode, torch.stack): {base:8.0f} images/s")
        for run in runs:
            run["ratio"] = run["loader_images_per_s"] / base
            print(
                f"loader, {run['workers']:2d} workers: {run['loader_images_per_s']:8.0f} images/s "
                f"(start-up {run['startup_s']:.2f} s), {run['ratio']:.2f}x"
            )
        results["runs"] = runs
        before, after = results["load_average_before"], results["load_average_after"]
        print(f"load average (1, 5, 15 min): before {before}, after {after}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
