"""A real ComfyUI server in a subprocess, started the way users start it, and a small HTTP client for it.

    with ComfyServer(comfyui_path, work_dir, models_dir, custom_nodes={"comfyui-face2diffusion": repo}) as s:
        prompt_id = s.queue_prompt(api_graph)
        images = s.output_images(s.wait(prompt_id))

Everything the server writes (input, output, temp, user, database, log) lands under `work_dir`;
model folders and `custom_nodes` come from an extra-model-paths YAML, as users remap them.
"""

from __future__ import annotations

import ctypes
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from PIL import Image

log = logging.getLogger(__name__)

# Model folders the pack's tests use; each maps to `<models_dir>/<name>`.
MODEL_FOLDERS = (
    "checkpoints",
    "controlnet",
    "vae",
    "loras",
    "text_encoders",
    "face2diffusion",
    "insightface",
    "face_recognition",
    "clip_scoring",
    "embeddings",
)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ComfyServerError(RuntimeError):
    """The server could not start, or stopped answering."""


class PromptRejected(ComfyServerError):
    """POST /prompt answered 400: the graph failed validation; `node_errors` says where."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.error: dict[str, Any] = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
        self.node_errors: dict[str, Any] = body.get("node_errors", {})
        super().__init__(f"ComfyUI rejected the graph: {json.dumps(body, indent=1)}")


class ExecutionFailed(ComfyServerError):
    """A queued graph raised inside a node; carries the node id, node type and exception message."""

    def __init__(self, prompt_id: str, error: dict[str, Any], history: dict[str, Any]) -> None:
        self.prompt_id = prompt_id
        self.history = history
        self.node_id: str | None = error.get("node_id")
        self.node_type: str | None = error.get("node_type")
        self.exception_type: str | None = error.get("exception_type")
        self.exception_message: str = error.get("exception_message", "")
        self.traceback: list[str] = error.get("traceback", [])
        super().__init__(
            f"prompt {prompt_id} failed in node {self.node_id} ({self.node_type}): "
            f"{self.exception_type}: {self.exception_message.strip()}\n{''.join(self.traceback)}"
        )


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the test process dies, so no server is orphaned."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extra_model_paths_yaml(models_dir: Path, custom_nodes_dir: Path, folders: Sequence[str] = MODEL_FOLDERS) -> str:
    """An extra_model_paths.yaml that maps each model folder and `custom_nodes` to the test's directories."""
    lines = ["f2d_tests:", f"    base_path: {models_dir}", "    is_default: true"]
    lines += [f"    {name}: {name}" for name in folders]
    lines.append(f"    custom_nodes: {custom_nodes_dir}")
    return "\n".join(lines) + "\n"


