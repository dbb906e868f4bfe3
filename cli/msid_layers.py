"""The paper's Fig. 4 for one or more identity encoders: verification AUC and accuracy per tapped layer.

    python cli/msid_layers.py --encoder msid.pt --pairs lfw.bin --out runs/fig4
    python cli/msid_layers.py --encoder MSID=msid_ms1mv3.safetensors \\
        --encoder ArcFace=plain_arcface_ms1mv3.safetensors --pairs agedb_30.bin --out runs/fig4_agedb
    python cli/msid_layers.py --encoder msid.pt --pairs ~/held_out_identities --max-pairs 2000 --out runs/held

`--pairs` is an insightface verification file (lfw.bin, cfp_fp.bin, agedb_30.bin: read through a
restricted unpickler, nothing in it runs) or a folder with one subfolder per identity (aligned 112x112
crops, or photos aligned with the pack's detector given --insightface-root), from which as many
same-identity as different-identity pairs are drawn with --seed. For each encoder and each tapped layer
(the paper's layers 3, 6, 9, 12 for msid.pt) and the concatenated v_id, the cosine similarity of every
pair gives the verification AUC and best-threshold accuracy. Written to --out: `layers.md` (the table, the
paper's numbers beside ours), `layers.json` (the same numbers), and per encoder one histogram PNG per layer
(same vs different identity, as Fig. 4) and `<name>_layers.png` with all of them on one grid.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

if not __package__:  # run as a script: f2d_core never imports ComfyUI, so the repository root may go on the path
    sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from f2d_core.atomic_io import atomic_write
from f2d_core.errors import F2DError

log = logging.getLogger("f2d.msid_layers")

EXIT_FAILED = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_FOLDER_PAIRS = 6000  # LFW's count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description="Verification AUC and accuracy of an identity encoder's tapped layers (Face2Diffusion Fig. 4)."
    )
    p.add_argument(
        "--encoder",
        action="append",
        required=True,
        metavar="[NAME=]FILE",
        help="An MSID encoder: the official msid.pt, a .safetensors from cli/train_msid.py (MSID or the "
        "plain_arcface baseline). Repeat to compare several in one table; NAME labels its columns "
        "(default: the file name without extension).",
    )
    p.add_argument(
        "--pairs",
        type=Path,
        required=True,
        help="Verification pairs: an insightface .bin (lfw.bin, cfp_fp.bin, agedb_30.bin) or a folder with "
        "one subfolder per held-out identity (aligned 112x112 crops or photos).",
    )
    p.add_argument("--out", type=Path, required=True, help="Folder for layers.md, layers.json and the PNGs.")
    p.add_argument(
        "--max-pairs",
        type=int,
        default=None,
        help="Pairs to score, half same and half different identity. A .bin: a seeded subset (default: all "
        "its pairs). A folder: the pairs drawn (default: 6000, LFW's count, or as many as the folder allows).",
    )
    p.add_argument("--seed", type=int, default=0, help="Seeds the pairs drawn from a folder or the subset of a .bin.")
    p.add_argument("--batch-size", type=int, default=256, help="Faces encoded at once.")
    p.add_argument(
        "--device",
        default=None,
        help="Where the encoders run, e.g. cuda, cuda:1, cpu (default: cuda when available, else cpu).",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="fp32",
        help="fp32, or bf16 autocast on a GPU that has it (faster; AUC differs in the last digits).",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="Aligned-crop cache for a folder of photos (default: none)."
    )
    p.add_argument(
        "--insightface-root",
        type=Path,
        default=None,
        help="Folder holding models/<pack>/: needed only to align a folder of photos that are not 112x112 crops.",
    )
    p.add_argument("--pack", default="buffalo_l", help="insightface pack whose detector aligns loose photos.")
    p.add_argument("--det-size", type=int, default=640, help="Face detector input size.")
    return p.parse_args(argv)


def named_encoders(specs: list[str]) -> dict[str, Path]:
    """'NAME=FILE' or 'FILE' -> {name: path}; names made unique (stem, stem_2, ...)."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        path = Path(file if sep else spec).expanduser()
        name = name if sep else path.stem
        unique, k = name, 2
        while unique in out:
            unique, k = f"{name}_{k}", k + 1
        out[unique] = path
    return out


