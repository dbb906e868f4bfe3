"""Run an API-format workflow on a ComfyUI server and follow it to the end: one command for a training graph.

    python cli/run_workflow.py workflows/api/f2d_train_mapper.json --server http://127.0.0.1:8188 \\
        --set 4.steps=20000 --set 3.folder=faces/alice --timeout 86400

`--set NODE_ID.input=value` changes an input before queueing (value parsed as JSON when it parses,
e.g. 2000, 1e-5, true, ["1", 0], else taken as a string). Progress arrives over the server's
websocket (`/ws`), one line per update, with the loss of Train F2D Mapper's
`f2d.training.progress` events; without a websocket, `/history` is polled. At the end the outputs
are printed (saved file paths, texts, images). Ctrl-C or `--timeout` cancels the prompt on the
server (POST /interrupt, or removal from the queue).

Exit codes: 0 done; 1 a node failed or the run was interrupted on the server; 2 the graph or a
`--set` is wrong (nothing ran); 3 the server cannot be reached; 124 timeout; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

if __package__:
    from .server_address import server_address
else:  # run as a script: cli/ is sys.path[0]
    from server_address import server_address

log = logging.getLogger("f2d.run_workflow")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 124, 130
TRAINING_EVENT = "f2d.training.progress"  # nodes/training/train_node.py PROGRESS_EVENT
TRAINING_NODE_TYPES = frozenset({"F2DTrainMapper"})  # their progress lines come from TRAINING_EVENT (with the loss)
POLL_SECONDS = 1.0
Graph = dict[str, dict[str, Any]]


class UsageError(Exception):
    """The workflow file, a --set, or the graph as the server validated it is wrong."""


class ServerUnreachable(Exception):
    """No HTTP answer from the server."""


@dataclass(frozen=True)
class Override:
    """`--set NODE_ID.input=value`."""

    node: str
    input: str
    value: Any


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, booleans, lists such as links), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_override(text: str) -> Override:
    """`NODE_ID.input=value` -> Override; a UsageError that shows the form otherwise."""
    target, sep, value = text.partition("=")
    node, dot, name = target.strip().partition(".")
    if not sep or not dot or not node or not name:
        raise UsageError(f"--set {text!r}: write NODE_ID.input=value, e.g. --set 4.steps=2000")
    return Override(node, name.strip(), parse_value(value))


def load_graph(path: Path) -> Graph:
    """An API-format graph from a file; a UI-format workflow is refused with what to do instead."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"Cannot read the workflow {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is not JSON: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # the body of a POST /prompt
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise UsageError(
            f"{path} is a UI-format workflow; this command needs the API format. In ComfyUI use "
            "Workflow > Export (API), or take the copy in workflows/api/."
        )
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(n, dict) and "class_type" in n for n in data.values())
    ):
        raise UsageError(f"{path} is not an API-format graph ({{node_id: {{class_type, inputs}}}}).")
    return data


def node_list(graph: Graph) -> str:
    """'1 (CheckpointLoaderSimple), 2 (...)' for messages."""
    return ", ".join(f"{nid} ({node['class_type']})" for nid, node in graph.items())


def apply_override(graph: Graph, override: Override, declared: set[str] | None = None) -> None:
    """Set one input; `declared` are the node type's inputs per /object_info (for optional ones not in the file)."""
    node = graph.get(override.node)
    if node is None:
        raise UsageError(
            f"--set {override.node}.{override.input}: no node {override.node!r}; nodes: {node_list(graph)}"
        )
    inputs = node.setdefault("inputs", {})
    if override.input not in inputs and override.input not in (declared or set()):
        known = sorted(set(inputs) | (declared or set()))
        raise UsageError(
            f"--set {override.node}.{override.input}: node {override.node} ({node['class_type']}) has no input "
            f"{override.input!r}; its inputs: {', '.join(known)}"
        )
    inputs[override.input] = override.value


