"""The server's websocket events as the UI receives them, collected in a background thread (aiohttp's client)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import aiohttp


class EventListener:
    """Connects to `<url>/ws?clientId=<client_id>` and keeps every JSON event as (time, type, data).

    with EventListener(server.url, server.client_id) as events:
        ...queue a prompt with server.client_id...
        events.wait_for(lambda e: e[1] == "progress")
    """

    def __init__(self, url: str, client_id: str) -> None:
        self.ws_url = url.replace("http://", "ws://", 1) + f"/ws?clientId={client_id}"
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    async def _listen(self) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url) as ws:
            self._connected.set()
            while not self._stop.is_set():
                try:
                    message = await ws.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    self.events.append((time.monotonic(), event.get("type", ""), event.get("data", {})))
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break

    def __enter__(self) -> EventListener:
        self._thread.start()
        if not self._connected.wait(30):
            raise TimeoutError(f"no websocket connection to {self.ws_url}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def of_type(self, kind: str, prompt_id: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        """(time, data) of the events of one type (of one prompt, when given)."""
        return [(t, d) for t, k, d in list(self.events) if k == kind and prompt_id in (None, d.get("prompt_id"))]

    def wait_for(self, kind: str, prompt_id: str | None = None, timeout: float = 120.0) -> tuple[float, dict]:
        """The first event of a type (of one prompt), waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (found := self.of_type(kind, prompt_id)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind!r} event within {timeout:.0f} s; got {[k for _, k, _ in self.events]}")
            time.sleep(0.02)
        return found[0]
