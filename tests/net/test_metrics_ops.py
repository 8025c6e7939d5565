"""The operations listener (shared/net/ops.py) on its own: its three paths, readiness checks that
fail, raise or hang, and requests no probe sends."""

from __future__ import annotations

import json

import trio
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from trioscale.shared.net.ops import OpsEndpoints, Readiness, serve_ops


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await _request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_metrics_health_and_ready_paths(nursery) -> None:
    registry = CollectorRegistry()
    hits = Counter("trioscale_test_hits", "test", registry=registry)
    readiness = Readiness()
    started = readiness.add_flag("listeners", "services are starting")
    refreshed = []

    async def refresh() -> None:
        refreshed.append(1)
        hits.inc()

    endpoints = OpsEndpoints(registry, readiness)
    endpoints.on_scrape(refresh)
    addr = await nursery.start(serve_ops, "127.0.0.1", 0, endpoints)
    port = int(addr["metrics"].rsplit(":", 1)[1])

    status, headers, body = await _get(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    (family,) = [f for f in text_string_to_metric_families(body.decode()) if f.name == "trioscale_test_hits"]
    assert family.samples[0].value == 1.0 and refreshed == [1]

    status, _, body = await _get(port, "/health")
    assert status == 200 and body == b"{\"status\":\"pass\"}\n"
    status, _, body = await _get(port, "/ready")
    assert status == 503 and json.loads(body) == {"status": "fail", "not_ready": {"listeners": "services are starting"}}
    started()
    status, _, body = await _get(port, "/ready?verbose=1")
    assert status == 200 and json.loads(body) == {"status": "pass"}
    status, _, body = await _get(port, "/ready", "HEAD")
    assert status == 200 and body == b""
    assert (await _get(port, "/metrics", "POST"))[0] == 405
    assert (await _get(port, "/elsewhere"))[0] == 404
    assert (await _request(port, b"NONSENSE\r\n\r\n"))[0] == 400


async def test_a_check_that_raises_or_hangs_is_not_ready_and_named(nursery, autojump_clock) -> None:
    readiness = Readiness()

    async def broken() -> str | None:
        raise ConnectionRefusedError("connection refused")

    async def hangs() -> str | None:
        await trio.sleep_forever()

    async def fine() -> str | None:
        return None

    readiness.add("database", broken)
    readiness.add("changelog.coord", hangs)
    readiness.add("derp.registration", fine)
    failed = await readiness.failures(timeout=2)
    assert failed == {"changelog.coord": "no answer within 2s",
                      "database": "ConnectionRefusedError: connection refused"}


async def test_a_port_in_use_fails_with_one_line_naming_the_key() -> None:
    import socket

    import pytest

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoints = OpsEndpoints(CollectorRegistry(), Readiness())
        with pytest.raises(RuntimeError, match=rf"^metrics_listen_addr 127.0.0.1:{port}: .*in use"):
            await serve_ops("127.0.0.1", port, endpoints)  # fails before it serves anything
