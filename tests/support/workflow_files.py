"""The bundled workflows (`workflows/<title>.json` UI format, `workflows/api/<name>.json` API format) as tests use them.

A workflow's name is its API copy's file name (`f2d_portrait`, for scripts); its UI file and thumbnail are
named by its title for people (`01 Portrait from one photo`), which is what ComfyUI's template browser
shows and sorts by (TEMPLATE_TITLES, from tests/browser/template_titles.json).

`prepare_for_test` turns an API workflow into one the test server runs in seconds: model names become
the test models (by node type and input name, failing clearly on a model nothing covers), LoadImage
nodes get the uploaded test input their consumers need, photo folders (training) the test's folder,
and sizes, batches and steps shrink.
`ui_as_api` reads a UI workflow the way the frontend queues it, so tests can compare it with its API copy.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tests.support import synthetic_insightface as si
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
# name -> title of the template (its UI file's name), portrait first; export_workflows.mjs reads the same file.
TEMPLATE_TITLES: dict[str, str] = json.loads((REPO_ROOT / "tests" / "browser" / "template_titles.json").read_text())
THUMBNAIL_MAX_BYTES = 60 * 1024
# The JPEG comment export_workflows.mjs writes into each thumbnail when the Load Image nodes showed the
# drawn placeholders (tests/browser/placeholders.py): a thumbnail without it was made some other way.
THUMBNAIL_STAMP = "f2d thumbnail; Load Image previews: the drawn placeholders of tests/browser/placeholders.py"
# role (see IMAGE_ROLES) -> the file each bundled workflow's Load Image names; the export uploads a drawn
# placeholder under it, so the thumbnails show no photo.
PLACEHOLDER_FILES: dict[str, str] = {
    "face": "f2d_face.png",
    "expression": "f2d_expression_reference.png",
    "template": "f2d_template.png",
    "pose": "f2d_pose.png",
    "face_2": "f2d_face_2.png",
    "group_template": "f2d_group_template.png",
}
# Roles that share their consumers with another role; a Load Image naming the variant's file gets the variant:
# a second person's photo, a template with several faces (F2D Face Masks finds them).
ROLE_VARIANTS: dict[str, str] = {"face_2": "face", "group_template": "template"}
# The group template test input: two faces side by side (a 4x scale to the synthetic detector's 640).
GROUP_TEMPLATE_SIZE = (160, 80)

Graph = dict[str, dict[str, Any]]

# Frontend-only nodes: saved in UI workflows, never sent to the server.
VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MUTED_MODES = frozenset({2, 4})  # LiteGraph NEVER and BYPASS: left out of the API graph
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf", ".sft")
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})

# (node type, input) -> {name a bundled workflow uses: the test server's model of that kind}.
MODEL_SUBSTITUTES: dict[tuple[str, str], dict[str, str]] = {
    ("CheckpointLoaderSimple", "ckpt_name"): {
        "v1-5-pruned-emaonly.safetensors": "f2d_tiny_sd15.safetensors",
        "sd-v1-5-inpainting.ckpt": "f2d_tiny_sd15_inpaint.safetensors",
        "sd_xl_base_1.0.safetensors": "f2d_tiny_sdxl.safetensors",
    },
    ("ControlNetLoader", "control_net_name"): {
        "control_v11p_sd15_openpose.pth": "f2d_tiny_controlnet_sd15.safetensors",
    },
    ("F2DLoadMSIDEncoder", "msid_file"): {"msid.pt": "msid.pt"},
    ("F2DLoadMSIDEncoder", "mapper_file"): {
        "mapping.pt": "mapping.pt",
        "f2d_sdxl_mapper.safetensors": "f2d_test_sdxl_mapper.safetensors",
    },
    ("F2DLoadMSIDEncoder", "insightface_pack"): {"buffalo_l": "buffalo_l"},
    ("F2DExpressionReference", "expression_model"): {"epoch_20.pth": "epoch_20.pth"},
    ("F2DTrainingDataset", "face_parser"): {"79999_iter.pth": "79999_iter.pth"},
    ("F2DFreeCureSampler", "face_parser"): {"79999_iter.pth": "79999_iter.pth"},
    ("F2DTrainingDataset", "expression_model"): {"epoch_20.pth": "epoch_20.pth"},
    ("F2DLoadFaceRecognizer", "recognition_model"): {"buffalo_l/w600k_r50.onnx": "buffalo_l/w600k_r50.onnx"},
}

# Test models the stock loader cannot load: (node type, test model) -> the test probe node that loads it (the tiny
# SDXL's 3-layer text towers need its te_options sidecar, tests/support/tiny_sdxl.py).
LOADER_SUBSTITUTES: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "f2d_tiny_sdxl.safetensors"): "F2DTestTinySDXLCheckpointLoader",
}

# What a LoadImage feeds decides which test input it gets: (consumer type, consumer input) -> role.
IMAGE_ROLES: dict[tuple[str, str], str] = {
    ("F2DEncodeFace", "image"): "face",
    ("F2DExpressionReference", "image"): "expression",
    ("InpaintModelConditioning", "pixels"): "template",
    ("VAEEncodeForInpaint", "pixels"): "template",
    ("ImageCompositeMasked", "destination"): "template",
    ("ControlNetApplyAdvanced", "image"): "pose",
    ("ControlNetApply", "image"): "pose",
    ("F2DFaceMasks", "image"): "template",
    ("VAEEncode", "pixels"): "template",
}

# Folders of input photos a node reads: (node type, input) -> role; the test supplies a folder per role.
FOLDER_ROLES: dict[tuple[str, str], str] = {
    ("F2DTrainingDataset", "folder"): "training_photos",
}

# Small and fast on a CPU: (node type, input) -> value; any `steps` input is capped at TEST_STEPS.
TEST_SIZE = 64
TEST_STEPS = 2
TEST_BATCH = 2
SHRINK: dict[tuple[str, str], int] = {
    ("EmptyLatentImage", "width"): TEST_SIZE,
    ("EmptyLatentImage", "height"): TEST_SIZE,
    ("F2DTrainingDataset", "crop_size"): TEST_SIZE,
    ("F2DTrainMapper", "batch_size"): TEST_BATCH,
}
# INT inputs the frontend gives a "control after generate" widget even when /object_info does not ask.
LEGACY_SEED_NAMES = frozenset({"seed", "noise_seed"})
# Inputs the frontend's own extensions add to a node's prompt from a widget no workflow file saves (the
# server ignores them): node type -> {input: value until the node first runs}. PreviewAny shows its text
# in a "preview" widget (Comfy.PreviewAny).
FRONTEND_PROMPT_INPUTS: dict[str, dict[str, Any]] = {"PreviewAny": {"preview": ""}}


class WorkflowProblem(AssertionError):
    """A bundled workflow the tests cannot run as it is; the message names the workflow, node and fix."""


# ---- files ---------------------------------------------------------------------------------------


def workflow_names() -> list[str]:
    """Names of the bundled workflows, from their API copies."""
    return sorted(path.stem for path in API_DIR.glob("*.json"))


def load_api(name: str) -> Graph:
    """`workflows/api/<name>.json`."""
    return json.loads((API_DIR / f"{name}.json").read_text())


def ui_path(name: str) -> Path:
    """`workflows/<title>.json`, the UI workflow ComfyUI's template browser lists under its title."""
    return WORKFLOWS_DIR / f"{TEMPLATE_TITLES[name]}.json"


