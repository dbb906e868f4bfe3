"""Mapper training through a real ComfyUI server on the tiny SD1.5 checkpoint (CPU)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import CHECKPOINT, encode_face_graph, save_conditioning, training_graph
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, GROUP, load_rgb

FOLDER = "f2d_training_photos"
TIMEOUT = 600


@pytest.fixture(scope="module")
def photo_folder(comfy_server: ComfyServer) -> str:
    """Three usable photos plus a text file, a truncated JPEG and a photo without a face, in the input folder."""
    folder = Path(comfy_server.input_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP, GROUP)):
        Image.fromarray(si.face_photo(load_rgb(source))).save(folder / f"person_{i}.png")
    (folder / "readme.txt").write_text("not a photo")
    (folder / "cut.jpg").write_bytes((folder / "person_0.png").read_bytes()[:200])
    Image.new("RGB", (256, 256), "gray").save(folder / "no_face.png")
    return FOLDER


@pytest.fixture(scope="module")
def face_image(comfy_server: ComfyServer) -> str:
    return comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_train_face.png")


def _state(server: ComfyServer, run_name: str) -> tuple[int, list[float]]:
    path = Path(server.output_dir) / "face2diffusion_training" / run_name / "training_state.safetensors"
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"]), f.get_tensor("losses").tolist()


def _text_output(history: dict, node_id: str) -> str:
    return "\n".join(history["outputs"][node_id]["text"])


def test_training_lowers_the_fixed_batch_loss_and_the_saved_mapper_changes_s_star(
    comfy_server, comfy_models_dir, photo_folder, face_image
):
    graph = training_graph(photo_folder, "lowers_loss", steps=6, learning_rate=1e-3, save_as="trained_test")
    history = comfy_server.run(graph, timeout=TIMEOUT)
    saved = comfy_models_dir / "face2diffusion" / "trained_test.safetensors"
    assert _text_output(history, "5") == str(saved)
    with safe_open(str(saved), framework="pt") as f:
        meta = f.metadata()
    settings = json.loads(meta["training_settings"])
    assert meta["trained_steps"] == "6" and settings["loss"] == "cgdr"
    assert settings["eval_loss_end"] < settings["eval_loss_start"]
    workflow = json.loads((saved.parent / "trained_test.workflow.json").read_text())
    assert workflow["prompt"]["4"]["class_type"] == "F2DTrainMapper"
    assert {k.split(".")[0] for k in load_file(str(saved))} == {"mapper"}

    official = save_conditioning(encode_face_graph(face_image), ["5", 0], "cond_official", "99")
    trained = save_conditioning(
        encode_face_graph(face_image, mapper="trained_test.safetensors"), ["5", 0], "cond_trained", "99"
    )
    comfy_server.run(official)
    comfy_server.run(trained)
    a = load_file(str(Path(comfy_server.output_dir) / "cond_official.safetensors"))["cond_0"][0]
    b = load_file(str(Path(comfy_server.output_dir) / "cond_trained.safetensors"))["cond_0"][0]
    torch.testing.assert_close(a[:4], b[:4])  # "a photo of": the same words
    assert (a[4:6] - b[4:6]).abs().amax() > 1e-4  # S* moved


def test_unusable_files_are_reported_not_fatal(comfy_server, photo_folder):
    history = comfy_server.run(training_graph(photo_folder, "report", steps=1), timeout=TIMEOUT)
    report = _text_output(history, "6")
    assert "3 of 6 files usable" in report
    for name in ("readme.txt", "cut.jpg", "no_face.png"):
        assert name in report


def test_resume_continues_from_the_saved_step(comfy_server, photo_folder):
    comfy_server.run(training_graph(photo_folder, "resume", steps=2, checkpoint_every=1), timeout=TIMEOUT)
    step, first_losses = _state(comfy_server, "resume")
    assert step == 2 and len(first_losses) == 2
    comfy_server.run(training_graph(photo_folder, "resume", steps=4, checkpoint_every=1), timeout=TIMEOUT)
    step, losses = _state(comfy_server, "resume")
    assert step == 4 and len(losses) == 4
    assert losses[:2] == first_losses
    assert "Resuming from" in comfy_server.log_text() and "at step 2" in comfy_server.log_text()


def _probe_graph(text: str, tag: str) -> dict:
    """CLIPTextEncode + a seeded 2-step KSampler on the user's model: outputs that expose any weight change."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["2", 0],
                "latent_image": ["3", 0],
                "seed": 7,
                "steps": 2,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["6", 0], "vae": ["1", 2]}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"probe_{tag}"}},
    }
    return save_conditioning(graph, ["2", 0], f"probe_cond_{tag}", "8")


