"""The running services the loopback fuzz tests (test_fuzz_*.py) feed malformed input.

One set of running services per test: the coordinator's control listener over a real SQLite
store, the DERP relay, STUN and DNS, all sharing that store, with one node registered over Noise
(for DERP admission and DNS answers). For every case the tests feed them:

* the exchange is bounded (``trio.fail_after``) and ends in an error answer, a closed connection,
  or silence that we end ourselves;
* no handler logs an error (an unexpected exception) and no service task dies;
* the store's latest change seq and its node list are what they were before;
* each service still answers a well-formed request afterwards.

The `world` fixture checks the second and third after the test; each test checks the last.
This file also puts its folder on sys.path, so the tests share `fuzzkit`.
"""

from __future__ import annotations

import logging
import random
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from trioscale.config import config_from_dict
from trioscale.options import derp_options, dns_options, stun_options
from trioscale.services.coord import register
from trioscale.services.coord.control_server import TransportConfig, serve_control
from trioscale.services.coord.coordinator import Coordinator
from trioscale.services.coord.handlers import ControlHandlers
from trioscale.services.derp import service as derp_service
from trioscale.services.dns import service as dns_service
from trioscale.services.stun import service as stun_service
from trioscale.shared.domain import secrets, tailcfg
from trioscale.shared.domain.netmap import Settings
from trioscale.shared.proto import keys
from trioscale.shared.testing import noiseclient as nc

sys.path.insert(0, str(Path(__file__).parent))

from fuzzkit import BASE, SEED  # noqa: E402


@pytest.fixture
async def world(tmp_path, caplog):
    from trioscale.shared.store.sqlite import SqliteStore

    caplog.set_level(logging.WARNING)
    store = await SqliteStore.open(":memory:")
    try:
        async with trio.open_nursery() as nursery:
            async for w in _world(nursery, store, tmp_path):
                yield w
            nursery.cancel_scope.cancel()
        # the store is untouched (also after every service shut down) and nothing logged an error
        assert await store.latest_seq() == w.seq0 + w.shutdown_changes, "the store changed"
        assert [(n.id, n.node_key) for n in await store.list_nodes()] == w.nodes0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, [r.getMessage() for r in errors[:5]]
    finally:
        await store.aclose()


async def _world(nursery, store, tmp_path):
    coord = Coordinator(store, Settings(base_domain=BASE), build_derp_map=lambda r: tailcfg.derp_map(r),
                        ephemeral_timeout=timedelta(seconds=600))
    await nursery.start(coord.run)
    policy = register.RegistrationPolicy(server_url="http://127.0.0.1", prefix_v4="100.64.0.0/10",
                             prefix_v6="fd7a:115c:a1e0::/48")
    handlers = ControlHandlers(coord, policy)
    tcfg = TransportConfig(request_timeout=3.0, h2_preface_timeout=2.0, h2_idle_timeout=5.0, send_timeout=3.0)
    control = await nursery.start(partial(serve_control, "127.0.0.1:0", keys.generate_private_key(),
                                          handlers.noise, handlers.http, config=tcfg))
    user = await store.create_user("alice")
    authkey = secrets.generate_preauth_key()
    await store.create_preauth_key(user.id, authkey.prefix, authkey.key_hash, reusable=True)

    cfg = config_from_dict({
        "data_dir": str(tmp_path / "data"),
        "derp": {"server": {"listen_addr": "127.0.0.1:0", "stun_listen_addr": "127.0.0.1:0",
                            "private_key_path": str(tmp_path / "data" / "derp.key")}},
        "dns": {"base_domain": BASE, "listen_addr": "127.0.0.1:0"},
    })
    stun = await nursery.start(stun_service.serve, stun_options(cfg))
    derp = await nursery.start(partial(derp_service.serve, derp_options(cfg), store, stun_port=stun.port,
                                       heartbeat_interval=3600.0))
    dns = await nursery.start(dns_service.serve, dns_options(cfg), store)

    # one real node (registered over Noise), for DERP admission and DNS answers
    node_priv = keys.generate_private_key()
    host, port = control.rsplit(":", 1)
    async with nc.open_noise_client(host, int(port)) as c:
        r = await c.post_json("/machine/register", {
            "Version": 130, "NodeKey": keys.NODE.format(keys.public_key(node_priv)),
            "Auth": {"AuthKey": authkey.text}, "Hostinfo": {"Hostname": "fuzzer"}})
        assert r.status == 200 and r.json()["MachineAuthorized"] is True
    w = SimpleNamespace(
        store=store, host=host, port=int(port), authkey=authkey.text, node_priv=node_priv,
        derp_port=derp.port, stun_port=stun.port, dns_port=dns.port, rng=random.Random(SEED), derp=derp,
    )
    w.seq0 = await store.latest_seq()
    w.nodes0 = [(n.id, n.node_key) for n in await store.list_nodes()]
    w.shutdown_changes = 1  # the relay deletes its row when it stops
    yield w
    assert await store.latest_seq() == w.seq0, "the store changed"
    assert [(n.id, n.node_key) for n in await store.list_nodes()] == w.nodes0
