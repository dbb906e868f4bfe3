"""An SDXL face on text towers in each of ComfyUI's text-encoder dtypes (the tiny SDXL, ComfyUI as a library)."""

from __future__ import annotations

from pathlib import Path

from tests.support.comfy_library_run import run_library_script
from tests.support.tiny_sdxl import TinySDXL

SCRIPTS = Path(__file__).parent / "library_scripts"


def test_text_encoder_dtypes_keep_s_star_exact_and_raise_no_false_fine_tune_warning(
    tiny_sdxl: TinySDXL, comfyui_path, tmp_path
):
    result = run_library_script(
        SCRIPTS / "sdxl_text_dtypes.py",
        comfyui_path,
        checkpoint=str(tiny_sdxl.checkpoint),
        te_options=str(tiny_sdxl.te_options),
        embeddings_dir=str(tmp_path),
    )
    weights = {name: result[name]["weights"] for name in ("fp16", "fp32", "bf16", "fp8_e4m3fn")}
    assert weights == {
        "fp16": "torch.float16",
        "fp32": "torch.float32",
        "bf16": "torch.bfloat16",
        "fp8_e4m3fn": "torch.float8_e4m3fn",
    }
    for name, r in result.items():
        if isinstance(r, dict):
            # ComfyUI casts spliced tensors and embedding-file vectors alike to fp32 before the towers.
            assert r["finite"] and r["parity_max_abs"] == 0.0, name
    # fp16 and fp32 loads of the same towers share the fingerprint; bf16 and fp8 have none to compare, so the face
    # of a mapper trained on these very towers is not reported as made for other text encoders.
    assert result["fp16"]["fingerprint"] == result["fp32"]["fingerprint"] == result["trained_fingerprint"]
    assert result["bf16"]["fingerprint"] is None and result["fp8_e4m3fn"]["fingerprint"] is None
    assert all(result[name]["warning"] is None for name in weights)
