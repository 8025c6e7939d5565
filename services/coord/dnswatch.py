"""Keeping the DNSConfig in map responses current: the extra-records file and the config file.

The coordinator's DNSConfig comes from the `dns:` configuration plus the records in
``dns.extra_records_path`` (a JSON array of ``{name, type, value}``, Headscale's format). This task
stats both files every :data:`INTERVAL` seconds (a stat is cheap; no inotify dependency), re-reads a
file only when its mtime, size or inode changed, and pushes a new DNSConfig to every connected node
(`Coordinator.set_dns_config`) only when the result differs. So an edit reaches connected clients
within about half a second.

A changed configuration file is re-read with the same rules as at start (file, then environment),
by the `reload` function the process hands in (services do not read configuration themselves).
Only the `dns:` keys that shape DNSConfig are applied live (magic_dns, override_local_dns,
nameservers, search_domains, extra_records, extra_records_path); a changed ``dns.base_domain`` would
rename every node and needs a restart (logged, ignored). A file that fails to parse or validate is
logged and ignored: the last good DNSConfig stays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from trioscale.shared.domain.extrarecords import parse_extra_records

from . import dnssettings
from .options import DnsConfigOptions

log = logging.getLogger("trioscale.coord.dns")

INTERVAL = 0.25
MAX_RECORDS_FILE = 4 * 1024 * 1024

Records = list[dict[str, str]]
Build = Callable[[DnsConfigOptions, Sequence[dict[str, str]]], dict[str, Any]]
#: re-reads the configuration file; ValueError or OSError when it cannot be used
Reload = Callable[[], DnsConfigOptions]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_records_file(path: Path) -> Records:
    """The records of an extra_records file; ValueError if it cannot be used (bad items are
    skipped with a warning, like the DNS service does)."""
    data = path.read_bytes()[: MAX_RECORDS_FILE + 1]
    if len(data) > MAX_RECORDS_FILE:
        raise ValueError(f"larger than {MAX_RECORDS_FILE} bytes")
    good, problems = parse_extra_records(data)
    for problem in problems:
        log.warning("dns: extra_records_path %s: %s (skipped)", path, problem)
    return [{"name": n, "type": t, "value": v} for n, t, v in good]


class DnsConfigWatcher:
    def __init__(
        self,
        options: DnsConfigOptions,
        build: Build,
        *,
        config_file: Path | None = None,
        reload: Reload | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.options = options
        self.build = build
        #: watched only when there is a way to read it again
        self.config_file = config_file if reload is not None else None
        self.reload = reload
        self.interval = interval
        self.records: Records = []
        #: the DNS settings API v2 stored (dnssettings.py), over the configured keys
        self.stored: Any = None
        self._records_stamp: tuple[int, int, int] | None = None
        self._config_stamp = _stamp(self.config_file) if self.config_file is not None else None

    # -- the parts ----------------------------------------------------------------------------
    def load_records(self) -> bool:
        """(Re)read the extra-records file if it changed; True if the records changed."""
        path = self.options.extra_records_path
        if path is None:
            changed, self.records, self._records_stamp = bool(self.records), [], None
            return changed
        stamp = _stamp(Path(path))
        if stamp is None:
            if self._records_stamp is not None:
                log.warning("dns: extra_records_path %s is gone; keeping the records loaded before", path)
            self._records_stamp = None
            return False
        if stamp == self._records_stamp:
            return False
        self._records_stamp = stamp
        try:
            records = read_records_file(Path(path))
        except (OSError, ValueError) as exc:
            log.warning("dns: extra_records_path %s: %s (keeping the records loaded before)", path, exc)
            return False
        if records == self.records:
            return False
        self.records = records
        log.info("dns: %d extra record(s) from %s", len(records), path)
        return True

    def reload_config(self) -> bool:
        """Re-read the configuration file if it changed; True if DNS keys changed."""
        source = self.config_file
        if source is None or self.reload is None:
            return False
        stamp = _stamp(source)
        if stamp is None or stamp == self._config_stamp:
            return False
        self._config_stamp = stamp
        try:
            new = self.reload()
        except (ValueError, OSError) as exc:
            log.warning("configuration %s changed but cannot be used (%s); keeping the running one", source, exc)
            return False
        if new.base_domain != self.options.base_domain:
            log.warning("dns.base_domain changed in %s: that needs a restart; ignored", source)
            new = replace(new, base_domain=self.options.base_domain)
        # the reverse zones were cut from the prefixes at start; only a restart moves them
        new = replace(new, prefixes=self.options.prefixes)
        if new == self.options:
            return False
        path_changed = new.extra_records_path != self.options.extra_records_path
        self.options = new
        if path_changed:
            self._records_stamp = None
            if self.options.extra_records_path is None:
                self.records = []
        log.info("dns: configuration reloaded from %s", source)
        return True

    def current(self) -> dict[str, Any]:
        return self.build(dnssettings.apply(self.options, self.stored), self.records)

    def poll(self) -> dict[str, Any] | None:
        """One round: the new DNSConfig if anything changed, else None."""
        changed = self.reload_config()
        changed = self.load_records() or changed
        return self.current() if changed else None

    # -- the task -----------------------------------------------------------------------------
    async def run(self, set_dns_config: Callable[[dict[str, Any]], None], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            try:
                new = await trio.to_thread.run_sync(self.poll)
            except Exception:  # never let a bad file stop the coordinator
                log.exception("dns: checking the configuration failed")
                continue
            if new is not None:
                set_dns_config(new)
