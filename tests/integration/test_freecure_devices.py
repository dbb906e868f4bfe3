"""FreeCure against ComfyUI's memory handling: what the fast route's recorded foundation keys hold after a cancel,
and when it reads the budget that caps them on the device.

ComfyUI as a library on the CPU (tests/support/comfy_library_run.py); on a GPU the same records sit in VRAM (up to
a quarter of the free memory), so what a failed run leaves held is what the next prompt cannot use.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.comfy_library_run import run_library_script

SCRIPTS = Path(__file__).parent / "library_scripts"


@pytest.fixture(scope="module")
def cancelled_fast_route(comfyui_path, tiny_models, comfy_models_dir) -> dict:
    """freecure_memory.py's report: a fast route cancelled at stage 1's last step, and its cache budget reads."""
    return run_library_script(
        SCRIPTS / "freecure_memory.py",
        comfyui_path,
        checkpoint=str(tiny_models.checkpoint),
        parser_path=str(comfy_models_dir / "face2diffusion" / "79999_iter.pth"),
    )


def test_a_cancelled_fast_route_holds_no_recorded_keys_while_comfyui_handles_the_cancel(cancelled_fast_route):
    result = cancelled_fast_route
    assert result["interrupted"] and result["steps_seen"] == 2
    assert result["caches"] == 1  # the traceback ComfyUI keeps still reaches the cache...
    assert result["held_bytes"] == 0 and result["held_calls"] == 0  # ...but it holds nothing any more


def test_the_fast_route_reads_its_cache_budget_once_with_the_unet_loaded(cancelled_fast_route):
    # once, and the UNet's weights were no longer counted as free memory
    assert cancelled_fast_route["budget_reads_with_the_unet_loaded"] == [True]
