"""The pack in ComfyUI's real frontend: each bundled workflow opens cleanly, Apply F2D Tokens shows where the
identifier is and warns before queueing a prompt without it, and the training-loss sparkline draws.

The page is driven by check_workflows.mjs (node + playwright-core + Debian's chromium) against the
session's server; this file asserts on its report. Load Image nodes show the drawn placeholders of
placeholders.py (never a photo). Screenshots stay in F2D_ARTIFACTS_DIR (default `artifacts/browser/`).
`F2D_EXPORT_WORKFLOWS=1` also regenerates workflows/ (UI, API, thumbnails) with export_workflows.mjs
(`F2D_EXPORT_ONLY=<name>`: one workflow; `F2D_EXPORT_THUMBNAILS_ONLY=1`: the thumbnails of the JSON files as
they are).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import save_face
from tests.browser.placeholders import placeholder_images
from tests.support import synthetic_insightface as si
from tests.support.comfy_fixtures import PACK_DIR_NAME
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import CHECKPOINT, loader, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb
from tests.support.workflow_files import (
    PLACEHOLDER_FILES,
    TEMPLATE_TITLES,
    THUMBNAIL_STAMP,
    image_roles,
    load_api,
    load_ui,
    without_meta,
    workflow_names,
)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHROMIUM = Path(os.environ.get("F2D_CHROMIUM", "/usr/bin/chromium"))
NAMES = workflow_names()
# The workflows that prompt with the identifier (all but training): their Apply F2D Tokens and Add F2D Person
# nodes are checked.
PROMPTING_NODES = ("F2DApplyTokens", "F2DAddPerson")
PROMPTING = [name for name in NAMES if any(n["class_type"] in PROMPTING_NODES for n in load_api(name).values())]
PROMPT_WITHOUT_IDENTIFIER = "a photo of a person as a knight"  # typed into an Apply F2D Tokens node
# What nodes write under themselves after a run (typical lengths), shown before the layouts are measured so
# that each layout leaves room for it.
RUN_MESSAGES = {
    "F2DEncodeFace": ["image 1 of 1: found at once (the photo at detection size 640)"],
    "F2DSaveFace": ["saved as person_00001.safetensors"],
    "F2DSaveMapper": ["/home/someone/ComfyUI/models/face2diffusion/f2d_mapper_trained.safetensors"],
    # the score tables of a batch of 4 (nodes/face_similarity.py, best_of_n.py, clip_score.py)
    "F2DFaceSimilarity": [
        "image    identity        face",
        *[f"{k:>5}      0.{6123 - 97 * k}         yes" for k in range(1, 5)],
        "mean 0.5880, faces found in 100% of images",
    ],
    "F2DBestOfN": ["best 1 of 4 by identity", "image  rank score    identity", "    4      0.5735      0.5735"],
    "F2DCLIPScore": [
        "image        CLIP",
        *[f"{k:>5}      0.{3012 - 41 * k}" for k in range(1, 5)],
        "mean CLIP 0.2910",
    ],
}
# What nodes show as pictures after a run: none of the pack's (Face Similarity's previews are an output, which
# a Preview Image shows where the user puts it). The check shows a strip anyway where a node type is listed.
RUN_PICTURES: dict[str, int] = {}
# The frontend's zoom below which it draws nodes without text ("low quality"): its default 8 px smallest
# font ("LiteGraph.Canvas.MinFontSizeForLOD") over the node text size 14 (LGraphCanvas.updateLowQualityThreshold,
# at a device pixel ratio of 1). A template must open above it, with a margin.
LOW_QUALITY_BELOW = 8 / 14
READABLE_ZOOM = 0.58  # a margin over LOW_QUALITY_BELOW (0.571) for font differences between machines
LITEGRAPH_TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT

# (prompt, identifier, occurrences): the extension's count, which the server must agree with on 0 vs more.
IDENTIFIER_CASES = [
    ("a photo of f l", "f l", 1),
    ("a photo of (f l:1.2) and f l as a knight", "f l", 2),
    ("(f l: 0.8) in a park", "f l", 1),
    ("F L at the beach", "f l", 1),
    ("f l's dog", "f l", 1),
    ("a photo of f\nl", "f l", 1),
    ("(f:1.1) l as a chef", "f l", 1),
    ("{f l|a man} at the beach", "f l", 1),
    ("a photo of x y", "x y", 1),
    ("a photo of fl", "f l", 0),
    ("an elf l", "f l", 0),
    ("f, l", "f l", 0),
    ("a photo of a knight", "f l", 0),
]


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install -y nodejs)"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set F2D_CHROMIUM)"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core is not installed (cd {HERE.relative_to(REPO_ROOT)} && npm ci)"
    return None


pytestmark = pytest.mark.skipif(browser_problem() is not None, reason=browser_problem() or "")


def run_node(script: str, *args: str, timeout: float = 600) -> str:
    """Run one of this folder's node scripts; its stdout, or a failure with its output."""
    done = subprocess.run(
        ["node", str(HERE / script), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(f"{script} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def artifacts_dir() -> Path:
    """Where screenshots and the report are kept after the run."""
    path = Path(os.environ.get("F2D_ARTIFACTS_DIR", REPO_ROOT / "artifacts")) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def preview_inputs(comfy_server: ComfyServer) -> None:
    """The drawn placeholders under the names the workflows' LoadImage nodes use, so the page shows them."""
    for role, picture in placeholder_images().items():
        comfy_server.upload_image(picture, PLACEHOLDER_FILES[role])


@pytest.mark.skipif(os.environ.get("F2D_EXPORT_WORKFLOWS") != "1", reason="set F2D_EXPORT_WORKFLOWS=1 to regenerate")
def test_export_workflows(comfy_server: ComfyServer, preview_inputs: None):
    """Regenerates workflows/<title>.json, workflows/<title>.jpg and workflows/api/<name>.json (runs before the
    checks)."""
    for name in NAMES:  # the thumbnails show exactly the uploaded placeholders
        graph = load_api(name)
        for node_id, role in image_roles(graph, name).items():
            assert graph[node_id]["inputs"]["image"] == PLACEHOLDER_FILES[role], f"{name}: LoadImage {node_id}"
    only = os.environ.get("F2D_EXPORT_ONLY")  # one workflow's name: regenerate that one alone
    extra = ["--only", only] if only else []
    if os.environ.get("F2D_EXPORT_THUMBNAILS_ONLY") == "1":  # the committed JSON files shot, left as they are
        extra.append("--thumbnail-only")
    out = run_node("export_workflows.mjs", "--url", comfy_server.url, "--stamp", THUMBNAIL_STAMP, *extra)
    exported = [json.loads(line) for line in out.splitlines()]
    assert sorted(entry["name"] for entry in exported) == ([only] if only else NAMES)


@pytest.fixture(scope="module")
def report(comfy_server: ComfyServer, preview_inputs: None, artifacts_dir: Path) -> dict:
    """What check_workflows.mjs saw in the page."""
    config = {
        "url": comfy_server.url,
        "pack": PACK_DIR_NAME,
        "workflows": NAMES,
        "titles": TEMPLATE_TITLES,
        "identifierCases": [[text, identifier] for text, identifier, _ in IDENTIFIER_CASES],
        "promptWithoutIdentifier": PROMPT_WITHOUT_IDENTIFIER,
        "out": str(artifacts_dir),
    }
    config_path = artifacts_dir / "config.json"
    config_path.write_text(json.dumps(config, indent=1))
    run_node("check_workflows.mjs", str(config_path))
    return json.loads((artifacts_dir / "report.json").read_text())


def real_errors(errors: list[dict]) -> list[dict]:
    """Console and page errors that check_workflows.mjs did not recognise as harmless."""
    return [error for error in errors if not error["harmless"]]


def test_page_opens_without_errors(report: dict):
    assert real_errors(report["bootErrors"]) == []


@pytest.mark.parametrize("name", NAMES)
def test_workflow_opens_without_missing_nodes_or_errors(report: dict, name: str):
    result = report["workflows"][name]
    assert result["served"], f"{TEMPLATE_TITLES[name]}.json is not served as a template"
    assert result["missingNodeTypes"] == [] and result["dialogs"] == []
    assert sorted(result["loadedNodeTypes"]) == sorted([node["type"] for node in load_ui(name)["nodes"]])
    assert real_errors(result["errors"]) == []
    with Image.open(result["screenshot"]) as screenshot:
        assert screenshot.format == "PNG" and screenshot.size == (1600, 1000)


@pytest.mark.parametrize("name", PROMPTING)
def test_status_line_counts_the_identifier(report: dict, name: str):
    result = report["workflows"][name]
    assert result["applyNodes"]
    for node in result["applyNodes"]:
        expected = len(re.findall(rf"\b{re.escape(node['identifier'])}\b", node["text"]))
        assert node["status"] == f"identifier '{node['identifier']}' found {expected}×"
        assert node["state"] == "ok"
        assert result["statusVisible"][node["id"]], f"node {node['id']}: status line not on screen at 100% zoom"


@pytest.mark.parametrize("name", PROMPTING)
def test_queueing_without_the_identifier_warns(report: dict, name: str):
    result = report["workflows"][name]
    assert not any("Face2Diffusion" in toast for toast in result["toastsAfterQueue"])
    missing = result["missingIdentifier"]
    assert missing["statusAfterTyping"]["state"] == "warn"
    assert missing["statusAfterTyping"]["status"].startswith("\u26a0 no 'f l' in the prompt")
    (toast,) = [toast for toast in missing["toasts"] if "Face2Diffusion" in toast]
    assert "identifier missing" in toast and f"#{missing['nodeId']} " in toast
    assert missing["sentText"] == PROMPT_WITHOUT_IDENTIFIER


def test_the_training_workflow_is_checked_in_the_page_too(report: dict):
    """It has no Apply F2D Tokens node (nothing to warn about), but it opens and queues like the others."""
    assert "f2d_train_mapper" in NAMES and "f2d_train_mapper" not in PROMPTING
    result = report["workflows"]["f2d_train_mapper"]
    assert result["applyNodes"] == [] and result["missingIdentifier"] is None
    assert {"F2DTrainingDataset", "F2DTrainMapper", "F2DSaveMapper", "F2DLossGraph"} <= set(result["loadedNodeTypes"])


@pytest.mark.parametrize("name", NAMES)
def test_frontend_queues_exactly_the_api_copy(report: dict, name: str):
    assert without_meta(report["workflows"][name]["queued"]) == without_meta(load_api(name))


def test_identifier_count_of_the_extension(report: dict):
    counts = [(case["text"], case["identifier"], case["count"]) for case in report["identifierCounts"]]
    assert counts == IDENTIFIER_CASES


def test_server_agrees_with_the_extension_on_which_prompts_lack_the_identifier(
    comfy_server: ComfyServer, comfy_models_dir: Path
):
    """Apply F2D Tokens fails on exactly the prompts the extension counts 0 in."""
    face = EncodedFace(s_star=torch.randn(2, 768), idvec=torch.zeros(1536), crops=torch.zeros(1, 3, 112, 112))
    save_face(comfy_models_dir / "face2diffusion" / "faces" / "browser_face.safetensors", face)
    for k, (text, identifier, count) in enumerate(IDENTIFIER_CASES):
        graph = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
            "2": {"class_type": "F2DLoadFace", "inputs": {"face_file": "browser_face.safetensors"}},
            "3": {
                "class_type": "F2DApplyTokens",
                "inputs": {"clip": ["1", 1], "text": text, "f2d_face": ["2", 0], "identifier": identifier},
            },
        }
        save_conditioning(graph, ["3", 0], f"identifier_case_{k}", "9")
        if count:
            comfy_server.run(graph)
        else:
            with pytest.raises(ExecutionFailed, match="does not contain the identifier"):
                comfy_server.run(graph)


def test_training_loss_sparkline_follows_progress_events(report: dict):
    sparkline = report["sparkline"]
    assert sparkline["afterRun"] == {"label": "step 6/100 · loss 0.3000", "points": 6}
    assert sparkline["otherNode"] == {"label": "loss: waiting for training to start", "points": 0}
    assert sparkline["afterRestart"] == {"label": "step 1/50 · loss 1.500", "points": 1}
    # Neither saved in workflows nor sent to the server.
    assert sparkline["lastWidget"] == "f2d_loss_sparkline" and sparkline["savedValues"] == sparkline["widgets"] - 1
    assert "f2d_loss_sparkline" not in sparkline["promptInputs"]


SAVE_NAME = "browser_saved"


@pytest.fixture(scope="module")
def runs(comfy_server: ComfyServer, comfy_models_dir: Path, artifacts_dir: Path) -> dict:
    """What check_runs.mjs saw after running small graphs through the page against the real server."""
    face = EncodedFace(s_star=torch.randn(2, 768), idvec=torch.zeros(1536), crops=torch.zeros(1, 3, 112, 112))
    save_face(comfy_models_dir / "face2diffusion" / "faces" / "browser_run_face.safetensors", face)
    config = {
        "url": comfy_server.url,
        "checkpoint": CHECKPOINT,
        "faceFile": "browser_run_face.safetensors",
        "saveName": SAVE_NAME,
        "facesDir": str(comfy_models_dir / "face2diffusion" / "faces"),
        "facePhoto": comfy_server.upload_image(Image.fromarray(si.face_photo(load_rgb(ASTRONAUT))), "f2d_run_face.png"),
        "noFacePhoto": comfy_server.upload_image(Image.new("RGB", (320, 240)), "f2d_run_no_face.png"),
        "loader": loader()["inputs"],
        "out": str(artifacts_dir),
    }
    config_path = artifacts_dir / "runs_config.json"
    config_path.write_text(json.dumps(config, indent=1))
    run_node("check_runs.mjs", str(config_path))
    return json.loads((artifacts_dir / "runs.json").read_text())


def test_a_saved_face_is_listed_in_load_f2d_face_without_a_reload(runs: dict):
    """Save F2D Face names the file it wrote; the open Load F2D Face nodes, and one added later, list it."""
    saved = runs["savedFace"]
    (written,) = [name for name in saved["after"] if name.startswith(SAVE_NAME)]
    assert re.fullmatch(rf"{SAVE_NAME}_\d{{5}}\.safetensors", written)
    assert written not in saved["before"] and written in saved["added"]
    assert saved["message"] == f"saved as {written}" and saved["messageCut"] is False
    assert saved["reloads"] == 1  # the page was never reloaded
    assert real_errors(saved["errors"]) == []


def test_an_empty_identifier_points_at_the_identifier_widget(runs: dict):
    """The server's error names the `identifier` input alone (no red clip or f2d_face socket); the warning
    and the status line say to set the identifier widget, not to edit the prompt."""
    seen = runs["emptyIdentifier"]
    assert [error["extra_info"]["input_name"] for error in seen["serverErrors"]] == ["identifier"]
    assert "identifier widget is empty" in seen["serverErrors"][0]["details"]
    assert seen["markedSockets"] == ["identifier"]
    (toast,) = [toast for toast in seen["toasts"] if "Face2Diffusion" in toast]
    assert "identifier widget is empty: set it to 'f l'" in toast and "prompt" not in toast
    assert seen["status"] == "\u26a0 the identifier widget is empty: set it to 'f l'"


def test_load_f2d_face_added_before_the_first_save_takes_the_saved_face(runs: dict):
    """With no face saved yet, Load F2D Face holds a placeholder (not `undefined`) and a run says to run Save
    F2D Face, naming face_file; once Save F2D Face has run, that node and one added later hold the new file."""
    seen = runs["firstFace"]
    assert seen["whenEmpty"] == "(no saved face yet: run Save F2D Face)"
    (error,) = seen["serverErrors"]
    assert error["extra_info"]["input_name"] == "face_file"
    # queued after the saved faces were back: the message says to choose one (with none, to run Save F2D Face)
    assert "no saved face is chosen in face_file: choose one of the saved faces" in error["details"]
    written = seen["savedMessage"].removeprefix("saved as ")
    assert re.fullmatch(rf"{SAVE_NAME}_first_\d{{5}}\.safetensors", written), seen["savedMessage"]
    assert seen["afterSave"] == written and seen["added"] == written
    refused = [
        e for e in real_errors(seen["errors"]) if not re.search(r"status of 400|PromptExecutionError", e["text"])
    ]
    assert refused == []  # the refused prompt's answer is the only error the page logged


def test_a_failed_run_clears_encode_face_text_and_the_aligned_face_preview(runs: dict):
    """The second run fails in Encode Face (no face): the line and the preview of the first run go."""
    seen = runs["failedRun"]
    assert seen["afterSuccess"]["message"].startswith("image 1 of 1: found")
    assert seen["afterSuccess"]["previewImages"] == 1 and seen["afterSuccess"]["previewOutputs"] == 1
    assert seen["afterFailure"] == {"message": "", "previewImages": 0, "previewOutputs": 0}
    assert real_errors(seen["errors"]) == []


@pytest.fixture(scope="module")
def layouts(comfy_server: ComfyServer, preview_inputs: None, artifacts_dir: Path) -> dict:
    """What check_layouts.mjs measured with each template opened in a 1600x1000 window (screenshots beside)."""
    config = {
        "url": comfy_server.url,
        "pack": PACK_DIR_NAME,
        "workflows": NAMES,
        "titles": TEMPLATE_TITLES,
        "messages": RUN_MESSAGES,
        "pictures": RUN_PICTURES,
        "picture": PLACEHOLDER_FILES["face"],
        "out": str(artifacts_dir),
    }
    config_path = artifacts_dir / "layouts_config.json"
    config_path.write_text(json.dumps(config, indent=1))
    run_node("check_layouts.mjs", str(config_path))
    return json.loads((artifacts_dir / "layouts.json").read_text())


def _overlap(a: list[float], b: list[float]) -> bool:
    """Whether two [x, y, w, h] rectangles share an area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _inside(a: list[float], b: list[float], tolerance: float = 1.0) -> bool:
    """Whether rectangle `a` lies within `b`."""
    return (
        a[0] >= b[0] - tolerance
        and a[1] >= b[1] - tolerance
        and a[0] + a[2] <= b[0] + b[2] + tolerance
        and a[1] + a[3] <= b[1] + b[3] + tolerance
    )


@pytest.mark.parametrize("name", NAMES)
def test_template_opens_readable_in_a_1600x1000_window(layouts: dict, name: str):
    """At the fit the frontend picks, text is drawn; no node covers another or crosses a group's edge;
    groups do not overlap; group and node titles fit (the frontend shortens a node title with "..."); no
    status or message line is cut off or drawn outside its node (the run messages shown); no node's title
    bar is under the minimap."""
    seen = layouts["workflows"][name]
    assert layouts["viewport"] == {"width": 1600, "height": 1000}
    assert seen["lowQualityBelow"] == pytest.approx(LOW_QUALITY_BELOW) and seen["devicePixelRatio"] == 1
    assert not seen["lowQuality"] and seen["scale"] >= READABLE_ZOOM, f"{name} opens at {seen['scale']:.0%}"
    nodes, groups = seen["nodes"], seen["groups"]
    assert [
        (a["id"], b["id"]) for i, a in enumerate(nodes) for b in nodes[i + 1 :] if _overlap(a["rect"], b["rect"])
    ] == []
    assert [
        (g["title"], n["id"])
        for g in groups
        for n in nodes
        if _overlap(n["rect"], g["rect"]) and not _inside(n["rect"], g["rect"])
    ] == []
    assert [
        (a["title"], b["title"])
        for i, a in enumerate(groups)
        for b in groups[i + 1 :]
        if _overlap(a["rect"], b["rect"])
    ] == []
    assert [g["title"] for g in groups if g["titleWidth"] > g["rect"][2]] == []
    assert [n["title"] for n in nodes if n["titleFit"]["width"] > n["titleFit"]["room"]] == []
    widgets = [(n, w) for n in nodes for w in n["widgets"]]
    assert [(n["id"], w["name"], w["text"]) for n, w in widgets if w["cut"]] == []
    assert [(n["id"], w["name"]) for n, w in widgets if not _inside(w["screen"], n["screen"], 2)] == []
    for node in nodes:
        title_bar = [*node["screen"][:3], LITEGRAPH_TITLE_HEIGHT * seen["scale"]]
        assert not any(_overlap(title_bar, box) for box in seen["minimap"]), f"node {node['id']} under the minimap"
    shown = [
        (n["type"], w["text"]) for n, w in widgets if w["name"] == "f2d_node_message" and n["type"] in RUN_MESSAGES
    ]
    assert all(text == "\n".join(RUN_MESSAGES[kind]) for kind, text in shown)
    tables = [(n["type"], w["text"]) for n, w in widgets if w["name"] == "f2d_score_table"]
    assert all(text == "\n".join(RUN_MESSAGES[kind]) for kind, text in tables)  # every row shown (none cut above)
    assert real_errors(seen["errors"]) == []
    with Image.open(seen["screenshot"]) as screenshot:
        assert screenshot.size == (1600, 1000)


def test_save_f2d_mapper_overwrite_toggle_is_not_under_the_loss_graph(layouts: dict):
    """The training template: Save F2D Mapper, with the path it wrote under it, covers no node and no node
    covers it, so its overwrite toggle can be reached."""
    nodes = layouts["workflows"]["f2d_train_mapper"]["nodes"]
    (save,) = [n for n in nodes if n["type"] == "F2DSaveMapper"]
    (message,) = [w for w in save["widgets"] if w["name"] == "f2d_node_message"]
    assert message["text"] == RUN_MESSAGES["F2DSaveMapper"][0] and not message["cut"]
    assert [n["type"] for n in nodes if n is not save and _overlap(n["rect"], save["rect"])] == []
