"""The paper's evaluation in one command: generate through a running ComfyUI, score, tabulate, plot.

    # in the folder that holds ComfyUI/ (any folder works: paths are relative to where you run it)
    python ComfyUI/custom_nodes/comfyui-face2diffusion/cli/benchmark.py --server http://127.0.0.1:8188 \\
        --faces my_faces/ --checkpoint sd-v1-4.ckpt \\
        --insightface-root ComfyUI/models/insightface \\
        --recognizer ComfyUI/models/insightface/models/buffalo_l/w600k_r50.onnx \\
        --clip ComfyUI/models/clip_scoring/CLIP-ViT-H-14-laion2B-s32B-b79K --out benchmark/

For every setting (official, identity_start, expression, pooling, freecure; `--freecure-omegas 0.5 1.0 2.0`
sweeps its mask weight), face photo (one per person) and
prompt (default: the paper's 40), it generates `--seeds` images (paper: 4) with the paper's sampler
(Euler ancestral, 30 steps, CFG 7, 512x512, empty negative) plus one "A photo of f l" image per face
for directional CLIP. It writes `images/`, `results.csv` (one row per image), `results.md` (the
paper's Table 1 layout, one row per setting, and the best-of-N curve), `identity_vs_text.png` and
`best_of_n.png`. A rerun continues where it stopped: finished batches are kept, never regenerated.

Exit codes: 0 done; 1 the server or a node failed; 2 bad input (faces, prompts, models); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cli.benchmark_graph import (  # noqa: E402
    FREECURE,
    SETTINGS,
    Models,
    Sampling,
    freecure_omega,
    freecure_settings,
    generation_graph,
)
from cli.benchmark_server import ComfyClient, ServerError  # noqa: E402
from cli.help_format import DefaultsHelp  # noqa: E402
from cli.server_address import server_address  # noqa: E402
from f2d_core.atomic_io import atomic_write  # noqa: E402
from f2d_core.errors import F2DError, NoFaceError  # noqa: E402
from f2d_core.evaluation import benchmark_table, plots  # noqa: E402
from f2d_core.evaluation.benchmark_records import read_rows, write_rows  # noqa: E402
from f2d_core.evaluation.best_of_n import geometric_mean, harmonic_mean  # noqa: E402
from f2d_core.evaluation.clip_models import check_prompts, load_clip_scorer  # noqa: E402
from f2d_core.evaluation.clip_score import clip_scores, directional_clip_scores  # noqa: E402
from f2d_core.evaluation.face_similarity import identity_scores, largest_face_crops, person_embedding  # noqa: E402
from f2d_core.evaluation.paper_prompts import PAPER_PROMPTS, REFERENCE_IMAGE_PROMPT  # noqa: E402
from f2d_core.evaluation.recognition import load_face_recognizer  # noqa: E402
from f2d_core.faces.face_detection import FaceDetector  # noqa: E402
from f2d_core.training.run_identity import run_dir_spelling  # noqa: E402

log = logging.getLogger("f2d.benchmark")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REFERENCE = -1  # prompt_index of the "A photo of f l" image


class UsageError(Exception):
    """Bad faces folder, prompt list or settings: nothing was generated."""


@dataclass(frozen=True)
class Job:
    """One queued batch: a setting, a face, a prompt (or the reference image), and the files it writes."""

    setting: str
    face: str
    prompt_index: int
    prompt: str
    seed: int
    files: tuple[Path, ...]

    def done(self) -> bool:
        return all(f.is_file() for f in self.files)


def face_photos(folder: Path) -> dict[str, Path]:
    """{person name (file stem): photo} of the faces folder; UsageError when there is none."""
    if not folder.is_dir():
        raise UsageError(f"faces folder {folder} does not exist: give a folder with one photo per person")
    photos = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES}
    if not photos:
        raise UsageError(f"faces folder {folder} holds no photos ({', '.join(PHOTO_SUFFIXES)}); one per person")
    return photos


def read_prompts(path: Path | None) -> list[str]:
    """The prompt list (one per line; '#' comments and blank lines skipped), default the paper's 40."""
    if path is None:
        return list(PAPER_PROMPTS)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise UsageError(f"the prompt list {path} is empty: write one prompt per line, each with 'f l'")
    missing = [p for p in prompts if " f l" not in f" {p} ".replace("(", " ").replace(")", " ")]
    if missing:
        raise UsageError(f"prompts without the identifier 'f l' (where the person goes): {missing[:3]}")
    return check_prompts(prompts)


