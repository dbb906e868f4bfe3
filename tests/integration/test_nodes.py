"""The pack's nodes in a real ComfyUI server: listed, exact against the official fixture, and clear on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import save_face
from tests.support import synthetic_insightface as si
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import CHECKPOINT, encode_face_graph, save_conditioning
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb

NODE_IDS = {
    "F2DLoadMSIDEncoder": "Load MSID Encoder",
    "F2DEncodeFace": "Encode Face \u2192 S*",
    "F2DExpressionReference": "Expression Reference",
    "F2DApplyTokens": "Apply F2D Tokens",
    "F2DSaveFace": "Save F2D Face",
    "F2DLoadFace": "Load F2D Face",
    "F2DRegionLayout": "F2D Region Layout",
    "F2DFaceMasks": "F2D Face Masks",
    "F2DAddPerson": "Add F2D Person",
    "F2DNormMatch": "F2D Norm Match (SDXL)",
}


@pytest.fixture(scope="module")
def photos(comfy_server: ComfyServer) -> dict[str, str]:
    """Uploaded inputs: two different "people" the synthetic detector finds, and a photo without a face."""
    return {
        "a": comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_face_a.png"),
        "b": comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ALIGNED_CROP))), "f2d_face_b.png"),
        "none": comfy_server.upload_image(Image.new("RGB", (320, 240)), "f2d_no_face.png"),
    }


def _conditioning(server: ComfyServer, graph: dict, source: list, name: str) -> torch.Tensor:
    save_conditioning(graph, source, name, "99")
    server.run(graph)
    return load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"][0]


def _failure(server: ComfyServer, graph: dict) -> ExecutionFailed:
    save_conditioning(graph, ["5", 0], "never_written", "99")
    with pytest.raises(ExecutionFailed) as info:
        server.run(graph)
    assert server.object_info("F2DApplyTokens")  # the server keeps serving after the node error
    return info.value


def test_every_node_is_listed_with_a_tooltip_on_every_input(comfy_server):
    info = comfy_server.object_info()
    for node_id, display in NODE_IDS.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        node = info[node_id]
        assert node["display_name"] == display and node["category"] == "face2diffusion"
        inputs = {**node["input"].get("required", {}), **node["input"].get("optional", {})}
        untipped = [name for name, spec in inputs.items() if not (len(spec) > 1 and spec[1].get("tooltip"))]
        assert not untipped, f"{node_id}: inputs without a tooltip: {untipped}"
    assert info["F2DLoadMSIDEncoder"]["input"]["required"]["insightface_pack"][1]["options"] == ["buffalo_l"]


def test_apply_tokens_reproduces_the_official_clip_hidden(comfy_server, comfy_models_dir, expected):
    """S* = the fixture's s_null[0], loaded as a saved face: the conditioning is the official text encoder output."""
    face = EncodedFace(
        s_star=torch.from_numpy(expected["s_null"][0]), idvec=torch.zeros(1536), crops=torch.zeros(1, 3, 112, 112)
    )
    save_face(comfy_models_dir / "face2diffusion" / "faces" / "fixture_face.safetensors", face)
    for k, prompt in enumerate(expected["clip_prompts"]):
        graph = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
            "2": {"class_type": "F2DLoadFace", "inputs": {"face_file": "fixture_face.safetensors"}},
            "3": {
                "class_type": "F2DApplyTokens",
                "inputs": {"clip": ["1", 1], "text": str(prompt), "f2d_face": ["2", 0]},
            },
            "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": str(prompt)}},
        }
        save_conditioning(graph, ["4", 0], f"plain_{k}", "98")
        ours = _conditioning(comfy_server, graph, ["3", 0], f"f2d_{k}")
        plain = load_file(str(comfy_server.output_dir / f"plain_{k}.safetensors"))["cond_0"][0]
        np.testing.assert_allclose(ours.numpy(), expected["clip_hidden"][k], atol=1e-4, rtol=0)
        pos = int(expected["clip_face_pos"][k])
        # Identical to CLIPTextEncode before the identifier (causal attention), different from it on.
        torch.testing.assert_close(ours[:pos], plain[:pos], atol=1e-5, rtol=0)
        assert (ours[pos:] - plain[pos:]).abs().amax() > 1e-2


