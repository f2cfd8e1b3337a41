"""The client side of the agent's local control socket: one JSON request line, one reply line.

Used by `cli.steer` when `start|stop|restart|delete` name no host, group or `--all`: the command
goes to the agent on this machine, without the broker and without a signature (the socket's file
mode is the authentication). The server side is `agent.control.serve_socket`. Kept apart from
`cli.steer` so that the command module only decides and prints, and the blocking socket code
(no event loop needed for one exchange) sits in one place.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from erel_sync.core import control

REPLY_TIMEOUT = 120.0  # a `stop` waits for the release's stop_timeout; `start` for its health


def ask(
    path: Path, request: Mapping[str, Any], *, timeout: float = REPLY_TIMEOUT
) -> dict[str, Any]:
    """Send `request` to the agent listening on `path` and read its reply: the reply document,
    or {} for an answer that is none (`core.control.parse_reply`). Raises OSError when the
    socket cannot be reached or the agent does not answer within `timeout`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps(dict(request)).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return control.parse_reply(data) or {}
