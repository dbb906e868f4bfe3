"""The bundled workflows: each runs on the test server (to images, or to a saved mapper), its UI file
describes the same graph as its API copy, it uses only core nodes and this pack's, and it has a thumbnail
ComfyUI can show that was made with drawn placeholders, never a photo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from safetensors import safe_open

from f2d_core.checkpoints import load_mapper
from tests.support import synthetic_insightface as si
from tests.support.comfy_fixtures import PACK_DIR_NAME
from tests.support.comfy_server import ComfyServer
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb
from tests.support.workflow_files import (
    API_DIR,
    GROUP_TEMPLATE_SIZE,
    PLACEHOLDER_FILES,
    TEMPLATE_TITLES,
    THUMBNAIL_MAX_BYTES,
    THUMBNAIL_STAMP,
    WORKFLOWS_DIR,
    WorkflowProblem,
    image_roles,
    input_images,
    load_api,
    load_ui,
    prepare_for_test,
    substitute_models,
    thumbnail_path,
    ui_as_api,
    ui_path,
    widget_positions,
    without_meta,
    workflow_names,
)

TRAINING = "f2d_train_mapper"
TRAINING_SDXL = "f2d_train_sdxl_mapper"  # trained on the tiny SDXL in tests/integration/test_training_sdxl.py
GENERATION = [
    "f2d_controlnet_pose",
    "f2d_expression",
    "f2d_identity_start",
    "f2d_inpaint_template",
    "f2d_inpaint_two_people",
    "f2d_portrait",
    "f2d_prompt_batch",
    "f2d_sdxl_portrait",
    "f2d_two_people",
]
SDXL_WORKFLOWS = ("f2d_sdxl_portrait",)  # run on the tiny SDXL, with a seeded SDXL mapper
# Latent sizes other than the paper's 512x512: two people side by side need the width; SDXL is made for 1024x1024.
LATENT_SIZES = {"f2d_two_people": (768, 512), "f2d_sdxl_portrait": (1024, 1024)}
# Nodes whose `text` is a prompt with the identifier.
PROMPTING_NODES = ("F2DApplyTokens", "F2DAddPerson")
BEST_OF_4 = "f2d_best_of_4"
FREECURE = "f2d_freecure"
NAMES = workflow_names()
PAPER_SAMPLING = {"sampler_name": "euler_ancestral", "steps": 30, "cfg": 7}
# The training workflow's settings: the paper's where the node has them, a consumer GPU's for the rest.
PAPER_TRAINING = {"learning_rate": 1e-5, "loss": "cgdr", "expression_dropout": 0.2}
CONSUMER_TRAINING = {"steps": 2000, "batch_size": 8, "gradient_checkpointing": True, "start_from": "f2d_model mapper"}
TRAINING_DATASET = {
    "folder": "faces",
    "face_parser": "79999_iter.pth",
    "expression_model": "epoch_20.pth",
    "crop_size": 512,
    "flip": True,
}
TEST_PHOTO_FOLDER = "f2d_wf_training_photos"
REGENERATE = "F2D_EXPORT_WORKFLOWS=1 COMFYUI_PATH=... python -m pytest tests/browser -q -k export"


@pytest.fixture(scope="module")
def uploaded(comfy_server: ComfyServer) -> dict[str, str]:
    """{role: uploaded name} of the test inputs (faces the synthetic detector finds, template, pose), and a
    folder of two such face photos in the input folder for the training workflow."""
    images = input_images()
    names = {role: comfy_server.upload_image(image, f"f2d_wf_{role}.png") for role, image in images.items()}
    folder = Path(comfy_server.input_dir) / TEST_PHOTO_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for role in ("face", "expression"):
        images[role].save(folder / f"{role}.png")
    return {**names, "training_photos": TEST_PHOTO_FOLDER}


@pytest.fixture(scope="module")
def object_info(comfy_server: ComfyServer) -> dict:
    """The server's /object_info."""
    return comfy_server.object_info()


def _nodes_of(graph: dict, class_type: str) -> dict[str, dict]:
    return {node_id: node for node_id, node in graph.items() if node["class_type"] == class_type}


