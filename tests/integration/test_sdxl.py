"""SDXL in a real ComfyUI server, on the tiny SDXL (tests/support/tiny_sdxl.py): detection, S* in both towers."""

from __future__ import annotations

from tests.support.conditioning_files import read_conditioning
from tests.support.tiny_sdxl import TinySDXL

SDXL_CKPT = "f2d_tiny_sdxl.safetensors"


def sdxl_loader() -> dict:
    """The probe loader on the tiny SDXL (MODEL 0, CLIP 1, VAE 2)."""
    return {"class_type": "F2DTestTinySDXLCheckpointLoader", "inputs": {"ckpt_name": SDXL_CKPT}}


def test_tiny_sdxl_is_detected_as_sdxl(tiny_sdxl: TinySDXL, comfy_server):
    report = tiny_sdxl.verification
    assert (report["model_config"], report["model_base"], report["model_type"]) == ("SDXL", "SDXL", "EPS")
    assert (report["latent_format"], report["clip"], report["vae"]) == ("SDXL", "SDXLClipModel", "TAESD")
    assert abs(report["vae_scale"] - 0.13025) < 1e-6 and report["unet_parameters"] == 133_883_524
    assert (report["cond_shape"], report["pooled_shape"], report["y_shape"]) == ([1, 77, 2048], [1, 1280], [1, 2816])
    assert report["denoised_finite"] and not report["warnings"]
    # The shared server lists it, and the probe loader gives an SDXL CLIP.
    assert SDXL_CKPT in comfy_server.combo_options("F2DTestTinySDXLCheckpointLoader", "ckpt_name")
    graph = {
        "1": sdxl_loader(),
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of a knight"}},
        "3": {"class_type": "F2DTestSaveConditioning", "inputs": {"conditioning": ["2", 0], "name": "sdxl_plain"}},
    }
    comfy_server.run(graph)
    (entry,) = read_conditioning(comfy_server.output_dir / "sdxl_plain.safetensors")
    assert list(entry.cond.shape) == [1, 77, 2048] and list(entry.pooled.shape) == [1, 1280]
