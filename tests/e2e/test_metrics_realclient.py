"""Metrics while real clients join: a scrape of /metrics before, and while tsnet nodes (Caddy) join
and a rename fans out to them, finds the coordinator's counters and its fan-out histogram moved.

Parsed with prometheus_client's own parser. Runs in a private network namespace like every
real-client test (conftest.py); the metrics listener's address is the one the server logged.
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.harness import Trioscale, client_caddyfile, diagnostics, node_online, start_caddy, wait_for, web_caddyfile

pytestmark = pytest.mark.realclient

JOIN_TIMEOUT = 60


def metrics_addr(srv: Trioscale) -> str:
    found = wait_for(lambda: re.search(r"listening: metrics = (\S+)", srv.log()), 10, "the metrics address in the log")
    return found.group(1)


def scrape(addr: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def test_counters_and_the_fanout_histogram_move_as_real_clients_join(server: Trioscale, caddies) -> None:
    addr = metrics_addr(server)
    before = scrape(addr)
    assert total(before, "trioscale_coord_connected_nodes") == 0

    server.create_user("alice")
    key = server.create_key("alice", "--reusable")
    web = start_caddy(caddies, server, "web", web_caddyfile("web"), key)
    client = start_caddy(caddies, server, "client", client_caddyfile("client"), key, TS_DEBUG_MAP="1")
    try:
        wait_for(lambda: node_online(server, "web") and node_online(server, "client"), JOIN_TIMEOUT, "both nodes online")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnostics(server, web, client)}") from None
    joined = scrape(addr)
    # a change every session hears of: the web node's new name reaches the client (and itself)
    web_id = str(server.node_named("web")["id"])
    server.cli("nodes", "rename", "--identifier", web_id, "web-renamed")

    def moved() -> dict | None:
        now = scrape(addr)
        fanouts = total(now, "trioscale_coord_change_fanout_seconds_count")
        return now if fanouts > total(joined, "trioscale_coord_change_fanout_seconds_count") else None

    after = wait_for(moved, 20, "the rename's fan-out to be observed")
    wait_for(lambda: "web-renamed" in client.log(), 30, "the client's netmap to show the new name")

    # both clients registered with a pre-auth key and hold a map session
    assert (total(after, "trioscale_coord_registrations_total", method="authkey", result="success")
            >= total(before, "trioscale_coord_registrations_total", method="authkey", result="success") + 2)
    assert total(after, "trioscale_coord_connected_nodes") == 2
    assert total(after, "trioscale_coord_map_sessions") >= 2
    # deltas went out, with their bytes; the fan-out histogram counted changes and took time
    for name in ("trioscale_coord_deltas_sent_total", "trioscale_coord_delta_sent_bytes_total"):
        assert total(after, name) > total(before, name), name
    assert total(after, "trioscale_coord_change_fanout_seconds_sum") > 0
    assert total(after, "trioscale_coord_change_fanout_seconds_bucket", le="+Inf") == \
        total(after, "trioscale_coord_change_fanout_seconds_count")
    # the store's operations are timed by name, and the coordinator keeps up with the log
    assert (total(after, "trioscale_store_operation_seconds_count", operation="update_node")
            > total(before, "trioscale_store_operation_seconds_count", operation="update_node"))
    assert total(after, "trioscale_changelog_lag", follower="coord") <= 1000
    # the relay and STUN served the clients
    assert total(after, "trioscale_stun_requests_total") > total(before, "trioscale_stun_requests_total")
