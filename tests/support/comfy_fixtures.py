"""Pytest plugin: one real ComfyUI server per test session, its models dir, and the skip rule without one.

Registered once, from `tests/conftest.py` (`pytest_plugins`), so that `tests/integration` and
`tests/browser` share one server even when both run in one session; never import these fixtures into
a conftest (each import would register a second copy, and with it a second server).

- Every test under `tests/integration/` or `tests/browser/` is marked `comfyui` and `slow` (browser ones
  also `browser`), and is skipped, with the reason, when COMFYUI_PATH is unset or not a ComfyUI checkout.
- The server is launched only when a selected test uses `comfy_server`: a unit-test-only run starts none.
  It then boots while the first tests run and the tiny models build.
- Set F2D_TEST_MODEL_CACHE to a directory to reuse the tiny SD1.5 models across sessions (a stamp guards
  against stale builds); otherwise they are built once per session in pytest's tmp dir.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import pytest
import torch

from tests.support import (
    formula_weights,
    synthetic_arcface,
    synthetic_bisenet,
    synthetic_deep3d,
    synthetic_insightface,
    tiny_clip,
)
from tests.support.comfy_server import ComfyServer
from tests.support.tiny_models import TinyModels, build_tiny_models
from tests.support.tiny_sdxl import TinySDXL, build_tiny_sdxl

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
PACK_DIR_NAME = "comfyui-face2diffusion"  # the folder name users clone the pack into
INSIGHTFACE_PACK = "buffalo_l"  # the pack name the bundled workflows use; here a synthetic pack of its structure
PROBE_PACK = REPO_ROOT / "tests" / "support" / "probe_nodes"
ModelWriter = Callable[[Path], None]

# Folders whose tests need a real ComfyUI, and the marks their tests get.
COMFYUI_FOLDERS: dict[Path, tuple[str, ...]] = {
    TESTS_DIR / "integration": ("comfyui", "slow"),
    TESTS_DIR / "browser": ("browser", "comfyui", "slow"),
}


def comfyui_checkout_problem(value: str | None) -> str | None:
    """Why COMFYUI_PATH cannot be used, or None when it points at a ComfyUI checkout."""
    if not value:
        return "COMFYUI_PATH is not set: point it at a ComfyUI checkout to run the integration tests"
    path = Path(value)
    missing = [p for p in ("main.py", "nodes.py", "comfy/sd.py", "folder_paths.py") if not (path / p).is_file()]
    if missing:
        return f"COMFYUI_PATH={value} is not a ComfyUI checkout (no {', '.join(missing)})"
    return None


def _comfyui_problem() -> str | None:
    return comfyui_checkout_problem(os.environ.get("COMFYUI_PATH"))


# ---- MODEL WRITERS -------------------------------------------------------------------------------
# Each writer puts the files of one model family under the session's models dir (the folders of
# tests/support/comfy_server.py MODEL_FOLDERS). Extend MODEL_WRITERS; keep each writer deterministic.


def write_f2d_checkpoints(models_dir: Path) -> None:
    """`face2diffusion/msid.pt` and `mapping.pt` in the official format, on the fixture's formula weights."""
    formula_weights.write_official_checkpoints(models_dir / "face2diffusion")


def write_insightface_pack(models_dir: Path) -> None:
    """A synthetic pack with buffalo_l's files under insightface/models (its detector finds red squares)."""
    synthetic_insightface.write_synthetic_pack(models_dir / "insightface", INSIGHTFACE_PACK)


def write_expression_model(models_dir: Path) -> None:
    """Deep3DFaceRecon's `epoch_20.pth` in the published format, seeded weights."""
    synthetic_deep3d.write_published_checkpoint(models_dir / "face2diffusion" / "epoch_20.pth", seed=0)


def write_face_parser(models_dir: Path) -> None:
    """BiSeNet's `79999_iter.pth` in the published format, seeded weights."""
    synthetic_bisenet.write_checkpoint(models_dir / "face2diffusion" / "79999_iter.pth")