def plan(settings: list[str], faces: dict[str, Path], prompts: list[str], seeds: int, base_seed: int, out: Path):
    """Every batch in order: per setting and face the reference image first, then each prompt's seeds."""
    jobs = []
    for setting in settings:
        for face in faces:
            folder = out / "images" / setting / face
            jobs.append(Job(setting, face, REFERENCE, REFERENCE_IMAGE_PROMPT, base_seed, (folder / "reference.png",)))
            for i, prompt in enumerate(prompts):
                files = tuple(folder / f"p{i:02d}_s{k}.png" for k in range(seeds))
                jobs.append(Job(setting, face, i, prompt, base_seed + 1 + i, files))
    return jobs


# (node, input, --flag, models folder) of each model name the generation graph passes to the server.
MODEL_INPUTS = {
    "checkpoint": ("CheckpointLoaderSimple", "ckpt_name", "--checkpoint", "checkpoints"),
    "msid": ("F2DLoadMSIDEncoder", "msid_file", "--msid", "face2diffusion"),
    "mapper": ("F2DLoadMSIDEncoder", "mapper_file", "--mapper", "face2diffusion"),
    "pack": ("F2DLoadMSIDEncoder", "insightface_pack", "--pack", "insightface/models"),
}


def check_models(client: ComfyClient, models: Models) -> None:
    """UsageError naming the flag when a model name is not one the server lists (before anything is queued)."""
    for field_name, (node, name, flag, folder) in MODEL_INPUTS.items():
        value, options = getattr(models, field_name), client.combo_options(node, name)
        if options and value not in options:
            shown = ", ".join(options[:8]) + (", ..." if len(options) > 8 else "")
            raise UsageError(
                f"{flag} {value}: the server has no such file in ComfyUI/models/{folder}. Give one of the names it "
                f"lists: {shown}"
            )


def available_settings(client: ComfyClient, wanted: list[str], models: Models) -> list[str]:
    """The settings this server can run; the others are skipped with the reason."""
    usable = []
    for setting in wanted:
        if setting == "identity_start" and not client.has_input("F2DApplyTokens", "identity_start"):
            log.warning(
                "skipping setting 'identity_start': Apply F2D Tokens on this server has no identity_start input "
                "(it comes with the several-people nodes of a newer pack version)"
            )
            continue
        if freecure_omega(setting) is not None:
            if not client.has_input("F2DFreeCureSampler", "mask_weight"):
                log.warning("skipping setting %r: this server's pack has no F2D FreeCure Sampler", setting)
                continue
            if models.face_parser not in client.combo_options("F2DFreeCureSampler", "face_parser"):
                log.warning(
                    "skipping setting %r: %s is not in the server's models/face2diffusion (BiSeNet 79999_iter.pth of "
                    "face-parsing.PyTorch)",
                    setting,
                    models.face_parser,
                )
                continue
        if setting == "expression" and models.expression_model not in client.combo_options(
            "F2DExpressionReference", "expression_model"
        ):
            log.warning(
                "skipping setting 'expression': %s is not in the server's models/face2diffusion "
                "(Deep3DFaceRecon's epoch_20.pth; see the README's Models table)",
                models.expression_model,
            )
            continue
        usable.append(setting)
    return usable


