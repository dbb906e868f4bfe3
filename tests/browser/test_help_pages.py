"""Every node's help page (js/docs/<NodeId>.md): there, served where the frontend fetches it, naming the node's
inputs and outputs, and shown by the node library's help panel in the real frontend.

ComfyUI's frontend (1.27, NodeHelpService) fetches a custom node's help from
`/extensions/<pack folder>/docs/<NodeId>.md`, which the server serves from the pack's WEB_DIRECTORY (js/),
and resolves the page's relative pictures against `/extensions/<pack folder>/docs/`.
`F2D_EXPORT_HELP_PICTURES=1` regenerates the pictures (help_pictures.py; the loss plot from a real run).
"""

from __future__ import annotations

import json
import os
import re
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from tests.browser.help_pictures import encode_face_alignment
from tests.browser.test_browser import browser_problem, run_node
from tests.support import synthetic_insightface as si
from tests.support.comfy_fixtures import PACK_DIR_NAME
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import training_graph
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "js" / "docs"
PICTURE = re.compile(r"!\[[^\]]+\]\(([^)]+)\)")


def f2d_nodes(server: ComfyServer) -> dict[str, dict]:
    """The pack's nodes as the server lists them."""
    return {node_id: info for node_id, info in server.object_info().items() if node_id.startswith("F2D")}


def test_every_node_has_a_help_page_naming_its_inputs_and_outputs(comfy_server: ComfyServer) -> None:
    nodes = {k: v for k, v in f2d_nodes(comfy_server).items() if not k.startswith("F2DTest")}
    assert len(nodes) >= 10
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(nodes)
    problems = []
    for node_id, info in nodes.items():
        page = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
        title = info["display_name"].replace("*", "\\*")
        if not page.startswith(f"# {title}\n"):
            problems.append(f"{node_id}.md does not start with '# {title}'")
        if "## Inputs" not in page or "## Outputs" not in page:
            problems.append(f"{node_id}.md has no '## Inputs' and '## Outputs' sections")
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        missing = [name for name in [*inputs, *info["output_name"]] if f"`{name}`" not in page]
        if missing:
            problems.append(f"{node_id}.md does not describe {missing}")
    assert not problems, "\n".join(problems)
    for node_id in nodes:
        page = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
        for picture in PICTURE.findall(page):
            assert (DOCS / picture).is_file(), f"{node_id}.md shows {picture}, which is not in js/docs"


def test_help_pages_and_pictures_are_served_where_the_frontend_fetches_them(comfy_server: ComfyServer) -> None:
    for page in DOCS.glob("*.md"):
        response = comfy_server._get(f"/extensions/{PACK_DIR_NAME}/docs/{page.name}")
        assert response.content.decode("utf-8") == page.read_text(encoding="utf-8"), page.name
        for picture in PICTURE.findall(page.read_text(encoding="utf-8")):
            served = comfy_server._get(f"/extensions/{PACK_DIR_NAME}/docs/{picture}")
            assert served.content == (DOCS / picture).read_bytes()
            assert Image.open(BytesIO(served.content)).format == "PNG"


@pytest.mark.skipif(browser_problem() is not None, reason=browser_problem() or "")
def test_node_library_help_panel_shows_the_page(comfy_server: ComfyServer) -> None:
    artifacts_dir = Path(os.environ.get("F2D_ARTIFACTS_DIR", HERE.parents[1] / "artifacts")) / "browser"
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "url": comfy_server.url,
        "pack": PACK_DIR_NAME,
        "search": "Encode Face",
        "displayName": "Encode Face \u2192 S*",
        "out": str(artifacts_dir),
    }
    config_path = artifacts_dir / "help_config.json"
    config_path.write_text(json.dumps(config))
    run_node("check_help.mjs", str(config_path))
    report = json.loads((artifacts_dir / "help_report.json").read_text(encoding="utf-8"))
    assert {"path": f"/extensions/{PACK_DIR_NAME}/docs/F2DEncodeFace.md", "status": 200} in report["fetched"]
    assert report["heading"] == "Encode Face \u2192 S*"
    assert report["headings"][:2] == ["Inputs", "Outputs"]
    assert "detection goes on before it gives up" in report["text"]
    (picture,) = report["images"]
    assert picture["src"] == f"/extensions/{PACK_DIR_NAME}/docs/images/encode_face_alignment.png"
    with Image.open(DOCS / "images" / "encode_face_alignment.png") as expected:
        assert (picture["width"], picture["height"]) == expected.size  # loaded, not a broken image
    # The frontend asks for the page in the user's language first (<NodeId>/en.md) and falls back to <NodeId>.md.
    locale_first = f"/extensions/{PACK_DIR_NAME}/docs/F2DEncodeFace/en.md"
    assert [e for e in report["errors"] if not e["harmless"] and not e["url"].endswith(locale_first)] == []


@pytest.mark.skipif(os.environ.get("F2D_EXPORT_HELP_PICTURES") != "1", reason="set F2D_EXPORT_HELP_PICTURES=1")
def test_export_help_pictures(comfy_server: ComfyServer) -> None:
    """Regenerates js/docs/images: the alignment picture, and F2D Loss Graph's plot of a real tiny run."""
    encode_face_alignment().save(DOCS / "images" / "encode_face_alignment.png", optimize=True)
    folder = Path(comfy_server.input_dir) / "f2d_help_loss_photos"
    folder.mkdir(parents=True, exist_ok=True)
    for i, source in enumerate((ASTRONAUT, ALIGNED_CROP)):
        Image.fromarray(si.face_photo(load_rgb(source))).save(folder / f"person_{i}.png")
    graph = training_graph(folder.name, "help_loss_plot", steps=16, batch_size=1, learning_rate=1e-3)
    graph["7"] = {"class_type": "F2DLossGraph", "inputs": {"trained_mapper": ["4", 0]}}
    graph["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "f2d_help_loss"}}
    (plot,) = comfy_server.output_images(comfy_server.run(graph, timeout=2400), "8")
    plot.save(DOCS / "images" / "loss_graph.png", optimize=True)