def test_frozen_weights_are_bit_identical_after_training(comfy_server, photo_folder):
    """Same computation before and after training, on the very model objects training used."""
    comfy_server.run(_probe_graph("a photo of a person", "before"), timeout=TIMEOUT)
    comfy_server.run(training_graph(photo_folder, "frozen", steps=2, learning_rate=1e-3), timeout=TIMEOUT)
    # A trailing space tokenizes the same but is a new input, so ComfyUI recomputes instead of reusing its cache.
    comfy_server.run(_probe_graph("a photo of a person ", "after"), timeout=TIMEOUT)
    out = Path(comfy_server.output_dir)
    cond = [load_file(str(out / f"probe_cond_{t}.safetensors"))["cond_0"] for t in ("before", "after")]
    assert torch.equal(cond[0], cond[1])  # text encoder untouched
    latents = [load_file(str(next(out.glob(f"probe_{t}_*.latent"))))["latent_tensor"] for t in ("before", "after")]
    assert torch.equal(latents[0], latents[1])  # UNet and VAE untouched: same sample, same decode + encode


def test_interrupt_saves_the_state_and_a_new_run_resumes(comfy_server, photo_folder):
    comfy_server.run(training_graph(photo_folder, "warm", steps=1), timeout=TIMEOUT)  # dataset now cached
    prompt_id = comfy_server.queue_prompt(training_graph(photo_folder, "interrupted", steps=500))
    state = Path(comfy_server.output_dir) / "face2diffusion_training" / "interrupted"
    deadline = time.monotonic() + TIMEOUT
    while "step 1/500" not in comfy_server.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    comfy_server.interrupt()
    with pytest.raises(ExecutionFailed) as failure:
        comfy_server.wait(prompt_id, timeout=TIMEOUT)
    events = [event for event, _ in failure.value.history["status"]["messages"]]
    assert "execution_interrupted" in events
    step, losses = _state(comfy_server, "interrupted")
    assert 0 < step < 500 and len(losses) == step
    comfy_server.run(training_graph(photo_folder, "interrupted", steps=step + 1), timeout=TIMEOUT)
    assert _state(comfy_server, "interrupted")[0] == step + 1
    assert not list(state.glob("*.partial"))


def test_a_folder_outside_the_input_folder_is_refused_unless_allowed(comfy_server, photo_folder):
    outside = Path(comfy_server.input_dir).parent / "outside_photos"
    outside.mkdir(exist_ok=True)
    graph = training_graph(f"../{outside.name}", "outside", steps=1)
    del graph["4"]
    with pytest.raises(ExecutionFailed) as failure:
        comfy_server.run(graph, timeout=TIMEOUT)
    assert failure.value.node_type == "F2DTrainingDataset"
    assert "outside ComfyUI's input folder" in failure.value.exception_message
    assert "allow the folder" in failure.value.exception_message
    allowed = Path(comfy_server.user_dir) / "face2diffusion" / "allowed_training_folders.txt"
    allowed.parent.mkdir(parents=True, exist_ok=True)
    allowed.write_text(f"# the server's owner allows\n{outside.resolve()}\n")
    with pytest.raises(ExecutionFailed) as failure:  # now read: an empty folder is its own, specific error
        comfy_server.run(graph, timeout=TIMEOUT)
    assert "is empty" in failure.value.exception_message
    allowed.unlink()  # the queue after this one is refused again: nothing is remembered
    with pytest.raises(ExecutionFailed) as failure:
        comfy_server.run(graph, timeout=TIMEOUT)
    assert "outside ComfyUI's input folder" in failure.value.exception_message


def _cached_nodes(history: dict) -> list[str]:
    """The nodes ComfyUI reused from its cache instead of running them, for one finished prompt."""
    return next((data["nodes"] for event, data in history["status"]["messages"] if event == "execution_cached"), [])


def test_a_photo_added_to_the_folder_is_prepared_when_the_same_graph_is_queued_again(comfy_server):
    folder = Path(comfy_server.input_dir) / "f2d_growing_folder"
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP)):  # shaded: photos no other test has cached
        Image.fromarray(si.face_photo(load_rgb(source), shade=11)).save(folder / f"person_{i}.png")
    graph = training_graph(folder.name, "growing")
    del graph["4"]  # the dataset and its report only

    first = comfy_server.run(graph, timeout=TIMEOUT)
    assert "2 of 2 files usable" in _text_output(first, "6")
    unchanged = comfy_server.run(graph, timeout=TIMEOUT)
    assert "3" in _cached_nodes(unchanged)  # nothing changed: ComfyUI reuses the prepared set

    Image.fromarray(si.face_photo(load_rgb(GROUP), shade=11)).save(folder / "person_2.png")
    grown = comfy_server.run(graph, timeout=TIMEOUT)
    assert "3" not in _cached_nodes(grown)
    assert "3 of 3 files usable" in _text_output(grown, "6") and "(2 from the cache, 1 computed)" in _text_output(
        grown, "6"
    )

    (folder / "person_0.png").unlink()  # a removed photo leaves the set too
    shrunk = comfy_server.run(graph, timeout=TIMEOUT)
    assert "2 of 2 files usable" in _text_output(shrunk, "6") and "(2 from the cache, 0 computed)" in _text_output(
        shrunk, "6"
    )


