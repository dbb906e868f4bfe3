"""The pack under ComfyUI's --cache-none, on a user's odd machine: one extra server for every check.

The extra server runs with every folder redirected (--input/--output/--temp/--user-directory, models from
an extra_model_paths.yaml), the pack as a read-only copy, an unwritable HOME and, under the model folders,
the odd entries users have: an unreadable folder, a broken symlink and a file where a folder is expected.
Run as root (this machine), the server is started as `nobody` (setpriv) so that "unreadable" and
"unwritable" hold for it; elsewhere file modes do.

Which modes and workflows, and why (the time budget allows one extra server): ComfyUI here has
--cache-classic (the default: the session server), --cache-lru N and --cache-none; it has no --cache-ram.
A cache mode decides only whether a node whose inputs did not change runs again and how long outputs
live: a hit hands back the same output objects (classic and LRU alike), a miss runs the node again
(--cache-none always misses, LRU after an eviction). --cache-none thus covers LRU's miss and the
session server the hit. What can break is state kept beside the outputs: the pack's weakly cached models
(model_cache.py) and the training run's state on disk. The portrait reaches the cached MSID, mapper and
detector and the token path every generation workflow shares; the training graph is queued twice, so its
second run executes every node again (checkpoint, dataset, trainer) against the saved run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tests.support.comfy_fixtures import PACK_DIR_NAME, REPO_ROOT
from tests.support.comfy_server import ComfyServer
from tests.support.workflow_files import input_images, load_api, prepare_for_test

NOBODY = 65534
TRAINING = "f2d_train_mapper"
COMPARED = "f2d_portrait"
PHOTO_FOLDER = "f2d_modes_training_photos"
CACHE_MODE = "--cache-none"
AS_ROOT = os.geteuid() == 0


class RedirectedServer(ComfyServer):
    """A ComfyServer whose process runs as `nobody` when the tests run as root, owning only its work dir."""

    def __init__(self, *args, writable: list[Path], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writable = writable

    def _prepare(self) -> Path:
        yaml_path = super()._prepare()
        if AS_ROOT:
            for top in [self.work_dir, *self.writable]:
                for path in [top, *top.rglob("*")]:
                    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        return yaml_path

    def command(self, yaml_path: Path) -> list[str]:
        command = super().command(yaml_path)
        if AS_ROOT:
            return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
        return command


def read_only_pack_copy(target: Path) -> Path:
    """The pack's files (tracked and new, not ignored) copied to `target`, every folder and file read-only."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for path in sorted(target.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    target.chmod(0o555)
    return target


def odd_entries(models: Path) -> dict[str, Path]:
    """An unreadable folder, a broken symlink and a file where a folder is expected, in each model folder the
    pack lists; {what: path}."""
    made = {}
    for folder, where in [
        ("face2diffusion", models / "face2diffusion"),
        ("insightface pack", models / "insightface" / "models"),
        ("face_recognition", models / "face_recognition"),
        ("clip_scoring", models / "clip_scoring"),
    ]:
        locked = where / "f2d_odd_locked"
        locked.mkdir()
        (locked / "config.json").write_text("{}")
        (locked / "det_10g.onnx").write_bytes(b"")
        locked.chmod(0)
        made[f"{folder}: unreadable folder"] = locked
        (where / "f2d_odd_broken.pt").symlink_to(where / "f2d_odd_missing_target")
        made[f"{folder}: broken symlink"] = where / "f2d_odd_broken.pt"
        (where / "f2d_odd_file").write_text("a file where a folder is expected")
        made[f"{folder}: file"] = where / "f2d_odd_file"
    return made


@pytest.fixture(scope="module")
def extra(comfyui_path: Path, comfy_models_dir: Path) -> Iterator[tuple[ComfyServer, Path]]:
    """(server, base folder) of the extra server (see the module docstring)."""
    base = Path(tempfile.mkdtemp(prefix="f2d_modes_"))
    base.chmod(0o755)
    models = base / "models"
    shutil.copytree(comfy_models_dir, models, copy_function=os.link)
    for path in [models, *models.rglob("*")]:  # pytest makes its folders private; a user's are readable
        if path.is_dir():
            path.chmod(0o755)
        elif path.is_file() and not path.is_symlink():  # and safetensors >= 0.8 writes its files 0600
            path.chmod(path.stat().st_mode | 0o444)
    odd_entries(models)
    pack = read_only_pack_copy(base / "pack" / PACK_DIR_NAME)
    (base / "pack").chmod(0o555)
    home = base / "home"
    home.mkdir(mode=0o555)
    home.chmod(0o555)
    server = RedirectedServer(
        comfyui_path,
        base / "work",
        models,
        custom_nodes={PACK_DIR_NAME: pack},
        extra_args=["--fp32-text-enc", CACHE_MODE],  # as the session server, plus the cache mode
        env={"HOME": str(home)},
        writable=[models / "face2diffusion"],
    )
    try:
        with server:
            yield server, base
    finally:
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755)
        if not os.environ.get("F2D_KEEP_MODES_SERVER"):  # set it to read the server's log after a failure
            shutil.rmtree(base, ignore_errors=True)