def test_the_workflows_are_bundled_in_both_formats_with_thumbnails():
    assert NAMES == sorted([*GENERATION, TRAINING, TRAINING_SDXL, BEST_OF_4, FREECURE])
    for name in NAMES:
        assert ui_path(name).is_file(), f"{name}: UI workflow missing"
        assert thumbnail_path(name).is_file(), f"{name}: thumbnail missing"
    assert sorted(path.name for path in WORKFLOWS_DIR.iterdir() if path.is_file()) == sorted(
        f"{title}.{suffix}" for title in TEMPLATE_TITLES.values() for suffix in ("json", "jpg")
    )


def test_templates_are_titled_for_people_portrait_first():
    """The template browser shows a template's file name as its title, in the server's order (a sorted folder
    listing on Windows and macOS; the newer frontend sorts by title): numbered, portrait first."""
    titles = list(TEMPLATE_TITLES.values())
    assert sorted(TEMPLATE_TITLES) == NAMES and titles == sorted(titles)
    assert titles[0] == "01 Portrait from one photo" and TEMPLATE_TITLES["f2d_portrait"] == titles[0]
    for title in titles:
        # "-" and "_" read as spaces in the browser's description; the rest is unsafe in a Windows file name.
        assert re.fullmatch(r"\d\d [A-Z][A-Za-z0-9 ]+", title), title


