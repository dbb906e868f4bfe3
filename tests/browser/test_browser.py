"""The pack in ComfyUI's real frontend: each bundled workflow opens cleanly, Apply F2D Tokens shows where the
identifier is and warns before queueing a prompt without it, and the training-loss sparkline draws.

The page is driven by check_workflows.mjs (node + playwright-core + Debian's chromium) against the
session's server; this file asserts on its report. Load Image nodes show the drawn placeholders of
placeholders.py (never a photo). Screenshots stay in F2D_ARTIFACTS_DIR (default `artifacts/browser/`).
`F2D_EXPORT_WORKFLOWS=1` also regenerates workflows/ (UI, API, thumbnails) with export_workflows.mjs.
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
from tests.support.comfy_fixtures import PACK_DIR_NAME
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import CHECKPOINT, save_conditioning
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
