"""The demo's clustered release: hello on the web hosts as one Erlang cluster.

Each web host runs in a network namespace of its own (`dev.netns`: its own address and epmd),
and the work repository's `groups/web.yaml` gets what an operator would write for it
(docs/clustering.md): the hosts' age recipients and, for hello, `distribution: {mode:
clustered, cookie: <secret>}` with a fresh cookie encrypted to those recipients. The plain
cookie exists only in memory here and in the nodes' cookie files.
"""

from __future__ import annotations

import json
import re
import secrets as random
from collections.abc import Mapping
from pathlib import Path

from erel_sync.adapters import age
from erel_sync.model import secrets

HELLO = re.compile(r'^(    - name: hello\n      version: "[^"\n]+"\n)', re.MULTILINE)
SPEC = re.compile(r"^spec:\n", re.MULTILINE)
CLUSTERED_MARK = "mode: clustered"


def web_host(host_id: str) -> bool:
    """The hosts of the sample's group web (`hosts: ["web-*"]`)."""
    return host_id.startswith("web-")


def recipients(state_dirs: Mapping[str, Path]) -> dict[str, str]:
    """Each host's age recipient, its identity made in its state dir as its agent would."""
    return {h: age.recipient_of(age.identity(d)) for h, d in sorted(state_dirs.items())}


def clustered_web(text: str, to: Mapping[str, str]) -> str:
    """`groups/web.yaml` with hello clustered over the hosts `to` (host id -> recipient) and
    a new cookie encrypted to them; raises ValueError when the file is not shaped like the
    sample's (a `spec:` line and hello's `- name`/`version` lines)."""
    if not SPEC.search(text) or not HELLO.search(text):
        raise ValueError("groups/web.yaml: no `spec:` or hello entry to make clustered")
    keys = list(to.values())
    cookie = secrets.secret_node(age.encrypt(secrets.plain_json(random.token_hex(16)), keys), keys)
    listed = "".join(f"    {h}: {r}\n" for h, r in to.items())
    text = SPEC.sub(
        lambda m: (
            m.group(0)
            + "  # Who may read this group's secrets: each host's `erel-sync keygen --host`.\n"
            + f"  recipients:\n{listed}"
        ),
        text,
        count=1,
    )
    return HELLO.sub(
        lambda m: (
            m.group(1)
            + "      # One Erlang cluster over the group's hosts; the cookie only they can read.\n"
            + f"      distribution: {{{CLUSTERED_MARK}, cookie: {json.dumps(cookie)}}}\n"
        ),
        text,
        count=1,
    )
