"""The README opens with install, tests and a one-screen quick start; the deep pages it links exist.

The first lines are read by the CI and by people: the install command and `bash .ci/run` stay on
lines 3 and 4, and the quick start (the three files, the template, Run) follows at once. Every
relative link of README.md and docs/*.md points at a file of the repository (and a heading, when it
names one), so moving a section cannot leave a dead link behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
INSTALL = (
    "`cd ComfyUI/custom_nodes && git clone https://github.com/face2diffusion/comfyui-face2diffusion && "
    "pip install -r comfyui-face2diffusion/requirements.txt`"
)
QUICK_START_LINES = 40  # "one screen"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def test_readme_opens_with_install_tests_and_the_quick_start() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[2].startswith("**Install**") and INSTALL in lines[2]
    assert lines[3].startswith("**Run the tests:** `bash .ci/run`")
    headings = [i for i, line in enumerate(lines) if line.startswith("## ")]
    assert lines[headings[0]] == "## Quick start" and headings[0] < 8
    quick = "\n".join(lines[headings[0] : headings[1]])
    assert len(quick.splitlines()) <= QUICK_START_LINES
    for needed in (
        "msid.pt",
        "mapping.pt",
        "buffalo_l",
        "ComfyUI/models/face2diffusion/",
        "ComfyUI/models/insightface/models/",
        "comfyui-face2diffusion",
        "Portrait from one photo",
        "**Run**",
        "mkdir -p models/face2diffusion models/insightface/models",
    ):
        assert needed in quick, needed
    assert re.search(r"!\[[^\]]+\]\(<?workflows/[^)]+\.jpg>?\)", quick)  # what you should see, as a picture
    assert quick.count("](https://") >= 3  # a download link for each of the three files


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for target in re.findall(r"\]\((<[^>]+>|[^)\s]+)\)", page.read_text()):
        target = target.strip("<>")
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target} points at nothing"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: {resolved.name} has no heading #{anchor}"


def test_the_deep_sections_live_in_docs_and_the_readme_links_each_page() -> None:
    readme = (REPO / "README.md").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    for moved in ("Face detection without onnxruntime", "Official parity", "Speed (measured)", "DDP"):
        assert f"## {moved}" not in readme
    assert "memory-map" in (REPO / "docs" / "training.md").read_text()  # the DDP memory figures


# Troubleshooting quotes messages the code gives: (what the page says, what the code writes, where).
QUOTED = [
    ("no face in 4 of 4 image(s): they score 0", "image(s): they score 0", "nodes/face_similarity.py"),
    ("shuffle_identities does nothing here: no person has two photos", None, "f2d_core/training/data/training_set.py"),
    ("so the mapper cannot be read from it", None, "f2d_core/checkpoints.py"),
    ("(a training checkpoint holding it as", None, "f2d_core/weight_files.py"),
    ("replaced this run's earlier mapper", None, "f2d_core/training/mapper_output.py"),
    ("choose an identifier of exactly 2", "choose an identifier of exactly", "f2d_core/conditioning/injection.py"),
    (
        'the value linked into "face_index" is 65, outside the widget',
        "is {value!r}, outside the widget",
        "nodes/widget_values.py",
    ),
    ("which is not one of its choices", None, "nodes/widget_values.py"),
    ("stopping: ", "stopping: %s", "cli/rank_sync.py"),
    ("The identifier linked into this node cannot be used", None, "nodes/face_conditioning.py"),
    ("the image list holds images of different sizes", None, "nodes/image_lists.py"),
    ("this node takes one", None, "nodes/image_lists.py"),
    ("S* mapped by the connected F2D model's mapper", None, "nodes/face_files.py"),
    (
        "This F2D face is for SDXL (made with an SDXL F2D mapper), but this CLIP is",
        "(made with an SDXL F2D mapper), but this CLIP is",
        "nodes/clip_tokens.py",
    ),
    ("F2D mapper, but an SD1.x one is needed here", "F2D mapper, but an ", "f2d_core/checkpoints.py"),
    (
        "has the wrong width for the SDXL text tower",
        "has the wrong width for the ",
        "f2d_core/identity/s_star_family.py",
    ),
    ("text encoders differ from the ones the mapper was trained with", None, "nodes/clip_tokens.py"),
    ("SDXL's S\\* is made for the penultimate layer", "SDXL's S* is made for the", "nodes/clip_tokens.py"),
    (
        "This face's SDXL mapper cannot be norm-matched: it holds no anchors",
        "SDXL mapper cannot be norm-matched",
        "f2d_core/identity/norm_match.py",
    ),
    ("Norm matching is for SDXL faces, but this face is for", None, "f2d_core/identity/norm_match.py"),
    ("F2D Norm Match needs the face's mapper (its anchors)", None, "nodes/norm_match.py"),
]


def test_troubleshooting_covers_the_newcomer_traps_with_the_messages_the_code_gives() -> None:
    page = re.sub(r"\s+", " ", (REPO / "docs" / "troubleshooting.md").read_text())
    for topic in (
        "no face in any generated image",
        "saved face isn't listed",
        "exactly two CLIP tokens",
        "Continuing a run",
        "## Where each command runs from",
    ):
        assert topic in page, topic  # fmt: skip
    for quoted, in_code, source in QUOTED:
        assert quoted in page, quoted
        assert (in_code or quoted) in (REPO / source).read_text(), f"{source} no longer says {quoted!r}"
    for script in ("cli/convert.py", "cli/run_workflow.py", "cli/train_mapper.py", "cli/benchmark.py"):
        assert f"custom_nodes/comfyui-face2diffusion/{script}" in page and (REPO / script).is_file()


def _quick_start_commands() -> list[str]:
    """The shell lines of the quick start's indented code block (in order)."""
    lines = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0].splitlines()
    return [line.strip() for line in lines if line.startswith("       ") and line.strip()]


