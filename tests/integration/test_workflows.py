"""The bundled workflows: each runs to images on the test server, its UI file describes the same graph as
its API copy, it uses only core nodes and this pack's, and it has a thumbnail ComfyUI can show."""

from __future__ import annotations

import re

import pytest
import requests
from PIL import Image

from tests.integration.conftest import PACK_DIR_NAME
from tests.support.comfy_server import ComfyServer
from tests.support.workflow_files import (
    THUMBNAIL_MAX_BYTES,
    WORKFLOWS_DIR,
    WorkflowProblem,
    input_images,
    load_api,
    load_ui,
    prepare_for_test,
    substitute_models,
    thumbnail_path,
    ui_as_api,
    without_meta,
    workflow_names,
)

BUNDLED = ["f2d_controlnet_pose", "f2d_expression", "f2d_inpaint_template", "f2d_portrait", "f2d_prompt_batch"]
NAMES = workflow_names()
PAPER_SAMPLING = {"sampler_name": "euler_ancestral", "steps": 30, "cfg": 7}


@pytest.fixture(scope="module")
def uploaded(comfy_server: ComfyServer) -> dict[str, str]:
    """{role: uploaded name} of the test inputs (faces the synthetic detector finds, template, pose)."""
    return {role: comfy_server.upload_image(image, f"f2d_wf_{role}.png") for role, image in input_images().items()}


@pytest.fixture(scope="module")
def object_info(comfy_server: ComfyServer) -> dict:
    """The server's /object_info."""
    return comfy_server.object_info()


def _nodes_of(graph: dict, class_type: str) -> dict[str, dict]:
    return {node_id: node for node_id, node in graph.items() if node["class_type"] == class_type}


def test_the_five_workflows_are_bundled_in_both_formats_with_thumbnails():
    assert NAMES == BUNDLED
    for name in NAMES:
        assert (WORKFLOWS_DIR / f"{name}.json").is_file(), f"{name}: UI workflow missing"
        assert thumbnail_path(name).is_file(), f"{name}: thumbnail missing"


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_to_images(comfy_server: ComfyServer, uploaded: dict[str, str], name: str):
    """One image per sampler, saved together by the workflow's one SaveImage, plus the aligned face preview."""
    graph = prepare_for_test(load_api(name), uploaded, name)
    history = comfy_server.run(graph, timeout=300)
    (save_id,) = _nodes_of(graph, "SaveImage")
    saved = comfy_server.output_images(history, save_id)
    assert len(saved) == len(_nodes_of(graph, "KSampler"))
    assert all(image.size == (64, 64) for image in saved)
    previews = [comfy_server.output_images(history, node_id) for node_id in _nodes_of(graph, "PreviewImage")]
    assert [[image.size for image in images] for images in previews] == [[(112, 112)]]


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_describes_its_api_copy(object_info: dict, name: str):
    """Same nodes, node types, widget values and links: the two files cannot drift apart."""
    assert ui_as_api(load_ui(name), object_info) == without_meta(load_api(name))


def test_a_drifted_ui_copy_is_caught(object_info: dict):
    """The comparison sees widget values and links, not only node types."""
    ui = load_ui("f2d_portrait")
    (sampler,) = [node for node in ui["nodes"] if node["type"] == "KSampler"]
    sampler["widgets_values"][2] = 20  # steps (after seed and its "control after generate")
    assert ui_as_api(ui, object_info)["9"]["inputs"]["steps"] == 20
    assert ui_as_api(ui, object_info) != without_meta(load_api("f2d_portrait"))
    ui = load_ui("f2d_portrait")
    ui["links"] = [link for link in ui["links"] if link[3] != 9 or link[4] != 1]  # KSampler's positive
    assert "positive" not in ui_as_api(ui, object_info)["9"]["inputs"]


@pytest.mark.parametrize("name", NAMES)
def test_workflow_uses_core_nodes_and_this_pack_only(object_info: dict, name: str):
    for node_id, node in load_api(name).items():
        module = object_info[node["class_type"]]["python_module"]
        assert not module.startswith("custom_nodes.") or module == f"custom_nodes.{PACK_DIR_NAME}", (
            f"{name}: node {node_id} ({node['class_type']}) comes from {module}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_workflow_samples_with_the_papers_settings_and_prompts_with_f_l(name: str):
    graph = load_api(name)
    for node in _nodes_of(graph, "KSampler").values():
        assert {key: node["inputs"][key] for key in PAPER_SAMPLING} == PAPER_SAMPLING
    for node in _nodes_of(graph, "EmptyLatentImage").values():
        assert (node["inputs"]["width"], node["inputs"]["height"]) == (512, 512)
    prompts = [node["inputs"]["text"] for node in _nodes_of(graph, "F2DApplyTokens").values()]
    assert prompts and all(re.search(r"\bf l\b", text) for text in prompts)


@pytest.mark.parametrize("name", NAMES)
def test_thumbnail_is_a_small_jpeg(name: str):
    path = thumbnail_path(name)
    assert path.stat().st_size <= THUMBNAIL_MAX_BYTES
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.width >= 320 and image.height >= 200


def test_server_lists_the_workflows_as_templates(comfy_server: ComfyServer):
    templates = requests.get(f"{comfy_server.url}/workflow_templates", timeout=30).json()
    assert sorted(templates[PACK_DIR_NAME]) == NAMES
    served = requests.get(f"{comfy_server.url}/api/workflow_templates/{PACK_DIR_NAME}/f2d_portrait.json", timeout=30)
    assert served.json() == load_ui("f2d_portrait")


def test_an_uncovered_model_fails_clearly():
    graph = load_api("f2d_portrait")
    graph["20"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "my_style.safetensors", "model": ["1", 0]}}
    with pytest.raises(WorkflowProblem, match=r"node 20 \(LoraLoader\) input 'lora_name' = 'my_style.safetensors'"):
        substitute_models(graph, "f2d_portrait")
    graph = load_api("f2d_portrait")
    graph["1"]["inputs"]["ckpt_name"] = "dreamshaper_8.safetensors"
    with pytest.raises(WorkflowProblem, match="MODEL_SUBSTITUTES"):
        substitute_models(graph, "f2d_portrait")


def test_a_load_image_without_a_known_role_fails_clearly():
    graph = load_api("f2d_portrait")
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": "extra.png"}}
    with pytest.raises(WorkflowProblem, match=r"LoadImage node 20 feeds nothing"):
        prepare_for_test(graph, {"face": "face.png"}, "f2d_portrait")
