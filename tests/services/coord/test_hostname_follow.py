"""A node's tailnet name follows a new hostname from its MapRequest unless an admin renamed it."""

from __future__ import annotations

from trioscale.services.coord.handlers import map_request_updates
from trioscale.shared.model import Node


def _node(hostname: str, given_name: str) -> Node:
    return Node(id=1, machine_key=b"m" * 32, node_key=b"n" * 32, user_id=1, hostname=hostname,
                given_name=given_name, hostinfo={"Hostname": hostname})


def test_derived_name_follows_the_hostname():
    updates = map_request_updates(_node("laptop", "laptop"), {"Hostinfo": {"Hostname": "desk"}})
    assert updates["hostname"] == "desk" and updates["given_name"] == "desk"


def test_deduplicated_name_follows_and_stays_unique():
    node = _node("web", "web-1")
    updates = map_request_updates(node, {"Hostinfo": {"Hostname": "Api.example.com"}}, lambda: {"web-1", "api"})
    assert updates["given_name"] == "api-1"


def test_a_name_set_by_an_admin_stays():
    updates = map_request_updates(_node("laptop", "alices-box"), {"Hostinfo": {"Hostname": "desk"}})
    assert updates["hostname"] == "desk" and "given_name" not in updates
