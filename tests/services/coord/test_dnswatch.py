"""The coordinator's DNSConfig watcher: extra_records_path and configuration-file edits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio
import yaml

from trioscale.config import load_config
from trioscale.options import dns_config_options, reloader
from trioscale.services.coord.dnswatch import DnsConfigWatcher
from trioscale.services.coord.service import dns_config_from


def write(path: Path, text: str) -> None:
    # a new inode each time, like editors and config-management tools do
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def records(cfg):
    return [r["Name"] for r in cfg.get("ExtraRecords", [])]


def watcher(conf: Path) -> DnsConfigWatcher:
    """A watcher as `trioscale serve` makes one: the options from the file, and a way to read it again."""
    config = load_config(conf, env={})
    return DnsConfigWatcher(dns_config_options(config), dns_config_from, config_file=conf,
                            reload=reloader(config, dns_config_options))


def test_records_file_and_config_file_changes(tmp_path):
    rec = tmp_path / "records.json"
    write(rec, json.dumps([{"name": "a.ts.test", "type": "A", "value": "100.64.0.7"}]))
    conf = tmp_path / "trioscale.yaml"
    doc = {"dns": {"base_domain": "ts.test", "extra_records_path": str(rec)}}
    write(conf, yaml.safe_dump(doc))
    w = watcher(conf)
    assert w.load_records() is True
    assert records(w.current()) == ["a.ts.test"]
    assert w.poll() is None  # nothing changed

    write(rec, json.dumps([{"name": "a.ts.test", "type": "A", "value": "100.64.0.7"},
                           {"name": "b.ts.test", "type": "A", "value": "100.64.0.8"}]))
    assert records(w.poll()) == ["a.ts.test", "b.ts.test"]
    write(rec, "{broken")
    assert w.poll() is None and records(w.current()) == ["a.ts.test", "b.ts.test"]  # last good kept
    rec.unlink()
    assert w.poll() is None and records(w.current()) == ["a.ts.test", "b.ts.test"]

    doc["dns"]["search_domains"] = ["corp.example"]
    doc["dns"]["nameservers"] = {"global": ["9.9.9.9"]}
    doc["dns"]["override_local_dns"] = True
    write(conf, yaml.safe_dump(doc))
    new = w.poll()
    assert new["Domains"] == ["ts.test", "corp.example"] and new["Resolvers"] == [{"Addr": "9.9.9.9"}]

    doc["dns"]["base_domain"] = "other.test"  # needs a restart: ignored, the rest still applies
    doc["dns"]["magic_dns"] = False
    write(conf, yaml.safe_dump(doc))
    new = w.poll()
    assert new["Proxied"] is False and new["Domains"][0] == "ts.test"

    write(conf, "dns: [not, a, mapping")  # invalid: ignored
    assert w.poll() is None

    del doc["dns"]["extra_records_path"]
    doc["dns"]["base_domain"] = "ts.test"
    write(conf, yaml.safe_dump(doc))
    assert records(w.poll()) == []


async def test_run_pushes_changes_within_a_second(tmp_path):
    rec = tmp_path / "records.json"
    write(rec, "[]")
    conf = tmp_path / "trioscale.yaml"
    write(conf, yaml.safe_dump({"dns": {"base_domain": "ts.test", "extra_records_path": str(rec)}}))
    w = watcher(conf)
    w.load_records()
    pushed = []
    async with trio.open_nursery() as nursery:
        await nursery.start(w.run, pushed.append)
        write(rec, json.dumps([{"name": "c.ts.test", "type": "A", "value": "100.64.0.9"}]))
        start = trio.current_time()
        with trio.fail_after(1):
            while not pushed:
                await trio.sleep(0.01)
        assert records(pushed[-1]) == ["c.ts.test"]
        assert trio.current_time() - start < 1
        nursery.cancel_scope.cancel()
