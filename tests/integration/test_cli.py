"""The headless entry points: cli/run_workflow.py against the session's server, cli/train_mapper.py under
torchrun (2 CPU ranks, gloo) on the tiny models, and the trainer's guards on ComfyUI objects (as a library).

Everything runs in subprocesses, as users run it; runs are 2-3 steps on 64 px crops.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from safetensors import safe_open

from f2d_core.checkpoints import load_mapper
from f2d_core.training.data.cache import module_fingerprint
from tests.support import synthetic_insightface as si
from tests.support.comfy_library_run import run_library_script
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import CHECKPOINT, PACK, training_graph
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, CAT, GROUP, load_rgb

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_WORKFLOW = REPO_ROOT / "cli" / "run_workflow.py"
TRAIN_MAPPER = REPO_ROOT / "cli" / "train_mapper.py"
SCRIPTS = Path(__file__).resolve().parent / "library_scripts"
BUNDLED_TRAINING = REPO_ROOT / "workflows" / "api" / "f2d_train_mapper.json"
FOLDER = "f2d_cli_faces"
TIMEOUT = 600
FACES_FOR_RANK_0 = 8  # 0.4-2 s each on a 2-core CPU (load-dependent), the first with the models' warm-up


def write_face_photos(folder: Path, count: int = 3) -> list[Path]:
    """Photos of `count` different "people" the synthetic detector finds."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"person_{i}.png" for i in range(count)]
    for path, texture in zip(paths, (ASTRONAUT, ALIGNED_CROP, CAT), strict=False):
        Image.fromarray(si.face_photo(load_rgb(texture))).save(path)
    return paths