def write_sdxl_text_encoder_parts(models_dir: Path) -> None:
    """Just enough of CLIP-L and CLIP-G for DualCLIPLoader to build a real SDXL CLIP (weights never used)."""
    from safetensors.torch import save_file

    folder = models_dir / "text_encoders"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"text_model.encoder.layers.0.mlp.fc1.weight": torch.zeros(3072, 768, dtype=torch.float16)},
        str(folder / "sdxl_clip_l_part.safetensors"),
    )
    save_file(
        {"text_model.encoder.layers.30.mlp.fc1.weight": torch.zeros(5120, 1280, dtype=torch.float16)},
        str(folder / "sdxl_clip_g_part.safetensors"),
    )


def write_scoring_models(models_dir: Path) -> None:
    """The scorers: an IResNet-structured `w600k_r50.onnx` in the pack (replacing its stand-in), tiny CLIPs in
    `clip_scoring/` (transformers, open_clip when installed, and a vision-only one: the wrong kind), and a
    detector in `face_recognition/` (not a recogniser)."""
    synthetic_arcface.write_arcface_recognizer(
        models_dir / "insightface" / "models" / INSIGHTFACE_PACK / "w600k_r50.onnx"
    )
    tiny_clip.write_transformers_clip(models_dir / "clip_scoring" / "tiny_clip")
    tiny_clip.write_clip_vision_only(models_dir / "clip_scoring" / "clip_vision_only")
    if importlib.util.find_spec("open_clip") is not None:
        tiny_clip.write_open_clip(models_dir / "clip_scoring" / "tiny_open_clip")
    (models_dir / "face_recognition").mkdir(parents=True, exist_ok=True)
    onnx.save(
        synthetic_insightface.build_scrfd_detector(), str(models_dir / "face_recognition" / "not_a_recognizer.onnx")
    )