def test_os_and_nas_litter_in_a_training_folder_is_neither_a_photo_nor_a_bad_one(comfy_server):
    """A folder unzipped on a Mac (__MACOSX/ with a copy of each photo's resource fork), kept on a Synology
    (@eaDir/<photo>/ thumbnails) and opened on Windows (Thumbs.db, desktop.ini): only the two photos count."""
    folder = Path(comfy_server.input_dir) / "f2d_littered_folder"
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP)):  # shaded: photos no other test has cached
        Image.fromarray(si.face_photo(load_rgb(source), shade=13)).save(folder / f"person_{i}.png")
    (folder / "__MACOSX").mkdir(exist_ok=True)
    (folder / "__MACOSX" / "person_0.png").write_bytes((folder / "person_0.png").read_bytes())
    (folder / "@eaDir" / "person_0.png").mkdir(parents=True, exist_ok=True)
    Image.fromarray(si.face_photo(load_rgb(GROUP), shade=13)).save(folder / "@eaDir" / "SYNOPHOTO_THUMB_M.jpg")
    (folder / "Thumbs.db").write_bytes(bytes(range(256)))
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\r\n")
    graph = training_graph(folder.name, "littered")
    del graph["4"]  # the dataset and its report only
    report = _text_output(comfy_server.run(graph, timeout=TIMEOUT), "6")
    assert "2 of 2 files usable" in report, report
    for litter in ("__MACOSX", "@eaDir", "Thumbs.db", "desktop.ini"):
        assert litter not in report


def test_the_same_seed_trains_the_same_mapper_bit_for_bit(comfy_server, comfy_models_dir, photo_folder):
    """Two runs of one graph under two run names (same seed 0, data and CPU): the same losses and the same
    saved mapper, bit for bit, though other prompts ran between them (the mapper's dropout used the
    process's global random state, which the trainer never seeded)."""
    saved = []
    for run in ("seeded_a", "seeded_b"):
        graph = training_graph(photo_folder, run, 3, learning_rate=1e-3, checkpoint_every=1, save_as=f"f2d_{run}")
        graph["4"]["inputs"]["loss"] = "reconstruction"
        comfy_server.run(graph, timeout=TIMEOUT)
        saved.append(load_file(str(comfy_models_dir / "face2diffusion" / f"f2d_{run}.safetensors")))
    assert _state(comfy_server, "seeded_a")[1] == _state(comfy_server, "seeded_b")[1]
    assert saved[0].keys() == saved[1].keys()
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])


def test_a_folder_made_on_a_mac_is_found_by_its_name_typed_elsewhere(comfy_server):
    """The folder on disk is "Zoe" + combining diaeresis (NFD, as macOS writes names); the graph names it
    composed (NFC, as Windows and Linux type it): the same folder is read, not "does not exist"."""
    folder = Path(comfy_server.input_dir) / "f2d_Zoe\u0308_photos"
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP)):  # the litter test's photos: prepared once
        Image.fromarray(si.face_photo(load_rgb(source), shade=13)).save(folder / f"person_{i}.png")
    graph = training_graph("f2d_Zo\u00eb_photos", "nfc")
    del graph["4"]  # the dataset and its report only
    report = _text_output(comfy_server.run(graph, timeout=TIMEOUT), "6")
    assert "2 of 2 files usable" in report, report


def test_a_model_patch_training_cannot_run_is_named_in_a_warning(comfy_server, photo_folder):
    """Core's FreeU patches the MODEL's output blocks (transformer_options' output_block_patch), which only
    sampling runs: training says it leaves the patch out instead of dropping it silently."""
    graph = training_graph(photo_folder, "freeu", steps=1)
    graph["9"] = {"class_type": "FreeU", "inputs": {"model": ["1", 0], "b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}}
    graph["4"]["inputs"]["model"] = ["9", 0]
    comfy_server.run(graph, timeout=TIMEOUT)
    log_text = comfy_server.log_text()
    assert "Training runs the UNet without these patches of its MODEL: output_block_patch (1)." in log_text


def test_a_run_the_cli_trains_is_refused_by_the_node_before_it_copies_the_models(comfy_server, photo_folder):
    """The node holds its run folder's lock itself (the trainer no longer does): with cli/train_mapper.py (here:
    this test) holding it, Train F2D Mapper is refused at once, naming the holder, and writes no state."""
    import os

    from f2d_core.run_lock import run_lock

    run_dir = Path(comfy_server.output_dir) / "face2diffusion_training" / "held_by_the_cli"
    with run_lock(run_dir, "cli/train_mapper.py"), pytest.raises(ExecutionFailed) as refused:
        comfy_server.run(training_graph(photo_folder, "held_by_the_cli", steps=1), timeout=TIMEOUT)
    assert refused.value.node_type == "F2DTrainMapper" and refused.value.exception_type.endswith("RunLocked")
    assert f"is in use by cli/train_mapper.py (pid {os.getpid()} on" in refused.value.exception_message
    assert not run_dir.exists()  # no state: the holder made the folder, and removed it with its lock, empty