def load_ui(name: str) -> dict[str, Any]:
    """The UI workflow of `name` (`ui_path`)."""
    return json.loads(ui_path(name).read_text())


def thumbnail_path(name: str) -> Path:
    """`workflows/<title>.jpg`, the thumbnail ComfyUI's template browser shows."""
    return WORKFLOWS_DIR / f"{TEMPLATE_TITLES[name]}.jpg"


# ---- test inputs ---------------------------------------------------------------------------------


def pose_image(size: int = TEST_SIZE) -> Image.Image:
    """An OpenPose-style stick figure (coloured limbs on black), as an OpenPose ControlNet expects."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    s = size / 64
    limbs = [
        ((32, 12), (32, 30), (255, 0, 0)),
        ((32, 18), (20, 28), (255, 170, 0)),
        ((32, 18), (44, 28), (170, 255, 0)),
        ((32, 30), (24, 52), (0, 255, 85)),
        ((32, 30), (40, 52), (0, 170, 255)),
    ]
    for (x0, y0), (x1, y1), colour in limbs:
        draw.line((x0 * s, y0 * s, x1 * s, y1 * s), fill=colour, width=max(1, round(2 * s)))
    draw.ellipse((28 * s, 6 * s, 36 * s, 14 * s), outline=(0, 0, 255), width=max(1, round(s)))
    return image


def template_image(size: int = TEST_SIZE) -> Image.Image:
    """A grey template portrait whose centre is transparent: LoadImage's mask (1 - alpha) marks it."""
    rgba = np.full((size, size, 4), 128, np.uint8)
    rgba[..., 3] = 255
    rgba[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, 3] = 0
    return Image.fromarray(rgba, "RGBA")