@pytest.mark.skipif(shutil.which("unzip") is None, reason="unzip is not installed")
def test_the_quick_start_commands_run_as_written_after_the_install_line(tmp_path: Path) -> None:
    """Pasted in order after the install line (which leaves the shell in ComfyUI/custom_nodes), with the
    downloads in ~/Downloads, the commands put every file where the nodes and the templates look."""
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    downloads = tmp_path / "home" / "Downloads"
    downloads.mkdir(parents=True)
    for name in ("msid.pt", "mapping.pt", "v1-5-pruned-emaonly.safetensors"):
        (downloads / name).write_bytes(b"x")
    with zipfile.ZipFile(downloads / "buffalo_l.zip", "w") as archive:  # buffalo_l.zip holds its .onnx files
        archive.writestr("det_10g.onnx", b"x")
    script = "set -e\n" + "\n".join(_quick_start_commands()) + "\n"
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=comfy / "custom_nodes",
        env={**os.environ, "HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    for placed in (
        "models/face2diffusion/msid.pt",
        "models/face2diffusion/mapping.pt",
        "models/insightface/models/buffalo_l/det_10g.onnx",
        "models/checkpoints/v1-5-pruned-emaonly.safetensors",
    ):
        assert (comfy / placed).is_file(), placed
    assert not (comfy / "custom_nodes" / "models").exists()


def test_the_readme_names_the_checkpoint_the_templates_load() -> None:
    """The checkpoint the quick start's template loads is named in the quick start, with a download link."""
    quick = (REPO / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    workflow = json.loads((REPO / "workflows" / "01 Portrait from one photo.json").read_text())
    wanted = {node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "CheckpointLoaderSimple"}
    assert wanted
    for name in wanted:
        assert f"`{name}`" in quick and re.search(rf"\]\(https://[^)]+/{re.escape(name)}\)", quick), name
    assert "search box" in quick and "**Portrait**" in quick


def test_docs_call_core_nodes_by_the_names_comfyui_shows() -> None:
    """A core node named in the docs by its class id spelled out ("Image Batch" for ImageBatch) where ComfyUI
    shows another name ("Batch Images") cannot be found in the node search."""
    comfy = Path(os.environ.get("COMFYUI_PATH", "/opt/comfyui")) / "nodes.py"
    if not comfy.is_file():
        pytest.skip("no ComfyUI checkout (set COMFYUI_PATH)")
    block = comfy.read_text().split("NODE_DISPLAY_NAME_MAPPINGS = {", 1)[1].split("}", 1)[0]
    shown = dict(re.findall(r'"(\w+)":\s*"([^"]+)"', block))
    text = "\n".join(page.read_text() for page in PAGES)
    for class_id, display in shown.items():
        spelled = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", class_id)
        if spelled != display:
            assert f"*{spelled}*" not in text, f"the docs say *{spelled}*: ComfyUI shows {display!r}"