def test_photo_to_conditioning_depends_on_who_is_in_the_photo(comfy_server, photos):
    a = _conditioning(comfy_server, encode_face_graph(photos["a"]), ["5", 0], "face_a")
    b = _conditioning(comfy_server, encode_face_graph(photos["b"]), ["5", 0], "face_b")
    assert a.shape == (77, 768)
    assert (a[4:6] - b[4:6]).abs().amax() > 1e-3  # the identifier's positions carry different S*
    torch.testing.assert_close(a[:4], b[:4])  # "a photo of" is the same text for both


def test_aligned_crops_and_masks_come_out(comfy_server, photos):
    graph = encode_face_graph(photos["a"])
    graph["6"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "f2d_crops"}}
    graph["7"] = {"class_type": "MaskToImage", "inputs": {"mask": ["4", 2]}}
    graph["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "f2d_masks"}}
    history = comfy_server.run(graph)
    (crop,) = comfy_server.output_images(history, "6")
    (mask,) = comfy_server.output_images(history, "8")
    assert crop.size == (112, 112)
    mask_array = np.asarray(mask.convert("L")) > 127
    assert mask.size == (640, 640) and mask_array[320, 320] and not mask_array[10, 10]
    assert mask_array.sum() == pytest.approx(128 * 128, rel=0.05)


def test_several_photos_give_one_pooled_face(comfy_server, photos):
    graph = encode_face_graph(photos["a"])
    graph["6"] = {"class_type": "LoadImage", "inputs": {"image": photos["b"]}}
    graph["7"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["6", 0]}}
    graph["4"]["inputs"]["image"] = ["7", 0]
    graph["8"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "f2d_pooled"}}
    pooled = _conditioning(comfy_server, graph, ["5", 0], "face_ab")
    assert len(comfy_server.output_images(comfy_server.run(graph), "8")) == 2
    single = _conditioning(comfy_server, encode_face_graph(photos["a"]), ["5", 0], "face_a_again")
    assert (pooled[4:6] - single[4:6]).abs().amax() > 1e-3


def test_saved_face_gives_the_same_conditioning_without_the_photo(comfy_server, photos):
    graph = encode_face_graph(photos["a"])
    graph["6"] = {"class_type": "F2DSaveFace", "inputs": {"f2d_face": ["4", 0], "name": "astronaut"}}
    direct = _conditioning(comfy_server, graph, ["5", 0], "direct")
    files = comfy_server.combo_options("F2DLoadFace", "face_file")
    saved = sorted(f for f in files if f.startswith("astronaut_"))[-1]
    loaded = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "F2DLoadFace", "inputs": {"face_file": saved}},
        "3": {
            "class_type": "F2DApplyTokens",
            "inputs": {"clip": ["1", 1], "text": "a photo of f l", "f2d_face": ["2", 0]},
        },
    }
    torch.testing.assert_close(_conditioning(comfy_server, loaded, ["3", 0], "loaded"), direct)


def test_a_name_composed_or_decomposed_saves_one_persons_faces(comfy_server, comfy_models_dir, photos):
    """ "Zoe" with a diaeresis typed composed (NFC: Windows, Linux) and decomposed (NFD: macOS) names one
    person: the second save is that person's next file, not a file of a new "Zoe_" person."""
    faces = comfy_models_dir / "face2diffusion" / "faces"
    for name in ("Zo\u00eb_nfc_test", "Zoe\u0308_nfc_test"):
        graph = encode_face_graph(photos["a"])
        graph["6"] = {"class_type": "F2DSaveFace", "inputs": {"f2d_face": ["4", 0], "name": name}}
        del graph["5"]  # the face and its file only
        comfy_server.run(graph)
    saved = sorted(p.name for p in faces.glob("*_nfc_test_*.safetensors"))
    assert saved == ["Zo\u00eb_nfc_test_00001.safetensors", "Zo\u00eb_nfc_test_00002.safetensors"], saved


