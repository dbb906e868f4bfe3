"""Train / Save F2D Mapper through a real ComfyUI server: what they refuse, and what a resume keeps.

- a 9-channel inpainting UNet and a v-prediction model are refused before training starts;
- a resume whose run identity (dataset, starting mapper, loss, batch, seed, world size) differs is
  refused with what differs and a free run name; a new learning rate wins over the saved one and the
  log says so; a state already at `steps` says "nothing to train";
- the node reports the gradient norm beside the loss;
- Save F2D Mapper never replaces a file that is not one of this pack's mappers, and replaces one only
  with `overwrite` on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import CHECKPOINT, PACK, training_graph
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb
from tests.support.tiny_models import INPAINT_CHECKPOINT

FOLDER = "f2d_guard_photos"
TIMEOUT = 600
TRAIN_MAPPER = Path(__file__).resolve().parents[2] / "cli" / "train_mapper.py"


@pytest.fixture(scope="module")
def photo_folder(comfy_server: ComfyServer) -> str:
    """Two photos the synthetic detector finds."""
    folder = Path(comfy_server.input_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP)):
        Image.fromarray(si.face_photo(load_rgb(source))).save(folder / f"person_{i}.png")
    return FOLDER


def _failure(server: ComfyServer, graph: dict) -> ExecutionFailed:
    with pytest.raises(ExecutionFailed) as failure:
        server.run(graph, timeout=TIMEOUT)
    return failure.value


def _state_metadata(server: ComfyServer, run_name: str) -> dict[str, str]:
    path = Path(server.output_dir) / "face2diffusion_training" / run_name / "training_state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_an_inpainting_unet_and_a_v_prediction_model_are_refused(comfy_server, photo_folder):
    inpaint = training_graph(photo_folder, "inpaint", steps=1)
    inpaint["1"]["inputs"]["ckpt_name"] = Path(INPAINT_CHECKPOINT).name
    failure = _failure(comfy_server, inpaint)
    assert failure.node_type == "F2DTrainMapper"
    assert "(4 latent input channels); this MODEL's UNet takes 9" in failure.exception_message
    assert "Train with its base checkpoint" in failure.exception_message

    v_prediction = training_graph(photo_folder, "v_prediction", steps=1)
    v_prediction["7"] = {
        "class_type": "ModelSamplingDiscrete",
        "inputs": {"model": ["1", 0], "sampling": "v_prediction", "zsnr": False},
    }
    v_prediction["4"]["inputs"]["model"] = ["7", 0]
    failure = _failure(comfy_server, v_prediction)
    assert failure.node_type == "F2DTrainMapper"
    assert "needs an eps-prediction SD1.x model" in failure.exception_message
    assert "this MODEL predicts v" in failure.exception_message
    for run in ("inpaint", "v_prediction"):  # refused before anything was written
        assert not (Path(comfy_server.output_dir) / "face2diffusion_training" / run).exists()


def test_resume_refuses_another_run_uses_a_new_learning_rate_and_says_when_nothing_is_left(comfy_server, photo_folder):
    history = comfy_server.run(training_graph(photo_folder, "identity", steps=2, learning_rate=1e-5), timeout=TIMEOUT)
    summary = history["outputs"]["4"]["text"][0]
    assert summary.startswith("step 2: loss ") and ", grad norm " in summary and "(fp32)" in summary
    assert "grad norm" in comfy_server.log_text()
    identity = json.loads(_state_metadata(comfy_server, "identity")["identity"])
    assert (identity["loss"], identity["global_batch_size"], identity["world_size"]) == ("cgdr", 2, 1)

    for change, words in (
        ({"loss": "reconstruction"}, "loss (saved run: cgdr, now: reconstruction)"),
        ({"batch_size": 1}, "batch size (saved run: 2, now: 1)"),
        ({"seed": 5}, "seed (saved run: 0, now: 5)"),
        ({"start_from": "scratch"}, "starting mapper (saved run: "),
    ):
        graph = training_graph(photo_folder, "identity", steps=3)
        graph["4"]["inputs"].update(change)
        failure = _failure(comfy_server, graph)
        assert failure.node_type == "F2DTrainMapper"
        assert words in failure.exception_message, failure.exception_message
        assert "Choose a new run name (e.g. 'identity_2')" in failure.exception_message
    assert _state_metadata(comfy_server, "identity")["step"] == "2"  # the refused resumes left it alone

    comfy_server.run(training_graph(photo_folder, "identity", steps=3, learning_rate=2e-5), timeout=TIMEOUT)
    assert "learning_rate: 2e-05 (the saved run used 1e-05); the new value is used" in comfy_server.log_text()
    metadata = _state_metadata(comfy_server, "identity")
    assert metadata["step"] == "3" and json.loads(metadata["optimizer"])[0]["lr"] == 2e-5

    history = comfy_server.run(training_graph(photo_folder, "identity", steps=3, learning_rate=3e-5), timeout=TIMEOUT)
    assert history["outputs"]["4"]["text"][0].startswith("Nothing to train: the run in ")
    assert "is already at step 3 of 3" in history["outputs"]["4"]["text"][0]
    assert _state_metadata(comfy_server, "identity")["step"] == "3"


def test_photos_replaced_under_the_same_names_are_another_run_and_non_ascii_names_round_trip(comfy_server):
    """Issue 13: point 9 (resume identity hashes the photos' content) and a `Zoë_\u674e` folder and file names."""
    folder = Path(comfy_server.input_dir) / "Zoë_\u674e"
    folder.mkdir(parents=True, exist_ok=True)
    names = ["Zoë_\u674e_0.png", "Zoë_\u674e_1.png"]
    for name, source in zip(names, (ASTRONAUT, ALIGNED_CROP), strict=True):
        Image.fromarray(si.face_photo(load_rgb(source))).save(folder / name)
    history = comfy_server.run(
        training_graph("Zoë_\u674e", "Zoë_\u674e_run", steps=1, save_as="Zoë_\u674e_mapper"), timeout=TIMEOUT
    )
    assert history["outputs"]["4"]["text"][0].startswith("step 1: loss ")
    run_dir = Path(comfy_server.output_dir) / "face2diffusion_training" / "Zoë_\u674e_run"
    assert (run_dir / "training_state.safetensors").is_file()
    saved = [p.name for p in Path(comfy_server.models_dir, "face2diffusion").glob("Zoë_\u674e_mapper*.safetensors")]
    assert saved, list(Path(comfy_server.models_dir, "face2diffusion").iterdir())
    settings = json.loads(_state_metadata(comfy_server, "Zoë_\u674e_run")["settings"])
    assert settings["steps"] == 1

    # The same names, other photos: the saved run is of another dataset, and the resume says so.
    photos = [si.face_photo(load_rgb(source)) for source in (ALIGNED_CROP, ASTRONAUT)]
    for name, photo in zip(names, photos, strict=True):
        Image.fromarray(photo[:, ::-1].copy()).save(folder / name)
    failure = _failure(comfy_server, training_graph("Zoë_\u674e", "Zoë_\u674e_run", steps=2))
    assert failure.node_type == "F2DTrainMapper"
    assert "dataset (saved run: " in failure.exception_message, failure.exception_message
    assert _state_metadata(comfy_server, "Zoë_\u674e_run")["step"] == "1"


def test_a_folder_without_a_face_fails_the_prompt_and_writes_no_mapper_or_state(comfy_server):
    """Issue 13, training that fails must not look like success: the error names the cause, nothing is saved."""
    folder = Path(comfy_server.input_dir) / "f2d_no_faces"
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (256, 256), (40, 40, 40)).save(folder / "wall.png")
    log_before = len(comfy_server.log_text())
    failure = _failure(comfy_server, training_graph("f2d_no_faces", "no_faces", steps=1, save_as="f2d_no_faces"))
    assert failure.node_type == "F2DTrainingDataset"
    assert "No usable face photo among the 1 files" in failure.exception_message
    assert "wall.png" in failure.exception_message
    assert not (Path(comfy_server.output_dir) / "face2diffusion_training" / "no_faces").exists()
    assert not list(Path(comfy_server.models_dir, "face2diffusion").glob("f2d_no_faces*"))
    assert "Wrote " not in comfy_server.log_text()[log_before:]


