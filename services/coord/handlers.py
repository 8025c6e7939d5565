"""Requests over the Noise channel (/machine/*) and the plain-HTTP pages of the control port.

Every Noise request names a NodeKey; it is checked against the machine key the Noise handshake
proved, so one machine can never speak for another's node.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Collection
from typing import Any

import trio

from trioscale.shared.model import Node
from trioscale.shared.net.limits import LogThrottle
from trioscale.shared.proto import keys, mapframe
from trioscale.shared.store.base import StoreFull, TooLarge

from . import register, setdns, sshcheck
from trioscale.shared.domain import names, tailcfg
from trioscale.shared.domain.fanout import Message
from .coordinator import Coordinator
from .metrics import KEEPALIVES_SENT
from .oidc import pages
from .oidc.registration import RegistrationPages
from .sessions import frame

log = logging.getLogger("trioscale.coord.handlers")

#: the oldest client we talk to: Tailscale v1.80 (the same floor Headscale keeps)
MIN_CAPABILITY_VERSION = 113
#: /machine/* paths the clients may call that we do not serve (yet): answered 501, never a hang
NOT_IMPLEMENTED = (
    "/machine/update-health",
    "/machine/id-token",
    "/machine/feature/query",
    "/machine/audit-log",
    "/machine/set-device-attr",
    "/machine/c2n",
    "/machine/whoami",
    "/machine/webclient/",
)
#: Hostinfo.NetInfo fields that change on every re-STUN and mean nothing to peers
_NETINFO_NOISE = ("DERPLatency",)


#: deepest JSON nesting a request may have: a real Hostinfo is about 4 levels deep, and anything
#: much deeper would only reach recursion limits further in (comparing, packing, encoding)
MAX_JSON_DEPTH = 32


class RequestRefused(Exception):
    """A /machine/* request answered with an HTTP error `status` and the message as its body."""

    def __init__(self, status: int, message: str, *, hostile: bool = False) -> None:
        super().__init__(message)
        self.status = status
        #: no real client sends this: log it at WARNING (one line), not at debug
        self.hostile = hostile


def _too_deep(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return False


def _no_constant(name: str) -> Any:
    # Python's decoder takes NaN/Infinity; Go clients never send them and jsonb refuses them.
    raise ValueError(f"{name} is not a JSON number")


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body or b"{}", parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRefused(400, f"request body is not JSON: {exc}") from None
    except ValueError as exc:  # NaN/Infinity, or an integer longer than Python converts (4,300 digits)
        raise RequestRefused(400, f"request body is not JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise RequestRefused(400, "request body is nested too deeply", hostile=True) from None
    if not isinstance(obj, dict):
        raise RequestRefused(400, "request body must be a JSON object")
    if _too_deep(obj, MAX_JSON_DEPTH):
        raise RequestRefused(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels", hostile=True)
    return obj


def _mark_registered(response: Any) -> None:
    """The connection's machine key has a node: let the transport lift its stream limit."""
    mark = getattr(response, "mark_registered", None)
    if mark is not None:
        mark()


def _check_version(obj: dict[str, Any]) -> int:
    version = obj.get("Version")
    if not isinstance(version, int) or version < MIN_CAPABILITY_VERSION:
        raise RequestRefused(
            400,
            f"unsupported client version {version!r}: trioscale needs capability version "
            f">= {MIN_CAPABILITY_VERSION} (Tailscale v1.80 or newer)",
        )
    return version


def quiet_hostinfo(hostinfo: dict[str, Any]) -> dict[str, Any]:
    netinfo = hostinfo.get("NetInfo")
    if isinstance(netinfo, dict) and any(k in netinfo for k in _NETINFO_NOISE):
        hostinfo = {**hostinfo, "NetInfo": {k: v for k, v in netinfo.items() if k not in _NETINFO_NOISE}}
    return hostinfo


def _follows_hostname(node: Node) -> bool:
    """The node's tailnet name was derived from its hostname (never set by an admin), so it
    follows a new hostname, as in Headscale and Tailscale (`tailscale set --hostname`)."""
    base = names.sanitize_label(node.hostname)
    if node.given_name == base:
        return True
    head, _, suffix = node.given_name.rpartition("-")
    return head == base and suffix.isdigit()  # deduplicated at registration: base-1, base-2, …


def map_request_updates(node: Node, req: dict[str, Any],
                        taken_names: Callable[[], Collection[str]] = frozenset) -> dict[str, Any]:
    """Node fields a MapRequest changes (only those that differ). `taken_names()` gives the tailnet
    names in use (asked only when a name follows a new hostname)."""
    updates: dict[str, Any] = {}
    try:
        disco = keys.DISCO.from_json(req.get("DiscoKey"))
    except keys.KeyFormatError as exc:
        raise RequestRefused(400, f"bad DiscoKey: {exc}") from None
    if disco is not None and disco != node.disco_key:
        updates["disco_key"] = disco
    endpoints = req.get("Endpoints")
    if isinstance(endpoints, list):
        eps = tuple(str(e) for e in endpoints if isinstance(e, str))[:64]
        if eps != node.endpoints:
            updates["endpoints"] = eps
    hostinfo = req.get("Hostinfo")
    if isinstance(hostinfo, dict) and hostinfo:
        if "NetInfo" not in hostinfo and "NetInfo" in node.hostinfo:
            hostinfo = {**hostinfo, "NetInfo": node.hostinfo["NetInfo"]}
        hostinfo = quiet_hostinfo(hostinfo)
        if hostinfo != node.hostinfo:
            updates["hostinfo"] = hostinfo
            if hostinfo.get("Hostname") and hostinfo.get("Hostname") != node.hostname:
                updates["hostname"] = str(hostinfo["Hostname"])[:255]
                if _follows_hostname(node):
                    base = names.sanitize_label(updates["hostname"])
                    given = names.unique_label(base, set(taken_names()) - {node.given_name})
                    if given != node.given_name:
                        updates["given_name"] = given
        netinfo = hostinfo.get("NetInfo")
        if isinstance(netinfo, dict):
            preferred = netinfo.get("PreferredDERP")
            # a DERP region id; anything past 31 bits is no region and would not fit the column
            if isinstance(preferred, int) and 0 < preferred < 1 << 31 and preferred != node.home_derp:
                updates["home_derp"] = preferred
    return updates


class ControlHandlers:
    """The coordinator's request handlers, plugged into the control transport."""

    def __init__(self, coordinator: Coordinator, policy: register.RegistrationPolicy, *, oidc=None) -> None:
        self.coord = coordinator
        self.store = coordinator.store
        self.policy = policy
        #: /register/<id> and, with `oidc` (OidcOptions), the OIDC login behind it
        self.registration_pages = RegistrationPages(self.store, policy, coordinator.now, oidc)
        #: requests no real client sends (deep JSON) are worth a WARNING, but anyone can send them:
        #: one line per interval, with a count of those held back
        self.hostile_log = LogThrottle(10.0)
        #: the admin API's `/api/v1` on this listener, as Headscale serves it on server_url (set by
        #: mount_api once the API app exists; until then those paths are 503)
        self.api: Callable[..., Any] | None = None

    def mount_api(self, handler: Callable[..., Any]) -> None:
        self.api = handler

    # -- Noise (HTTP/2) requests -----------------------------------------------------------------
    async def noise(self, request, response) -> None:
        try:
            # which endpoints each client version calls (docs/clients.md); the path only, no query
            log.debug("noise %s %s (capver %d)", request.method, request.path.split("?", 1)[0],
                      request.protocol_version)
            if request.path == "/machine/register" and request.method == "POST":
                await self.register(request, response)
            elif request.path == "/machine/map" and request.method == "POST":
                await self.map(request, response)
            elif request.path == "/machine/set-dns" and request.method == "POST":
                await self.set_dns(request, response)
            elif request.path.startswith("/machine/ssh/action/") and request.method == "GET":
                await self.ssh_action(request, response)
            elif request.path.startswith(NOT_IMPLEMENTED):
                await response.send(501, b"not implemented\n", [("content-type", "text/plain")])
            else:
                await response.send(404, b"not found\n", [("content-type", "text/plain")])
        except RequestRefused as exc:
            held = self.hostile_log.ready(trio.current_time()) if exc.hostile else None
            if held is not None:
                log.warning("%s from machine %s refused: %s%s", request.path,
                            keys.MACHINE.format(request.machine_key)[:16], exc,
                            f" ({held} more since the last such line)" if held else "")
            await response.send(exc.status, (str(exc) + "\n").encode(), [("content-type", "text/plain")])

    async def ssh_action(self, request, response) -> None:
        """A Tailscale SSH `check` rule's question from the destination node (sshcheck.py)."""
        await self.coord.caught_up()
        try:
            action = await sshcheck.answer(
                self.store, request.path, self.coord.tailnet.nodes.get, request.machine_key, "https://unused",
                self.coord.now(), self.coord.wait_for_ssh_decision)
        except sshcheck.CheckRefused as exc:
            raise RequestRefused(exc.status, str(exc)) from None
        except StoreFull as exc:
            raise RequestRefused(503, str(exc)) from None
        await response.send(200, sshcheck.encode(action), [("content-type", "application/json")])

    async def register(self, request, response) -> None:
        body = _json_body(request.body)
        _check_version(body)
        try:
            req = register.RegisterRequest.from_json(body)
        except (ValueError, TypeError) as exc:
            raise RequestRefused(400, f"bad register request: {exc}") from None
        result = await register.handle(
            self.store, self.policy, req, request.machine_key, self.coord.now(), self.coord.wait_for_approval,
            self.coord, source=register.source_of(getattr(request, "peer", "")),
        )
        if result.get("MachineAuthorized"):
            _mark_registered(response)
        await response.send(200, json.dumps(result).encode(), [("content-type", "application/json")])

    async def set_dns(self, request, response) -> None:
        """ACME DNS-01 for `tailscale cert`: the node's own _acme-challenge TXT record (setdns.py)."""
        body = _json_body(request.body)
        _check_version(body)
        node = await self._node_for(body, request.machine_key)
        _mark_registered(response)
        try:
            await setdns.apply(self.coord, node, body)
        except setdns.Refused as exc:
            log.info("set-dns from node %s refused: %s", node.id, exc)
            raise RequestRefused(exc.status, str(exc)) from None
        await response.send(200, b"{}", [("content-type", "application/json")])

    async def _node_for(self, body: dict[str, Any], machine_key: bytes) -> Node:
        try:
            node_key = keys.NODE.from_json(body.get("NodeKey"))
        except keys.KeyFormatError as exc:
            raise RequestRefused(400, f"bad NodeKey: {exc}") from None
        if node_key is None:
            raise RequestRefused(400, "request has no NodeKey")
        node = await self.store.get_node_by_node_key(node_key)
        if node is None or not hmac.compare_digest(node.machine_key, machine_key):
            raise RequestRefused(404, "node not found")
        return node

    async def map(self, request, response) -> None:
        body = _json_body(request.body)
        capver = _check_version(body)
        node = await self._node_for(body, request.machine_key)
        _mark_registered(response)
        compress = "zstd" if body.get("Compress") == "zstd" else None
        updates = map_request_updates(
            node, body, lambda: {n.given_name for n in self.coord.tailnet.nodes.values()})
        if not body.get("Stream"):
            await self._map_once(node, body, updates, compress, capver, response)
            return
        # online from here (Coordinator.arrive says why); the stream's session takes that over
        self.coord.arrive(node.id)
        try:
            node = await self._apply_map_updates(node, updates)
            del body, updates  # a map stream lives for hours: keep none of its request around
            request.release_body()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.coord.depart(node.id)
            raise
        # which client versions a tailnet runs is worth one line per session (docs/clients.md)
        log.info("map session of node %s opened (capver %d)", node.id, capver)
        await self.stream(node.id, compress, response, capver)

    async def _apply_map_updates(self, node: Node, updates: dict[str, Any]) -> Node:
        if updates:
            try:
                node = await self.store.update_node(node.id, **updates)
            except TooLarge as exc:  # never stored; the client is told why in one line
                raise RequestRefused(400, f"bad map request: {exc}") from None
        await self.coord.caught_up()
        if node.id not in self.coord.tailnet.nodes:
            raise RequestRefused(404, "node not found")
        return node

    async def _map_once(self, node: Node, body: dict[str, Any], updates: dict[str, Any], compress: str | None,
                        capver: int, response) -> None:
        node = await self._apply_map_updates(node, updates)
        if body.get("OmitPeers"):
            await response.send(200, b"", [])
            return
        first, _ = self.coord.tailnet.full_map(self.coord.tailnet.nodes[node.id], self.coord.now())
        first["DERPMap"] = tailcfg.derp_map_for_capver(first["DERPMap"], capver)
        await response.send(200, frame(Message(first), compress), [("content-type", "application/json")])

    async def stream(self, node_id: int, compress: str | None, response,
                     capver: int = tailcfg.CAPVER_CERT_HASH) -> None:
        """The map stream of a node `Coordinator.arrive` was called for."""
        try:
            session, first = self.coord.open_session(node_id, compress, capver)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.coord.depart(node_id)
            raise
        keepalive = mapframe.keepalive(compress)
        try:
            await response.start(200, [("content-type", "application/json")])
            await response.write(frame(first, compress))
            del first  # the first map is the largest message; don't hold it for the session's life
            # mark_dirty is called per queued delta: no detour; keepalives come from the table's pass
            session.attach(response, self.coord.sessions.mark_dirty, self.coord.keepalive_interval())
            while True:
                messages = await session.next_messages()
                if session.closed:
                    log.debug("map session of node %s closed: %s", node_id, session.close_reason)
                    break
                started = trio.current_time()
                try:
                    if messages:
                        data = self.coord.sessions.framed_alone(messages, compress)
                        await response.write(data)
                        session.wrote(len(data))
                        del data
                    else:  # the keepalive pass could not write it at once (or nothing was for it)
                        await response.write(keepalive)
                        session.written = True
                        KEEPALIVES_SENT.inc()
                finally:
                    session.writing = False
                    took = trio.current_time() - started
                    if took > 2:
                        log.debug("map session of node %s: a write took %.1f s (slow client)", node_id, took)
            with trio.move_on_after(5):
                await response.end()
        finally:
            with trio.CancelScope(shield=True):
                await self.coord.close_session(session)

    # -- plain HTTP on the control port ----------------------------------------------------------
    async def http(self, method: str, path: str, headers, body: bytes):
        path_only = path.split("?", 1)[0]
        # /api/v2 too: Tailscale's API clients take one base URL, the server's (admin/apiv2)
        if path_only in ("/api/v1", "/api/v2") or path_only.startswith(("/api/v1/", "/api/v2/")):
            if self.api is None:
                return 503, [("content-type", "text/plain")], b"the API is starting\n"
            return await self.api(method, path, headers, body)
        if path_only == "/health" and method in ("GET", "HEAD"):
            return await self.health()
        if self.registration_pages.serves(method, path_only):
            return await self.registration_pages.http(method, path, headers, body)
        if path_only == "/" and method == "GET":
            return 200, [("content-type", "text/plain")], b"trioscale control server\n"
        if path_only == "/verify" and method == "POST":
            return await self.verify_derp_client(body)
        return 404, [("content-type", "text/plain")], b"not found\n"

    async def health(self):
        """Headscale's /health: pass only when the database answers (a cheap read, bounded), so a
        load balancer stops sending clients to a replica that cannot register or map them."""
        reason = "the database did not answer within 2s"
        with trio.move_on_after(2):
            try:
                await self.store.latest_seq()
                return 200, [("content-type", "application/json")], b'{"status":"pass"}\n'
            except Exception as exc:  # any failure of the store is the answer: not healthy
                reason = f"database: {type(exc).__name__}"
        body = json.dumps({"status": "fail", "output": reason}).encode() + b"\n"
        return 503, [("content-type", "application/json")], body

    async def verify_derp_client(self, body: bytes):
        """`derper --verify-client-url` (Headscale's /verify): may this node key use a relay?
        Request `{"NodePublic": "nodekey:…", "Source": "ip"}`, answer `{"Allow": bool}`: only
        known, unexpired nodes."""
        try:
            req = json.loads(body)
            node_key = keys.NODE.parse(req["NodePublic"]) if isinstance(req, dict) else None
        except (ValueError, KeyError, TypeError, RecursionError, keys.KeyFormatError):
            node_key = None
        if node_key is None:
            return 400, [("content-type", "text/plain")], b"bad request: want {\"NodePublic\": \"nodekey:...\"}\n"
        node = await self.store.get_node_by_node_key(node_key)
        allow = node is not None and not node.is_expired(self.coord.now())
        return 200, [("content-type", "application/json")], json.dumps({"Allow": allow}).encode()


def register_page(reg_id: str) -> bytes:
    """The page of a pending registration without OIDC: how the admin approves it."""
    return pages.admin_approval(reg_id)