def test_freecure_workflow_saves_before_and_after_side_by_side(
    comfy_server: ComfyServer, uploaded: dict[str, str], object_info: dict
):
    """The plain F2D image (KSampler on the sampler's own `positive`, same seed) and FreeCure's, stitched into
    one saved image; the report is shown. Both seeds move on together after each run ("increment"), so the
    "before" stays FreeCure's image without FreeCure (two "randomize" seeds would part after the first run)."""
    api = load_api(FREECURE)
    ((sampler_id, sampler),) = _nodes_of(api, "F2DFreeCureSampler").items()
    ((plain_id, plain),) = _nodes_of(api, "KSampler").items()
    assert {k: plain["inputs"][k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler")} == {
        k: sampler["inputs"][k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler")
    }
    ui = {str(node["id"]): node for node in load_ui(FREECURE)["nodes"]}
    controls = [
        ui[i]["widgets_values"][widget_positions(object_info[ui[i]["type"]])["seed"] + 1]
        for i in (sampler_id, plain_id)
    ]
    assert controls == ["increment", "increment"]
    assert {"hair", "sunglasses", "laughing"} <= set(sampler["inputs"]["text"].replace(",", " ").split())
    graph = prepare_for_test(api, uploaded, FREECURE)
    history = comfy_server.run(graph, timeout=600)
    (save_id,) = _nodes_of(graph, "SaveImage")
    (saved,) = comfy_server.output_images(history, save_id)
    assert saved.size == (128, 64)  # before | after
    (report_id,) = _nodes_of(graph, "PreviewAny")
    report = "\n".join(history["outputs"][report_id]["text"])
    assert "route fast" in report and "APG:" in report


@pytest.mark.parametrize("name", GENERATION)
def test_workflow_runs_to_images(
    comfy_server: ComfyServer, uploaded: dict[str, str], name: str, request: pytest.FixtureRequest
):
    """One image per sampler, saved together by the workflow's one SaveImage, plus an aligned face preview per
    person (a group template's image keeps the template's size)."""
    if name in SDXL_WORKFLOWS:
        request.getfixturevalue("tiny_sdxl_mapper")  # builds (or reuses) the tiny SDXL too
    graph = prepare_for_test(load_api(name), uploaded, name)
    history = comfy_server.run(graph, timeout=300)
    (save_id,) = _nodes_of(graph, "SaveImage")
    saved = comfy_server.output_images(history, save_id)
    assert len(saved) == len(_nodes_of(graph, "KSampler"))
    size = GROUP_TEMPLATE_SIZE if "group_template" in image_roles(load_api(name), name).values() else (64, 64)
    assert all(image.size == size for image in saved)
    previews = [comfy_server.output_images(history, node_id) for node_id in _nodes_of(graph, "PreviewImage")]
    people = len(_nodes_of(graph, "F2DEncodeFace"))
    assert [[image.size for image in images] for images in previews] == [[(112, 112)]] * people


def test_best_of_4_workflow_keeps_the_most_alike_image(comfy_server: ComfyServer, uploaded: dict[str, str]):
    """The paper's sampler at batch 4 (shrunk: 320 px, 2 steps), scored and cut to the best 1.

    The tiny test UNet draws no faces, so the test pastes a 64 px "face" square (the synthetic detector's
    faces) into each generated image with core ImageCompositeMasked, between VAE Decode and the scoring
    nodes: the reference person, another person, nothing, and the reference person again.
    """
    api = load_api(BEST_OF_4)
    assert {k: api["9"]["inputs"][k] for k in PAPER_SAMPLING} == PAPER_SAMPLING
    assert api["8"]["inputs"]["batch_size"] == 4 and api["14"]["inputs"]["keep"] == 1
    graph = prepare_for_test(api, uploaded, BEST_OF_4)
    graph["8"]["inputs"].update(width=320, height=320)
    texture = {"a": load_rgb(ASTRONAUT), "b": load_rgb(ALIGNED_CROP)}
    squares = [si.face_photo(texture[k], (64, 64), (32, 32), 64) if k else np.zeros((64, 64, 3), np.uint8)
               for k in ("a", "b", None, "a")]  # fmt: skip
    names = [comfy_server.upload_image(Image.fromarray(sq), f"f2d_wf_square_{i}.png") for i, sq in enumerate(squares)]
    source = None
    for i, name in enumerate(names):
        graph[f"sq{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if source is None:
            source = [f"sq{i}", 0]
        else:
            graph[f"sqb{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": source, "image2": [f"sq{i}", 0]}}
            source = [f"sqb{i}", 0]
    graph["paste"] = {
        "class_type": "ImageCompositeMasked",
        "inputs": {"destination": ["10", 0], "source": source, "x": 128, "y": 128, "resize_source": False},
    }
    for node_id in ("13", "14"):
        graph[node_id]["inputs"]["images"] = ["paste", 0]
    history = comfy_server.run(graph, timeout=600)
    table = history["outputs"]["13"]["text"][0]
    scores = [float(line.split()[1]) for line in table.splitlines()[1:5]]
    assert scores[2] == 0.0 and min(scores[0], scores[3]) > scores[1] > 0.0
    best = history["outputs"]["14"]["text"][0]
    assert best.startswith("best 1 of 4 by identity")
    assert int(best.splitlines()[2].split()[0]) in (1, 4)
    saved = comfy_server.output_images(history, "11")
    assert [image.size for image in saved] == [(320, 320)]


def test_best_of_4_workflow_keeps_every_image_when_none_shows_a_face(comfy_server, uploaded: dict[str, str]):
    """The tiny UNet draws no faces (as a helmet hides one): Face Similarity scores 0 and says so, Best of N
    keeps the whole batch with a note, and the workflow saves all four images instead of failing."""
    graph = prepare_for_test(load_api(BEST_OF_4), uploaded, BEST_OF_4)
    graph["8"]["inputs"].update(width=64, height=64)
    history = comfy_server.run(graph, timeout=600)
    table = history["outputs"]["13"]["text"][0]
    assert [float(line.split()[1]) for line in table.splitlines()[1:5]] == [0.0] * 4
    assert "no face in 4 of 4 image(s): they score 0" in table
    best = history["outputs"]["14"]["text"][0]
    assert best.startswith("best 4 of 4 by identity") and "kept the whole batch in its order" in best
    assert [image.size for image in comfy_server.output_images(history, "11")] == [(64, 64)] * 4
    (batch_save,) = [i for i, node in _nodes_of(graph, "SaveImage").items() if node["inputs"]["images"] == ["10", 0]]
    assert [image.size for image in comfy_server.output_images(history, batch_save)] == [(64, 64)] * 4


def test_training_workflow_trains_and_saves_a_mapper(
    comfy_server: ComfyServer, comfy_models_dir: Path, uploaded: dict[str, str]
):
    """On a folder of two photos, 64 px crops, 2 steps at batch 2: a loadable mapper, the report, the loss plot."""
    graph = prepare_for_test(load_api(TRAINING), uploaded, TRAINING)
    dataset, trainer = (next(iter(_nodes_of(graph, t))) for t in ("F2DTrainingDataset", "F2DTrainMapper"))
    assert graph[dataset]["inputs"]["folder"] == TEST_PHOTO_FOLDER
    assert {k: graph[trainer]["inputs"][k] for k in ("steps", "batch_size")} == {"steps": 2, "batch_size": 2}
    history = comfy_server.run(graph, timeout=600)

    (save_id,) = _nodes_of(graph, "F2DSaveMapper")
    name = graph[save_id]["inputs"]["name"]
    saved = comfy_models_dir / "face2diffusion" / f"{name}.safetensors"
    assert history["outputs"][save_id]["text"] == [str(saved)]
    with safe_open(str(saved), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["trained_steps"] == "2"
    settings = json.loads(metadata["training_settings"])
    assert (settings["loss"], settings["batch_size"], settings["crop_size"]) == ("cgdr", 2, 64)
    load_mapper(saved)
    (report_id,) = _nodes_of(graph, "PreviewAny")
    assert "2 of 2 files usable" in "".join(history["outputs"][report_id]["text"])
    (plot_id,) = _nodes_of(graph, "PreviewImage")
    assert [image.size for image in comfy_server.output_images(history, plot_id)] == [(768, 384)]


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


@pytest.mark.parametrize("name", GENERATION)
def test_workflow_samples_with_the_papers_settings_and_prompts_with_f_l(name: str):
    graph = load_api(name)
    for node in _nodes_of(graph, "KSampler").values():
        assert {key: node["inputs"][key] for key in PAPER_SAMPLING} == PAPER_SAMPLING
    for node in _nodes_of(graph, "EmptyLatentImage").values():
        assert (node["inputs"]["width"], node["inputs"]["height"]) == LATENT_SIZES.get(name, (512, 512))
    prompts = [node["inputs"]["text"] for t in PROMPTING_NODES for node in _nodes_of(graph, t).values()]
    assert prompts and all(re.search(r"\bf l\b", text) for text in prompts)


@pytest.mark.parametrize("name", ["f2d_two_people", "f2d_inpaint_two_people"])
def test_people_workflows_chain_one_person_per_region_onto_a_plain_scene_prompt(name: str):
    """KSampler's positive: scene CLIPTextEncode -> Add F2D Person 1 -> Add F2D Person 2, each with its own face."""
    graph = load_api(name)
    people = _nodes_of(graph, "F2DAddPerson")
    source = next(iter(_nodes_of(graph, "KSampler").values()))["inputs"]["positive"][0]
    if graph[source]["class_type"] == "InpaintModelConditioning":
        source = graph[source]["inputs"]["positive"][0]
    chain = []
    while graph[source]["class_type"] == "F2DAddPerson":
        chain.append(source)
        source = graph[source]["inputs"]["conditioning"][0]
    assert graph[source]["class_type"] == "CLIPTextEncode" and "f l" not in graph[source]["inputs"]["text"]
    assert sorted(chain) == sorted(people) and [graph[p]["inputs"]["person"] for p in reversed(chain)] == [1, 2]
    faces = {graph[p]["inputs"]["f2d_face"][0] for p in chain}
    assert len(faces) == 2 and all(graph[f]["class_type"] == "F2DEncodeFace" for f in faces)
    assert all(graph[p]["inputs"]["identity_start"] == 0 for p in chain)


def test_identity_start_workflow_is_the_portrait_with_the_dial_raised_and_a_note_on_when():
    graph, portrait = load_api("f2d_identity_start"), load_api("f2d_portrait")
    (apply_id,) = _nodes_of(graph, "F2DApplyTokens")
    assert 0 < graph[apply_id]["inputs"]["identity_start"] < 0.5 and graph[apply_id]["inputs"]["class_noun"] == "person"
    assert {k: n["class_type"] for k, n in graph.items()} == {k: n["class_type"] for k, n in portrait.items()}
    assert portrait[apply_id]["inputs"]["identity_start"] == 0
    (note,) = [node for node in load_ui("f2d_identity_start")["nodes"] if node["type"] == "MarkdownNote"]
    assert "When to raise it" in note["widgets_values"][0]


def test_training_workflow_trains_with_the_papers_settings(object_info: dict):
    """Dataset from input/faces at 512 with flips; CGDR at lr 1e-5, dropout 0.2; saved, plotted, reported."""
    graph = load_api(TRAINING)
    ((dataset_id, dataset),) = _nodes_of(graph, "F2DTrainingDataset").items()
    ((trainer_id, trainer),) = _nodes_of(graph, "F2DTrainMapper").items()
    assert {k: dataset["inputs"][k] for k in TRAINING_DATASET} == TRAINING_DATASET
    assert {k: trainer["inputs"][k] for k in PAPER_TRAINING} == PAPER_TRAINING
    assert {k: trainer["inputs"][k] for k in CONSUMER_TRAINING} == CONSUMER_TRAINING
    (checkpoint,) = _nodes_of(graph, "CheckpointLoaderSimple").values()
    assert checkpoint["inputs"]["ckpt_name"] == load_api("f2d_portrait")["1"]["inputs"]["ckpt_name"]
    trained = [trainer_id, 0]
    consumers = {node["class_type"]: node["inputs"] for node in graph.values() if trained in node["inputs"].values()}
    assert set(consumers) == {"F2DSaveMapper", "F2DLossGraph"}
    (plot_id,) = _nodes_of(graph, "F2DLossGraph")
    assert [node["inputs"]["images"] for node in _nodes_of(graph, "PreviewImage").values()] == [[plot_id, 0]]
    assert [node["inputs"]["source"] for node in _nodes_of(graph, "PreviewAny").values()] == [[dataset_id, 1]]
    # A resumed run must see the same batches: the UI keeps the seed fixed after each queue.
    ui_trainer = next(node for node in load_ui(TRAINING)["nodes"] if str(node["id"]) == trainer_id)
    seed_at = widget_positions(object_info["F2DTrainMapper"])["seed"]
    assert ui_trainer["widgets_values"][seed_at + 1] == "fixed"


def test_sdxl_training_workflow_trains_at_1024_in_micro_batches_from_scratch():
    """The SD1.x training graph with an SDXL base: 1024² crops, micro-batches before checkpointing, the VAE check."""
    graph, sd1 = load_api(TRAINING_SDXL), load_api(TRAINING)
    assert {k: n["class_type"] for k, n in graph.items()} == {k: n["class_type"] for k, n in sd1.items()}
    ((_, dataset),) = _nodes_of(graph, "F2DTrainingDataset").items()
    ((_, trainer),) = _nodes_of(graph, "F2DTrainMapper").items()
    (checkpoint,) = _nodes_of(graph, "CheckpointLoaderSimple").values()
    assert checkpoint["inputs"]["ckpt_name"] == "sd_xl_base_1.0.safetensors" and dataset["inputs"]["crop_size"] == 1024
    assert {k: trainer["inputs"][k] for k in PAPER_TRAINING} == PAPER_TRAINING
    wanted = {"start_from": "scratch", "batch_size": 8, "micro_batch": 2, "gradient_checkpointing": False}
    assert {k: trainer["inputs"][k] for k in wanted} == wanted
    assert trainer["inputs"]["vae"] == dataset["inputs"]["vae"] == ["1", 2]
    (note,) = [node for node in load_ui(TRAINING_SDXL)["nodes"] if node["type"] == "MarkdownNote"]
    for needed in ("sd_xl_base_1.0.safetensors", "micro_batch", "torchrun", "--micro-batch", "48 H100-hours"):
        assert needed in note["widgets_values"][0], needed


def test_training_workflow_note_says_where_everything_goes():
    (note,) = [node for node in load_ui(TRAINING)["nodes"] if node["type"] == "MarkdownNote"]
    text = note["widgets_values"][0]
    for needed in ("input/faces", "79999_iter.pth", "epoch_20.pth", "msid.pt", "mapping.pt", "buffalo_l"):
        assert needed in text
    for command in ("torchrun", "cli/train_mapper.py", "cli/run_workflow.py workflows/api/f2d_train_mapper.json"):
        assert command in text


@pytest.mark.parametrize("name", NAMES)
def test_thumbnail_is_a_small_jpeg_made_with_the_placeholders(name: str):
    """Small, and stamped by export_workflows.mjs, which shows only drawn placeholders in Load Image nodes."""
    path = thumbnail_path(name)
    assert path.stat().st_size <= THUMBNAIL_MAX_BYTES
    with Image.open(path) as image:
        assert image.format == "JPEG" and image.width >= 320 and image.height >= 200
        assert image.info.get("comment") == THUMBNAIL_STAMP.encode(), f"{name}.jpg: regenerate it ({REGENERATE})"


@pytest.mark.parametrize("name", NAMES)
def test_load_image_nodes_name_the_placeholder_files(name: str):
    """The names the export uploads the drawn placeholders under, so a thumbnail can only show those."""
    api = load_api(name)
    expected = {node_id: PLACEHOLDER_FILES[role] for node_id, role in image_roles(api, name).items()}
    assert {node_id: api[node_id]["inputs"]["image"] for node_id in expected} == expected
    ui = {str(node["id"]): node["widgets_values"][0] for node in load_ui(name)["nodes"] if node["type"] == "LoadImage"}
    assert ui == expected


def test_server_lists_the_workflows_as_templates(comfy_server: ComfyServer):
    templates = requests.get(f"{comfy_server.url}/workflow_templates", timeout=30).json()
    assert sorted(templates[PACK_DIR_NAME]) == sorted(TEMPLATE_TITLES.values())
    title = TEMPLATE_TITLES["f2d_portrait"]
    served = requests.get(f"{comfy_server.url}/api/workflow_templates/{PACK_DIR_NAME}/{title}.json", timeout=30)
    assert served.json() == load_ui("f2d_portrait")
    with Image.open(BytesIO(requests.get(served.url.replace(".json", ".jpg"), timeout=30).content)) as thumbnail:
        assert thumbnail.format == "JPEG"


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


def test_a_training_folder_without_a_test_folder_fails_clearly():
    with pytest.raises(WorkflowProblem, match=r"node 3 \(F2DTrainingDataset\) reads the folder 'faces'"):
        prepare_for_test(load_api(TRAINING), {}, TRAINING)


def test_best_of_4_workflow_saves_the_whole_batch(comfy_server: ComfyServer, uploaded: dict[str, str]):
    """Besides the winner (Save the best image, after Best of N), a SaveImage keeps all 4 generated images
    straight from VAE Decode: run without the scoring nodes, it saves the 4."""
    api = load_api(BEST_OF_4)
    (batch_save,) = [i for i, node in _nodes_of(api, "SaveImage").items() if node["inputs"]["images"] == ["10", 0]]
    assert api["10"]["class_type"] == "VAEDecode" and api["11"]["inputs"]["images"] == ["14", 0]
    graph = prepare_for_test(api, uploaded, BEST_OF_4)
    for scoring in ("11", "12", "13", "14"):
        del graph[scoring]
    history = comfy_server.run(graph, timeout=600)
    assert len(comfy_server.output_images(history, batch_save)) == api["8"]["inputs"]["batch_size"] == 4


# ---- a non-UTF-8 locale (LANG=C, LC_ALL=C: containers, cron, ssh without a locale) ---------------

RUN_WORKFLOW = Path(__file__).resolve().parents[2] / "cli" / "run_workflow.py"


def _c_locale_run(path: Path, server: ComfyServer) -> subprocess.CompletedProcess[str]:
    """cli/run_workflow.py as a user under LC_ALL=C runs it: Python's UTF-8 mode off, files decoded as ASCII."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONIOENCODING", "PYTHONUTF8")}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    command = [sys.executable, str(RUN_WORKFLOW), str(path), "--server", server.url, "--timeout", "300"]
    return subprocess.run(
        command, env=env, capture_output=True, timeout=360, check=False, encoding="ascii", errors="replace"
    )


def test_run_workflow_reads_every_bundled_workflow_under_the_c_locale(comfy_server: ComfyServer):
    """Every bundled file holds a non-ASCII title ("Encode Face \\u2192 S*"): under LC_ALL=C each API copy is
    read and validated by the server (which refuses the real model names the test server lacks), each UI
    copy is read and refused as the UI format, never a UnicodeDecodeError traceback."""
    assert any("\u2192" in (API_DIR / f"{name}.json").read_text(encoding="utf-8") for name in NAMES)
    for name in NAMES:
        api = _c_locale_run(API_DIR / f"{name}.json", comfy_server)
        assert api.returncode == 2 and "The server rejected the graph" in api.stderr, (name, api.stderr[-2000:])
        ui = _c_locale_run(ui_path(name), comfy_server)
        assert ui.returncode == 2 and "is a UI-format workflow" in ui.stderr, (name, ui.stderr[-2000:])
        assert "Traceback" not in api.stderr + ui.stderr


def test_run_workflow_runs_a_bundled_workflow_to_images_under_the_c_locale(
    comfy_server: ComfyServer, uploaded: dict[str, str], tmp_path: Path
):
    graph = prepare_for_test(load_api("f2d_portrait"), uploaded, "f2d_portrait")
    path = tmp_path / "portrait.json"
    path.write_text(json.dumps(graph, ensure_ascii=False), encoding="utf-8")  # the arrow stays a UTF-8 byte sequence
    assert "\u2192".encode() in path.read_bytes()
    done = _c_locale_run(path, comfy_server)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^output images node \S+ \(SaveImage\): output/", done.stdout, re.M), done.stdout[-3000:]
    assert done.stdout.rstrip().endswith("done")
