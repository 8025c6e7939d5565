"""The DNS server's Trio adapter: UDP and TCP on ``dns.listen_addr`` (`DnsOptions.listen`).

Binds both transports on the same port (a configured port 0 picks one free for both), loads every
node from the store, then follows the store's change log (no polling) so a node added anywhere
resolves at once. Watches ``dns.extra_records_path`` (a cheap stat every half second; the
file is re-read and re-parsed only when its mtime/size/inode change, and applied only when its
content hash changes), and the configuration file (``dns.extra_records`` and
``dns.extra_records_path`` apply live). Forwards names outside its zones to ``dns.nameservers.global`` over UDP
when any are configured, for sources in the tailnet's prefixes and ``dns.forward_allowed_from`` only
(REFUSED for everyone else: no open resolver).

Reports a :class:`DnsService` when started (``.stats`` counters, ``.zone``, ``.address``,
``.port``, ``.wait_seq``), None when ``dns.listen_addr`` is empty. TXT values for ACME DNS-01 come
from the change log like everything else (see ``txt.py``), and a query for an ACME name reads that
name from the store before it is answered (the write may be ahead of the change log, and the ACME
server asks at once; see ``resolver.py``). Cancel = clean shutdown.

Safety: per-source token buckets (default 100 q/s, burst 200; a UDP source over its rate gets no
answer, a TCP one gets REFUSED), at most 128 TCP connections, 10 s idle timeout per connection,
bounded reads, at most 256 forwards in flight, at most 64 queries reading (or waiting on) a TXT name
from the store, one read per name at a time, 4 per name and then 1 a second.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field, replace
from functools import partial
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any

import trio

from trioscale.shared.net.limits import ConnectionLimiter, standalone_limiter
from trioscale.shared.net.listen import listener_sockets, serve_stream_sockets
from trioscale.shared.store.base import carried_node

from .ratelimit import RateLimiter
from .options import DnsOptions, DnsTuning
from .resolver import DnsStats, Forward, Resolver, TxtLookup, parse_upstreams
from .sources import SourceNetworks
from .txt import TxtRecords
from .zone import Zone, parse_extra_records

__all__ = ["serve", "DnsService", "DnsOptions", "DnsTuning"]

log = logging.getLogger("trioscale")

#: node fields the zone depends on; other node updates (endpoints, last_seen, ...) are skipped
_DNS_FIELDS = frozenset({"given_name", "ipv4", "ipv6"})
_UDP_RECV = 4096
#: datagrams handled between two Trio checkpoints
_UDP_BATCH = 64
#: largest extra_records file read
_MAX_RECORDS_FILE = 4 * 1024 * 1024


@dataclass
class DnsService:
    """The running DNS server, as `serve` reports it when started."""

    zone: Zone
    resolver: Resolver
    txt: TxtRecords
    stats: DnsStats
    tuning: DnsTuning
    address: str = ""
    port: int = 0
    #: seq of the last store change applied
    seq: int = 0
    tcp_active: int = 0
    forwards_active: int = 0
    #: queries reading a TXT name from the store or waiting on such a read
    txt_reads_active: int = 0
    extra_records_problems: list[str] = field(default_factory=list)
    _seq_moved: trio.Event = field(default_factory=trio.Event, repr=False)
    #: TXT names being read from the store -> set when the read is over
    _txt_reading: dict[str, trio.Event] = field(default_factory=dict, repr=False)

    @property
    def addresses(self) -> dict[str, str]:
        return {"dns": self.address}

    def applied(self, seq: int) -> None:
        """Note that the store's changes up to `seq` are in the zone."""
        self.seq = seq
        self._seq_moved.set()
        self._seq_moved = trio.Event()

    async def wait_seq(self, seq: int) -> None:
        """Return once the store's changes up to `seq` are in the zone."""
        while self.seq < seq:
            await self._seq_moved.wait()


# -- binding ---------------------------------------------------------------------------------


async def _resolve_host(host: str) -> tuple[int, str]:
    if host in ("", "*"):
        host = "0.0.0.0"
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), host
    except ValueError:
        infos = await trio.socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr[0]