def open_pairs(args: argparse.Namespace, device: torch.device):
    """The VerificationSet of --pairs: a .bin file, or pairs drawn from an identity folder."""
    from f2d_core.msid_training.verification.bin_file import read_verification_bin
    from f2d_core.msid_training.verification.pairs import pairs_available, pairs_from_dataset

    path = args.pairs.expanduser()
    if path.is_file():
        return read_verification_bin(path, max_pairs=args.max_pairs, seed=args.seed)
    from f2d_core.msid_training.data.face_dataset import open_training_data

    detector = None
    if args.insightface_root is not None:
        from f2d_core.faces.face_detection import FaceDetector

        detector = FaceDetector(args.insightface_root, args.pack, det_size=args.det_size, device=device)
    data = open_training_data(path, cache_dir=args.cache_dir, detector=detector)
    available = pairs_available(data.labels)
    if args.max_pairs is None:
        per_kind = min(DEFAULT_FOLDER_PAIRS // 2, available)
        if per_kind < DEFAULT_FOLDER_PAIRS // 2:
            log.info("%s allows %d pairs of each kind: scoring %d + %d pairs", path, available, per_kind, per_kind)
    else:
        per_kind = args.max_pairs // 2
        if per_kind > available:
            raise F2DError(
                f"--max-pairs {args.max_pairs}: {path} allows only {available} same-identity and {available} "
                f"different-identity pairs; lower --max-pairs to at most {2 * available} (or leave it out to use "
                "them all), or hold out more identities with at least two photos each."
            )
    if per_kind < 1:
        raise F2DError(
            f"--pairs {path}: no pairs can be drawn from it (it needs at least two identities, one of them with two "
            "photos or more); hold out more identities."
        )
    return pairs_from_dataset(data, per_kind, seed=args.seed)


def run(args: argparse.Namespace) -> dict:
    """Analyse every encoder on the pairs and write the outputs; returns what layers.json holds."""
    from f2d_core.msid_training.encoder_file import load_msid_any_size
    from f2d_core.msid_training.verification.layer_analysis import analyse_layers, layer_table, write_layer_plots

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoders = named_encoders(args.encoder)
    for path in encoders.values():  # before the (possibly long) decoding of the pairs
        if not path.is_file():
            raise F2DError(f"--encoder {path}: the file does not exist.")
    pairs = open_pairs(args, device)
    log.info(
        "%d pairs (%d same identity) of %d faces from %s",
        len(pairs),
        int(pairs.same.sum()),
        len(pairs.faces),
        pairs.source,
    )
    results, summary = {}, {"pairs": pairs.source, "encoders": {}}
    for name, path in encoders.items():
        encoder = load_msid_any_size(path)
        log.info("%s (%s): taps after blocks %s", name, path, ", ".join(map(str, encoder.tap_blocks)))
        results[name] = analyse_layers(encoder, pairs, args.batch_size, device, DTYPES[args.dtype])
        write_layer_plots(name, results[name], args.out)
        summary["encoders"][name] = {
            "file": str(path),
            "layers": {
                r.name: {
                    "auc": r.metrics.auc,
                    "accuracy": r.metrics.accuracy,
                    "threshold": r.metrics.threshold,
                    "ten_fold_accuracy": None if r.metrics.folded is None else r.metrics.folded.mean,
                    "ten_fold_std": None if r.metrics.folded is None else r.metrics.folded.std,
                }
                for r in results[name]
            },
        }
        del encoder
    table = layer_table(results, pairs.source)
    atomic_write(args.out / "layers.md", lambda tmp: tmp.write_text(table, encoding="utf-8"))
    atomic_write(args.out / "layers.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8"))
    log.info("\n%s\nwritten to %s", table, args.out)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point: a known problem (missing file, unsafe .bin, too few pairs) is one line, not a traceback."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run(args)
    except F2DError as e:
        log.error("%s", e)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