def run_cli(argv: list[Any], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """A command as a user types it, in a clean environment (no PYTHONPATH pointing at this repo)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-10000:]}"


# ---- run_workflow.py ------------------------------------------------------------------------------


def fast_inputs(run_name: str, steps: int = 2, save_as: str = "f2d_cli_mapper") -> dict[str, dict[str, Any]]:
    """Inputs (per node type) that make the training workflow a seconds-long run on the test models."""
    return {
        "CheckpointLoaderSimple": {"ckpt_name": CHECKPOINT},
        "F2DLoadMSIDEncoder": {"msid_file": "msid.pt", "mapper_file": "mapping.pt", "insightface_pack": PACK},
        "F2DTrainingDataset": {"folder": FOLDER, "crop_size": 64, "expression_model": "(none: null_exp only)"},
        "F2DTrainMapper": {
            "steps": steps,
            "batch_size": 2,
            "loss": "reconstruction",
            "gradient_checkpointing": False,
            "run_name": run_name,
        },
        "F2DSaveMapper": {"name": save_as},
    }


def set_arguments(graph: dict, inputs: dict[str, dict[str, Any]]) -> list[str]:
    """`--set NODE_ID.input=value` for every node of the given types (strings plain, the rest as JSON)."""
    args = []
    for node_id, node in graph.items():
        for name, value in inputs.get(node["class_type"], {}).items():
            args += ["--set", f"{node_id}.{name}={value if isinstance(value, str) else json.dumps(value)}"]
    return args


def node_of(graph: dict, class_type: str) -> str:
    return next(nid for nid, node in graph.items() if node["class_type"] == class_type)


@pytest.fixture(scope="module")
def workflow(comfy_server: ComfyServer, comfy_models_dir: Path, tmp_path_factory) -> tuple[Path, dict]:
    """The bundled API training workflow when there is one, else the same graph built here; photos in the input."""
    write_face_photos(Path(comfy_server.input_dir) / FOLDER)
    if BUNDLED_TRAINING.exists():
        graph = json.loads(BUNDLED_TRAINING.read_text())
    else:
        graph = training_graph(FOLDER, "f2d_cli", save_as="f2d_cli_mapper")
    path = tmp_path_factory.mktemp("workflow") / "train_mapper_api.json"
    path.write_text(json.dumps(graph, indent=1))
    return path, graph


def run_workflow(server: ComfyServer, path: Path, *set_args: str, timeout: float = TIMEOUT):
    return run_cli([sys.executable, RUN_WORKFLOW, path, "--server", server.url, *set_args], timeout)


def test_set_values_are_json_when_they_parse_and_ui_workflows_are_refused(tmp_path):
    from cli.run_workflow import UsageError, apply_override, load_graph, parse_override

    graph = {"4": {"class_type": "F2DTrainMapper", "inputs": {"steps": 1, "run_name": "a"}}}
    cases = [("steps", "20", 20), ("steps", "1e-5", 1e-5), ("run_name", "0.5x", "0.5x"), ("run_name", '"7"', "7")]
    for name, text, expected in cases:
        apply_override(graph, parse_override(f"4.{name}={text}"))
        assert graph["4"]["inputs"][name] == expected
    apply_override(graph, parse_override('4.dataset=["3", 0]'), declared={"dataset"})  # optional, not in the file
    assert graph["4"]["inputs"]["dataset"] == ["3", 0]
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(UsageError, match="UI-format workflow"):
        load_graph(ui)


def test_run_workflow_trains_prints_losses_and_the_saved_file(comfy_server, workflow):
    path, graph = workflow
    done = run_workflow(comfy_server, path, *set_arguments(graph, fast_inputs("f2d_cli_train")), "--timeout", "500")
    assert done.returncode == 0, _output(done)
    trainer = node_of(graph, "F2DTrainMapper")
    steps = re.findall(rf"node {trainer} \(F2DTrainMapper\): step (\d+)/2  loss (\S+)$", done.stdout, re.M)
    assert steps and steps[-1][0] == "2", _output(done)
    assert all(math.isfinite(float(loss)) for _, loss in steps)
    saved = re.search(r"^output text node \S+ \(F2DSaveMapper\): (.+\.safetensors)$", done.stdout, re.M)
    assert saved, _output(done)
    with safe_open(saved.group(1), framework="pt") as f:
        assert f.metadata()["trained_steps"] == "2"
    load_mapper(saved.group(1))
    lines = done.stdout.splitlines()
    order = [next(i for i, line in enumerate(lines) if key in line) for key in ("queued prompt", "step 2/2", "done")]
    assert order == sorted(order) and lines[-1].endswith("done")


def test_run_workflow_rejects_bad_settings_readably_before_anything_runs(comfy_server, workflow):
    path, graph = workflow
    trainer = node_of(graph, "F2DTrainMapper")

    invalid = run_workflow(
        comfy_server, path, *set_arguments(graph, fast_inputs("never")), "--set", f"{trainer}.steps=0"
    )
    assert invalid.returncode == 2, _output(invalid)
    assert f"node {trainer} (F2DTrainMapper) input 'steps': Value 0 smaller than min of 1" in invalid.stderr

    unknown_node = run_workflow(comfy_server, path, "--set", "999.steps=1")
    assert unknown_node.returncode == 2
    assert "no node '999'" in unknown_node.stderr and f"{trainer} (F2DTrainMapper)" in unknown_node.stderr

    unknown_input = run_workflow(comfy_server, path, "--set", f"{trainer}.stepz=1")
    assert unknown_input.returncode == 2
    assert "has no input 'stepz'" in unknown_input.stderr and "learning_rate" in unknown_input.stderr

    malformed = run_workflow(comfy_server, path, "--set", "steps=3")
    assert malformed.returncode == 2 and "NODE_ID.input=value" in malformed.stderr


def test_run_workflow_reports_the_failing_node_and_its_exception(comfy_server, workflow):
    path, graph = workflow
    inputs = fast_inputs("never_runs")
    inputs["F2DTrainingDataset"]["folder"] = "f2d_cli_no_such_folder"
    done = run_workflow(comfy_server, path, *set_arguments(graph, inputs))
    assert done.returncode == 1, _output(done)
    dataset = node_of(graph, "F2DTrainingDataset")
    assert f"failed in node {dataset} (F2DTrainingDataset): DatasetError: Training folder" in done.stderr
    assert "f2d_cli_no_such_folder does not exist" in done.stderr


def _read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def _wait_for(lines: queue.Queue, process: subprocess.Popen, needle: str, deadline: float) -> str:
    """What the process printed up to the first line containing `needle`."""
    seen: list[str] = []
    while not any(needle in line for line in seen):
        assert time.monotonic() < deadline and process.poll() is None, "".join(seen)
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
    return "".join(seen)


def test_ctrl_c_cancels_the_prompt_on_the_server(comfy_server, workflow):
    path, graph = workflow
    argv = [sys.executable, RUN_WORKFLOW, path, "--server", comfy_server.url]
    argv += set_arguments(graph, fast_inputs("f2d_cli_ctrl_c", steps=100_000))
    process = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + TIMEOUT
        printed = _wait_for(lines, process, "(F2DTrainMapper) running", deadline)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    prompt_id = re.search(r"queued prompt (\S+)", printed).group(1)
    assert f"Ctrl-C: cancelled prompt {prompt_id}" in process.stderr.read()
    while (entry := comfy_server.history(prompt_id)) is None:  # the trainer stops at its next check
        assert time.monotonic() < deadline, "the interrupted prompt never finished"
        time.sleep(0.5)
    assert "execution_interrupted" in [event for event, _ in entry["status"]["messages"]]


# ---- train_mapper.py -------------------------------------------------------------------------------


def _rank_hashes(text: str) -> dict[str, tuple[str, str]]:
    """rank -> (mapper sha256, step) from the ranks' last lines."""
    found = re.findall(r"^\[rank (\d+)\] mapper sha256 (\w+) at step (\d+) \(completed\)$", text, re.M)
    return {rank: (digest, step) for rank, digest, step in found}


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _uneven_shares(folder: Path, faces: int) -> Path:
    """Photos that all fall to rank 0 of 2 (shares alternate through the sorted files), notes to rank 1.

    person_0.png, person_0_notes.txt, person_1.png, ...: rank 1's share is done at once and it waits
    for rank 0's detections, encodings and the packing: the wait a collective would time out in.
    """
    photos = [folder / f"person_{i}.png" for i in range(faces)]
    textures = (ASTRONAUT, ALIGNED_CROP, CAT, GROUP)
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(photos):
        Image.fromarray(si.face_photo(load_rgb(textures[i % len(textures)]))).save(path)
        path.with_name(f"{path.stem}_notes.txt").write_text("not a photo")
    return folder


def _seconds(pattern: str, text: str) -> float:
    found = re.search(pattern, text, re.M)
    assert found, text[-6000:]
    return float(found.group(1))


DIST_TIMEOUT_S = 2  # seconds a gloo collective may wait: less than rank 1 waits for rank 0's share


def test_train_mapper_on_two_cpu_ranks_outlives_a_short_timeout_writes_one_mapper_and_resumes(
    comfyui_path, comfy_models_dir, tmp_path
):
    models = comfy_models_dir / "face2diffusion"
    run_dir, out = tmp_path / "run", tmp_path / "trained_mapper.safetensors"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN_MAPPER]
    argv += ["--comfyui", comfyui_path, "--checkpoint", comfy_models_dir / "checkpoints" / CHECKPOINT]
    argv += ["--msid", models / "msid.pt", "--mapper", models / "mapping.pt"]
    argv += ["--insightface-root", comfy_models_dir / "insightface", "--pack", PACK]
    argv += ["--folder", _uneven_shares(tmp_path / "photos", FACES_FOR_RANK_0), "--crop-size", "64"]
    argv += ["--face-parser", models / "79999_iter.pth", "--expression-model", models / "epoch_20.pth"]
    argv += ["--batch-size", "2", "--loss", "reconstruction", "--run-dir", run_dir, "--out", out, "--cpu"]
    argv += ["--dist-timeout", str(DIST_TIMEOUT_S)]

    first = run_cli([*argv, "--steps", "2"])
    assert first.returncode == 0, _output(first)
    waited = _seconds(r"^\[rank 1\] waited (\S+) s for the other ranks' shares$", first.stderr)
    waited += _seconds(r"^\[rank 1\] waited (\S+) s for rank 0 to pack the training set", first.stderr)
    assert waited > DIST_TIMEOUT_S, _output(first)  # a collective there would have timed out
    assert re.search(rf"^\[rank 1\] prepared my share \({FACES_FOR_RANK_0} files\)", first.stderr, re.M), _output(first)
    hashes = _rank_hashes(first.stderr)
    assert set(hashes) == {"0", "1"} and hashes["0"] == hashes["1"], _output(first)  # DDP kept the ranks equal
    assert hashes["0"][1] == "2"
    trained = load_mapper(out)
    assert module_fingerprint(trained) == hashes["0"][0]  # the file holds what the ranks trained
    assert module_fingerprint(trained) != module_fingerprint(load_mapper(models / "mapping.pt"))
    meta = _metadata(out)
    settings = json.loads(meta["training_settings"])
    assert meta["trained_steps"] == "2"
    assert (settings["global_batch_size"], settings["batch_size"], settings["world_size"]) == (2, 1, 2)
    assert f"{FACES_FOR_RANK_0} of {2 * FACES_FOR_RANK_0} files usable" in meta["dataset_report"]
    mapped = re.search(r"^\[rank 1\] .*; mapping (\S+\.safetensors)$", first.stderr, re.M)
    assert mapped and Path(mapped.group(1)).parent.parent.parent == run_dir / "dataset_cache", _output(first)

    second = run_cli([*argv, "--steps", "3"])
    assert second.returncode == 0, _output(second)
    assert re.search(r"^\[rank 0\] Resuming from .*training_state.safetensors at step 2$", second.stderr, re.M)
    hashes = _rank_hashes(second.stderr)
    assert hashes["0"] == hashes["1"] and hashes["0"][1] == "3", _output(second)
    assert _metadata(out)["trained_steps"] == "3"
    assert module_fingerprint(load_mapper(out)) == hashes["0"][0]
    assert "0 computed" in _metadata(out)["dataset_report"]  # the second run read the first's cache
    with safe_open(str(run_dir / "training_state.safetensors"), framework="pt") as f:
        assert len(f.get_tensor("losses")) == 3


