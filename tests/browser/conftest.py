"""The browser tests use the integration tests' session server and models: the same fixtures, imported.

When both folders run in one pytest session each folder gets its own server (fixtures are per conftest);
moving these fixtures to a plugin both conftests load would let them share one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401  (fixtures used by this folder's tests)
    _boot_comfy_server_early,
    comfy_models_dir,
    comfy_models_root,
    comfy_server,
    comfy_server_process,
    comfyui_path,
    tiny_models,
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of this folder `browser`, `comfyui` and `slow`."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents:
            for mark in (pytest.mark.browser, pytest.mark.comfyui, pytest.mark.slow):
                item.add_marker(mark)
