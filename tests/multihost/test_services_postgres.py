"""Issue 6, item 3: `trioscale stun` and `trioscale dns` as processes of their own against the same
PostgreSQL store as a `trioscale coord` (loopback, free ports; no namespaces needed)."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
import trio

from pgfixtures import pg_cluster  # noqa: F401  (the session PostgreSQL cluster)
from sim import Sim
from trioscale.shared.proto import stun
from util import TrioscaleServer, free_ports_config, wait_for

pytestmark = pytest.mark.postgres


def resolve(port: int, name: str) -> tuple[int, list[str]]:
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
    return r.rcode(), [item.address for rrset in r.answer for item in rrset]


def test_stun_and_dns_processes_follow_the_postgres_store(tmp_path: Path, pg_cluster) -> None:  # noqa: F811
    db = f"svc{secrets.token_hex(4)}"
    pg_cluster.create_database(db)
    database = {"type": "postgres", "postgres": {"host": pg_cluster.host, "port": pg_cluster.port,
                                                 "name": db, "user": pg_cluster.user}}
    common = {"database": database, "dns": {"base_domain": "pg.test"}}
    started: list[TrioscaleServer] = []
    try:
        coord = TrioscaleServer(tmp_path / "coord", free_ports_config(tmp_path / "coord" / "data", **common),
                                command=("coord",))
        dnsd = TrioscaleServer(tmp_path / "dns", free_ports_config(tmp_path / "dns" / "data", **common),
                               command=("dns",))
        stund = TrioscaleServer(tmp_path / "stun", free_ports_config(tmp_path / "stun" / "data", **common),
                                command=("stun",))
        for srv in (coord, dnsd, stund):
            started.append(srv.start())
        dns_port = int(dnsd.config["dns"]["listen_addr"].rsplit(":", 1)[1])

        coord.cli_json("users", "create", "alice")
        key = coord.cli_json("preauthkeys", "create", "--user", "alice")["key"]
        host, port = coord.config["listen_addr"].rsplit(":", 1)
        trio.run(Sim("alpha").register, (host, int(port)), key)
        node = coord.cli_json("nodes", "list")[0]
        ipv4 = next(a for a in node["ipAddresses"] if "." in a)

        # a node registered through the coordinator resolves at the separate DNS process
        wait_for(lambda: resolve(dns_port, "alpha.pg.test.") == (dns.rcode.NOERROR, [ipv4]), 5, "alpha resolves")
        coord.cli("nodes", "rename", "--identifier", str(node["id"]), "beta")
        wait_for(lambda: resolve(dns_port, "beta.pg.test.") == (dns.rcode.NOERROR, [ipv4]), 1.5, "the new name")
        assert resolve(dns_port, "alpha.pg.test.")[0] == dns.rcode.NXDOMAIN

        # PostgreSQL restarts: the DNS process reconnects and keeps following the log
        pg_cluster.restart()
        coord.cli("nodes", "delete", "--identifier", str(node["id"]))
        wait_for(lambda: resolve(dns_port, "beta.pg.test.")[0] == dns.rcode.NXDOMAIN, 15, "the delete")

        # the STUN process answers binding requests
        stun_port = int(stund.config["derp"]["server"]["stun_listen_addr"].rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.bind(("127.0.0.1", 0))
            txid = stun.new_txid()
            s.sendto(stun.binding_request(txid), ("127.0.0.1", stun_port))
            data, _ = s.recvfrom(2048)
            resp = stun.parse_binding_response(data)
            assert resp is not None and resp.txid == txid
            assert (resp.ip, resp.port) == s.getsockname()
    finally:
        codes = {srv.command[0]: srv.stop() for srv in started}
        pg_cluster.drop_database(db)
    assert codes == {"coord": 0, "dns": 0, "stun": 0}, [srv.stderr()[-2000:] for srv in started]