class ComfyServer:
    """A ComfyUI `main.py` subprocess (`--cpu` unless cpu=False) on a free port, with its own folders and a client."""

    def __init__(
        self,
        comfyui_path: Path,
        work_dir: Path,
        models_dir: Path,
        custom_nodes: Mapping[str, Path] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 180.0,
        cpu: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.comfyui_path = Path(comfyui_path).resolve()
        self.work_dir = Path(work_dir)
        self.models_dir = Path(models_dir)
        self.custom_nodes = dict(custom_nodes or {})
        self.extra_args = ["--cpu", *extra_args] if cpu else list(extra_args)
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})  # added to (and overriding) this process's environment
        self.port = 0
        self.url = ""
        self.log_path = self.work_dir / "comfyui.log"
        self.input_dir = self.work_dir / "input"
        self.output_dir = self.work_dir / "output"
        self.temp_dir = self.work_dir / "temp"  # ComfyUI puts its temp files in <this>/temp
        self.user_dir = self.work_dir / "user"
        self.custom_nodes_dir = self.work_dir / "custom_nodes"
        self.start_seconds: float | None = None
        self.client_id = uuid.uuid4().hex
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._session = requests.Session()

    # -- lifecycle ------------------------------------------------------------------------------

    def _prepare(self) -> Path:
        """Create the directories, the custom_nodes symlinks and the YAML; return the YAML path."""
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir, self.custom_nodes_dir):
            d.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FOLDERS:
            (self.models_dir / name).mkdir(parents=True, exist_ok=True)
        for name, target in self.custom_nodes.items():
            link = self.custom_nodes_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(Path(target).resolve(), target_is_directory=True)
        yaml_path = self.work_dir / "extra_model_paths.yaml"
        yaml_path.write_text(extra_model_paths_yaml(self.models_dir.resolve(), self.custom_nodes_dir.resolve()))
        return yaml_path

    def command(self, yaml_path: Path) -> list[str]:
        """The command line: what a user types, plus directories that keep the checkout untouched."""
        return [
            sys.executable, "main.py",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch",
            "--extra-model-paths-config", str(yaml_path),
            "--input-directory", str(self.input_dir),
            "--output-directory", str(self.output_dir),
            "--temp-directory", str(self.work_dir),
            "--user-directory", str(self.user_dir),
            "--database-url", f"sqlite:///{self.user_dir / 'comfyui.db'}",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> ComfyServer:
        """Launch the server without waiting for it (see `wait_ready`)."""
        if self._process is not None:
            raise ComfyServerError("server already started")
        yaml_path = self._prepare()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **self.env}
        self._started_at = time.perf_counter()
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                self.command(yaml_path),
                cwd=self.comfyui_path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on pytest reaches pytest, which then stops us cleanly
                preexec_fn=_die_with_parent,
            )
        log.info("ComfyUI starting on %s (pid %d), log %s", self.url, self._process.pid, self.log_path)
        return self

    def wait_ready(self, timeout: float | None = None) -> float:
        """Poll /object_info until the server answers; return the seconds since `start`."""
        if self._process is None:
            raise ComfyServerError("server not started")
        deadline = self._started_at + (timeout or self.startup_timeout)
        while True:
            if self._process.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {self._process.returncode} while starting:\n{self.log_tail()}"
                )
            try:
                if self._session.get(f"{self.url}/object_info", timeout=30).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.perf_counter() > deadline:
                raise ComfyServerError(
                    f"ComfyUI not ready on {self.url} after {timeout or self.startup_timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.25)
        self.start_seconds = time.perf_counter() - self._started_at
        log.info("ComfyUI ready in %.1f s", self.start_seconds)
        return self.start_seconds

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM), then kill it if it has not exited within `timeout` seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI (pid %d) ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(timeout)
        self._session.close()

    def __enter__(self) -> ComfyServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id (None before start)."""
        return self._process.pid if self._process is not None else None

    # -- log ------------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the server log, for failure messages."""
        return self.log_text()[-chars:]

    # -- API ------------------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> requests.Response:
        """GET a path of the API; a dead server raises with its log."""
        if not self.running:
            raise ComfyServerError(f"ComfyUI is not running:\n{self.log_tail()}")
        response = self._session.get(f"{self.url}{path}", params=params or None, timeout=60)
        response.raise_for_status()
        return response

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """GET /object_info (all nodes) or /object_info/{node_class} (one node)."""
        return self._get(f"/object_info/{node_class}" if node_class else "/object_info").json()

    def combo_options(self, node_class: str, input_name: str) -> list[str]:
        """The choices of a combo input (e.g. CheckpointLoaderSimple's ckpt_name), V1 or V3 layout."""
        info = self.object_info(node_class)[node_class]["input"]
        spec = {**info.get("required", {}), **info.get("optional", {})}[input_name]
        if isinstance(spec[0], list):  # V1: [[choices...], {options}]
            return list(spec[0])
        return list(spec[1].get("options", []))  # V3: ["COMBO", {"options": [...]}]

    def queue_prompt(self, api_graph: Mapping[str, Any]) -> str:
        """POST /prompt an API-format graph; return its prompt id, or raise PromptRejected with node_errors."""
        if not self.running:
            raise ComfyServerError(f"ComfyUI is not running:\n{self.log_tail()}")
        # json.dumps as ComfyUI's API examples send it (script_examples/basic_api_example.py): NaN and Infinity
        # go out as such, where requests' json= refuses them
        data = json.dumps({"prompt": dict(api_graph), "client_id": self.client_id}).encode()
        response = self._session.post(
            f"{self.url}/prompt", data=data, headers={"Content-Type": "application/json"}, timeout=60
        )
        if response.status_code == 400:
            raise PromptRejected(response.json())
        response.raise_for_status()
        body = response.json()
        if body.get("node_errors"):
            log.warning("ComfyUI queued only part of the graph: %s", body["node_errors"])
        return body["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """GET /history/{prompt_id}: the finished entry, or None while it is queued or running."""
        return self._get(f"/history/{prompt_id}").json().get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll /history until the prompt finishes; return its entry, raise ExecutionFailed if a node raised."""
        deadline = time.perf_counter() + timeout
        while (entry := self.history(prompt_id)) is None:
            if time.perf_counter() > deadline:
                queue = self._get("/queue").json()
                raise TimeoutError(
                    f"prompt {prompt_id} not finished after {timeout:.0f} s; queue: "
                    f"{len(queue.get('queue_running', []))} running, {len(queue.get('queue_pending', []))} pending\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)
        status = entry.get("status", {})
        if status.get("status_str") == "error":
            errors = [data for event, data in status.get("messages", []) if event == "execution_error"]
            raise ExecutionFailed(prompt_id, errors[0] if errors else {"exception_message": str(status)}, entry)
        return entry

    def interrupt(self) -> None:
        """POST /interrupt: stop the running prompt, as the UI's cancel button does."""
        self._session.post(f"{self.url}/interrupt", timeout=30).raise_for_status()

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """POST /free, as the UI's "Unload models" / "Free model and node cache" buttons do.

        The server acts on it between prompts (its queue worker checks the flags about once a second).
        """
        body = {"unload_models": unload_models, "free_memory": free_memory}
        self._session.post(f"{self.url}/free", json=body, timeout=30).raise_for_status()

    def run(self, api_graph: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """Queue a graph and wait for it: `wait(queue_prompt(api_graph))`."""
        return self.wait(self.queue_prompt(api_graph), timeout)

    def output_images(self, history: Mapping[str, Any], node_id: str | None = None) -> list[Image.Image]:
        """The images a finished prompt saved (all output nodes, or one), fetched through /view."""
        images = []
        for nid, outputs in history.get("outputs", {}).items():
            if node_id is not None and nid != node_id:
                continue
            for ref in outputs.get("images", []):
                params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref["type"]}
                image = Image.open(io.BytesIO(self._get("/view", **params).content))
                image.load()
                images.append(image)
        return images

    def upload_image(self, image: Path | str | Image.Image, name: str | None = None, overwrite: bool = True) -> str:
        """POST /upload/image a file or PIL image into the input folder; return the name LoadImage takes."""
        if isinstance(image, Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data, filename = buffer.getvalue(), name or f"f2d_upload_{uuid.uuid4().hex[:12]}.png"
        else:
            data, filename = Path(image).read_bytes(), name or Path(image).name
        response = self._session.post(
            f"{self.url}/upload/image",
            files={"image": (filename, data, "application/octet-stream")},
            data={"type": "input", "overwrite": "true" if overwrite else "false"},
            timeout=60,
        )
        response.raise_for_status()
        body = response.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else body["name"]