def _upload_inputs(server: ComfyServer) -> dict[str, str]:
    """The workflows' test inputs uploaded, and the training photo folder; {role: name}. The names are
    test_workflows.py's: the session server may then answer from its cache (the same files)."""
    images = input_images()
    names = {role: server.upload_image(image, f"f2d_wf_{role}.png") for role, image in images.items()}
    folder = Path(server.input_dir) / PHOTO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for role in ("face", "expression"):
        images[role].save(folder / f"{role}.png")
    if AS_ROOT:
        for path in [folder, *folder.iterdir()]:
            os.chown(path, NOBODY, NOBODY)
    return {**names, "training_photos": PHOTO_FOLDER}


def _saved_pixels(server: ComfyServer, graph: dict, history: dict) -> list[np.ndarray]:
    saves = [node_id for node_id, node in graph.items() if node["class_type"] == "SaveImage"]
    return [np.asarray(image) for node_id in saves for image in server.output_images(history, node_id)]


def test_every_node_is_listed_and_the_odd_entries_are_skipped_with_a_log_line(extra, comfy_server) -> None:
    server, _ = extra
    ours = {name for name in comfy_server.object_info() if name.startswith("F2D") and "Test" not in name}
    listed = server.object_info()
    assert ours <= set(listed), f"missing from /object_info: {sorted(ours - set(listed))}\n{server.log_tail()}"
    choices = [
        *server.combo_options("F2DLoadMSIDEncoder", "insightface_pack"),
        *server.combo_options("F2DLoadMSIDEncoder", "msid_file"),
        *server.combo_options("F2DLoadFaceRecognizer", "recognition_model"),
        *server.combo_options("F2DLoadCLIPScorer", "clip_model"),
    ]
    assert not [c for c in choices if "f2d_odd" in c and "broken" not in c], choices
    log = server.log_text()
    for odd in ("f2d_odd_locked", "f2d_odd_broken.pt"):
        assert f"skipped {odd}" in log or f"/{odd} while listing model files" in log, (odd, log[-6000:])


def test_workflow_gives_the_default_caches_result(extra, comfy_server) -> None:
    server, _ = extra
    graphs = {s: prepare_for_test(load_api(COMPARED), _upload_inputs(s), COMPARED) for s in (comfy_server, server)}
    default = _saved_pixels(comfy_server, graphs[comfy_server], comfy_server.run(graphs[comfy_server], timeout=300))
    again = _saved_pixels(server, graphs[server], server.run(graphs[server], timeout=300))
    assert len(again) == len(default) > 0
    assert all(np.array_equal(a, b) for a, b in zip(again, default, strict=True))


def _mapper_state(path: Path) -> tuple[dict, bytes]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), b"".join(f.get_tensor(k).numpy().tobytes() for k in sorted(f.keys()))


def test_training_graph_neither_restarts_nor_repeats(extra) -> None:
    server, base = extra
    graph = prepare_for_test(load_api(TRAINING), _upload_inputs(server), TRAINING)
    (trainer,) = [i for i, n in graph.items() if n["class_type"] == "F2DTrainMapper"]
    (saver,) = [i for i, n in graph.items() if n["class_type"] == "F2DSaveMapper"]
    graph[trainer]["inputs"]["run_name"] = "f2d_modes"
    graph[saver]["inputs"]["name"] = "f2d_modes"
    runs = []
    for _ in range(2):
        history = server.run(graph, timeout=600)
        saved = Path(history["outputs"][saver]["text"][0])
        assert saved.parent == base / "models" / "face2diffusion"
        runs.append((_mapper_state(saved), history["outputs"][trainer]["text"][0]))
    (meta, weights), _ = runs[0]
    assert meta["trained_steps"] == "2"
    assert runs[1][0][1] == weights and runs[1][0][0]["trained_steps"] == "2"  # not restarted, not trained further
    assert runs[0][1].startswith("step 2: loss") and runs[1][1].startswith("Nothing to train"), runs
    run_dir = base / "work" / "output" / "face2diffusion_training" / "f2d_modes"
    assert run_dir.is_dir(), sorted(p.name for p in (base / "work" / "output").iterdir())
    assert (base / "work" / "user" / "face2diffusion").is_dir()  # the training cache, in the user directory
    assert not list((base / "home").iterdir())