class Scorer:
    """Identity (ArcFace ONNX through torch) and, with a CLIP folder, CLIP and directional CLIP."""

    def __init__(self, args: argparse.Namespace, faces: dict[str, Path]) -> None:
        self.detector = FaceDetector(args.insightface_root, args.pack)
        self.recognizer = load_face_recognizer(args.recognizer)
        self.clip = load_clip_scorer(args.clip) if args.clip else None
        self.references = {}
        for name, path in faces.items():
            rgb = _rgb(path)
            try:
                crops = largest_face_crops(self.detector, self.recognizer, [rgb])
            except NoFaceError as exc:
                raise UsageError(f"face photo {path}: {exc}") from exc
            self.references[name] = person_embedding(self.recognizer, crops)[None]

    def score(self, job: Job, reference_image: Path) -> list[dict[str, object]]:
        images = torch.stack([torch.from_numpy(_rgb(f)).float() / 255 for f in job.files])
        scored = identity_scores(self.detector, self.recognizer, images, self.references[job.face])
        identity, found = scored.scores, scored.face_found.tolist()
        if self.clip is not None:
            clip = clip_scores(self.clip, images, [job.prompt])
            ref = torch.from_numpy(_rgb(reference_image)).float()[None] / 255
            dclip = directional_clip_scores(self.clip, images, [job.prompt], ref)
            parts = (identity, clip, dclip)
        else:
            clip = dclip = torch.full_like(identity, math.nan)
            parts = (identity,)
        hmean, gmean = harmonic_mean(*parts), geometric_mean(*parts)
        return [
            {"setting": job.setting, "face": job.face, "prompt_index": job.prompt_index, "prompt": job.prompt,
             "seed": job.seed, "batch_index": k, "image": str(f), "face_found": int(found[k]),
             "identity": f"{identity[k]:.6f}", "clip": f"{clip[k]:.6f}", "dclip": f"{dclip[k]:.6f}",
             "hmean": f"{hmean[k]:.6f}", "gmean": f"{gmean[k]:.6f}"}
            for k, f in enumerate(job.files)
        ]  # fmt: skip


def _rgb(path: Path):
    """A photo as a writable HxWx3 uint8 array (np.asarray of a PIL image is read-only, and torch warns)."""
    import numpy as np

    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def generate(client: ComfyClient, job: Job, face_input: str, models: Models, sampling: Sampling, args) -> None:
    """Queue one batch and save its images atomically under the job's file names."""
    prefix = f"f2d_benchmark/{job.setting}_{job.face}_{job.prompt_index}"
    graph = generation_graph(
        job.setting, face_input, job.prompt, job.seed, len(job.files), models, sampling, prefix, args.identity_start
    )
    images = client.images(client.run(graph, args.timeout), "10")
    if len(images) != len(job.files):
        raise ServerError(f"expected {len(job.files)} images for {job}, the server saved {len(images)}")
    for image, path in zip(images, job.files, strict=True):
        atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))