def format_rejection(body: Mapping[str, Any], graph: Graph) -> str:
    """A 400 answer of POST /prompt (error + node_errors) as readable lines."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {"message": str(body.get("error", ""))}
    lines = [f"The server rejected the graph: {error.get('message', '')}".rstrip()]
    node_errors = body.get("node_errors") or {}
    if error.get("details") and not node_errors:
        lines.append(f"  {error['details']}")
    for nid, entry in node_errors.items():
        class_type = entry.get("class_type") or graph.get(nid, {}).get("class_type", "?")
        for err in entry.get("errors", []):
            where = err.get("extra_info", {}).get("input_name")
            detail = f": {err['details']}" if err.get("details") else ""
            lines.append(
                f"  node {nid} ({class_type}){f' input {where!r}' if where else ''}: {err.get('message')}{detail}"
            )
    return "\n".join(lines)


def format_output_value(value: Any) -> str:
    """An output entry: a file reference as type/subfolder/filename, anything else as text."""
    if isinstance(value, dict) and "filename" in value:
        return "/".join(p for p in (value.get("type"), value.get("subfolder"), value["filename"]) if p)
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class Follower:
    """Turns the server's events for one prompt into progress lines, and knows how the prompt ended."""

    graph: Graph
    prompt_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    running: bool = False
    outcome: str | None = None  # success | error | interrupted
    error: dict[str, Any] = field(default_factory=dict)
    _last_progress: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loss_nodes = {nid for nid, n in self.graph.items() if n.get("class_type") in TRAINING_NODE_TYPES}

    def say(self, text: str) -> None:
        log.info("[%7.1f s] %s", time.perf_counter() - self.started, text)

    def node(self, nid: Any) -> str:
        return f"node {nid} ({self.graph.get(str(nid), {}).get('class_type', '?')})"

    def handle(self, event: str, data: Mapping[str, Any]) -> None:
        """One websocket message."""
        if event == TRAINING_EVENT:
            if self.running:  # broadcast to every client: only while our prompt runs
                self.loss_nodes.add(str(data.get("node")))
                loss = data.get("loss")
                loss_text = f"{loss:.6f}" if isinstance(loss, (int, float)) else str(loss)
                self.say(
                    f"{self.node(data.get('node'))}: step {data.get('step')}/{data.get('total')}  loss {loss_text}"
                )
            return
        if data.get("prompt_id") != self.prompt_id:
            return
        if event == "execution_start":
            self.running = True
            self.say("started")
        elif event == "execution_cached" and data.get("nodes"):
            self.say(f"cached: {', '.join(self.node(n) for n in data['nodes'])}")
        elif event == "executing" and data.get("node") is not None:
            self.say(f"{self.node(data['node'])} running")
        elif event == "executing":  # node None: the prompt is over
            self.outcome = self.outcome or "success"
        elif event == "progress" and str(data.get("node")) not in self.loss_nodes:
            key = (data.get("value"), data.get("max"))
            if self._last_progress.get(str(data.get("node"))) != key:
                self._last_progress[str(data.get("node"))] = key
                self.say(f"{self.node(data.get('node'))}: {key[0]}/{key[1]}")
        elif event == "execution_success":
            self.outcome = "success"
        elif event == "execution_error":
            self.outcome, self.error = "error", dict(data)
        elif event == "execution_interrupted":
            self.outcome, self.error = "interrupted", dict(data)
        if self.outcome:
            self.running = False

    def from_history(self, entry: Mapping[str, Any]) -> None:
        """How the prompt ended, from its /history entry (the polling path, or to confirm)."""
        status = entry.get("status", {})
        for event, data in status.get("messages", []):
            if event in ("execution_error", "execution_interrupted") and self.outcome in (None, "success"):
                self.handle(event, data)
        if self.outcome is None:
            self.outcome = "error" if status.get("status_str") == "error" else "success"

    def failure_text(self) -> str:
        """Node id, type and the exception, as the server reported them."""
        e = self.error
        where = f"node {e.get('node_id', '?')} ({e.get('node_type', '?')})"
        if self.outcome == "interrupted":
            return f"interrupted on the server in {where}"
        kind = str(e.get("exception_type", "error")).rsplit(".", 1)[-1]  # a pack's module path is the folder's
        return f"failed in {where}: {kind}: {str(e.get('exception_message', '')).strip()}"


def print_outputs(graph: Graph, outputs: Mapping[str, Any]) -> None:
    """Every output node's results: paths of saved files, texts, images."""
    for nid, output in outputs.items():
        for key, values in (output or {}).items():
            class_type = graph.get(nid, {}).get("class_type", "?")
            for value in values if isinstance(values, list) else [values]:
                log.info("output %s node %s (%s): %s", key, nid, class_type, format_output_value(value))


