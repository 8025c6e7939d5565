"""The WebSocket form of the /ts2021 upgrade (Tailscale's JS/WebAssembly client; a real one runs in
tests/tailscaled/test_websocket.py): what it must carry, and a clear 400 when it does not."""

from __future__ import annotations

import base64
import json
import socket
import urllib.parse

import pytest

from trioscale.shared.proto import keys, noise


def _request(addr: tuple[str, int], lines: list[str]) -> bytes:
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        out = b""
        while b"\r\n\r\n" not in out:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        return out


@pytest.fixture
def control(trioscale_server):
    srv = trioscale_server()
    host, port = srv.config["listen_addr"].rsplit(":", 1)
    return host, int(port)


def _ws_headers(query: str, protocol: str = "tailscale-control-protocol") -> list[str]:
    return [f"GET /ts2021{query} HTTP/1.1", "Host: x", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            f"Sec-WebSocket-Protocol: {protocol}"]


def test_without_the_control_subprotocol_is_400(control):
    assert _request(control, _ws_headers("", protocol="chat")).startswith(b"HTTP/1.1 400")


def test_without_a_handshake_parameter_is_400(control):
    assert _request(control, _ws_headers("")).startswith(b"HTTP/1.1 400")


def _server_key(addr) -> bytes:
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(b"GET /key?v=130 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return keys.MACHINE.parse(json.loads(data.split(b"\r\n\r\n", 1)[1])["publicKey"])


def _read_ws_payload(s: socket.socket, buf: bytes, n: int) -> bytes:
    """At least `n` payload bytes from unmasked binary frames (server to client)."""
    out = b""
    while len(out) < n:
        while len(buf) < 4:
            buf += s.recv(4096)
        assert buf[0] & 0x0F == 2, "a binary frame"
        size, head = buf[1] & 0x7F, 2
        if size == 126:
            size, head = int.from_bytes(buf[2:4], "big"), 4
        while len(buf) < head + size:
            buf += s.recv(4096)
        out += buf[head:head + size]
        buf = buf[head + size:]
    return out


def test_a_good_request_switches_and_completes_the_noise_handshake(control):
    initiator = noise.Initiator(_server_key(control), keys.generate_private_key(), 130)
    query = "?" + urllib.parse.urlencode({"X-Tailscale-Handshake": base64.b64encode(initiator.initiation).decode()})
    with socket.create_connection(control, timeout=10) as s:
        s.sendall(("\r\n".join(_ws_headers(query)) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        assert b"Sec-WebSocket-Protocol: tailscale-control-protocol" in head
        payload = _read_ws_payload(s, rest, 51)
        initiator.receive_response(payload[:51])  # raises unless the server answered our handshake
