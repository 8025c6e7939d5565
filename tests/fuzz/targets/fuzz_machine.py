"""Register and map request JSON: the parsing services/coord/handlers.py and register.py do on a
/machine/register or /machine/map body, up to the point where the store is called.

The first byte picks the request; the rest is the HTTP/2 request body as the client sent it.
Invariants: bad input ends in the handler's own 400 (RequestRefused, or ValueError/TypeError from
RegisterRequest.from_json, which the handler turns into a 400) and nothing else escapes; what
reaches the store can be stored: the body is strict JSON (no NaN/Infinity, which Go clients never
send and PostgreSQL's jsonb refuses), integers fit the store's 64-bit columns, times are aware
and can be compared and moved by a node expiry, the name derived from Hostname is a DNS label.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from trioscale.services.coord import handlers, register
from trioscale.shared.domain import names
from trioscale.shared.model import Node
from trioscale.shared.proto import keys
from trioscale.shared.store import rows

INSTRUMENT = ("trioscale.services.coord.handlers", "trioscale.services.coord.register",
              "trioscale.shared.domain", "trioscale.shared.proto.keys")
MAX_LEN = 8192  # a real RegisterRequest/MapRequest with a full Hostinfo is 1-4 KB

_NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
_NODE = Node(7, b"m" * 32, b"n" * 32, 1, "laptop", "laptop", "100.64.0.7", None, disco_key=b"d" * 32,
             endpoints=("192.0.2.1:41641",), hostinfo={"Hostname": "laptop", "NetInfo": {"PreferredDERP": 1}},
             home_derp=1)
_INT64 = range(-(2**63), 2**63)

#: JSON the C decoder accepts but Go clients never send, and the fields the handlers read
DICTIONARY = (
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"18446744073709551616", b"9223372036854775808",
    b"1.5", b"true", b"null", b"[]", b"{}", b"\\u0000", b"\\ud800", b"[[[[[[[[[[[[[[[[",
    b'"Version":', b'"NodeKey":', b'"OldNodeKey":', b'"DiscoKey":', b'"Endpoints":', b'"Hostinfo":',
    b'"NetInfo":', b'"PreferredDERP":', b'"Hostname":', b'"Expiry":', b'"Auth":', b'"AuthKey":',
    b'"Followup":', b'"Ephemeral":', b'"Stream":', b'"OmitPeers":', b'"Compress":"zstd"',
    b'"nodekey:', b'"discokey:', b'"0001-01-01T00:00:00Z"', b'"9999-12-31T23:59:59-23:59"',
    b'"0001-01-02T00:00:00+23:59"', b"T00:00:00.999999999Z", b"+14:00",
)


def _storable(value: object) -> None:
    json.dumps(value, allow_nan=False)


def _register(data: bytes) -> None:
    try:
        body = handlers._json_body(data)  # noqa: SLF001
        handlers._check_version(body)  # noqa: SLF001
        try:
            req = register.RegisterRequest.from_json(body)
        except (ValueError, TypeError):
            return
    except handlers.RequestRefused:
        return
    _storable(body)
    assert len(req.node_key) == keys.KEY_LEN  # (Version is checked, never stored)
    if req.expiry is not None:
        assert req.expiry.tzinfo is not None
        req.expiry <= _NOW  # noqa: B015 - the logout check
    label = names.sanitize_label(str(req.hostinfo.get("Hostname") or ""))
    names.validate_label(label)
    names.unique_label(label, {"laptop", label})
    rows.normalize_node_value("hostinfo", req.hostinfo)


def _map(data: bytes) -> None:
    try:
        body = handlers._json_body(data)  # noqa: SLF001
        handlers._check_version(body)  # noqa: SLF001
        try:
            node_key = keys.NODE.from_json(body.get("NodeKey"))
        except keys.KeyFormatError:
            return
        updates = handlers.map_request_updates(_NODE, body)
    except handlers.RequestRefused:
        return
    _storable(body)
    assert node_key is None or len(node_key) == keys.KEY_LEN
    for name, value in updates.items():
        value = rows.normalize_node_value(name, value)
        if name == "home_derp":
            assert value in _INT64, value
        elif name == "hostinfo":
            _storable(value)
        elif name == "hostname":
            assert isinstance(value, str) and len(value) <= 255
        elif name == "endpoints":
            assert all(isinstance(e, str) for e in value) and len(value) <= 64
    bool(body.get("Stream")), bool(body.get("OmitPeers")), body.get("Compress") == "zstd"


_NK = keys.NODE.format(bytes(range(32)))
_GOOD = (
    _NK, keys.DISCO.format(bytes(range(32, 64))), "nodekey:" + "0" * 64, "tskey-auth-abc", "zstd", "",
    "2027-01-01T00:00:00.123456789Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "2020-02-30T00:00:00Z",
    "192.0.2.1:41641", "[2001:db8::1]:41641", "tag:prod", "10.0.0.0/24", "my-laptop", "..", "-", "é" * 70,
)
_FIELDS = ("Version", "NodeKey", "OldNodeKey", "DiscoKey", "Endpoints", "Hostinfo", "NetInfo", "PreferredDERP",
           "Hostname", "Expiry", "Auth", "AuthKey", "Followup", "Ephemeral", "Stream", "OmitPeers", "Compress",
           "RequestTags", "RoutableIPs", "DERPLatency")
_SPECIAL = (float("nan"), float("inf"), float("-inf"), 1e308, -0.0, 2**63, 2**64, -(2**63) - 1, 10**30, 113, 130, 0, -1)


def _value(fdp, depth: int):
    """A JSON value a hostile client might send, biased towards the fields and values that matter."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return _SPECIAL[fdp.ConsumeIntInRange(0, len(_SPECIAL) - 1)]
    if kind == 3:
        return fdp.ConsumeIntInRange(-(2**70), 2**70)
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    if kind in (5, 6):
        return _GOOD[fdp.ConsumeIntInRange(0, len(_GOOD) - 1)]
    if kind == 7:
        return fdp.ConsumeFloat()
    if kind == 8:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return _object(fdp, depth + 1)


