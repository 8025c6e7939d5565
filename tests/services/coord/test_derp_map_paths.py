"""The coordinator's configured DERP regions: maps fetched from `derp.urls`, then `derp.regions`,
then each `derp.paths` file (JSON or Headscale's YAML)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from trioscale.services.coord.service import static_regions
from trioscale.shared.domain.derpmapfile import DerpMapFileError

HEADSCALE_YAML = """
regions:
  1: null
  900:
    regionid: 900
    regioncode: custom
    regionname: My Region
    nodes:
      - {name: 900a, regionid: 900, hostname: myderp.example.com, stunport: 0, derpport: 0}
"""


def test_the_coordinator_reads_both_forms(tmp_path: Path) -> None:
    yaml_file, json_file, bad = tmp_path / "derp.yaml", tmp_path / "derp.json", tmp_path / "bad.yaml"
    yaml_file.write_text(HEADSCALE_YAML)
    json_file.write_text(json.dumps({"Regions": {"901": {"RegionID": 901, "Nodes": []}}}))
    options = SimpleNamespace(derp_regions=({"RegionID": 5, "Nodes": []},), derp_map_paths=(yaml_file, json_file))
    assert [r["RegionID"] for r in static_regions(options)] == [5, 900, 901]  # type: ignore[arg-type]
    bad.write_text("regions: [1]\n")
    with pytest.raises(DerpMapFileError, match=str(bad)):
        static_regions(SimpleNamespace(derp_regions=(), derp_map_paths=(bad,)))  # type: ignore[arg-type]


# -- derp.urls -------------------------------------------------------------------------------

TAILSCALE_LIKE = json.dumps({"Regions": {
    "1": {"RegionID": 1, "RegionCode": "nyc", "RegionName": "New York", "Nodes": [{"Name": "1a", "RegionID": 1, "HostName": "derp1.example"}]},
    "2": {"RegionID": 2, "RegionCode": "sfo", "RegionName": "San Francisco", "Nodes": []},
}})


class FakeWeb:
    """What each URL answers: text, or an OSError to raise."""

    def __init__(self, **answers: object) -> None:
        self.answers = dict(answers)
        self.asked: list[str] = []

    async def get(self, url: str) -> str:
        self.asked.append(url)
        answer = self.answers[url]
        if isinstance(answer, OSError):
            raise answer
        return answer  # type: ignore[return-value]


def test_fetched_regions_come_first_files_win_and_drop(tmp_path: Path) -> None:
    from trioscale.services.coord.derpregions import DerpRegions

    drop = tmp_path / "drop.yaml"
    drop.write_text("regions:\n  1: null\n  2: {regioncode: mine, nodes: []}\n")
    web = FakeWeb(ts=TAILSCALE_LIKE)
    regions = DerpRegions(["ts"], [{"RegionID": 7, "Nodes": []}], [drop], get=web.get)
    assert [r["RegionID"] for r in regions.regions()] == [7, 2]  # nothing fetched yet
    assert trio.run(regions.fetch) is True
    got = {r["RegionID"]: r for r in regions.regions()}
    assert set(got) == {2, 7} and got[2]["RegionCode"] == "mine"  # region 1 dropped, 2 replaced by the file
    assert trio.run(regions.fetch) is False  # the same map again: nothing moved


def test_a_failed_fetch_keeps_the_last_map_and_is_retried() -> None:
    from trioscale.services.coord.derpregions import FIRST_RETRY, DerpRegions

    web = FakeWeb(ts=OSError("no route to host"))
    regions = DerpRegions(["ts"], [], [], get=web.get)
    changes: list[list[int]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(regions.run, timedelta(hours=3), lambda: changes.append([r["RegionID"] for r in regions.regions()]))
            await trio.sleep(1)
            assert web.asked == ["ts"] and changes == [] and regions.missing()
            web.answers["ts"] = TAILSCALE_LIKE
            await trio.sleep(FIRST_RETRY.total_seconds())  # a URL that never answered is tried again within a minute
            assert changes == [[1, 2]] and len(web.asked) == 2
            web.answers["ts"] = OSError("down again")
            await trio.sleep(3 * 3600)  # the next update fails: the last map stays
            assert len(web.asked) == 3 and changes == [[1, 2]] and [r["RegionID"] for r in regions.regions()] == [1, 2]
            web.answers["ts"] = json.dumps({"Regions": {"3": {"RegionID": 3, "Nodes": []}}})
            await trio.sleep(3 * 3600)
            assert changes[-1] == [3]
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_without_updates_a_url_is_fetched_until_it_answered_once() -> None:
    from trioscale.services.coord.derpregions import DerpRegions

    web = FakeWeb(ts=TAILSCALE_LIKE)
    regions = DerpRegions(["ts"], [], [], get=web.get)
    trio.run(regions.run, None, lambda: None, clock=trio.testing.MockClock(autojump_threshold=0))  # returns
    assert web.asked == ["ts"]


def test_a_map_is_fetched_over_http() -> None:
    import http.server
    import threading

    from trioscale.services.coord.derpregions import DerpRegions

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = TAILSCALE_LIKE.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/derpmap/default"
        regions = DerpRegions([url], [], [])
        assert trio.run(regions.fetch) is True
        assert [r["RegionCode"] for r in regions.regions()] == ["nyc", "sfo"]
    finally:
        server.shutdown()
        server.server_close()


async def test_a_changed_fetched_map_reaches_every_session(nursery) -> None:
    from coordhelpers import POLICY, FakeResponse, Machine, call

    from trioscale.services.coord.coordinator import Coordinator
    from trioscale.services.coord.derpregions import DerpRegions
    from trioscale.services.coord.handlers import ControlHandlers
    from trioscale.shared.domain import secrets, tailcfg
    from trioscale.shared.domain.netmap import Settings
    from trioscale.shared.store.sqlite import SqliteStore

    web = FakeWeb(ts=TAILSCALE_LIKE)
    regions = DerpRegions(["ts"], [], [], get=web.get)
    store = await SqliteStore.open(":memory:")
    coord = Coordinator(store, Settings(base_domain="ts.test"),
                        build_derp_map=lambda relays: tailcfg.derp_map(relays, regions.regions()),
                        ephemeral_timeout=timedelta(seconds=60))
    await nursery.start(coord.run)
    handlers = ControlHandlers(coord, POLICY)
    user = await store.create_user("alice")
    key = secrets.generate_preauth_key()
    await store.create_preauth_key(user.id, key.prefix, key.key_hash, reusable=True)
    machine = Machine("alpha")
    assert (await call(handlers, machine, "/machine/register", machine.register_body(key.text))).json()["MachineAuthorized"]
    stream = FakeResponse()
    nursery.start_soon(handlers.noise, machine.request("/machine/map", machine.map_body()), stream)
    with trio.fail_after(5):
        await stream.until(lambda: stream.messages())
    assert stream.messages()[0]["DERPMap"]["Regions"] == {}  # the URL has not been fetched yet
    assert await regions.fetch()
    coord.refresh_derp_map()
    with trio.fail_after(5):
        await stream.until(lambda: any("DERPMap" in m for m in stream.messages()[1:]))
    pushed = [m["DERPMap"] for m in stream.messages()[1:] if "DERPMap" in m][-1]
    assert sorted(pushed["Regions"]) == ["1", "2"] and pushed["Regions"]["1"]["Nodes"][0]["HostName"] == "derp1.example"
    await store.aclose()