async def _bind_pair(host: str, port: int) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A UDP and a TCP (listening) socket on the same port; port 0 → one free for both."""
    family, addr = await _resolve_host(host)
    attempts = 1 if port else 64
    last_exc: OSError | None = None
    for _ in range(attempts):
        udp = trio.socket.socket(family, socket.SOCK_DGRAM)
        tcp = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                only = 0 if addr == "::" else 1
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, only)
                tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, only)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await udp.bind((addr, port))
            chosen = udp.getsockname()[1]
            await tcp.bind((addr, chosen))
            tcp.listen(128)
            return udp, tcp
        except OSError as exc:
            udp.close()
            tcp.close()
            if port or exc.errno != errno.EADDRINUSE:
                raise
            last_exc = exc
    assert last_exc is not None
    raise last_exc


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- store follower --------------------------------------------------------------------------


async def _load_all(store: Any, zone: Zone) -> int:
    """Load every node (the seq is taken first, so nothing committed meanwhile is missed)."""
    seq = await store.latest_seq()
    nodes = await store.list_nodes()
    keep = {n.id for n in nodes}
    for node_id in zone.node_ids():
        if node_id not in keep:
            zone.remove_node(node_id)
    for node in nodes:
        zone.upsert_node(node)
    if hasattr(store, "list_dns_txt"):
        for name, values, expires_at in await store.list_dns_txt(datetime.now(timezone.utc)):
            zone.txt.set(name, values, expires_at)
    zone.bump(seq)
    return seq


async def _apply(store: Any, zone: Zone, change: Any) -> None:
    kind = change.kind
    if kind in ("node.created", "node.updated"):
        data = change.data or {}
        node_id = data.get("id")
        fields = data.get("fields")
        if node_id is None:
            return
        if kind == "node.updated" and fields is not None and not _DNS_FIELDS.intersection(fields):
            return
        node = carried_node(change) or await store.get_node(node_id)
        if node is None:
            zone.remove_node(node_id)
        else:
            zone.upsert_node(node)
        zone.bump(change.seq)
    elif kind == "node.deleted":
        node_id = (change.data or {}).get("id")
        if node_id is not None:
            zone.remove_node(node_id)
            zone.bump(change.seq)
    elif kind == "dnstxt.set":
        # ACME challenge values set through /machine/set-dns, possibly by a coordinator elsewhere
        name = (change.data or {}).get("name")
        if name:
            got = await store.get_dns_txt(name, datetime.now(timezone.utc))
            if got is None:
                zone.txt.clear(name)
            else:
                zone.txt.set(name, got[0], got[1])


async def _follow_store(store: Any, svc: DnsService) -> None:
    """Apply node changes as they commit; on a failure, wait, reload everything, resubscribe."""
    while True:
        try:
            async with store.subscribe(since=svc.seq) as changes:
                async for change in changes:
                    await _apply(store, svc.zone, change)
                    svc.applied(change.seq)
            # the feed ended without an error (the store is closing): resubscribe, but not in a busy loop
            await trio.sleep(0.5)
        except Exception as exc:  # the store raised: keep serving the data we have
            log.warning("dns: store change feed failed (%s); reloading", exc)
            await trio.sleep(1)
            try:
                svc.applied(await _load_all(store, svc.zone))
            except Exception as exc2:
                log.warning("dns: reloading nodes failed (%s); retrying", exc2)


# -- extra records file ----------------------------------------------------------------------


class _RecordsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.digest: bytes | None = None
        self.missing_logged = False

    async def check(self, svc: DnsService) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if not self.missing_logged:
                log.warning("dns: extra_records_path %s: %s (keeping the records loaded before)", self.path, exc.strerror)
                self.missing_logged = True
            self.stamp = None
            return
        self.missing_logged = False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self.stamp:
            return
        self.stamp = stamp
        if st.st_size > _MAX_RECORDS_FILE:
            log.warning("dns: extra_records_path %s is larger than %d bytes; ignored", self.path, _MAX_RECORDS_FILE)
            return
        try:
            data = await trio.to_thread.run_sync(self.path.read_bytes)
        except OSError as exc:
            log.warning("dns: cannot read extra_records_path %s: %s", self.path, exc)
            self.stamp = None
            return
        digest = hashlib.sha256(data).digest()
        if digest == self.digest:
            return
        try:
            good, problems = parse_extra_records(data)
        except ValueError as exc:
            log.warning("dns: extra_records_path %s: %s (keeping the records loaded before)", self.path, exc)
            return
        self.digest = digest
        for p in problems:
            log.warning("dns: extra_records_path %s: %s (skipped)", self.path, p)
        svc.extra_records_problems = problems
        svc.zone.set_source("file", good)
        svc.zone.bump()
        log.info("dns: loaded %d extra record(s) from %s", len(good), self.path)


#: re-reads the configuration file into new options; ValueError or OSError when it cannot be used
Reload = Callable[[], DnsOptions]


class _ConfigFile:
    """The configuration file, re-read when it changes: ``dns.extra_records``,
    ``dns.extra_records_path`` and ``dns.forward_allowed_from`` apply live (the coordinator pushes
    the matching DNSConfig)."""

    def __init__(self, options: DnsOptions, reload: Reload | None) -> None:
        self.path: Path | None = options.config_file if reload is not None else None
        self.reload = reload
        self.options = options
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def check(self, svc: DnsService, records_file: _RecordsFile | None) -> _RecordsFile | None:
        """Returns the records file to watch from now on."""
        stamp = self._stamp()
        if stamp is None or stamp == self.stamp or self.reload is None:
            return records_file
        self.stamp = stamp
        try:
            new = await trio.to_thread.run_sync(self.reload)
        except (ValueError, OSError) as exc:
            log.warning("dns: configuration %s changed but cannot be used (%s)", self.path, exc)
            return records_file
        # the zones were cut from the prefixes at start; only a restart moves them
        new = replace(new, prefixes=self.options.prefixes)
        if new.extra_records != self.options.extra_records:
            for problem in svc.zone.set_extra_records(new.extra_records, "config"):
                log.warning("dns: extra_records: %s (skipped)", problem)
            svc.zone.bump()
            log.info("dns: extra_records reloaded from %s", self.path)
        if new.forward_allowed_from != self.options.forward_allowed_from:
            svc.resolver.forward_from = forward_sources(new)
            log.info("dns: forwarding now for queries from %s",
                     ", ".join(map(str, svc.resolver.forward_from.networks)))
        if new.extra_records_path != self.options.extra_records_path:
            if new.extra_records_path is None:
                svc.zone.set_source("file", [])
                svc.zone.bump()
                records_file = None
            else:
                records_file = _RecordsFile(Path(new.extra_records_path))
                await records_file.check(svc)
        self.options = new
        return records_file


def forward_sources(options: DnsOptions) -> SourceNetworks:
    """The tailnet's own prefixes (tailscaled forwards a node's queries from its tailnet address)
    and the operator's ``dns.forward_allowed_from``."""
    return SourceNetworks((*options.prefixes, *options.forward_allowed_from))


