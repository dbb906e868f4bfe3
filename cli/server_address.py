"""--server as people type it: `127.0.0.1:8188`, `localhost:8188` or a full `http(s)://` address."""

from __future__ import annotations

import argparse
import re

_HOST_PORT = re.compile(r"^[\w.\-]+(:\d{1,5})?$|^\[[0-9a-fA-F:]+\](:\d{1,5})?$")  # name, IPv4 or [IPv6], optional port


def server_address(text: str) -> str:
    """The base URL of a ComfyUI server, without a trailing slash; `http://` is added when no scheme is given.

    Raises argparse.ArgumentTypeError (argparse prints it as a usage error naming --server) for anything
    else, e.g. `ftp://host` or `host:port/path with spaces`.
    """
    address = text.strip().rstrip("/")
    if re.match(r"^https?://", address, re.IGNORECASE):
        return address
    if "://" not in address and _HOST_PORT.match(address):
        return f"http://{address}"
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a server address: give host:port (e.g. 127.0.0.1:8188) or http://host:port"
    )