def test_expression_reference_changes_the_face_words_only(comfy_server, photos):
    graph = encode_face_graph(photos["a"])
    graph["6"] = {"class_type": "LoadImage", "inputs": {"image": photos["b"]}}
    graph["7"] = {
        "class_type": "F2DExpressionReference",
        "inputs": {
            "f2d_model": ["2", 0],
            "image": ["6", 0],
            "expression_model": "epoch_20.pth",
            "face_index": 0,
            "strength": 1.0,
        },
    }
    graph["5"]["inputs"].update(expression=["7", 0], expression_strength=1.0)
    with_expression = _conditioning(comfy_server, graph, ["5", 0], "expr_1")
    graph["5"]["inputs"]["expression_strength"] = 0.0
    strength_zero = _conditioning(comfy_server, graph, ["5", 0], "expr_0")
    plain = _conditioning(comfy_server, encode_face_graph(photos["a"]), ["5", 0], "expr_none")
    torch.testing.assert_close(strength_zero, plain)
    assert (with_expression[4:6] - plain[4:6]).abs().amax() > 1e-4
    torch.testing.assert_close(with_expression[:4], plain[:4])


def test_photo_without_a_face_is_a_node_error_naming_the_image(comfy_server, photos):
    error = _failure(comfy_server, encode_face_graph(photos["none"]))
    assert error.node_type == "F2DEncodeFace"
    assert "image 1 of 1: no face found" in error.exception_message


def test_wrong_weight_file_is_a_node_error_naming_the_file(comfy_server, photos):
    error = _failure(comfy_server, encode_face_graph(photos["a"], msid="mapping.pt"))
    assert error.node_type == "F2DLoadMSIDEncoder"
    assert "mapping.pt is not the F2D MSID encoder" in error.exception_message
    assert "looks like the F2D mapper" in error.exception_message


def test_expression_model_picked_as_msid_file_is_named(comfy_server, photos):
    error = _failure(comfy_server, encode_face_graph(photos["a"], msid="epoch_20.pth"))
    assert error.node_type == "F2DLoadMSIDEncoder"
    assert "epoch_20.pth is a Deep3DFaceRecon expression model" in error.exception_message
    assert "optimizer" not in error.exception_message


def test_mapper_in_the_msid_file_needs_a_combined_file(comfy_server, photos):
    error = _failure(comfy_server, encode_face_graph(photos["a"], mapper="(in the MSID file)"))
    assert error.node_type == "F2DLoadMSIDEncoder"
    assert "msid.pt holds only the F2D MSID encoder" in error.exception_message
    assert "only with a combined .safetensors made by the converter" in error.exception_message


def test_prompt_without_identifier_is_a_node_error(comfy_server, photos):
    error = _failure(comfy_server, encode_face_graph(photos["a"], text="a photo of a knight"))
    assert error.node_type == "F2DApplyTokens"
    assert 'does not contain the identifier "f l"' in error.exception_message


def test_sdxl_clip_is_a_node_error(comfy_server, photos):
    graph = encode_face_graph(photos["a"])
    graph["6"] = {
        "class_type": "DualCLIPLoader",
        "inputs": {
            "clip_name1": "sdxl_clip_l_part.safetensors",
            "clip_name2": "sdxl_clip_g_part.safetensors",
            "type": "sdxl",
        },
    }
    graph["5"]["inputs"]["clip"] = ["6", 0]
    error = _failure(comfy_server, graph)
    assert error.node_type == "F2DApplyTokens"
    assert "needs an SD1.x checkpoint's CLIP" in error.exception_message and "SDXL" in error.exception_message
