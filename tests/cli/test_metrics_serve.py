"""`trioscale serve`'s operations listener: /metrics, /health and /ready of a whole process.

A real server (subprocess, SQLite): the exposition parses, every metric the operations guide lists
is there, names follow Prometheus's conventions, label values come from small fixed sets, and a
registration through the noise client moves the counters. The standalone shapes (`trioscale derp`,
`stun`, `dns`) answer the same three paths on their own listener.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trioscale.metrics import STORE_OPERATIONS
from util import TrioscaleServer, free_ports_config, free_port, wait_for

#: every family docs/operations.md lists, by the process shape that exposes it
COORD_METRICS = {
    "trioscale_coord_connected_nodes", "trioscale_coord_map_sessions", "trioscale_coord_deltas_sent",
    "trioscale_coord_delta_sent_bytes", "trioscale_coord_flush_passes", "trioscale_coord_flush_cpu_seconds",
    "trioscale_coord_flush_sent_bytes", "trioscale_coord_keepalives_sent", "trioscale_coord_change_fanout_seconds",
    "trioscale_coord_registrations", "trioscale_coord_policy_compile_seconds",
    "trioscale_store_operation_seconds", "trioscale_changelog_lag",
}
DERP_METRICS = {
    "trioscale_derp_clients", "trioscale_derp_packets_relayed", "trioscale_derp_relayed_bytes",
    "trioscale_derp_packets_dropped", "trioscale_derp_mesh_forwarded_packets",
}
STUN_METRICS = {"trioscale_stun_requests"}
DNS_METRICS = {"trioscale_dns_queries", "trioscale_dns_responses"}
PROCESS_METRICS = {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"}

#: labels and the values each may take: anything else would be an unbounded label
BOUNDED_LABELS = {
    "method": {"authkey", "interactive", "oidc", "logout"},
    "result": {"success", "pending", "error"},
    "reason": {"unknown_dest", "unknown_dest_on_fwd", "dup_client", "queue_head", "gone_disconnected", "write_error"},
    "direction": {"in", "out"},
    "follower": {"coord", "dns"},
    "type": {"A", "AAAA", "ANY", "CAA", "CNAME", "HTTPS", "MX", "NS", "PTR", "SOA", "SRV", "SVCB", "TXT", "other"},
    "rcode": {"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", *map(str, range(16))},
    "operation": set(STORE_OPERATIONS),
}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(addr: str) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family: {(sample name, labels): value}} from http://addr/metrics."""
    status, text = get(f"http://{addr}/metrics")
    assert status == 200
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return out


def _register(host: str, port: int, authkey: str) -> dict:
    """One RegisterRequest with a pre-auth key, through our Noise client."""
    from trioscale.shared.proto import keys
    from trioscale.shared.testing.noiseclient import open_noise_client

    body = {"Version": 130, "NodeKey": keys.NODE.format(keys.public_key(keys.generate_private_key())),
            "Hostinfo": {"Hostname": "metered"}, "Auth": {"AuthKey": authkey}}

    async def go() -> dict:
        async with open_noise_client(host, port) as client:
            resp = await client.post_json("/machine/register", body)
            assert resp.status == 200, resp
            return resp.json()

    return trio.run(go)


def value(families, family: str, sample: str | None = None, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(v for (name, lab), v in families[family].items()
               if (sample is None or name == sample) and all(item in lab for item in want))


def test_serve_exposes_every_metric_with_bounded_labels(trioscale_server) -> None:
    srv = trioscale_server()
    addr = srv.config["metrics_listen_addr"]
    assert f"metrics={addr}" in srv.stdout()
    families = scrape(addr)
    missing = (COORD_METRICS | DERP_METRICS | STUN_METRICS | DNS_METRICS | PROCESS_METRICS) - set(families)
    assert not missing, sorted(missing)
    for name, samples in families.items():
        assert re.fullmatch(r"[a-z_]+", name), name
        if name.startswith("trioscale_"):
            for sample, labels in samples:
                if sample.endswith("_created"):
                    continue
                for label, val in labels:
                    if label in ("le", "quantile"):
                        continue
                    assert label in BOUNDED_LABELS, (name, label)
                    assert val in BOUNDED_LABELS[label], (name, label, val)
    # counters end in _total, byte counts say _bytes, times _seconds (Prometheus's naming rules)
    status, text = get(f"http://{addr}/metrics")
    for line in text.splitlines():
        if line.startswith("# TYPE trioscale_") and not line.split()[2].endswith("_created"):
            _, _, name, kind = line.split()
            if kind == "counter":
                assert name.endswith("_total"), name
            if "bytes" in name:
                assert name.removesuffix("_total").endswith("_bytes"), name
            if kind == "histogram":
                assert name.endswith("_seconds"), name


def test_health_and_ready_of_a_running_server(trioscale_server) -> None:
    srv = trioscale_server()
    addr = srv.config["metrics_listen_addr"]
    assert get(f"http://{addr}/health") == (200, '{"status":"pass"}\n')
    status, body = get(f"http://{addr}/ready")
    assert status == 200 and json.loads(body) == {"status": "pass"}
    # the control listener's /health (Headscale has it there) asks the database too
    status, body = get(f"http://{srv.config['listen_addr']}/health")
    assert status == 200 and json.loads(body)["status"] == "pass"
    assert get(f"http://{addr}/nothing")[0] == 404
    req = urllib.request.Request(f"http://{addr}/metrics", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 405


def test_registration_moves_the_counters(trioscale_server) -> None:
    srv = trioscale_server()
    addr = srv.config["metrics_listen_addr"]
    before = scrape(addr)
    srv.cli_json("users", "create", "mia")
    key = srv.cli_ok("preauthkeys", "create", "--user", "mia").strip()
    host, port = srv.config["listen_addr"].rsplit(":", 1)
    assert _register(host, int(port), key)["MachineAuthorized"] is True
    after = scrape(addr)
    assert (value(after, "trioscale_coord_registrations", method="authkey", result="success")
            == value(before, "trioscale_coord_registrations", method="authkey", result="success") + 1)
    assert (value(after, "trioscale_store_operation_seconds", "trioscale_store_operation_seconds_count",
                  operation="create_node") >= 1)
    assert value(after, "trioscale_coord_policy_compile_seconds", "trioscale_coord_policy_compile_seconds_count") >= 1


@pytest.mark.parametrize("shape,families", [
    ("stun", STUN_METRICS), ("dns", DNS_METRICS | {"trioscale_changelog_lag"}), ("derp", DERP_METRICS),
])
def test_each_standalone_shape_serves_its_own_metrics(tmp_path: Path, shape: str, families: set[str]) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    srv = TrioscaleServer(tmp_path, free_ports_config(tmp_path / "data", metrics_listen_addr=metrics),
                          command=(shape,))
    try:
        srv.start()
        got = scrape(metrics)
        assert families <= set(got) and PROCESS_METRICS <= set(got)
        assert not any(name.startswith("trioscale_coord_") for name in got)
        wait_for(lambda: get(f"http://{metrics}/ready")[0] == 200, 20, f"{shape} to be ready")
        assert get(f"http://{metrics}/health")[0] == 200
    finally:
        assert srv.stop() == 0, srv.stderr()[-3000:]
