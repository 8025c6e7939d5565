"""`trioscale serve` as a subprocess: nodes added, renamed and deleted through the CLI/API resolve (or
stop resolving) within 1 s with no restart; extra-records file and config-file edits reach a
connected node's map stream and the DNS service within 1 s; /machine/set-dns over Noise is served as TXT.

The map-stream client is our own Noise client (shared/testing/noiseclient.py); DNS queries use dnspython.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import trio
import yaml

from trioscale.shared.testing.noiseclient import open_noise_client
from trioscale.shared.proto import keys

BASE = "ts.test"


class SimNode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.node_key = keys.generate_private_key()
        self.disco_key = keys.generate_private_key()

    @property
    def node_key_text(self) -> str:
        return keys.NODE.format(keys.public_key(self.node_key))

    def register_body(self, authkey: str | None = None):
        body = {"Version": 130, "NodeKey": self.node_key_text, "Hostinfo": {"Hostname": self.name}}
        if authkey:
            body["Auth"] = {"AuthKey": authkey}
        return body

    def map_body(self):
        return {"Version": 130, "NodeKey": self.node_key_text,
                "DiscoKey": keys.DISCO.format(keys.public_key(self.disco_key)), "Stream": True,
                "Compress": "zstd", "KeepAlive": True, "Hostinfo": {"Hostname": self.name}}

    def set_dns_body(self, name: str, value: str):
        return {"Version": 130, "NodeKey": self.node_key_text, "Name": name, "Type": "TXT", "Value": value}


def query(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=1)


def answers(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text().strip('"') for rrset in msg.answer for rd in rrset)


async def within(seconds: float, what: str, check) -> float:
    """Poll `check` (run in a thread) until truthy; return the time it took; fail after `seconds`."""
    start = time.monotonic()
    while True:
        if await trio.to_thread.run_sync(check):
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds}s")
        await trio.sleep(0.02)


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def test_names_follow_the_api_within_a_second_and_set_dns_is_served(trioscale_server, tmp_path):
    records = tmp_path / "records.json"
    records.write_text("[]")
    srv = trioscale_server(dns={"base_domain": BASE, "extra_records_path": str(records)})
    dns_port = int(srv.config["dns"]["listen_addr"].rsplit(":", 1)[1])
    host, control_port = srv.config["listen_addr"].rsplit(":", 1)
    cli = lambda *a: trio.to_thread.run_sync(lambda: srv.cli_ok(*a))  # noqa: E731
    await cli("users", "create", "alice")
    authkey = json.loads(await cli("preauthkeys", "create", "--user", "alice", "--reusable", "-o", "json"))["key"]

    alpha, beta = SimNode("alpha"), SimNode("beta")
    async with open_noise_client(host, int(control_port)) as ca, open_noise_client(host, int(control_port)) as cb:
        # 1. a node registered with a pre-auth key made through the CLI resolves within 1 s
        assert (await ca.post_json("/machine/register", alpha.register_body(authkey))).json()["MachineAuthorized"]
        await within(1, "alpha.ts.test A", lambda: answers(query(dns_port, "alpha.ts.test")) == ["100.64.0.1"])

        # 2. interactive login approved with `trioscale nodes register`: resolves within 1 s of the CLI returning
        first = (await cb.post_json("/machine/register", beta.register_body())).json()
        reg_id = first["AuthURL"].rsplit("/", 1)[1]
        assert query(dns_port, "beta.ts.test").rcode() == dns.rcode.NXDOMAIN
        await cli("nodes", "register", "--user", "alice", "--key", reg_id)
        await within(1, "beta.ts.test A", lambda: answers(query(dns_port, "beta.ts.test")) == ["100.64.0.2"])
        assert answers(query(dns_port, "2.0.64.100.in-addr.arpa", "PTR")) == ["beta.ts.test."]

        # 3. alpha's map stream: its own CertDomains in the first map
        async with ca.map_stream(alpha.map_body()) as maps:
            first_map = await maps.__anext__()
            assert first_map["DNSConfig"]["CertDomains"] == ["alpha.ts.test"]
            assert first_map["DNSConfig"]["Proxied"] is True

            async def next_dns_config(deadline: float):
                with trio.fail_after(deadline):
                    async for msg in maps:
                        if "DNSConfig" in msg:
                            return msg["DNSConfig"]

            # 4. an edit of the extra-records file: pushed to the stream and served by DNS within 1 s
            start = time.monotonic()
            replace_file(records, json.dumps([{"name": "grafana.ts.test", "type": "A", "value": "100.64.0.9"}]))
            pushed = await next_dns_config(1)
            assert time.monotonic() - start < 1
            assert pushed["ExtraRecords"] == [{"Name": "grafana.ts.test", "Value": "100.64.0.9"}]
            assert pushed["CertDomains"] == ["alpha.ts.test"]
            await within(1, "grafana.ts.test A", lambda: answers(query(dns_port, "grafana.ts.test")) == ["100.64.0.9"])

            # 5. a configuration edit (search domains, resolvers) is pushed within 1 s, no restart
            doc = yaml.safe_load(srv.config_path.read_text())
            doc["dns"].update({"search_domains": ["corp.example"], "nameservers": {"global": ["9.9.9.9"]},
                               "override_local_dns": True,
                               "extra_records": [{"name": "inline.ts.test", "type": "A", "value": "100.64.0.10"}]})
            start = time.monotonic()
            replace_file(srv.config_path, yaml.safe_dump(doc))
            pushed = await next_dns_config(1)
            assert time.monotonic() - start < 1
            assert pushed["Domains"] == [BASE, "corp.example"] and pushed["Resolvers"] == [{"Addr": "9.9.9.9"}]
            assert [r["Name"] for r in pushed["ExtraRecords"]] == ["inline.ts.test", "grafana.ts.test"]
            await within(1, "inline.ts.test A", lambda: answers(query(dns_port, "inline.ts.test")) == ["100.64.0.10"])

            # 6. set-dns: alpha's own challenge is served as TXT (it reaches DNS through the change
            #    log, like a node's name); beta's name is refused and not served
            ok = await ca.post_json("/machine/set-dns", alpha.set_dns_body("_acme-challenge.alpha.ts.test", "token-a"))
            assert ok.status == 200 and ok.json() == {}
            await within(1, "alpha's TXT", lambda: answers(query(dns_port, "_acme-challenge.alpha.ts.test", "TXT")) == ["token-a"])
            bad = await ca.post_json("/machine/set-dns", alpha.set_dns_body("_acme-challenge.beta.ts.test", "token-x"))
            assert bad.status == 403
            assert query(dns_port, "_acme-challenge.beta.ts.test", "TXT").answer == []

            # 7. rename through the CLI: the new name resolves within 1 s, the old one is gone,
            #    and the node's CertDomains follow
            beta_id = next(n["id"] for n in json.loads(await cli("nodes", "list", "-o", "json")) if n["givenName"] == "beta")
            alpha_id = next(n["id"] for n in json.loads(await cli("nodes", "list", "-o", "json")) if n["givenName"] == "alpha")
            await cli("nodes", "rename", "--identifier", str(alpha_id), "delta")
            await within(1, "delta.ts.test A", lambda: answers(query(dns_port, "delta.ts.test")) == ["100.64.0.1"])
            assert query(dns_port, "alpha.ts.test").rcode() == dns.rcode.NXDOMAIN
            renamed = await next_dns_config(1)
            assert renamed["CertDomains"] == ["delta.ts.test"]

        # 8. delete through the CLI: NXDOMAIN within 1 s
        await cli("nodes", "delete", "--identifier", str(beta_id))
        await within(1, "beta.ts.test gone", lambda: query(dns_port, "beta.ts.test").rcode() == dns.rcode.NXDOMAIN)