class Client:
    """The few HTTP calls this command makes."""

    def __init__(self, session: aiohttp.ClientSession, server: str) -> None:
        self.session, self.server = session, server.rstrip("/")

    async def _json(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            async with self.session.request(method, self.server + path, **kwargs) as response:
                text = await response.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            raise ServerUnreachable(f"ComfyUI at {self.server} does not answer ({type(e).__name__}: {e}).") from e
        try:
            return response.status, json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return response.status, text

    async def declared_inputs(self, class_type: str) -> set[str]:
        status, body = await self._json("GET", f"/object_info/{class_type}")
        info = body.get(class_type, {}).get("input", {}) if status == 200 and isinstance(body, dict) else {}
        return {name for section in ("required", "optional") for name in info.get(section, {})}

    async def queue(self, graph: Graph, client_id: str) -> str:
        status, body = await self._json("POST", "/prompt", json={"prompt": graph, "client_id": client_id})
        if status == 400:
            raise UsageError(format_rejection(body if isinstance(body, dict) else {"error": body}, graph))
        if status != 200 or not isinstance(body, dict):
            raise ServerUnreachable(f"POST /prompt answered {status}: {body}")
        if body.get("node_errors"):  # ComfyUI queued only the outputs that validated: not the graph asked for
            await self.cancel(body["prompt_id"])
            partial = {"error": {"message": "some outputs failed validation (the rest was queued, and cancelled)"}}
            raise UsageError(format_rejection({**partial, "node_errors": body["node_errors"]}, graph))
        return body["prompt_id"]

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        status, body = await self._json("GET", f"/history/{prompt_id}")
        return body.get(prompt_id) if status == 200 and isinstance(body, dict) else None

    async def cancel(self, prompt_id: str) -> None:
        """Remove the prompt from the queue, or interrupt it when it is the one running."""
        await self._json("POST", "/queue", json={"delete": [prompt_id]})
        await self._json("POST", "/interrupt", json={"prompt_id": prompt_id})


async def follow_websocket(ws: aiohttp.ClientWebSocketResponse, follower: Follower) -> None:
    """Feed the websocket's JSON messages to `follower` until the prompt ends or the socket closes."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            message = json.loads(msg.data)
            follower.handle(message.get("type", ""), message.get("data") or {})
            if follower.outcome:
                return
        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            break
    log.warning("the websocket closed; polling /history instead")


async def poll_history(client: Client, follower: Follower) -> dict[str, Any]:
    """Wait for the prompt's /history entry."""
    while (entry := await client.history(follower.prompt_id)) is None:
        await asyncio.sleep(POLL_SECONDS)
    return entry


async def follow(client: Client, ws: aiohttp.ClientWebSocketResponse | None, follower: Follower) -> dict[str, Any]:
    """Wait for the end of the prompt (websocket, else polling); return its /history entry."""
    if ws is not None:
        await follow_websocket(ws, follower)
    entry = await poll_history(client, follower)
    follower.from_history(entry)
    return entry


async def apply_overrides(client: Client, graph: Graph, overrides: list[Override]) -> None:
    """Apply every --set, asking the server for a node type's inputs when one is not in the file."""
    for override in overrides:
        node = graph.get(override.node)
        declared = None
        if node is not None and override.input not in node.get("inputs", {}):
            declared = await client.declared_inputs(node["class_type"])
        apply_override(graph, override, declared)


async def connect_websocket(session: aiohttp.ClientSession, server: str, client_id: str):
    """The server's websocket for `client_id`, or None (then progress is polled) when it cannot be opened."""
    url = server.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        return await session.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0, heartbeat=30)
    except aiohttp.ClientConnectionError as e:  # nothing listens: queueing would fail too
        raise ServerUnreachable(f"ComfyUI at {server} does not answer ({type(e).__name__}: {e}).") from e
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:  # e.g. a proxy that refuses websockets
        log.warning("no websocket at %s/ws (%s); polling /history, without progress lines", url, e)
        return None


async def run(args: argparse.Namespace) -> int:
    """Queue the graph, follow it, print its outputs; the exit code."""
    graph = load_graph(args.workflow)
    overrides = [parse_override(text) for text in args.set]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C stays a KeyboardInterrupt
        loop.add_signal_handler(signal.SIGINT, stop.set)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as session:
        client = Client(session, args.server)
        await apply_overrides(client, graph, overrides)
        client_id = uuid.uuid4().hex
        ws = await connect_websocket(session, args.server, client_id)  # before queueing: no event is missed
        follower = Follower(graph)
        follower.prompt_id = await client.queue(graph, client_id)
        follower.say(f"queued prompt {follower.prompt_id} on {client.server}")
        waiting = asyncio.ensure_future(follow(client, ws, follower))
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({waiting, stopping}, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if waiting not in done:
            waiting.cancel()
            await client.cancel(follower.prompt_id)
            reason = "Ctrl-C" if stop.is_set() else f"no result after {args.timeout:g} s"
            log.error("%s: cancelled prompt %s on the server", reason, follower.prompt_id)
            return EXIT_INTERRUPTED if stop.is_set() else EXIT_TIMEOUT
        entry = waiting.result()
        if ws is not None:
            await ws.close()
    print_outputs(graph, entry.get("outputs", {}))
    if follower.outcome != "success":
        log.error("%s", follower.failure_text())
        return EXIT_FAILED
    follower.say("done")
    return EXIT_OK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run an API-format ComfyUI workflow, print its progress, wait for it.")
    p.add_argument("workflow", type=Path, help="API-format workflow JSON (e.g. workflows/api/f2d_train_mapper.json).")
    p.add_argument(
        "--server",
        type=server_address,
        default="http://127.0.0.1:8188",
        help="ComfyUI's address: host:port or http://host:port.",
    )
    p.add_argument("--set", action="append", default=[], metavar="NODE_ID.input=value", help="Change an input.")
    p.add_argument("--timeout", type=float, help="Give up (and cancel the prompt) after this many seconds.")
    return p.parse_args(argv)


def setup_logging() -> None:
    """Progress and outputs on stdout, warnings and errors on stderr, as plain lines.

    Under a non-UTF-8 locale (LC_ALL=C, a Windows code page) a character the console cannot show (a node
    title's arrow, a name's accent) is written as an escape instead of failing the line.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # not a text stream (redirected by a caller)
            stream.reconfigure(errors="backslashreplace")
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    setup_logging()
    try:
        return asyncio.run(run(args))
    except UsageError as e:
        log.error("%s", e)
        return EXIT_USAGE
    except ServerUnreachable as e:
        log.error("%s", e)
        return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
