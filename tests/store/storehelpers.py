"""Record builders shared by the store tests."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from trioscale.shared.model import DerpRelay, Node, PendingRegistration

_n = itertools.count(1)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def key(tag: str, i: int) -> bytes:
    return (tag.encode() + i.to_bytes(4, "big")).ljust(32, b"\0")


def node(user_id: int, i: int | None = None, **kw) -> Node:
    i = next(_n) if i is None else i
    fields = dict(
        id=0,
        machine_key=key("mkey", i),
        node_key=key("nkey", i),
        user_id=user_id,
        hostname=f"host-{i}",
        given_name=f"host-{i}",
        ipv4=f"100.64.{i // 256}.{i % 256}",
        ipv6=f"fd7a:115c:a1e0::{i:x}",
        disco_key=key("disco", i),
        endpoints=(f"192.0.2.{i % 256}:41641",),
        hostinfo={"OS": "linux", "Hostname": f"host-{i}", "Services": [{"Proto": "tcp", "Port": 22}]},
        home_derp=1,
        register_method="cli",
        expiry=T0 + timedelta(days=180),
    )
    fields.update(kw)
    return Node(**fields)


def registration(reg_id: str, created_at: datetime = T0, **kw) -> PendingRegistration:
    i = next(_n)
    fields = dict(
        id=reg_id,
        machine_key=key("rmkey", i),
        node_key=key("rnkey", i),
        hostinfo={"Hostname": reg_id},
        created_at=created_at,
    )
    fields.update(kw)
    return PendingRegistration(**fields)


def relay(region_id: int = 900, name: str = "r1", **kw) -> DerpRelay:
    fields = dict(region_id=region_id, name=name, host=f"{name}.example.net", region_code="ams",
                  region_name="Amsterdam", ipv4="192.0.2.10", derp_port=443, stun_port=3478,
                  heartbeat_at=T0)
    fields.update(kw)
    return DerpRelay(**fields)
