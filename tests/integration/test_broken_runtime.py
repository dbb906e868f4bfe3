"""A broken onnxruntime or insightface never hides the pack: a real server whose import of it fails.

The server is started as users start it, with a package on PYTHONPATH that shadows the installed one
and raises ImportError at import, as a Windows "DLL load failed" or a NumPy ABI mismatch does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.support import synthetic_insightface as si
from tests.support.comfy_fixtures import PACK_DIR_NAME, PROBE_PACK, REPO_ROOT
from tests.support.comfy_server import ComfyServer, ExecutionFailed
from tests.support.f2d_graphs import encode_face_graph, save_conditioning
from tests.support.photos import ASTRONAUT, load_rgb

BROKEN_PACKAGES = REPO_ROOT / "tests" / "support" / "broken_packages"
IMPORT_ERRORS = {"onnxruntime": "ImportError: DLL load failed", "insightface": "ImportError: numpy.core.multiarray"}


@pytest.fixture(scope="module", params=list(IMPORT_ERRORS))
def broken_server(
    request: pytest.FixtureRequest, comfyui_path: Path, comfy_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ComfyServer]]:
    """A server whose `import <package>` fails; only that one package shadowed."""
    package = request.param
    shadow = tmp_path_factory.mktemp(f"broken_{package}")
    (shadow / package).symlink_to(BROKEN_PACKAGES / package, target_is_directory=True)
    python_path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    server = ComfyServer(
        comfyui_path,
        tmp_path_factory.mktemp(f"server_broken_{package}"),
        comfy_models_dir,
        custom_nodes={PACK_DIR_NAME: REPO_ROOT, "f2d_test_probe_nodes": PROBE_PACK},
        extra_args=["--fp32-text-enc"],
        env={"PYTHONPATH": python_path},
    )
    with server:
        yield package, server


def _conditioning(server: ComfyServer, image: str, detector_device: str, name: str) -> torch.Tensor:
    graph = encode_face_graph(image)
    graph["2"]["inputs"]["detector_device"] = detector_device
    save_conditioning(graph, ["5", 0], name, "99")
    server.run(graph)
    return load_file(str(server.output_dir / f"{name}.safetensors"))["cond_0"][0]


def test_every_node_is_listed_and_detection_names_the_broken_package(broken_server, comfy_server) -> None:
    package, server = broken_server
    pack_lines = [line for line in server.log_text().splitlines() if f"custom_nodes/{PACK_DIR_NAME}" in line]
    assert any(re.search(r"\d seconds: ", line) for line in pack_lines), pack_lines  # ComfyUI's import times
    assert not any("IMPORT FAILED" in line for line in pack_lines), pack_lines
    listed = sorted(n for n in server.object_info() if n.startswith("F2D") and not n.startswith("F2DTest"))
    expected = sorted(n for n in comfy_server.object_info() if n.startswith("F2D") and not n.startswith("F2DTest"))
    assert listed == expected and "F2DLoadMSIDEncoder" in listed and "F2DTrainMapper" in listed
    options = server.object_info("F2DLoadMSIDEncoder")["F2DLoadMSIDEncoder"]["input"]["required"]
    assert options["detector_device"][1]["options"] == ["auto", "cpu", "onnxruntime"]

    photo = Image.fromarray(si.face_photo(load_rgb(ASTRONAUT)))
    image = server.upload_image(photo, "f2d_broken_runtime_face.png")
    with pytest.raises(ExecutionFailed) as info:
        _conditioning(server, image, "onnxruntime", "never_written")
    failure = info.value
    assert failure.node_type == "F2DLoadMSIDEncoder"
    message = failure.exception_message
    assert f"needs the Python package '{package}', but `import {package}` failed" in message
    assert IMPORT_ERRORS[package] in message
    assert "Choose detector_device 'auto' or 'cpu'" in message and "pip install" in message

    # Everything else keeps working: the torch detector gives the same S* conditioning as a healthy server.
    got = _conditioning(server, image, "auto", f"broken_{package}_auto")
    reference_image = comfy_server.upload_image(photo, "f2d_broken_runtime_face.png")
    expected_cond = _conditioning(comfy_server, reference_image, "auto", f"healthy_{package}_auto")
    torch.testing.assert_close(got, expected_cond, rtol=0, atol=1e-5)
