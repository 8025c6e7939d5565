"""Inputs the coverage-guided fuzzer (tests/fuzz/targets/fuzz_machine.py) found to escape the
register/map request parsing as something other than a 400; each one now gets the handler's own
error. (Run the fuzzer: .venv/bin/python tests/fuzz/atheris_run.py machine --runs 1000000.)"""

from __future__ import annotations

import json

import pytest

from trioscale.services.coord import handlers, register
from trioscale.shared.domain import tailcfg
from trioscale.shared.model import Node
from trioscale.shared.proto import keys

NK = keys.NODE.format(bytes(range(32)))
NODE = Node(7, b"m" * 32, b"n" * 32, 1, "laptop", "laptop", "100.64.0.7", None, home_derp=1)


@pytest.mark.parametrize(
    "body",
    [
        b'{"Version":130,"NodeKey":"%s","Hostinfo":{"x":NaN}}' % NK.encode(),  # jsonb refuses NaN
        b'{"Version":130,"Hostinfo":{"x":-Infinity}}',
        b'{"Version":130,"x":' + b"1" * 5000 + b"}",  # int() digit limit: a plain ValueError
    ],
)
def test_json_body_refuses_what_go_never_sends(body: bytes) -> None:
    with pytest.raises(handlers.RequestRefused) as info:
        handlers._json_body(body)
    assert info.value.status == 400 and "\n" not in str(info.value)


@pytest.mark.parametrize("expiry", [5, {"a": 1}, ["2027-01-01T00:00:00Z"], True, "9999-12-31T23:59:59-23:59"])
def test_register_expiry_that_is_no_time_is_a_bad_request(expiry) -> None:
    body = handlers._json_body(json.dumps({"Version": 113, "NodeKey": NK, "Expiry": expiry}).encode())
    # the handler turns ValueError/TypeError from from_json into "400 bad register request"
    with pytest.raises(ValueError):
        register.RegisterRequest.from_json(body)


def test_parse_time_still_reads_client_times() -> None:
    assert tailcfg.parse_time(None) is None and tailcfg.parse_time("") is None
    assert tailcfg.parse_time("0001-01-01T00:00:00Z") is None
    t = tailcfg.parse_time("2027-01-01T01:00:00.123456789+01:00")
    assert t is not None and t.isoformat() == "2027-01-01T00:00:00.123456+00:00"


@pytest.mark.parametrize("preferred", [2**64, 2**63, 1 << 31])
def test_preferred_derp_that_fits_no_column_is_ignored(preferred: int) -> None:
    body = {"Version": 130, "NodeKey": NK, "Hostinfo": {"NetInfo": {"PreferredDERP": preferred}}}
    updates = handlers.map_request_updates(NODE, body)
    assert "home_derp" not in updates
    assert handlers.map_request_updates(NODE, {"Hostinfo": {"NetInfo": {"PreferredDERP": 900}}})["home_derp"] == 900


# --- the control listener (found by the atheris `upgrade` target) ------------------------------

HEAD_REQUESTS = [
    # the fuzzer's input: a HEAD upgrade naming another protocol
    b"HEAD /ts2021 HTTP/1.1\r\nHost: control.example\r\nUpgrade: tailscale-contrnl-protocol\r\n"
    b"Connection: upgrade\r\nX-Tailscale-Handshake: AAAA\r\n\r\n",
    b"HEAD /key HTTP/1.1\r\nHost: x\r\n\r\n",  # every error answer had the same fault
    b"HEAD /key?v=1 HTTP/1.1\r\nHost: x\r\n\r\n",
]


async def _close_at_end(stream) -> None:
    import trio

    try:
        await trio.sleep_forever()
    finally:
        await trio.aclose_forcefully(stream)


@pytest.mark.parametrize("request_bytes", HEAD_REQUESTS + [b"HeAD /key?v=130 HTTP/1.1\r\nHost: x\r\n\r\n"])
async def test_error_answer_to_a_head_request_is_clean(nursery, caplog, request_bytes: bytes) -> None:
    """A HEAD request answered with an error used to send the error text as a body, which h11
    refuses: the listener logged a traceback at ERROR per request (log flooding) and sent nothing.
    "HeAD" (methods are case-sensitive: not HEAD to h11) must get the body its header declares."""
    import functools

    import trio

    from trioscale.services.coord.control_server import serve_control

    async def noise_handler(request, response):  # never reached
        await response.send(404)

    addr = await nursery.start(
        functools.partial(serve_control, ("127.0.0.1", 0), keys.generate_private_key(), noise_handler)
    )
    host, port = addr.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    nursery.start_soon(_close_at_end, stream)
    await stream.send_all(request_bytes)
    answer = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in answer:
            chunk = await stream.receive_some(4096)
            assert chunk, f"connection closed without an answer: {answer!r}"
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    if request_bytes.startswith(b"HEAD "):
        assert head.startswith(b"HTTP/1.1 400"), head
        assert rest == b""  # no body for HEAD
    else:
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        with trio.fail_after(10):
            while len(rest) < length:
                chunk = await stream.receive_some(4096)
                assert chunk, "the declared body never came"
                rest += chunk
        assert b"publicKey" in rest
    assert not [r for r in caplog.records if r.levelno >= 40], [r.getMessage() for r in caplog.records]


async def test_connect_is_refused_before_any_handler(nursery, caplog) -> None:
    """CONNECT answered with a 2xx switches protocols in HTTP/1.1, and h11 then refuses the
    answer's body: the listener logged a traceback at ERROR (found by the atheris `upgrade`
    target, with a handler that answers 200 to every path). CONNECT is a 405 and a close now."""
    import functools

    import trio

    from trioscale.services.coord.control_server import serve_control

    async def noise_handler(request, response):  # never reached
        await response.send(404)

    async def http_handler(method, path, headers, body):
        return 200, [("content-type", "text/plain")], b"anything\n"

    addr = await nursery.start(
        functools.partial(serve_control, ("127.0.0.1", 0), keys.generate_private_key(), noise_handler, http_handler)
    )
    host, port = addr.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    nursery.start_soon(_close_at_end, stream)
    await stream.send_all(b"CONNECT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    answer = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 405"), answer
    assert not [r for r in caplog.records if r.levelno >= 40], [r.getMessage() for r in caplog.records]