async def _housekeeping(config_file: _ConfigFile, svc: DnsService, records_file: _RecordsFile | None) -> None:
    while True:
        await trio.sleep(svc.tuning.watch_interval)
        svc.txt.purge(time.time())
        records_file = await config_file.check(svc, records_file)
        if records_file is not None:
            await records_file.check(svc)


# -- forwarding ------------------------------------------------------------------------------


async def _udp_exchange(host: str, port: int, fwd: Forward) -> bytes | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            await sock.connect((host, port))
            await sock.send(fwd.query)
            while True:
                data = await sock.recv(65535)
                if fwd.matches(data):
                    return data
        except OSError:
            return None


async def _read_exact(stream: trio.abc.ReceiveStream, n: int, buf: bytearray) -> bytes | None:
    while len(buf) < n:
        chunk = await stream.receive_some(max(n - len(buf), 4096))
        if not chunk:
            return None
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


async def _tcp_exchange(host: str, port: int, fwd: Forward) -> bytes | None:
    try:
        stream = await trio.open_tcp_stream(host, port)
    except OSError:
        return None
    async with stream:
        try:
            await stream.send_all(struct.pack("!H", len(fwd.query)) + fwd.query)
            buf = bytearray()
            head = await _read_exact(stream, 2, buf)
            if head is None:
                return None
            data = await _read_exact(stream, struct.unpack("!H", head)[0], buf)
        except (OSError, trio.BrokenResourceError):
            return None
    return data if data is not None and fwd.matches(data) else None


async def _forward(svc: DnsService, fwd: Forward) -> bytes:
    """Ask the upstreams in order; the client's reply (SERVFAIL if none answered)."""
    timeout = svc.tuning.forward_timeout
    reply = None
    for host, port in fwd.upstreams:
        with trio.move_on_after(timeout):
            reply = await _udp_exchange(host, port, fwd)
        if reply is not None:
            break
    if reply is not None and fwd.transport == "tcp" and reply[2] & 0x02:
        # truncated upstream answer and the client can take it all: ask again over TCP
        with trio.move_on_after(timeout):
            full = await _tcp_exchange(host, port, fwd)
            if full is not None:
                reply = full
    return svc.resolver.forward_reply(fwd, reply)


# -- TXT read-through ------------------------------------------------------------------------