def test_save_replaces_a_mapper_only_with_overwrite_and_never_another_file(
    comfy_server, comfy_models_dir, photo_folder
):
    folder = comfy_models_dir / "face2diffusion"
    graph = training_graph(photo_folder, "save_guard", steps=1, save_as="guarded_mapper")
    comfy_server.run(graph, timeout=TIMEOUT)
    saved = folder / "guarded_mapper.safetensors"
    first = saved.read_bytes()

    graph["4"]["inputs"]["run_name"] = "save_guard_2"  # another trained mapper for the same name
    failure = _failure(comfy_server, graph)
    assert failure.node_type == "F2DSaveMapper"
    assert "already holds a Face2Diffusion mapper from another run. Turn on overwrite" in failure.exception_message
    assert saved.read_bytes() == first

    graph["5"]["inputs"]["overwrite"] = True
    comfy_server.run(graph, timeout=TIMEOUT)
    assert saved.read_bytes() != first

    other = folder / "someone_elses.safetensors"
    save_file({"weight": torch.zeros(2)}, str(other), {"format": "pt"})
    before = other.read_bytes()
    graph["5"]["inputs"]["name"] = "someone_elses"
    failure = _failure(comfy_server, graph)
    assert failure.node_type == "F2DSaveMapper"
    assert "is a safetensors file of another model: it is left alone" in failure.exception_message
    assert other.read_bytes() == before


