"""SDXL mapper training on the tiny SDXL (tests/support/tiny_sdxl.py): backend vs ComfyUI, the node, the CLI."""

from __future__ import annotations

from pathlib import Path

from tests.support.comfy_library_run import run_library_script
from tests.support.tiny_sdxl import TinySDXL

SCRIPTS = Path(__file__).resolve().parent / "library_scripts"


def test_sdxl_backend_matches_comfyui_text_y_and_micro_batches(comfyui_path, tiny_sdxl: TinySDXL, tmp_path):
    """T3, T4 and U9 on the real backend (docs/sdxl.md section 5)."""
    result = run_library_script(
        SCRIPTS / "train_sdxl_backend.py",
        comfyui_path,
        checkpoint=str(tiny_sdxl.checkpoint),
        te_options=str(tiny_sdxl.te_options),
        work_dir=str(tmp_path),
    )
    assert result["backend"] == "ComfySDXLBackend" and result["positions"] == [4, 5]
    t3 = result["t3"]
    assert t3["cond_shape"] == [2, 77, 2048]
    # the out-of-place re-implementation: penultimate layer, no final LN, pooled at the first end token
    assert t3["cond_max_diff"] < 1e-5 and t3["pooled_max_diff"] < 1e-5, t3
    assert t3["plain_cond_max_diff"] < 1e-5 and t3["plain_pooled_max_diff"] < 1e-5, t3
    assert t3["s_star_moves_pooled"] > 1e-3  # bigG's end token attends to S*
    assert result["t4"] == {"y_shape": [3, 2816], "max_diff": 0.0}
    micro = result["micro_batch"]
    assert abs(micro["loss_micro"] - micro["loss_full"]) <= 1e-6 * abs(micro["loss_full"]), micro
    assert micro["grad_scale"] > 0 and micro["grad_rel_diff"] < 1e-5, micro
