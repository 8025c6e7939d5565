"""The DERP regions the configuration gives, besides the live relays: maps fetched from `derp.urls`
(Headscale's way to use Tailscale's public relays), then `derp.regions`, then `derp.paths` files.

A later source replaces an earlier region of the same id, and a null region in a file drops it (see
shared/domain/derpmapfile.py). URLs are fetched once the coordinator runs (its first maps may come
before them; the regions reach every session when they arrive) and, with `derp.auto_update_enabled`,
every `derp.update_frequency`. A fetch that fails keeps what the URL gave last and is logged, and a
URL that never answered is tried again every minute, so an unreachable relay list never stops
the coordinator.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio

from trioscale.shared.domain.derpmapfile import DerpMapFileError, merge_regions, parse_derp_map

log = logging.getLogger("trioscale.coord.derp")

#: one fetch's deadline (connect and read); a map is a few KiB
FETCH_TIMEOUT = 10.0
#: the most of one answer that is read
MAX_MAP_BYTES = 4 << 20
#: how soon a URL that failed at start is tried again (then every update interval)
FIRST_RETRY = timedelta(seconds=60)


def _get(url: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as answer:  # noqa: S310 (http(s) only: config checks)
        body = answer.read(MAX_MAP_BYTES + 1)
    if len(body) > MAX_MAP_BYTES:
        raise DerpMapFileError(f"the answer is larger than {MAX_MAP_BYTES} bytes")
    return body.decode("utf-8")


async def fetch_text(url: str) -> str:
    """The body of a GET of `url` (urllib in a worker thread)."""
    return await trio.to_thread.run_sync(_get, url)


class DerpRegions:
    """The configured regions, with the URLs' maps as last fetched."""

    def __init__(
        self,
        urls: Sequence[str],
        static: Sequence[dict[str, Any]],
        paths: Sequence[Path],
        *,
        get: Callable[[str], Awaitable[str]] = fetch_text,
    ) -> None:
        self.urls = tuple(urls)
        self.static = [dict(r) for r in static]
        self.files: list[dict[int, dict[str, Any] | None]] = []
        for path in paths:
            try:
                self.files.append(parse_derp_map(Path(path).read_text(encoding="utf-8")))
            except DerpMapFileError as exc:
                raise DerpMapFileError(f"DERP map file {path}: {exc}") from None
        self.fetched: dict[str, dict[int, dict[str, Any] | None]] = {}
        self._get = get

    def regions(self) -> list[dict[str, Any]]:
        maps = [self.fetched.get(url, {}) for url in self.urls]
        maps.append({int(r["RegionID"]): r for r in self.static})
        return merge_regions([*maps, *self.files])

    async def fetch(self) -> bool:
        """Fetch every URL; True when the regions changed. A failure keeps the URL's last map."""
        before = self.regions()
        for url in self.urls:
            try:
                text = await self._get(url)
                self.fetched[url] = parse_derp_map(text)
            except (OSError, ValueError, json.JSONDecodeError) as exc:
                kept = "keeping the last map" if url in self.fetched else "no regions from it yet"
                log.warning("DERP map %s cannot be fetched (%s); %s", url, exc, kept)
        return self.regions() != before

    def missing(self) -> bool:
        return any(url not in self.fetched for url in self.urls)

    async def run(self, every: timedelta | None, changed: Callable[[], None]) -> None:
        """Fetch the URLs now, then every `every` (None: only until each has answered once),
        sooner while one has never answered; `changed` is called when the regions moved."""
        while True:
            if await self.fetch():
                log.info("DERP regions from %s: %d in all now", ", ".join(self.urls), len(self.regions()))
                changed()
            if self.missing():
                wait = min(every, FIRST_RETRY) if every is not None else FIRST_RETRY
            elif every is None:
                return
            else:
                wait = every
            await trio.sleep(wait.total_seconds())