def group_template_image() -> Image.Image:
    """A template with two faces the synthetic detector finds, side by side (GROUP_TEMPLATE_SIZE)."""
    width, height = GROUP_TEMPLATE_SIZE
    image = si.square_image((height, width), [(40, 40, 16, 255), (120, 40, 16, 230)])
    image[..., 1:] = 90  # grey-green card; the detector keys on red only
    return Image.fromarray(image)


def input_images() -> dict[str, Image.Image]:
    """One test input per LoadImage role: faces the synthetic detector finds, templates, a pose."""
    return {
        "face": Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))),
        "expression": Image.fromarray(si.face_photo(load_rgb(ALIGNED_CROP))),
        "template": template_image(),
        "pose": pose_image(),
        "face_2": Image.fromarray(si.face_photo(load_rgb(ALIGNED_CROP), shade=-40)),
        "group_template": group_template_image(),
    }


# ---- API graphs for the test server --------------------------------------------------------------


def _consumers(graph: Graph, node_id: str, slot: int) -> list[tuple[str, str]]:
    """(consumer type, input name) of every input linked to output `slot` of `node_id`."""
    return [
        (node["class_type"], name)
        for node in graph.values()
        for name, value in node["inputs"].items()
        if isinstance(value, list) and value == [node_id, slot]
    ]


def image_roles(graph: Graph, workflow: str = "workflow") -> dict[str, str]:
    """{LoadImage node id: role} from what each LoadImage's IMAGE feeds (see IMAGE_ROLES)."""
    roles = {}
    for node_id, node in graph.items():
        if node["class_type"] != "LoadImage":
            continue
        consumers = _consumers(graph, node_id, 0)
        found = {IMAGE_ROLES[c] for c in consumers if c in IMAGE_ROLES}
        if len(found) != 1:
            raise WorkflowProblem(
                f"{workflow}: LoadImage node {node_id} feeds {consumers or 'nothing'}, so no single test input "
                f"fits it ({sorted(found) or 'no known role'}); add its consumer to IMAGE_ROLES in {__name__}."
            )
        role = found.pop()
        named = next((r for r, file in PLACEHOLDER_FILES.items() if file == node["inputs"].get("image")), None)
        roles[node_id] = named if ROLE_VARIANTS.get(named) == role else role
    return roles


def _looks_like_model(value: object) -> bool:
    return isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS)


def substitute_models(graph: Graph, workflow: str = "workflow") -> Graph:
    """Copy of `graph` with every model name replaced by the test model of its kind (MODEL_SUBSTITUTES)."""
    graph = copy.deepcopy(graph)
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            table = MODEL_SUBSTITUTES.get((node["class_type"], name))
            if table is None and not _looks_like_model(value):
                continue
            if table is None or value not in table:
                raise WorkflowProblem(
                    f"{workflow}: node {node_id} ({node['class_type']}) input {name!r} = {value!r} is a model no "
                    f"test substitute covers; add it to MODEL_SUBSTITUTES in {__name__}."
                )
            node["inputs"][name] = table[value]
            node["class_type"] = LOADER_SUBSTITUTES.get((node["class_type"], table[value]), node["class_type"])
    return graph


