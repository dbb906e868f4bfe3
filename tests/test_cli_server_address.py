"""--server as people type it: `127.0.0.1:8190` (no http://) reaches the same code as a full address, so an
absent server ends in the tool's one-line message (exit 3), not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "http://"])
def test_run_workflow_takes_host_and_port_without_a_scheme(tmp_path: Path, scheme: str) -> None:
    port = _free_port()  # nothing listens there
    workflow = REPO_ROOT / "workflows" / "api" / "f2d_train_mapper.json"
    command = [sys.executable, str(REPO_ROOT / "cli" / "run_workflow.py"), str(workflow)]
    done = subprocess.run(
        [*command, "--server", f"{scheme}127.0.0.1:{port}"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 3, done.stderr
    assert f"ComfyUI at http://127.0.0.1:{port} does not answer" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_server_address_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    command = [sys.executable, str(REPO_ROOT / "cli" / "run_workflow.py"), "x.json", "--server", "ftp://host:21"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "argument --server: 'ftp://host:21' is not a server address: give host:port" in done.stderr