def _object(fdp, depth: int) -> dict:
    out = {}
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = _FIELDS[fdp.ConsumeIntInRange(0, len(_FIELDS) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(8)
        out[name] = _value(fdp, depth)
    return out


def _structured(data: bytes) -> bytes:
    """A request body built from the input: Version and NodeKey usually right, the rest anything."""
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    body = {}
    if fdp.ConsumeIntInRange(0, 7):
        body["Version"] = 130
    if fdp.ConsumeIntInRange(0, 7):
        body["NodeKey"] = _NK
    body.update(_object(fdp, 0))
    return json.dumps(body).encode()  # NaN/Infinity are written as such, as a hostile client may


def test_one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:] if data[0] & 2 else _structured(data[1:])
    (_register if data[0] & 1 else _map)(body)


def seeds() -> list[bytes]:
    nk = keys.NODE.format(bytes(range(32)))
    dk = keys.DISCO.format(bytes(range(32, 64)))
    hostinfo = {"IPNVersion": "1.80.0", "Hostname": "my-laptop", "OS": "linux", "RequestTags": ["tag:prod"],
                "RoutableIPs": ["10.0.0.0/24"], "NetInfo": {"PreferredDERP": 1, "DERPLatency": {"1-v4": 0.01}}}
    reg = {"Version": 113, "NodeKey": nk, "OldNodeKey": "", "Auth": {"AuthKey": "tskey-auth-abc"},
           "Expiry": "2027-01-01T00:00:00.123456789Z", "Followup": "", "Hostinfo": hostinfo, "Ephemeral": False}
    mp = {"Version": 130, "NodeKey": nk, "DiscoKey": dk, "Endpoints": ["192.0.2.1:41641", "[2001:db8::1]:41641"],
          "Stream": True, "Compress": "zstd", "Hostinfo": hostinfo, "OmitPeers": False}
    reg_min = {"Version": 113, "NodeKey": nk}
    return [
        b"\x01" + json.dumps(reg).encode(),
        b"\x01" + json.dumps(reg_min).encode(),
        b"\x01" + json.dumps({**reg_min, "Expiry": "2020-01-01T00:00:00+01:00"}).encode(),
        b"\x00" + json.dumps(mp).encode(),
        b"\x00" + json.dumps({"Version": 130, "NodeKey": nk, "OmitPeers": True, "Stream": False}).encode(),
    ]