def write_report(rows: list[dict], out: Path, note: str) -> None:
    """results.md (Table 1 layout, best-of-N, the paper's table) and the two plots."""
    summaries = benchmark_table.summarize(rows)
    curves = benchmark_table.best_of_n_by_setting(rows)
    text = "\n\n".join(
        [
            "# Face2Diffusion benchmark" + (f"\n\n{note}" if note else ""),
            "## Results (the paper's Table 1 layout; ArcFace identity)\n\n" + benchmark_table.results_table(summaries),
            "## Best of N (mean hMean of the best of N images by hMean; — : fewer seeds than N)\n\n"
            + benchmark_table.best_of_n_table(curves),
            "## The paper's Table 1 (three recognisers, SigLIP; not the same columns)\n\n"
            + benchmark_table.PAPER_TABLE_1,
        ]
    )
    atomic_write(out / "results.md", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    points = {s.setting: (s.means["identity"], s.means["clip"]) for s in summaries}
    if all(not math.isnan(y) for _, y in points.values()):
        plots.identity_vs_text_plot(points, out / "identity_vs_text.png", note)
    plots.best_of_n_plot(curves, out / "best_of_n.png", note)
    log.info("%s", text)


def expand_settings(settings: list[str], omegas: list[float]) -> list[str]:
    """'freecure' becomes one setting per omega of the sweep ([0.5] keeps the plain name 'freecure')."""
    if omegas == [0.5]:
        return list(settings)
    out = []
    for setting in settings:
        out += freecure_settings(omegas) if setting == FREECURE else [setting]
    return out


def run(args: argparse.Namespace) -> int:
    faces = face_photos(args.faces)
    prompts = read_prompts(args.prompts)
    if args.seeds < 1:
        raise UsageError("--seeds must be at least 1 (the paper: 4)")
    models = Models(args.checkpoint, args.msid, args.mapper, args.pack, args.expression_model, args.face_parser)
    sampling = Sampling(args.size, args.steps, args.cfg)
    client = ComfyClient(args.server)
    check_models(client, models)
    settings = available_settings(client, expand_settings(args.settings, args.freecure_omegas), models)
    if not settings:
        raise UsageError("none of the chosen settings can run on this server (see the messages above)")
    scorer = Scorer(args, faces)
    inputs = {name: client.upload(path, f"f2d_benchmark_{name}{path.suffix.lower()}") for name, path in faces.items()}
    csv_path = args.out / "results.csv"
    rows = [r for r in read_rows(csv_path) if r["setting"] in settings]
    scored = {r["image"] for r in rows}
    jobs = plan(settings, faces, prompts, args.seeds, args.seed, args.out)
    finished = sum(job.done() for job in jobs)
    if finished:
        log.info("resuming: %d of %d batches already generated", finished, len(jobs))
    progress = tqdm(total=len(jobs), initial=finished, unit="batch", desc="benchmark", file=sys.stderr)
    try:
        for job in jobs:
            if not job.done():
                generate(client, job, inputs[job.face], models, sampling, args)
                progress.update(1)
            if job.prompt_index != REFERENCE and not all(str(f) in scored for f in job.files):
                reference = args.out / "images" / job.setting / job.face / "reference.png"
                new = scorer.score(job, reference)
                rows += new
                scored |= {str(r["image"]) for r in new}
                write_rows(csv_path, rows)
    except KeyboardInterrupt:
        client.interrupt()
        progress.close()
        log.error("interrupted: %d of %d batches done; run the same command again to continue", progress.n, len(jobs))
        return EXIT_INTERRUPTED
    progress.close()
    write_report(rows, args.out, args.note)
    log.info("wrote %s, %s and the plots in %s", csv_path, args.out / "results.md", args.out)
    return EXIT_OK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Face2Diffusion's evaluation: generate, score, tabulate, plot. Runs from any folder.",
        formatter_class=DefaultsHelp,
    )
    p.add_argument(
        "--server",
        type=server_address,
        default="http://127.0.0.1:8188",
        help="A running ComfyUI with this pack: host:port or http://host:port.",
    )
    p.add_argument("--faces", type=Path, required=True, help="Folder with one photo per person.")
    p.add_argument("--prompts", type=Path, help="Text file, one prompt with 'f l' per line (default: the paper's 40).")
    p.add_argument("--seeds", type=int, default=4, help="Images per prompt (the paper: 4; 16 for the whole best-of-N).")
    p.add_argument("--seed", type=int, default=0, help="Base seed; prompt i uses seed + 1 + i for every setting.")
    p.add_argument("--checkpoint", required=True, help="SD1.x checkpoint name as the server lists it.")
    p.add_argument("--msid", default="msid.pt", help="MSID encoder as the server lists it (models/face2diffusion).")
    p.add_argument("--mapper", default="mapping.pt", help="Mapper file as the server lists it (models/face2diffusion).")
    p.add_argument("--pack", default="buffalo_l", help="insightface pack (detector) on the server and here.")
    p.add_argument(
        "--expression-model", default="epoch_20.pth", help="Deep3DFaceRecon model for the expression setting."
    )
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS, help="Settings to compare.")
    p.add_argument("--identity-start", type=float, default=0.2, help="identity_start of that setting.")
    p.add_argument(
        "--freecure-omegas",
        type=float,
        nargs="+",
        default=[0.5],
        help="Mask weights of the freecure setting; several = a sweep, one row each (e.g. 0.5 1.0 2.0).",
    )
    p.add_argument(
        "--face-parser", default="79999_iter.pth", help="BiSeNet face parser as the server lists it (freecure setting)."
    )
    p.add_argument("--insightface-root", type=Path, required=True, help="Folder holding models/<pack>/ (scoring).")
    p.add_argument("--recognizer", type=Path, required=True, help="ArcFace ONNX, e.g. .../buffalo_l/w600k_r50.onnx.")
    p.add_argument("--clip", type=Path, help="CLIP folder (transformers or open_clip); without it identity only.")
    p.add_argument("--size", type=int, default=512, help="Image width and height in pixels (the paper: 512).")
    p.add_argument("--steps", type=int, default=30, help="Sampler steps (the paper: 30, Euler ancestral).")
    p.add_argument("--cfg", type=float, default=7.0, help="Classifier-free guidance scale (the paper: 7).")
    p.add_argument("--timeout", type=float, default=3600, help="Seconds one batch may take.")
    p.add_argument("--note", default="", help="A line printed on the plots and the table (e.g. which models).")
    p.add_argument("--out", type=run_dir_spelling, required=True, help="Output folder (a rerun continues in it).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with logging_redirect_tqdm():  # log lines (detector, scores) are written above the progress bar
            return run(args)
    except (UsageError, F2DError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except ServerError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