async def _read_txt(store: Any, svc: DnsService, name: str) -> None:
    """Bring TXT `name` from the store into the table; with a read of it already under way, wait
    for that one instead (one a query of the same moment started: the look-up tailscaled makes
    before set-dns is answered before it writes, so no read of it is still under way when the ACME
    server asks). A failed or slow read leaves the table as it was."""
    pending = svc._txt_reading.get(name)
    if pending is not None:
        await pending.wait()
        return
    txt = svc.txt
    done = svc._txt_reading[name] = trio.Event()
    txt.begin_read(name)
    read = False
    try:
        svc.stats.txt_reads += 1
        with trio.move_on_after(svc.tuning.txt_read_timeout):
            found = await store.get_dns_txt(name, datetime.now(timezone.utc))
            txt.end_read(name, found, now=time.time())
            read = True
    except Exception as exc:
        log.warning("dns: reading TXT %s from the store failed (%s)", name, exc)
    finally:
        if not read:
            txt.abandon_read(name)
        del svc._txt_reading[name]
        done.set()


async def _answer_txt(store: Any, svc: DnsService, lookup: TxtLookup) -> bytes:
    """The reply to a TxtLookup, the store read done first (the caller holds a read slot)."""
    await _read_txt(store, svc, lookup.name)
    return svc.resolver.resume(lookup, now=time.time())


# -- listeners -------------------------------------------------------------------------------


async def _serve_udp(sock: trio.socket.SocketType, svc: DnsService, store: Any, nursery: trio.Nursery) -> None:
    handle = svc.resolver.handle
    stats = svc.stats

    async def read_and_reply(lookup: TxtLookup, addr: Any) -> None:
        try:
            out = await _answer_txt(store, svc, lookup)
            try:
                await sock.sendto(out, addr)
            except OSError:
                pass
        finally:
            svc.txt_reads_active -= 1

    async def forward_and_reply(fwd: Forward, addr: Any) -> None:
        try:
            out = await _forward(svc, fwd)
            try:
                await sock.sendto(out, addr)
            except OSError:
                pass
        finally:
            svc.forwards_active -= 1

    # The socket is read without a Trio checkpoint per datagram: wait until readable, then drain
    # up to a batch with plain non-blocking calls (several times faster than await recvfrom).
    raw = socket.socket(fileno=sock.fileno(), family=sock.family, type=sock.type, proto=sock.proto)
    raw.setblocking(False)
    recvfrom, sendto = raw.recvfrom, raw.sendto
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(_UDP_BATCH):
                try:
                    data, addr = recvfrom(_UDP_RECV)
                except BlockingIOError:
                    break
                except OSError:  # e.g. an ICMP error reported on the socket
                    continue
                result = handle(data, source=addr, now=time.time(), transport="udp")
                if result is None:
                    continue
                if isinstance(result, TxtLookup):
                    if svc.txt_reads_active >= svc.tuning.max_txt_reads:
                        stats.txt_reads_skipped += 1
                        result = svc.resolver.resume(result, now=time.time())
                    else:
                        svc.txt_reads_active += 1
                        nursery.start_soon(read_and_reply, result, addr)
                        continue
                elif isinstance(result, Forward):
                    if svc.forwards_active >= svc.tuning.max_forwards:
                        result = svc.resolver.forward_reply(result, None)
                    else:
                        svc.forwards_active += 1
                        nursery.start_soon(forward_and_reply, result, addr)
                        continue
                try:
                    sendto(result, addr)
                except OSError:  # send buffer full (BlockingIOError) or unreachable: UDP may drop
                    stats.dropped += 1
            await trio.lowlevel.checkpoint()
    finally:
        raw.detach()