def test_each_rank_detects_faces_on_its_own_device(comfy_models_dir):
    import argparse

    import torch

    from cli.train_mapper import rank_detector
    from f2d_core.faces import face_detection

    args = argparse.Namespace(insightface_root=comfy_models_dir / "insightface", pack=PACK, det_size=640)
    detector = rank_detector(face_detection, args, torch.device("cpu"))
    assert detector.backend == "torch" and detector.device == torch.device("cpu")
    assert {p.device for p in detector._scrfd.net.parameters()} == {torch.device("cpu")}


def test_a_rank_that_fails_to_prepare_stops_the_others(comfyui_path, comfy_models_dir, tmp_path):
    models = comfy_models_dir / "face2diffusion"
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "readme.txt").write_text("no photos here")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", TRAIN_MAPPER]
    argv += ["--comfyui", comfyui_path, "--checkpoint", comfy_models_dir / "checkpoints" / CHECKPOINT]
    argv += ["--msid", models / "msid.pt", "--mapper", models / "mapping.pt"]
    argv += ["--insightface-root", comfy_models_dir / "insightface", "--pack", PACK, "--folder", tmp_path / "photos"]
    argv += [
        "--crop-size",
        "64",
        "--batch-size",
        "2",
        "--run-dir",
        tmp_path / "run",
        "--out",
        tmp_path / "m.safetensors",
    ]
    done = run_cli([*argv, "--cpu", "--steps", "1", "--dist-timeout", "4"], timeout=300)
    assert done.returncode != 0, _output(done)
    assert "No usable face photo among the 1 files" in done.stderr, _output(done)
    assert "[rank 1] stopping: rank 0 could not prepare the training set: DatasetError" in done.stderr, _output(done)
    assert "Traceback" not in done.stderr.split("rank 0 could not prepare")[0], _output(done)


