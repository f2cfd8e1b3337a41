"""Where erel-sync keeps its files on a host unless told otherwise.

Pure constants, in a module of their own so that a command needing only a path (`erel-sync
start`, which talks to the local agent's socket) does not load the settings parser and its
schema. Used by `model.settings` (the agent's defaults), `erel-sync publisher`, `erel-sync
release` and the local `start|stop|restart|delete` commands.
"""

from __future__ import annotations

DEFAULT_STATE_DIR = "/var/lib/erel-sync"
DEFAULT_RELEASES_DIR = f"{DEFAULT_STATE_DIR}/releases"
DEFAULT_CACHE_DIR = "/var/cache/erel-sync"
DEFAULT_PUBLISHER_STATE_DIR = f"{DEFAULT_STATE_DIR}/publisher"
CONTROL_SOCKET_NAME = "agent.sock"  # in the agent's state dir unless `control_socket` says
DEFAULT_CONTROL_SOCKET = f"{DEFAULT_STATE_DIR}/{CONTROL_SOCKET_NAME}"