def _tcp_handler(svc: DnsService, store: Any) -> Any:
    opts = svc.tuning
    stats = svc.stats

    async def handle_conn(stream: trio.SocketStream) -> None:
        if svc.tcp_active >= opts.max_tcp_connections:
            stats.tcp_rejected += 1
            await trio.aclose_forcefully(stream)
            return
        svc.tcp_active += 1
        stats.tcp_connections += 1
        try:
            try:
                peer = stream.socket.getpeername()
            except OSError:
                return
            buf = bytearray()
            while True:
                msg = None
                with trio.move_on_after(opts.tcp_idle_timeout):
                    head = await _read_exact(stream, 2, buf)
                    if head is not None:
                        msg = await _read_exact(stream, struct.unpack("!H", head)[0], buf)
                if msg is None:
                    return  # idle, closed, or cut in the middle of a message
                result = svc.resolver.handle(msg, source=peer, now=time.time(), transport="tcp")
                if result is None:
                    continue
                if isinstance(result, TxtLookup):
                    if svc.txt_reads_active >= opts.max_txt_reads:
                        stats.txt_reads_skipped += 1
                        result = svc.resolver.resume(result, now=time.time())
                    else:
                        svc.txt_reads_active += 1
                        try:
                            result = await _answer_txt(store, svc, result)
                        finally:
                            svc.txt_reads_active -= 1
                elif isinstance(result, Forward):
                    if svc.forwards_active >= opts.max_forwards:
                        result = svc.resolver.forward_reply(result, None)
                    else:
                        svc.forwards_active += 1
                        try:
                            result = await _forward(svc, result)
                        finally:
                            svc.forwards_active -= 1
                with trio.move_on_after(opts.tcp_write_timeout) as cs:
                    await stream.send_all(struct.pack("!H", len(result)) + result)
                if cs.cancelled_caught:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            svc.tcp_active -= 1
            await trio.aclose_forcefully(stream)

    return handle_conn


# -- entry point -----------------------------------------------------------------------------


async def serve(
    options: DnsOptions,
    store: Any,
    *,
    limiter: ConnectionLimiter | None = None,
    reload: Reload | None = None,
    tuning: DnsTuning | None = None,
    task_status: trio.TaskStatus[DnsService | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve DNS until cancelled. `limiter` caps the TCP listener (default: a listener of its own);
    `reload` re-reads the configuration file when it changes (None: no watching)."""
    opts = tuning or DnsTuning()
    if options.listen is None:
        log.info("DNS server disabled (dns.listen_addr is empty)")
        task_status.started(None)
        await trio.sleep_forever()
    host, port = options.listen
    udp_sock, tcp_sock = await _bind_pair(host, port)
    with udp_sock, tcp_sock:
        bound_host, bound_port = udp_sock.getsockname()[:2]
        shown = _show(host or bound_host, bound_port)

        ns_addresses: list[str] = []
        try:
            ip = ipaddress.ip_address(bound_host)
            if not ip.is_unspecified:
                ns_addresses.append(str(ip))
        except ValueError:
            pass
        txt = TxtRecords()
        zone = Zone(options.base_domain, options.prefixes, txt=txt, ttl=opts.ttl, ns_addresses=ns_addresses)
        for problem in zone.set_extra_records(options.extra_records, "config"):
            log.warning("dns: extra_records: %s (skipped)", problem)
        upstreams, problems = parse_upstreams(options.upstreams)
        for problem in problems:
            log.warning("dns: %s; not used for forwarding", problem)
        forward_from = forward_sources(options)
        stats = DnsStats()
        resolver = Resolver(
            zone,
            upstreams=upstreams,
            rate_limiter=RateLimiter(opts.rate, opts.burst, opts.max_sources),
            stats=stats,
            max_udp_size=opts.max_udp_size,
            forward_from=forward_from,
            txt_reads=RateLimiter(opts.txt_read_rate, opts.txt_read_burst, txt.max_names)
            if hasattr(store, "get_dns_txt")
            else None,
        )
        svc = DnsService(zone=zone, resolver=resolver, txt=txt, stats=stats, tuning=opts, address=shown, port=bound_port)
        svc.applied(await _load_all(store, zone))
        records_file = None
        if options.extra_records_path is not None:
            records_file = _RecordsFile(Path(options.extra_records_path))
            await records_file.check(svc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_follow_store, store, svc)
            nursery.start_soon(_housekeeping, _ConfigFile(options, reload), svc, records_file)
            nursery.start_soon(_serve_udp, udp_sock, svc, store, nursery)
            # the accept loop owns the listening socket from here (it closes it on the way out)
            tcp_listening = listener_sockets([trio.SocketListener(tcp_sock)])
            if limiter is None:
                limiter = standalone_limiter("dns")
            nursery.start_soon(
                partial(serve_stream_sockets, _tcp_handler(svc, store), tcp_listening, limiter=limiter, log=log)
            )
            log.info(
                "DNS listening on %s (udp+tcp) for %s and %d reverse zone(s)%s",
                shown,
                zone.base_domain,
                len(zone.apexes) - 1,
                f", forwarding to {', '.join(_show(h, p) for h, p in upstreams)} for queries from "
                f"{', '.join(map(str, forward_from.networks))}" if upstreams else "",
            )
            task_status.started(svc)
