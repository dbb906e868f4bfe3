"""cli/benchmark.py end to end on the test server: 2 faces x 2 prompts x 2 seeds, interrupted and resumed."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import CHECKPOINT, PACK
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb

REPO_ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ("official", "identity_start", "pooling")
PROMPTS = ["A photo of f l as a knight", "A photo of f l at the Grand Canyon in sunset"]


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))).save(faces / "alice.png")
    Image.fromarray(si.face_photo(load_rgb(ALIGNED_CROP))).save(faces / "bob.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two of the paper's prompts\n" + "\n".join(PROMPTS) + "\n")
    return {"faces": faces, "prompts": prompts, "out": tmp_path / "out"}


def command(server: ComfyServer, models: Path, inputs: dict[str, Path], **extra: str) -> list[str]:
    args = {
        "--server": server.url,
        "--faces": str(inputs["faces"]),
        "--prompts": str(inputs["prompts"]),
        "--seeds": "2",
        "--checkpoint": CHECKPOINT,
        "--insightface-root": str(models / "insightface"),
        "--recognizer": str(models / "insightface" / "models" / PACK / "w600k_r50.onnx"),
        "--clip": str(models / "clip_scoring" / "tiny_clip"),
        "--size": "64",
        "--steps": "2",
        "--note": "tiny test models: plumbing only, the numbers mean nothing",
        "--out": str(inputs["out"]),
        **extra,
    }
    flat = [x for kv in args.items() for x in kv]
    # Three settings keep the test short on a shared CPU; "expression" runs the same way with one more node.
    return [sys.executable, str(REPO_ROOT / "cli" / "benchmark.py"), *flat, "--settings", *SETTINGS]


def test_benchmark_runs_resumes_after_an_interrupt_and_reports(comfy_server, comfy_models_dir, inputs) -> None:
    cmd = command(comfy_server, comfy_models_dir, inputs)
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    images = inputs["out"] / "images"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not list(images.glob("*/*/p*_s*.png")):
        assert first.poll() is None, first.communicate()[0]
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)
    log_1 = first.communicate(timeout=300)[0]
    assert first.returncode == 130, log_1
    assert "run the same command again to continue" in log_1
    kept = {p: p.stat().st_mtime_ns for p in images.rglob("*.png")}
    assert kept

    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    log_2 = second.stdout + second.stderr
    assert second.returncode == 0, log_2
    assert "resuming:" in log_2 and "batches already generated" in log_2
    assert "skipping setting" not in log_2  # Apply F2D Tokens has identity_start: every setting runs
    assert "batch/s" in log_2 or "s/batch" in log_2  # tqdm's progress bar with its time estimate
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items()), "finished batches were regenerated"

    with open(inputs["out"] / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 2 * 2  # settings x faces x prompts x seeds
    assert {r["setting"] for r in rows} == set(SETTINGS)
    assert len({r["image"] for r in rows}) == len(rows) and all(Path(r["image"]).is_file() for r in rows)
    report = (inputs["out"] / "results.md").read_text()
    assert "| setting | identity | CLIP | dCLIP | hMean | gMean | faces found | images |" in report
    for setting in SETTINGS:
        assert f"| {setting} | " in report
    assert "| setting | N=1 | N=2 | N=4 | N=8 | N=16 |" in report and "| — | — | — |" in report
    assert "| Face2Diffusion | 0.3143 |" in report
    for plot in ("identity_vs_text.png", "best_of_n.png"):
        with Image.open(inputs["out"] / plot) as image:
            assert image.size == (560, 400)


def test_bad_benchmark_inputs_are_named(comfy_server, comfy_models_dir, inputs) -> None:
    inputs["prompts"].write_text("# nothing but a comment\n\n")
    done = subprocess.run(command(comfy_server, comfy_models_dir, inputs), capture_output=True, text=True)
    assert done.returncode == 2 and "prompts.txt is empty" in done.stderr
    empty = inputs["faces"].parent / "no_faces"
    empty.mkdir()
    done = subprocess.run(
        command(comfy_server, comfy_models_dir, {**inputs, "faces": empty}), capture_output=True, text=True
    )
    assert done.returncode == 2 and "holds no photos" in done.stderr


def test_a_wrong_checkpoint_is_a_sentence_naming_the_flag(comfy_server, comfy_models_dir, inputs) -> None:
    cmd = command(comfy_server, comfy_models_dir, inputs, **{"--checkpoint": "sd-v1-4.ckpt"})
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=inputs["out"].parent, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "--checkpoint sd-v1-4.ckpt: the server has no such file in ComfyUI/models/checkpoints" in done.stderr
    assert CHECKPOINT in done.stderr and "{" not in done.stderr and "node_errors" not in done.stderr


def test_a_graph_the_server_rejects_is_told_in_lines_not_json(comfy_server, inputs) -> None:
    """What reaches POST /prompt wrong anyway (e.g. a file removed meanwhile): node, input and value."""
    from cli.benchmark_graph import Models, Sampling, generation_graph
    from cli.benchmark_server import ComfyClient, ServerError

    graph = generation_graph("official", "x.png", PROMPTS[0], 0, 1, Models("sd-v1-4.ckpt"), Sampling(64, 1), "rej")
    with pytest.raises(ServerError) as info:
        ComfyClient(comfy_server.url).run(graph, timeout=60)
    message = str(info.value)
    assert "node 1 (CheckpointLoaderSimple) input 'ckpt_name'" in message and "sd-v1-4.ckpt" in message
    assert "node_errors" not in message and '"' not in message


def test_the_expression_settings_graph_runs(comfy_server, inputs) -> None:
    """The benchmark's "expression" graph (Expression Reference from the face photo) runs on the server."""
    from cli.benchmark_graph import Models, Sampling, generation_graph

    face = comfy_server.upload_image(inputs["faces"] / "alice.png", "f2d_bench_expression_face.png")
    graph = generation_graph("expression", face, PROMPTS[0], 0, 1, Models(CHECKPOINT), Sampling(64, 1), "bench_expr")
    assert graph["5"]["inputs"]["expression"] == ["11", 0]
    history = comfy_server.run(graph, timeout=600)
    assert [image.size for image in comfy_server.output_images(history, "10")] == [(64, 64)]


def test_the_freecure_omega_sweep_expands_and_its_graph_runs(comfy_server, inputs) -> None:
    """`--freecure-omegas 0.5 1.0 2.0` gives one setting (one Table 1 row) per omega; such a setting's graph
    samples with the F2D FreeCure Sampler at that mask weight, on the server."""
    from cli.benchmark import expand_settings
    from cli.benchmark_graph import Models, Sampling, generation_graph

    assert expand_settings(["official", "freecure"], [0.5]) == ["official", "freecure"]
    assert expand_settings(["official", "freecure"], [0.5, 1.0, 2.0]) == [
        "official", "freecure_omega0.5", "freecure_omega1", "freecure_omega2",
    ]  # fmt: skip
    face = comfy_server.upload_image(inputs["faces"] / "alice.png", "f2d_bench_freecure_face.png")
    prompt = "A photo of f l with red hair, wearing sunglasses"
    graph = generation_graph("freecure_omega2", face, prompt, 0, 1, Models(CHECKPOINT), Sampling(64, 1), "bench_fc")
    assert graph["8"]["class_type"] == "F2DFreeCureSampler" and graph["8"]["inputs"]["mask_weight"] == 2.0
    assert "5" not in graph and graph["9"]["inputs"]["samples"] == ["8", 0]
    history = comfy_server.run(graph, timeout=600)
    assert [image.size for image in comfy_server.output_images(history, "10")] == [(64, 64)]
