"""Several people and identity start in a real ComfyUI server: what each conditioning entry carries.

Person A and person B are two synthetic "faces" the test detector finds, encoded through the real nodes.
Each region's entry is compared with Apply F2D Tokens on the same prompt and face (the S* path whose
official parity test_nodes.py pins) and with the same prompt carrying the other person's S*.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from f2d_core.conditioning.regions import layout_masks
from tests.support import synthetic_insightface as si
from tests.support.comfy_fixtures import PACK_DIR_NAME
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.conditioning_files import SavedEntry, node_failure, saved_conditionings
from tests.support.f2d_graphs import checkpoint_loader, encode_faces, loader
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb

SCENE = "two friends on a beach at sunset"
PROMPT_A = "a photo of f l, smiling"
PROMPT_B = "a photo of f l wearing a hat"
IDENTIFIER_POSITIONS = slice(4, 6)  # "<start> a photo of f l": f, l at 4 and 5
WIDTH, HEIGHT = 128, 64  # the test latent: two 64 px halves


@pytest.fixture(scope="module")
def photos(comfy_server: ComfyServer) -> dict[str, str]:
    """Two people, one photo each, and a template with both faces side by side."""
    a, b = si.face_photo(load_rgb(ASTRONAUT)), si.face_photo(load_rgb(ALIGNED_CROP))
    template = si.square_image((320, 640), [(480, 160, 128, 255), (160, 160, 64, 200)])
    return {
        "a": comfy_server.upload_image(Image.fromarray(a), "f2d_person_a.png"),
        "b": comfy_server.upload_image(Image.fromarray(b), "f2d_person_b.png"),
        "template": comfy_server.upload_image(Image.fromarray(template), "f2d_two_face_template.png"),
    }


def _people_graph(photos: dict[str, str]) -> dict:
    """Faces A and B, an expression for B, the scene prompt, a halves layout on a 128x64 latent, and both people.

    "13" is the chain's output (scene, A left, B right); "20"-"23" are the single-person references.
    """
    graph = {
        "1": checkpoint_loader(),
        "2": loader(),
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "10": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": SCENE}},
        "11": {
            "class_type": "F2DRegionLayout",
            "inputs": {"latent": ["5", 0], "layout": "left/right halves", "overlap": 0.25},
        },
        "14": {
            "class_type": "F2DExpressionReference",
            "inputs": {
                "f2d_model": ["2", 0],
                "image": ["3a", 0],
                "expression_model": "epoch_20.pth",
                "face_index": 0,
                "strength": 1.0,
            },
        },
    }
    encode_faces(graph, {key: photos[key] for key in ("a", "b")}, ["2", 0])
    common = {"clip": ["1", 1], "latent": ["5", 0], "masks": ["11", 0]}
    graph["12"] = {
        "class_type": "F2DAddPerson",
        "inputs": {
            **common,
            "conditioning": ["10", 0],
            "f2d_face": ["4a", 0],
            "text": PROMPT_A,
            "person": 1,
            "strength": 1.0,
        },
    }
    graph["13"] = {
        "class_type": "F2DAddPerson",
        "inputs": {
            **common,
            "conditioning": ["12", 0],
            "f2d_face": ["4b", 0],
            "text": PROMPT_B,
            "person": 2,
            "strength": 1.5,
            "expression": ["14", 0],
        },
    }
    for node_id, face, text, expression in (
        ("20", "a", PROMPT_A, False),
        ("21", "b", PROMPT_B, True),
        ("22", "b", PROMPT_A, False),
        ("23", "a", PROMPT_B, True),
    ):
        inputs = {"clip": ["1", 1], "text": text, "f2d_face": [f"4{face}", 0]}
        graph[node_id] = {
            "class_type": "F2DApplyTokens",
            "inputs": inputs | ({"expression": ["14", 0]} if expression else {}),
        }
    return graph


def _failure(server: ComfyServer, graph: dict, source: list) -> ExecutionFailed:
    return node_failure(server, graph, source, "F2DAddPerson")


@pytest.fixture(scope="module")
def two_people(comfy_server: ComfyServer, photos: dict[str, str]) -> dict[str, list[SavedEntry]]:
    sources = {"people": ["13", 0], "scene": ["10", 0], "a_alone": ["20", 0], "b_alone": ["21", 0]}
    sources |= {"b_in_a_prompt": ["22", 0], "a_in_b_prompt": ["23", 0]}
    return saved_conditionings(comfy_server, _people_graph(photos), {f"pp_{k}": v for k, v in sources.items()})


def test_scene_prompt_stays_plain_clip_text_encode(two_people):
    scene, (first, *_) = two_people["pp_scene"], two_people["pp_people"]
    assert len(scene) == 1 and torch.equal(first.cond, scene[0].cond)
    assert first.mask is None and first.options == scene[0].options  # no mask, no strength, no time range


def test_each_region_carries_its_own_person_with_the_mask_and_strength_asked_for(two_people):
    _, person_a, person_b = two_people["pp_people"]
    expected = layout_masks("left/right halves", HEIGHT, WIDTH, overlap=0.25)
    assert torch.equal(person_a.cond, two_people["pp_a_alone"][0].cond)
    assert torch.equal(person_b.cond, two_people["pp_b_alone"][0].cond)  # B's S* with B's expression
    assert torch.equal(person_a.mask, expected[0:1]) and torch.equal(person_b.mask, expected[1:2])
    assert person_a.mask[0, :, :80].eq(1).all() and person_a.mask[0, :, 80:].eq(0).all()  # 64 px + 16 overlap
    assert person_a.options["mask_strength"] == 1.0 and person_b.options["mask_strength"] == 1.5
    assert person_a.options["set_area_to_bounds"] is False
    assert "start_percent" not in person_a.options and "start_percent" not in person_b.options


def test_no_region_carries_the_other_persons_s_star(two_people):
    _, person_a, person_b = two_people["pp_people"]
    for own, other in ((person_a, two_people["pp_b_in_a_prompt"][0]), (person_b, two_people["pp_a_in_b_prompt"][0])):
        # Same prompt: identical up to the identifier (causal attention); different S* from there on.
        torch.testing.assert_close(own.cond[0, :4], other.cond[0, :4], atol=1e-5, rtol=0)
        assert (own.cond[0, IDENTIFIER_POSITIONS] - other.cond[0, IDENTIFIER_POSITIONS]).abs().amax() > 1e-3


def _identity_start_graph(photos: dict[str, str], identity_start: float | None) -> dict:
    graph = _people_graph(photos)
    if identity_start is not None:
        graph["20"]["inputs"] |= {"identity_start": identity_start, "class_noun": "woman"}
    graph["30"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a photo of woman, smiling"}}
    return graph


def test_identity_start_conditions_with_the_class_noun_first_then_s_star(comfy_server, photos, two_people):
    saved = saved_conditionings(
        comfy_server, _identity_start_graph(photos, 0.3), {"is_split": ["20", 0], "is_class": ["30", 0]}
    )
    class_phase, face_phase = saved["is_split"]
    assert torch.equal(class_phase.cond, saved["is_class"][0].cond)  # "f l" -> "woman", plain CLIPTextEncode
    assert (class_phase.options["start_percent"], class_phase.options["end_percent"]) == (0.0, pytest.approx(0.3))
    assert torch.equal(face_phase.cond, two_people["pp_a_alone"][0].cond)
    assert (face_phase.options["start_percent"], face_phase.options["end_percent"]) == (pytest.approx(0.3), 1.0)


def test_identity_start_zero_is_todays_conditioning_bit_for_bit(comfy_server, photos, two_people):
    saved = saved_conditionings(comfy_server, _identity_start_graph(photos, 0.0), {"is_zero": ["20", 0]})
    ((entry,),) = saved.values()
    (default,) = two_people["pp_a_alone"]  # the same node without the inputs: as before they existed
    assert torch.equal(entry.cond, default.cond) and entry.options == default.options
    assert "start_percent" not in entry.options and entry.mask is None


def test_people_take_identity_start_per_region(comfy_server, photos, two_people):
    graph = _people_graph(photos)
    graph["13"]["inputs"] |= {"identity_start": 0.5}
    graph["31"] = {
        "class_type": "CLIPTextEncode",
        "inputs": {"clip": ["1", 1], "text": "a photo of person wearing a hat"},
    }
    saved = saved_conditionings(comfy_server, graph, {"is_people": ["13", 0], "is_class_b": ["31", 0]})
    _scene, person_a, class_b, face_b = saved["is_people"]
    assert torch.equal(class_b.cond, saved["is_class_b"][0].cond)
    assert torch.equal(face_b.cond, two_people["pp_b_alone"][0].cond)
    assert (class_b.options["start_percent"], class_b.options["end_percent"]) == (0.0, 0.5)
    assert (face_b.options["start_percent"], face_b.options["end_percent"]) == (0.5, 1.0)
    assert torch.equal(class_b.mask, face_b.mask) and class_b.options["mask_strength"] == 1.5
    assert "start_percent" not in person_a.options


def test_two_people_sample_to_an_image(comfy_server, photos):
    graph = _people_graph(photos)
    graph["40"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "blurry"}}
    graph["41"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "positive": ["13", 0],
            "negative": ["40", 0],
            "latent_image": ["5", 0],
            "seed": 0,
            "steps": 2,
            "cfg": 7.0,
            "sampler_name": "euler_ancestral",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    }
    graph["42"] = {"class_type": "VAEDecode", "inputs": {"samples": ["41", 0], "vae": ["1", 2]}}
    graph["43"] = {"class_type": "SaveImage", "inputs": {"images": ["42", 0], "filename_prefix": "f2d_two_people"}}
    (image,) = comfy_server.output_images(comfy_server.run(graph, timeout=300), "43")
    assert image.size == (WIDTH, HEIGHT)


def test_face_masks_give_one_mask_per_face_left_to_right(comfy_server, photos):
    graph = {
        "2": loader(),
        "3": {"class_type": "LoadImage", "inputs": {"image": photos["template"]}},
        "4": {"class_type": "F2DFaceMasks", "inputs": {"f2d_model": ["2", 0], "image": ["3", 0], "grow": 0.0}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "f2d_face_masks"}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "f2d_all_faces"}},
    }
    history = comfy_server.run(graph)
    masks = [torch.from_numpy(np.asarray(m.convert("L")) > 127) for m in comfy_server.output_images(history, "6")]
    assert "".join(history["outputs"]["7"]["text"]) == "2"
    left, right = masks  # the smaller face is on the left: ordered by position, not size
    assert left.shape == (320, 640)
    assert left[128:192, 128:192].all() and left.sum() == 64 * 64
    assert right[96:224, 416:544].all() and right.sum() == 128 * 128
    (union,) = comfy_server.output_images(history, "9")
    assert (np.asarray(union.convert("L")) > 127).sum() == 64 * 64 + 128 * 128


def test_mask_of_another_size_than_the_latent_is_a_node_error(comfy_server, photos):
    graph = _people_graph(photos)
    graph["15"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    graph["12"]["inputs"]["masks"] = ["15", 0]
    error = _failure(comfy_server, graph, ["12", 0])
    assert error.node_type == "F2DAddPerson"
    assert "Person 1's mask is 64x64 pixels, but the latent is for a 128x64 image" in error.exception_message


def test_empty_mask_is_a_node_error(comfy_server, photos):
    graph = _people_graph(photos)
    graph["15"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": WIDTH, "height": HEIGHT}}
    graph["12"]["inputs"]["masks"] = ["15", 0]
    error = _failure(comfy_server, graph, ["12", 0])
    assert error.node_type == "F2DAddPerson" and "is empty (all zero)" in error.exception_message


def test_more_people_than_regions_is_a_node_error(comfy_server, photos):
    graph = _people_graph(photos)
    graph["13"]["inputs"]["person"] = 3
    error = _failure(comfy_server, graph, ["13", 0])
    assert error.node_type == "F2DAddPerson"
    assert "Person 3 has no region: masks holds 2 mask(s)" in error.exception_message


def test_sdxl_clip_is_a_node_error_for_a_person(comfy_server, photos):
    graph = _people_graph(photos)
    graph["16"] = {
        "class_type": "DualCLIPLoader",
        "inputs": {
            "clip_name1": "sdxl_clip_l_part.safetensors",
            "clip_name2": "sdxl_clip_g_part.safetensors",
            "type": "sdxl",
        },
    }
    graph["12"]["inputs"]["clip"] = ["16", 0]
    error = _failure(comfy_server, graph, ["12", 0])
    assert error.node_type == "F2DAddPerson"
    assert "needs an SD1.x checkpoint's CLIP" in error.exception_message and "SDXL" in error.exception_message


@pytest.mark.parametrize("node_id", ["F2DAddPerson", "F2DRegionLayout", "F2DFaceMasks"])
def test_new_nodes_have_a_help_page_the_server_serves(comfy_server, node_id):
    """The frontend's node library shows js/docs/<node id>.md, served under the pack's web folder."""
    url = f"{comfy_server.url}/extensions/{PACK_DIR_NAME}/docs/{node_id}.md"
    page = requests.get(url, timeout=30)
    assert page.status_code == 200 and page.text.startswith("# ")
    assert comfy_server.object_info(node_id)[node_id]["display_name"] in page.text


def test_two_people_give_the_sampler_the_same_work_as_plain_regional_prompts(comfy_server, photos, two_people):
    """Same entries, shapes, masks and options as scene + two CLIPTextEncode through ConditioningSetMask and
    ConditioningCombine: the sampler does the same work; only the values at the identifier differ."""
    graph = _people_graph(photos)
    graph["50"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": WIDTH, "height": HEIGHT}}
    previous = ["10", 0]
    for base, (x0, x1), text, strength in ((51, (0, 80), PROMPT_A, 1.0), (61, (48, 128), PROMPT_B, 1.5)):
        graph[f"{base}"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": x1 - x0, "height": HEIGHT}}
        graph[f"{base + 1}"] = {
            "class_type": "MaskComposite",
            "inputs": {"destination": ["50", 0], "source": [f"{base}", 0], "x": x0, "y": 0, "operation": "add"},
        }
        plain_text = text.replace("f l", "a person")
        graph[f"{base + 2}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": plain_text}}
        graph[f"{base + 3}"] = {
            "class_type": "ConditioningSetMask",
            "inputs": {
                "conditioning": [f"{base + 2}", 0],
                "mask": [f"{base + 1}", 0],
                "strength": strength,
                "set_cond_area": "default",
            },
        }
        graph[f"{base + 4}"] = {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": previous, "conditioning_2": [f"{base + 3}", 0]},
        }
        previous = [f"{base + 4}", 0]
    (plain,) = saved_conditionings(comfy_server, graph, {"plain_regional": previous}).values()
    people = two_people["pp_people"]
    assert len(plain) == len(people) == 3
    for ours, core in zip(people, plain, strict=True):
        assert ours.cond.shape == core.cond.shape and ours.options == core.options
        assert (ours.mask is None and core.mask is None) or torch.equal(ours.mask, core.mask)