MODEL_WRITERS: list[ModelWriter] = [
    write_f2d_checkpoints,
    write_insightface_pack,
    write_expression_model,
    write_face_parser,
    write_sdxl_text_encoder_parts,
    write_scoring_models,
]
# ---------------------------------------------------------------------------------------------------


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` to `target` (same filesystem), else copy it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _needs_comfyui(item: pytest.Item) -> tuple[str, ...]:
    """The marks of the ComfyUI folder `item` lives in; () outside them."""
    path = Path(item.path).resolve()
    return next((marks for folder, marks in COMFYUI_FOLDERS.items() if folder in path.parents), ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the ComfyUI folders' tests (so `-m "not comfyui"` leaves them out); skip them without ComfyUI."""
    problem = _comfyui_problem()
    for item in items:
        marks = _needs_comfyui(item)
        for mark in marks:
            item.add_marker(getattr(pytest.mark, mark))
        if marks and problem:
            item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    """The ComfyUI checkout from COMFYUI_PATH; skips the test when there is none."""
    problem = _comfyui_problem()
    if problem:
        pytest.skip(problem)
    return Path(os.environ["COMFYUI_PATH"]).resolve()


@pytest.fixture(scope="session")
def comfy_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The (still empty) models dir the session's server reads; filled by `comfy_models_dir`."""
    return tmp_path_factory.mktemp("comfy_models")


@pytest.fixture(scope="session")
def tiny_models(comfyui_path: Path, comfy_models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny SD1.5 checkpoint, inpainting checkpoint and ControlNet, built (or reused) and verified."""
    cache = os.environ.get("F2D_TEST_MODEL_CACHE")
    build_dir = Path(cache) if cache else tmp_path_factory.mktemp("tiny_models")
    models = build_tiny_models(build_dir, comfyui_path)
    for path in (models.checkpoint, models.inpaint_checkpoint, models.controlnet):
        _link_or_copy(path, comfy_models_root / path.relative_to(build_dir))
    log.info("tiny models: %.1f s%s, %s", models.build_seconds, " (cached)" if models.cached else "", models.sizes)
    return models


@pytest.fixture(scope="session")
def tiny_sdxl(
    comfyui_path: Path, comfy_models_root: Path, tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> TinySDXL:
    """The tiny SDXL (`checkpoints/f2d_tiny_sdxl.safetensors` + its te_options sidecar), built once per session (or
    reused from F2D_TEST_MODEL_CACHE) and linked into the server's models dir, where the server lists it (ComfyUI
    re-reads a folder whose mtime changed). Load it with the probe node F2DTestTinySDXLCheckpointLoader."""
    cache = os.environ.get("F2D_TEST_MODEL_CACHE")
    build_dir = Path(cache) if cache else tiny_models.models_dir
    sdxl = build_tiny_sdxl(build_dir, comfyui_path)
    for path in (sdxl.checkpoint, sdxl.te_options):
        _link_or_copy(path, comfy_models_root / path.relative_to(build_dir))
    log.info("tiny SDXL: %.1f s%s", sdxl.build_seconds, " (cached)" if sdxl.cached else "")
    return sdxl


SDXL_TEST_MAPPER = "f2d_test_sdxl_mapper.safetensors"


@pytest.fixture(scope="session")
def tiny_sdxl_mapper(tiny_sdxl: TinySDXL, comfy_models_root: Path) -> Path:
    """A seeded SDXL mapper (F2DMapperXL, pooled source class_prompt) in face2diffusion/ (SDXL_TEST_MAPPER),
    next to the tiny SDXL; its S* are random words, enough to check where they go."""
    from f2d_core.checkpoints import save_f2d_safetensors
    from f2d_core.identity.mapper_xl import F2DMapperXL

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    mapper = F2DMapperXL(pooled_source="class_prompt")
    torch.random.set_rng_state(generator_state)
    return save_f2d_safetensors(comfy_models_root / "face2diffusion" / SDXL_TEST_MAPPER, mapper=mapper)


@pytest.fixture(scope="session")
def comfy_models_dir(comfy_models_root: Path, tiny_models: TinyModels) -> Path:
    """The session's models dir: tiny SD1.5 models plus everything MODEL_WRITERS write."""
    for writer in MODEL_WRITERS:
        writer(comfy_models_root)
    return comfy_models_root


@pytest.fixture(scope="session")
def comfy_server_process(
    comfyui_path: Path, comfy_models_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComfyServer]:
    """The session's server, launched but not waited for; this repo is its pack `comfyui-face2diffusion`."""
    server = ComfyServer(
        comfyui_path,
        tmp_path_factory.mktemp("comfy_server"),
        comfy_models_root,
        custom_nodes={PACK_DIR_NAME: REPO_ROOT, "f2d_test_probe_nodes": PROBE_PACK},
        extra_args=["--fp32-text-enc"],  # CPU keeps text encoders in fp16 unless asked: exact parity needs fp32
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _server_wanted(items: list[pytest.Item]) -> bool:
    """Whether a selected test that is not skipped for want of ComfyUI uses the server."""
    return _comfyui_problem() is None and any("comfy_server" in getattr(i, "fixturenames", ()) for i in items)


@pytest.fixture(scope="session", autouse=True)
def _boot_comfy_server_early(request: pytest.FixtureRequest) -> None:
    """Launch the server at the session's start when a selected test needs it, so it boots meanwhile."""
    if _server_wanted(request.session.items):
        request.getfixturevalue("comfy_server_process")


@pytest.fixture(scope="session")
def comfy_server(comfy_server_process: ComfyServer, comfy_models_dir: Path) -> ComfyServer:
    """One ready ComfyUI server for the session, reading the models of `comfy_models_dir`."""
    comfy_server_process.wait_ready()
    return comfy_server_process
