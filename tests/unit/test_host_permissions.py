"""Per-host agent users (adapters.broker.permissions): whose a message is, and what one host's
user may name."""

from __future__ import annotations

import re

from erel_sync.adapters.broker.permissions import (
    host_of_user,
    host_permissions,
    host_topic_permissions,
    host_user,
    speaks_for,
)


def test_a_host_user_speaks_for_its_host_only() -> None:
    user = host_user("erel-agent", "web-1.example.com")
    assert user == "erel-agent@web-1.example.com"
    assert host_of_user(user) == "web-1.example.com"
    assert speaks_for(user, "web-1.example.com")
    assert not speaks_for(user, "web-2.example.com")
    assert not speaks_for(user, "example.com")  # a suffix is not the host
    # A shared agent user (or none: EXTERNAL auth) vouches for nothing and is let through.
    assert speaks_for("erel-agent", "web-2") and speaks_for(None, "web-2")


def test_a_host_users_keys_and_queues_are_its_own() -> None:
    (status,) = host_topic_permissions("web.1")
    write = re.compile(status.write)
    assert write.match("host.web.1") and write.match("presence.web.1")
    assert write.match("rollout.web.1")
    for other in ("host.web-1", "host.webx1", "host.web.1x", "presence.web.2", "publisher.x"):
        assert not write.match(other), other
    perms = host_permissions("web.1")
    assert re.match(perms.configure, "erel.agent.web.1.control.abc")
    assert not re.match(perms.configure, "erel.agent.web.2.control.abc")
    assert not re.match(perms.write, "erel.config")