def test_continuing_a_finished_run_with_more_steps_saves_over_its_own_mapper(
    comfy_server, comfy_models_dir, photo_folder
):
    """The same run_name and save name with steps raised: it trains on, and the save replaces its own file.

    The photos lie directly in the folder, so shuffle_identities has nothing to shuffle: the node says so.
    """
    graph = training_graph(photo_folder, "continued", steps=1, checkpoint_every=1, save_as="continued_mapper")
    comfy_server.run(graph, timeout=TIMEOUT)
    saved = comfy_models_dir / "face2diffusion" / "continued_mapper.safetensors"
    graph["4"]["inputs"].update(steps=2, shuffle_identities=True)
    history = comfy_server.run(graph, timeout=TIMEOUT)
    with safe_open(str(saved), framework="pt") as f:
        assert f.metadata()["trained_steps"] == "2"
    assert "replaced this run's earlier mapper (step 1) in continued_mapper.safetensors" in comfy_server.log_text()
    assert "shuffle_identities does nothing here: no person has two photos" in history["outputs"]["4"]["text"][0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens on a machine without a CUDA GPU")
def test_the_cli_warns_when_it_trains_on_the_cpu_unasked_and_never_replaces_another_file(comfyui_path, tmp_path):
    out = tmp_path / "notes.safetensors"
    out.write_text("someone's notes")
    argv = [sys.executable, TRAIN_MAPPER, "--comfyui", comfyui_path, "--checkpoint", tmp_path / "missing.safetensors"]
    argv += ["--msid", "msid.pt", "--mapper", "mapping.pt", "--insightface-root", tmp_path, "--folder", tmp_path]
    argv += ["--run-dir", tmp_path / "run", "--out", out]  # no --cpu: a GPU is expected
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr
    assert "Training runs on the CPU: PyTorch" in done.stderr and "sees no CUDA GPU" in done.stderr
    assert f"{out} already exists and is not a safetensors file this pack can read" in done.stderr
    assert "Traceback" not in done.stderr
    assert out.read_text() == "someone's notes"


def _train_cli(comfyui_path, models_dir: Path, folder, run_dir: Path, out: Path, cwd: Path, checkpoint=None, steps=1):
    """cli/train_mapper.py on the CPU, run from `cwd` (so a relative --folder is relative to it)."""
    models = models_dir / "face2diffusion"
    argv = [sys.executable, TRAIN_MAPPER, "--comfyui", comfyui_path]
    argv += ["--checkpoint", checkpoint or models_dir / "checkpoints" / CHECKPOINT]
    argv += ["--msid", models / "msid.pt", "--mapper", models / "mapping.pt"]
    argv += ["--insightface-root", models_dir / "insightface", "--pack", PACK, "--folder", folder]
    argv += ["--crop-size", "64", "--batch-size", "2", "--loss", "reconstruction", "--steps", str(steps)]
    argv += ["--run-dir", run_dir, "--out", out, "--cpu"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_the_cli_fails_with_the_cause_and_writes_nothing_and_resumes_from_a_relative_or_absolute_folder(
    comfyui_path, comfy_models_dir, tmp_path
):
    """Issue 13: training that fails must not look like success (exit code, message, no mapper, no success
    line); point 9: `--folder photos` from the folder above and the same folder given absolutely are one run."""
    out, run_dir = tmp_path / "mapper.safetensors", tmp_path / "run"
    empty, faceless, photos = tmp_path / "empty", tmp_path / "faceless", tmp_path / "photos"
    empty.mkdir()
    faceless.mkdir()
    Image.new("RGB", (256, 256), (40, 40, 40)).save(faceless / "wall.png")
    photos.mkdir()
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP)):
        Image.fromarray(si.face_photo(load_rgb(source))).save(photos / f"person_{i}.png")

    for folder, checkpoint, cause in (
        (photos, tmp_path / "missing.safetensors", "missing.safetensors does not exist"),
        (empty, None, "is empty"),
        (faceless, None, "No usable face photo among the 1 files"),
    ):
        done = _train_cli(comfyui_path, comfy_models_dir, folder, run_dir, out, tmp_path, checkpoint)
        assert done.returncode != 0 and cause in done.stderr, done.stderr[-4000:]
        assert "Traceback" not in done.stderr and "trained mapper" not in done.stderr, done.stderr[-4000:]
        assert not out.exists() and not (run_dir / "training_state.safetensors").exists()

    first = _train_cli(comfyui_path, comfy_models_dir, "photos", run_dir, out, tmp_path)  # relative to tmp_path
    assert first.returncode == 0 and "trained mapper (step 1)" in first.stderr, first.stderr[-4000:]
    second = _train_cli(comfyui_path, comfy_models_dir, photos.resolve(), run_dir, out, tmp_path.parent, steps=2)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "training_state.safetensors at step 1" in second.stderr and "trained mapper (step 2)" in second.stderr