def shrink(graph: Graph) -> Graph:
    """Copy of `graph` with latent sizes at TEST_SIZE and every `steps` at most TEST_STEPS."""
    graph = copy.deepcopy(graph)
    for node in graph.values():
        for name, value in node["inputs"].items():
            if (node["class_type"], name) in SHRINK:
                node["inputs"][name] = SHRINK[(node["class_type"], name)]
            elif name == "steps" and isinstance(value, int):
                node["inputs"][name] = min(value, TEST_STEPS)
    return graph


def substitute_folders(graph: Graph, folders: Mapping[str, str], workflow: str = "workflow") -> Graph:
    """Copy of `graph` with every photo folder (FOLDER_ROLES) replaced by the test's folder of that role."""
    graph = copy.deepcopy(graph)
    for node_id, node in graph.items():
        for name in node["inputs"]:
            role = FOLDER_ROLES.get((node["class_type"], name))
            if role is None:
                continue
            if role not in folders:
                raise WorkflowProblem(
                    f"{workflow}: node {node_id} ({node['class_type']}) reads the folder {node['inputs'][name]!r}; "
                    f"the test gives no {role!r} folder to put in its place."
                )
            node["inputs"][name] = folders[role]
    return graph


def prepare_for_test(graph: Graph, uploaded: Mapping[str, str], workflow: str = "workflow") -> Graph:
    """The graph the test server runs: test models, uploaded inputs and folders (`{role: name}`), small and short."""
    prepared = shrink(substitute_folders(substitute_models(graph, workflow), uploaded, workflow))
    for node_id, role in image_roles(prepared, workflow).items():
        prepared[node_id]["inputs"]["image"] = uploaded[role]
    return prepared


# ---- UI workflows as the frontend queues them ----------------------------------------------------


def _is_widget(spec: list) -> bool:
    """Whether an /object_info input spec is shown as a widget (its value saved in `widgets_values`)."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    kind = spec[0]
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_positions(node_info: Mapping[str, Any]) -> dict[str, int]:
    """{input name: its index in a UI node's `widgets_values`}, in the order /object_info gives the inputs.

    The frontend also saves a seed's "control after generate" choice (at the seed's index + 1) and
    LoadImage's upload button right after their widget. Like the frontend, an INT input named `seed` or
    `noise_seed` has that choice unless its spec says `control_after_generate: false`.
    """
    specs = {**node_info["input"].get("required", {}), **node_info["input"].get("optional", {})}
    order = node_info.get("input_order", {})
    positions, i = {}, 0
    for name in [*order.get("required", []), *order.get("optional", [])]:
        spec = specs[name]
        if not _is_widget(spec):
            continue
        positions[name] = i
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        control = options.get("control_after_generate", spec[0] == "INT" and name in LEGACY_SEED_NAMES)
        i += 1 + bool(control) + bool(options.get("image_upload"))
    return positions


def widget_values(node: Mapping[str, Any], node_info: Mapping[str, Any]) -> dict[str, Any]:
    """{input name: value} of a UI node's `widgets_values` (see `widget_positions`)."""
    values = list(node.get("widgets_values") or [])
    return {name: values[i] for name, i in widget_positions(node_info).items() if i < len(values)}


def ui_as_api(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> Graph:
    """The API graph a UI workflow describes: node types, widget values and links (no `_meta`)."""
    runs = [n for n in ui["nodes"] if n["type"] not in VIRTUAL_NODE_TYPES and n.get("mode", 0) not in MUTED_MODES]
    nodes = {str(n["id"]): n for n in runs}
    graph: Graph = {}
    for node_id, node in nodes.items():
        if node["type"] not in object_info:
            raise WorkflowProblem(f"UI node {node_id} has type {node['type']!r}, which the server does not know.")
        inputs = {**FRONTEND_PROMPT_INPUTS.get(node["type"], {}), **widget_values(node, object_info[node["type"]])}
        graph[node_id] = {"inputs": inputs, "class_type": node["type"]}
    for _, origin, origin_slot, target, target_slot, *_ in ui["links"]:
        if str(target) in graph and str(origin) in nodes:
            name = nodes[str(target)]["inputs"][target_slot]["name"]
            graph[str(target)]["inputs"][name] = [str(origin), origin_slot]
    return graph


def without_meta(graph: Graph) -> Graph:
    """The graph without the `_meta` titles the server ignores."""
    return {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in graph.items()}
