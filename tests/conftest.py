"""Shared fixtures: the repo on sys.path, official-format checkpoints on the formula weights.

The real-ComfyUI fixtures (one server per session, its models, the skip rule without COMFYUI_PATH) come
from the plugin `tests.support.comfy_fixtures`, registered here once for the whole test tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import formula_weights  # noqa: E402

pytest_plugins = ["tests.support.comfy_fixtures"]


@pytest.fixture(scope="session")
def official_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`msid.pt` and `mapping.pt` in the official format, on the fixture's formula weights."""
    return formula_weights.write_official_checkpoints(tmp_path_factory.mktemp("official"))


@pytest.fixture(scope="session")
def expected() -> dict:
    """What the official code produced on the formula weights."""
    return formula_weights.expected()


@pytest.fixture(scope="session")
def encoder(official_checkpoints):
    """A FaceEncoder (CPU, fp32) on the official-format formula weights."""
    from f2d_core.checkpoints import load_f2d_models
    from f2d_core.identity.face_encoder import FaceEncoder

    return FaceEncoder(load_f2d_models(*official_checkpoints))
