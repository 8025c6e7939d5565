"""Evaluation of a policy's `tests` and `sshTests`: a failing test rejects the policy.

Tests are answered from the compiled rules, by identity: a test's `src` (a user, group, tag, host
alias or IP) matches a rule's source selector when it is that identity or one of its nodes' addresses
lies in the selector; a test's destination is resolved to addresses (`tests`) or nodes (`sshTests`).
Tailscale's conditions for a well-formed test (as the corpus shows them): a destination is a single
address (no CIDR, no `*`, no autogroup) with a single port; users exist; accept/deny lists are not
both empty. Any failure raises PolicyError("test(s) failed") (or the specific structural message).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import PolicyError
from .model import Alias
from .parse import PROTOCOLS
from .ssh import check_tailnet_domains

if TYPE_CHECKING:  # pragma: no cover
    from .compile import CompiledPolicy

FAILED = "test(s) failed"
DEFAULT_PROTOS = frozenset({6, 17, 1, 58})


class _Fail(Exception):
    pass


@dataclass
class _Src:
    user_id: int | None = None
    tags: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    node_ids: set[int] = field(default_factory=set)
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=list)
    is_user: bool = False
    is_tag: bool = False


def _node_by_ip(c: "CompiledPolicy", ip: Any) -> int | None:
    index = c._node_cache.get(("ip-index", 0))
    if index is None:  # address -> node, built once per tailnet state (dropped with the caches)
        index = {}
        for nid, st in c.net.nodes.items():
            for a in st.addrs:
                index.setdefault(a.network_address, nid)
        c._node_cache[("ip-index", 0)] = index
    return index.get(ip)


def _resolve_src(c: "CompiledPolicy", text: Any) -> _Src:
    p = c.p
    assert p is not None
    if not isinstance(text, str) or not text:
        raise _Fail()
    src = _Src()
    if text.startswith("tag:"):
        if text not in p.tag_owners:
            raise _Fail()
        src.is_tag = True
        src.tags = frozenset({text})
        src.node_ids = set(c.net.by_tag.get(text, set()))
    elif text.startswith("group:"):
        if text not in p.groups:
            raise _Fail()
        src.groups = frozenset({text})
        for m in p.groups[text]:
            src.node_ids |= c.user_nodes(m)
        src.is_user = True
    elif text.startswith("autogroup:") or text == "*":
        raise _Fail()
    elif "@" in text:
        uid = c.net.user_id_for(text)
        if uid is None:
            raise _Fail()
        src.is_user = True
        src.user_id = uid
        src.node_ids = set(c.net.by_user.get(uid, set()))
    else:
        net = p.hosts.get(text)
        if net is None:
            try:
                net = ipaddress.ip_network(ipaddress.ip_address(text))
            except ValueError:
                raise _Fail() from None
        if net.prefixlen != net.max_prefixlen:
            raise _Fail()
        ip = net.network_address
        src.ips = [ip]
        nid = _node_by_ip(c, ip)
        if nid is not None:
            info = c.net.nodes[nid].info
            src.node_ids = {nid}
            src.tags = frozenset(info.tags)
            if not info.tags:
                src.user_id = info.user_id
                src.is_user = True
            else:
                src.is_tag = True
        return src
    for nid in src.node_ids:
        src.ips.extend(a.network_address for a in c.net.nodes[nid].addrs)
    return src


def _user_in_group(c: "CompiledPolicy", uid: int | None, group: str) -> bool:
    if uid is None or c.p is None:
        return False
    return any(c.net.user_id_for(m) == uid for m in c.p.groups.get(group, []))


def _src_matches(c: "CompiledPolicy", src: _Src, aliases: tuple[Alias, ...]) -> bool:
    for a in aliases:
        k, v = a.kind, a.value
        if k == "wildcard" or (k == "autogroup" and v == "danger-all"):
            return True
        if k == "user" and src.user_id is not None and c.net.user_id_for(v) == src.user_id:
            return True
        if k == "group" and (v in src.groups or _user_in_group(c, src.user_id, v)):
            return True
        if k == "tag" and v in src.tags:
            return True
        if k == "autogroup" and v == "member" and src.is_user:
            return True
        if k == "autogroup" and v == "tagged" and src.is_tag:
            return True
        if k in ("host", "prefix"):
            net = c.p.hosts[v] if k == "host" else ipaddress.ip_network(v)  # type: ignore[union-attr]
            if any(ip.version == net.version and ip in net for ip in src.ips):
                return True
        if src.node_ids and k in ("tag", "user", "group", "autogroup"):
            if src.node_ids & c.resolve([a]).nodes:
                return True
    return False


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise _Fail()
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise _Fail()
    return host, port


def _resolve_dst_ips(c: "CompiledPolicy", host: str) -> list[Any]:
    p = c.p
    assert p is not None
    if host.startswith("tag:"):
        if host not in p.tag_owners:
            raise _Fail()
        nodes = c.net.by_tag.get(host, set())
    elif host.startswith("group:"):
        if host not in p.groups:
            raise _Fail()
        nodes = set()
        for m in p.groups[host]:
            nodes |= c.user_nodes(m)
    elif host.startswith("autogroup:") or host == "*":
        raise _Fail()
    elif "@" in host:
        uid = c.net.user_id_for(host)
        if uid is None:
            raise _Fail()
        nodes = c.net.by_user.get(uid, set())
    else:
        net = p.hosts.get(host)
        if net is None:
            try:
                net = ipaddress.ip_network(ipaddress.ip_address(host))
            except ValueError:
                raise _Fail() from None
        if net.prefixlen != net.max_prefixlen:
            raise _Fail()
        return [net.network_address]
    ips = []
    for nid in nodes:
        ips.extend(a.network_address for a in c.net.nodes[nid].addrs)
    if not ips:
        raise _Fail()
    return ips


def _dst_matches(c: "CompiledPolicy", src: _Src, alias: Alias, ip: Any) -> bool:
    k, v = alias.kind, alias.value
    if k == "wildcard" or (k == "autogroup" and v == "danger-all"):
        return True
    if k in ("host", "prefix"):
        net = c.p.hosts[v] if k == "host" else ipaddress.ip_network(v)  # type: ignore[union-attr]
        return ip.version == net.version and ip in net
    if k == "autogroup" and v == "internet":
        from .compile import INTERNET

        return any(ip.version == n.version and ip in n for n in INTERNET)
    nid = _node_by_ip(c, ip)
    if nid is None:
        return False
    if k == "autogroup" and v == "self":
        info = c.net.nodes[nid].info
        return not info.tags and src.user_id is not None and info.user_id == src.user_id
    return nid in c.resolve([alias]).nodes


def _allowed(c: "CompiledPolicy", src: _Src, ip: Any, port: int, proto: int) -> bool:
    for rule in c._test_rules:
        if not _src_matches(c, src, rule.srcs):
            continue
        for alias, specs in rule.dsts:
            for spec in specs:
                protos = set(spec.protos) if spec.protos else DEFAULT_PROTOS
                if proto not in protos:
                    continue
                if not any(pr.first <= port <= pr.last for pr in spec.ports):
                    continue
                if _dst_matches(c, src, alias, ip):
                    return True
    return False


def _run_test(c: "CompiledPolicy", test: Any) -> None:
    if not isinstance(test, dict):
        raise _Fail()
    src = _resolve_src(c, test.get("src"))
    accept, deny = test.get("accept") or [], test.get("deny") or []
    if not accept and not deny:
        raise _Fail()
    proto_text = test.get("proto")
    if proto_text in (None, ""):
        proto = 6
    elif str(proto_text).isdigit():
        proto = int(proto_text)
    elif str(proto_text).lower() in PROTOCOLS:
        proto = PROTOCOLS[str(proto_text).lower()][0]
    else:
        raise _Fail()
    for want, dsts in ((True, accept), (False, deny)):
        for d in dsts:
            if not isinstance(d, str):
                raise _Fail()
            host, port_text = _split_host_port(d)
            if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
                raise _Fail()
            port = int(port_text)
            for ip in _resolve_dst_ips(c, host):
                if _allowed(c, src, ip, port, proto) != want:
                    raise _Fail()


# -- sshTests ----------------------------------------------------------------------------------


def _ssh_dst_nodes(c: "CompiledPolicy", text: Any) -> set[int]:
    p = c.p
    assert p is not None
    if not isinstance(text, str):
        raise _Fail()
    if text.startswith("tag:"):
        if text not in p.tag_owners:
            raise PolicyError(f'SSH tests dst contains unknown tag "{text}"')
        return set(c.net.by_tag.get(text, set()))
    if text.startswith("autogroup:") or text == "*":
        raise PolicyError(f'SSH tests dst contains disallowed element "{text}"')
    if text.startswith("group:"):
        if text not in p.groups:
            raise _Fail()
        out: set[int] = set()
        for m in p.groups[text]:
            out |= c.user_nodes(m)
        return out
    if "@" in text:
        uid = c.net.user_id_for(text)
        if uid is None:
            raise _Fail()
        return set(c.net.by_user.get(uid, set()))
    net = p.hosts.get(text)
    if net is None:
        if "/" in text:
            raise PolicyError(f'SSH tests dst contains disallowed element "{text}"')
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise _Fail() from None
        if ip.version == 6:
            raise _Fail()
        net = ipaddress.ip_network(ip)
    if net.prefixlen != net.max_prefixlen:
        raise PolicyError(f'SSH tests dst contains disallowed element "{text}"')
    nid = _node_by_ip(c, net.network_address)
    if nid is None:
        raise _Fail()
    return {nid}


def ssh_user_matches(rule_users: tuple[str, ...], login: str, src_email: str = "") -> bool:
    for u in rule_users:
        if u == login:
            return True
        if u == "autogroup:nonroot" and login != "root":
            return True
        if u.startswith("localpart:*@") and src_email:
            local, _, domain = src_email.partition("@")
            if domain.lower() == u[len("localpart:*@"):].lower() and login == local:
                return True
    return False


def _ssh_dst_match(c: "CompiledPolicy", src: _Src, aliases: tuple[Alias, ...], nid: int) -> bool:
    info = c.net.nodes[nid].info
    for a in aliases:
        if a.kind == "autogroup" and a.value == "self":
            if not info.tags and src.user_id is not None and info.user_id == src.user_id:
                return True
        elif nid in c.resolve([a]).nodes or a.kind == "wildcard":
            return True
    return False


def _ssh_action(c: "CompiledPolicy", src: _Src, nid: int, login: str) -> str | None:
    email = ""
    if src.user_id is not None and src.user_id in c.net.users:
        email = c.net.users[src.user_id].email
    for rule in c.p.ssh:  # type: ignore[union-attr]
        if not _src_matches(c, src, rule.srcs):
            continue
        if not _ssh_dst_match(c, src, rule.dsts, nid):
            continue
        if ssh_user_matches(rule.users, login, email):
            return rule.action
    return None


def _run_ssh_test(c: "CompiledPolicy", test: Any) -> None:
    if not isinstance(test, dict):
        raise _Fail()
    dsts = test.get("dst") or []
    nodes: set[int] = set()
    for d in dsts:
        nodes |= _ssh_dst_nodes(c, d)
    for u in test.get("accept") or []:
        if u == "*":
            raise PolicyError('user "*" is not valid')
    src = _resolve_src(c, test.get("src"))
    accept, deny, check = test.get("accept") or [], test.get("deny") or [], test.get("check") or []
    if not accept and not deny and not check:
        raise _Fail()
    if set(accept) & set(deny) or set(check) & set(deny):
        raise _Fail()
    if not nodes:
        raise _Fail()
    for want, users in (("accept", accept), ("check", check), (None, deny)):
        for login in users:
            if not isinstance(login, str) or not login:
                raise _Fail()
            for nid in nodes:
                if _ssh_action(c, src, nid, login) != want:
                    raise _Fail()


def run_policy_tests(compiled: "CompiledPolicy") -> None:
    """Raise PolicyError when the policy does not fit the tailnet (an SSH domain that is not the
    tailnet's) or one of its tests or sshTests fails; the failing test is named."""
    p = compiled.p
    if p is None:
        return
    check_tailnet_domains(compiled)
    for section, tests, runner in (("tests", p.tests, _run_test), ("sshTests", p.ssh_tests, _run_ssh_test)):
        for i, test in enumerate(tests):
            try:
                runner(compiled, test)
            except _Fail:
                shown = json.dumps(test, separators=(", ", ": "))
                if len(shown) > 300:
                    shown = shown[:297] + "..."
                raise PolicyError(f"{FAILED}: {section}[{i}] {shown} does not hold") from None
