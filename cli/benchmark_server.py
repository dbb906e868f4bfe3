"""A small synchronous client for a running ComfyUI server: upload, queue, wait, fetch images, interrupt."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from PIL import Image

from cli.run_workflow import format_rejection

POLL_SECONDS = 0.5


class ServerError(RuntimeError):
    """The server cannot be reached, rejected a graph, or a node failed."""


class ComfyClient:
    """HTTP access to one ComfyUI server."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.client_id = uuid.uuid4().hex

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(method, f"{self.url}{path}", timeout=60, **kwargs)
        except requests.ConnectionError as exc:
            raise ServerError(f"ComfyUI at {self.url} does not answer ({exc}). Start it, or pass --server.") from exc

    def object_info(self, node_class: str) -> dict[str, Any]:
        """/object_info of one node type ({} when the server does not have it)."""
        return self._call("GET", f"/object_info/{node_class}").json().get(node_class, {})

    def has_input(self, node_class: str, name: str) -> bool:
        info = self.object_info(node_class).get("input", {})
        return name in {**info.get("required", {}), **info.get("optional", {})}

    def combo_options(self, node_class: str, name: str) -> list[str]:
        """The choices of a combo input ([] when the node or input is missing)."""
        info = self.object_info(node_class).get("input", {})
        spec = {**info.get("required", {}), **info.get("optional", {})}.get(name, [[]])
        if isinstance(spec[0], list):
            return spec[0]
        return spec[1].get("options", []) if len(spec) > 1 and isinstance(spec[1], dict) else []

    def upload(self, path: Path, name: str) -> str:
        """Upload an image file into the server's input folder as `name`; the name LoadImage takes."""
        with open(path, "rb") as f:
            files = {"image": (name, f.read(), "image/png")}
        response = self._call("POST", "/upload/image", files=files, data={"overwrite": "true"})
        if response.status_code != 200:
            raise ServerError(f"uploading {path} failed: HTTP {response.status_code} {response.text[:300]}")
        return response.json()["name"]

    def run(self, graph: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Queue a graph and wait for its history entry; ServerError with the node's message when it fails."""
        response = self._call("POST", "/prompt", json={"prompt": graph, "client_id": self.client_id})
        if response.status_code == 400:
            raise ServerError(format_rejection(response.json(), graph))
        if response.status_code != 200:
            raise ServerError(f"POST /prompt answered HTTP {response.status_code}: {response.text[:300]}")
        prompt_id = response.json()["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self._call("GET", f"/history/{prompt_id}").json().get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error":
                    errors = [d for e, d in status.get("messages", []) if e == "execution_error"]
                    detail = errors[0] if errors else status
                    raise ServerError(
                        f"node {detail.get('node_type', '?')} failed: {detail.get('exception_message', detail)}"
                    )
                return entry
            time.sleep(POLL_SECONDS)
        self.interrupt()
        raise ServerError(f"no result after {timeout:g} s; the prompt was interrupted")

    def images(self, entry: dict[str, Any], node_id: str) -> list[Image.Image]:
        """The images node `node_id` saved, fetched through /view, in order."""
        images = []
        for ref in entry.get("outputs", {}).get(node_id, {}).get("images", []):
            params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref["type"]}
            image = Image.open(io.BytesIO(self._call("GET", "/view", params=params).content))
            image.load()
            images.append(image.convert("RGB"))
        return images

    def interrupt(self) -> None:
        """Stop the running prompt and clear what this client queued."""
        self._call("POST", "/interrupt")
        self._call("POST", "/queue", json={"clear": True})