# ---- the trainer with ComfyUI as a library ------------------------------------------------------------


def test_trainer_skips_nan_steps_stops_when_diverged_and_leaves_the_models_alone(
    comfyui_path, comfy_models_dir, tmp_path
):
    photos = write_face_photos(tmp_path / "photos", 2)
    steps, max_bad_steps = 3, 2
    result = run_library_script(
        SCRIPTS / "train_guards.py",
        comfyui_path,
        checkpoint=str(comfy_models_dir / "checkpoints" / CHECKPOINT),
        photos=[str(p) for p in photos],
        work_dir=str(tmp_path),
        steps=steps,
        max_bad_steps=max_bad_steps,
    )
    mixed = result["nan_sample"]
    assert 0 < len(mixed["nan_steps"]) < steps
    assert (mixed["status"], mixed["step"]) == ("completed", steps)
    assert len(mixed["losses"]) == steps - len(mixed["nan_steps"])  # only the NaN batches were skipped
    assert all(math.isfinite(loss) for loss in mixed["losses"])
    assert mixed["mapper_changed"] and mixed["mapper_finite"]

    diverged = result["diverged"]
    assert diverged["status"] == "diverged"
    assert diverged["good_steps"] < diverged["step"] <= diverged["good_steps"] + max_bad_steps
    assert len(diverged["losses"]) == diverged["good_steps"]
    before, after = diverged["state_before"], diverged["state_after"]
    assert after["tensors"] == before["tensors"]  # the last good mapper, moments and losses are kept
    # checkpoint_every=1: each skipped step before the run stopped still wrote its checkpoint (issue 13, 10b)
    assert before["step"] == diverged["good_steps"] and after["step"] == diverged["good_steps"] + max_bad_steps - 1

    scale = result["loss_scale"]  # issue 13, 10a: the fp16 loss scale is part of the resumable state
    assert scale["status"] == "completed"
    assert json.loads(scale["saved"]) == {"scale": 2.0**10, "finite_steps": 2}
    assert scale["after_resume"] == {"scale": 2.0**10, "finite_steps": 3}
    assert diverged["mapper_finite"]

    assert result["frozen"]["after"] == result["frozen"]["before"]  # the user's UNet and text encoder
    assert result["vae"]["after"] == result["vae"]["before"]
