"""DNS settings set through API v2 reach the coordinator's DNSConfig (issue #17): at start, on each
`settings.set` change, and after a reload (the change log trimmed past this replica), over the
configured `dns:` keys."""

from __future__ import annotations

from pathlib import Path

import trio

from trioscale.config import config_from_dict
from trioscale.options import coord_options
from trioscale.services.coord import dnssettings
from trioscale.services.coord.service import serve
from trioscale.shared.store import open_store_url


def options(tmp_path: Path):
    return coord_options(config_from_dict({
        "data_dir": str(tmp_path), "listen_addr": "127.0.0.1:0",
        "dns": {"base_domain": "ts.test", "override_local_dns": True, "nameservers": {"global": ["9.9.9.9"]}}}))


async def test_stored_settings_apply_at_start_on_change_and_after_a_reload(tmp_path: Path) -> None:
    async with open_store_url("sqlite://:memory:") as store:
        await store.set_setting(dnssettings.setting("searchPaths"), ["corp.example"])
        async with trio.open_nursery() as nursery:
            coord = (await nursery.start(serve, options(tmp_path), store)).coordinator
            dns = coord.tailnet.settings.dns_config
            assert dns["Domains"] == ["ts.test", "corp.example"]
            assert [r["Addr"] for r in dns["Resolvers"]] == ["9.9.9.9"]

            await store.set_setting(dnssettings.setting("nameservers"), ["1.1.1.1"])
            await coord.wait_seq(await store.latest_seq())
            assert [r["Addr"] for r in coord.tailnet.settings.dns_config["Resolvers"]] == ["1.1.1.1"]

            # a reload reads every setting again: one missed in the trimmed log is not lost
            seen: list[str] = []
            handler = coord.on_settings

            async def record(name: str) -> None:
                seen.append(name)
                await handler(name)

            coord.on_settings = record
            await coord.reload()
            assert seen == [""]
            assert coord.tailnet.settings.dns_config["Domains"] == ["ts.test", "corp.example"]
            nursery.cancel_scope.cancel()
