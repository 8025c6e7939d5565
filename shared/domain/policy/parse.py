"""Policy document → ParsedPolicy, with Tailscale's structural validation.

Everything here is about the text alone; checks that need the tailnet (tests, sshTests) live in
tests.py. Error wording follows Tailscale's where the corpus shows it.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from . import hujson
from .errors import PolicyError
from .model import (
    ALL_PORTS,
    Alias,
    IPNetwork,
    IPSpec,
    NodeAttr,
    ParsedPolicy,
    PortRange,
    Rule,
    SSHRule,
)

TOP_LEVEL = {
    "groups", "hosts", "tagOwners", "acls", "grants", "ssh", "nodeAttrs", "autoApprovers", "tests",
    "sshTests", "randomizeClientPort", "derpMap", "disableIPv4", "OneCGNATRoute", "postures",
    "defaultSrcPosture", "ipsets", "attrConfig", "ipPool",
}
AUTOGROUPS = {
    "member", "tagged", "self", "internet", "nonroot", "admin", "owner", "it-admin",
    "network-admin", "billing-admin", "auditor", "danger-all", "shared",
}
PROTOCOLS = {
    "icmp": (1,), "igmp": (2,), "ipv4": (4,), "ip-in-ip": (4,), "tcp": (6,), "egp": (8,), "igp": (9,),
    "udp": (17,), "gre": (47,), "esp": (50,), "ah": (51,), "ipv6-icmp": (58,), "sctp": (132,),
}
_TAG_RE = re.compile(r"^tag:[A-Za-z][A-Za-z0-9_-]*$")
MAX_CHECK_PERIOD = 168 * 3600


def _err(msg: str) -> PolicyError:
    return PolicyError(msg)


def load_document(text: str | bytes | dict[str, Any]) -> dict[str, Any]:
    doc = text if isinstance(text, dict) else hujson.loads(text)
    if not isinstance(doc, dict):
        raise PolicyError("policy must be a JSON object", 1, 1)
    return doc


def parse_prefix(text: str) -> IPNetwork | None:
    try:
        if "/" in text:
            return ipaddress.ip_network(text, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError:
        return None


def parse_ports(spec: str) -> tuple[PortRange, ...]:
    if spec == "*":
        return ALL_PORTS
    out = []
    for part in spec.split(","):
        first_s, sep, last_s = part.partition("-")
        if not first_s.isdigit():
            raise _err(f'port range "{part}": invalid first integer')
        first = int(first_s)
        last = first
        if sep:
            if not last_s.isdigit():
                raise _err(f'port range "{part}": invalid last integer')
            last = int(last_s)
        if first == 0:
            raise _err(f"port range \"{part}\": first port must be >0, or use '*' for wildcard")
        if first > 65535 or last > 65535:
            raise _err(f'port range "{part}": port out of range')
        if last < first:
            raise _err(f'port range "{part}": last port must be >= first port')
        out.append(PortRange(first, last))
    return tuple(out)


def parse_proto(proto: Any) -> tuple[int, ...]:
    if proto in (None, ""):
        return ()
    text = str(proto).strip().lower()
    if text.isdigit():
        num = int(text)
        if not 0 < num < 256:
            raise _err(f'proto "{proto}" is not a valid IP protocol number')
        return (num,)
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    raise _err(f'proto "{proto}" is not a known protocol')


class _Parser:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.p = ParsedPolicy(raw=doc)

    # -- helpers -----------------------------------------------------------------------------
    def _list(self, value: Any, what: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise _err(f"{what} must be a list")
        return value

    def alias(self, text: Any, side: str) -> Alias:
        """Parse one selector. `side` is "src", "dst" or a label used in messages."""
        if not isinstance(text, str):
            raise _err(f"{side}: expected a string, got {text!r}")
        if text == "*":
            return Alias("wildcard", "*", text)
        if text.startswith("autogroup:"):
            name = text[len("autogroup:"):]
            if name not in AUTOGROUPS:
                raise _err(f'unknown autogroup "{text}"')
            return Alias("autogroup", name, text)
        if text.startswith("group:"):
            if text not in self.p.groups:
                raise _err(f'{side}={"group" if side == "src" else side} not found: "{text}"'
                           if side == "src" else f'group not found: "{text}"')
            return Alias("group", text, text)
        if text.startswith("tag:"):
            if text not in self.p.tag_owners:
                if side == "src":
                    raise _err(f'src=tag not found: "{text}"')
                raise _err(f'tag not found: "{text}"')
            return Alias("tag", text, text)
        if text.startswith("user:"):
            return Alias("user", text[len("user:"):], text)
        if "@" in text:
            return Alias("user", text, text)
        if text in self.p.hosts:
            return Alias("host", text, text)
        prefix = parse_prefix(text)
        if prefix is not None:
            return Alias("prefix", str(prefix), text)
        raise _err(f'"{text}" is not a valid host, IP or CIDR')

    # -- sections ----------------------------------------------------------------------------
    def run(self) -> ParsedPolicy:
        doc = self.doc
        for key in doc:
            if key not in TOP_LEVEL:
                raise _err(f'unknown field "{key}"')
        self.tag_owners(doc.get("tagOwners") or {})
        self.groups(doc.get("groups") or {})
        self.hosts(doc.get("hosts") or {})
        self.check_tag_owner_refs()
        self.p.has_acls = "acls" in doc
        self.p.has_grants = "grants" in doc
        for i, acl in enumerate(self._list(doc.get("acls"), "acls")):
            self.p.rules.append(self.acl(acl))
        for grant in self._list(doc.get("grants"), "grants"):
            self.p.rules.append(self.grant(grant))
        for rule in self._list(doc.get("ssh"), "ssh"):
            self.p.ssh.append(self.ssh_rule(rule))
        for attr in self._list(doc.get("nodeAttrs"), "nodeAttrs"):
            self.p.node_attrs.append(self.node_attr(attr))
        self.auto_approvers(doc.get("autoApprovers") or {})
        self.p.tests = self._list(doc.get("tests"), "tests")
        self.p.ssh_tests = self._list(doc.get("sshTests"), "sshTests")
        self.p.randomize_client_port = bool(doc.get("randomizeClientPort"))
        return self.p

    def tag_owners(self, section: Any) -> None:
        if not isinstance(section, dict):
            raise _err("tagOwners must be an object")
        for tag, owners in section.items():
            if not tag.startswith("tag:") or not _TAG_RE.match(tag):
                if tag.startswith("tag:") and (len(tag) == 4 or not tag[4].isascii() or not tag[4].isalpha()):
                    raise _err(f"tagOwners[\"{tag}\"]: tag names must start with a letter, after 'tag:'")
                raise _err(f'tagOwners["{tag}"]: invalid tag name')
            self.p.tag_owners[tag] = list(self._list(owners, f"tagOwners[{tag!r}]"))

    def groups(self, section: Any) -> None:
        if not isinstance(section, dict):
            raise _err("groups must be an object")
        for name, members in section.items():
            if not name.startswith("group:"):
                raise _err(f'group "{name}" must start with "group:"')
            members = self._list(members, f"groups[{name!r}]")
            for m in members:
                if not isinstance(m, str):
                    raise _err(f"groups[{name!r}]: members must be strings")
                if m.startswith("group:"):
                    raise _err(f'groups["{name}"]: nested groups are not allowed ("{m}")')
                if m.startswith("tag:"):
                    raise _err(f'groups["{name}"]: tags are not allowed in groups ("{m}")')
            self.p.groups[name] = members

    def hosts(self, section: Any) -> None:
        if not isinstance(section, dict):
            raise _err("hosts must be an object")
        for name, addr in section.items():
            prefix = parse_prefix(addr) if isinstance(addr, str) else None
            if prefix is None:
                raise _err(f'hosts["{name}"]: "{addr}" is not an IP address or CIDR')
            self.p.hosts[name] = prefix

    def check_tag_owner_refs(self) -> None:
        for tag, owners in self.p.tag_owners.items():
            for owner in owners:
                if isinstance(owner, str) and owner.startswith("group:") and owner not in self.p.groups:
                    raise _err(f'tagOwners["{tag}"]: group not found: "{owner}"')
                if isinstance(owner, str) and owner.startswith("tag:") and owner not in self.p.tag_owners:
                    raise _err(f'tagOwners["{tag}"]: tag not found: "{owner}"')

    def acl(self, acl: Any) -> Rule:
        if not isinstance(acl, dict):
            raise _err("acls: each rule must be an object")
        action = acl.get("action")
        if action != "accept":
            raise _err(f'action="{action}" is not supported')
        protos = parse_proto(acl.get("proto"))
        srcs = tuple(self.alias(s, "src") for s in self._list(acl.get("src"), "src"))
        dsts = []
        for d in self._list(acl.get("dst"), "dst"):
            if not isinstance(d, str):
                raise _err(f"dst: expected a string, got {d!r}")
            head, sep, port_text = d.rpartition(":")
            if not sep or not head:
                raise _err(f'dst="{d}": missing port')
            try:
                ports = parse_ports(port_text)
            except PolicyError as exc:
                raise _err(f'dst="{d}": {exc.message}') from None
            try:
                alias = self.alias(head, "dst")
            except PolicyError as exc:
                raise _err(f'dst="{d}": {exc.message}') from None
            dsts.append((alias, (IPSpec(protos, ports),)))
        self.check_self(srcs, [a for a, _ in dsts])
        return Rule(srcs=srcs, dsts=tuple(dsts), origin="acl")

    def check_self(self, srcs: tuple[Alias, ...], dsts: list[Alias], wildcard_ok: bool = True) -> None:
        if any(s.kind == "autogroup" and s.value == "self" for s in srcs):
            raise _err('"autogroup:self" not valid on the src side of a rule')
        if any(d.kind == "autogroup" and d.value == "self" for d in dsts):
            for s in srcs:
                ok = s.kind in ("user", "group") or (s.kind == "autogroup" and s.value == "member") \
                    or (s.kind == "wildcard" and wildcard_ok)
                if not ok:
                    raise _err("autogroup:self can only be used with users, groups, or supported autogroups")

    def ip_spec(self, text: Any) -> IPSpec:
        if not isinstance(text, str):
            raise _err(f"ip: expected a string, got {text!r}")
        if text == "*":
            return IPSpec((), ALL_PORTS)
        proto_s, sep, port_s = text.rpartition(":")
        if sep:
            protos = parse_proto(proto_s)
            return IPSpec(protos, parse_ports(port_s))
        return IPSpec((), parse_ports(text))

    def grant(self, grant: Any) -> Rule:
        if not isinstance(grant, dict):
            raise _err("grants: each grant must be an object")
        ip = self._list(grant.get("ip"), "ip")
        app = grant.get("app")
        if not ip and not app:
            raise _err("ip and app can not both be empty")
        if app is not None and not isinstance(app, dict):
            raise _err("app must be an object")
        for cap in app or {}:
            bare = cap.split("://", 1)[-1]
            if bare.startswith("tailscale.com/") and not _ALLOWED_TS_CAPS.match(bare):
                raise _err("capability name must not be in the tailscale.com domain")
        specs = tuple(self.ip_spec(x) for x in ip)
        srcs = tuple(self.alias(s, "src") for s in self._list(grant.get("src"), "src"))
        dst_aliases = []
        for d in self._list(grant.get("dst"), "dst"):
            if isinstance(d, str) and d in ("0.0.0.0/0", "::/0"):
                raise _err(f'dst "{d}": to allow all IP addresses, use "*" or "autogroup:internet"')
            a = self.alias(d, "dst")
            if a.kind == "autogroup" and a.value == "danger-all":
                raise _err("cannot use autogroup:danger-all as a dst")
            if a.kind == "autogroup" and a.value == "internet" and app:
                raise _err("cannot use app grants with autogroup:internet")
            dst_aliases.append(a)
        via = []
        for v in self._list(grant.get("via"), "via"):
            if not isinstance(v, str) or not v.startswith("tag:"):
                raise _err("via can only be a tag")
            if v not in self.p.tag_owners:
                raise _err(f'tag "{v}" not found')
            via.append(v)
        self.check_self(srcs, dst_aliases, wildcard_ok=False)
        return Rule(
            srcs=srcs,
            dsts=tuple((a, specs) for a in dst_aliases),
            app=dict(app) if app else None,
            via=tuple(via),
            origin="grant",
        )

    def ssh_rule(self, rule: Any) -> SSHRule:
        """Validated the way Tailscale validates (the corpus shows it is lenient: empty src/dst and
        unknown user spellings are accepted and simply match nothing)."""
        if not isinstance(rule, dict):
            raise _err("ssh: each rule must be an object")
        action = rule.get("action")
        if action in (None, ""):
            raise _err("action must be specified")
        if not isinstance(action, str) or action.strip() not in ("accept", "check"):
            raise _err(f'"{action}" is not a valid action')
        action = action.strip()
        srcs = tuple(self.alias(s, "src") for s in self._list(rule.get("src"), "src"))
        dsts = []
        for d in self._list(rule.get("dst"), "dst"):
            a = self.alias(d.strip() if isinstance(d, str) else d, "dst")
            if a.kind in ("host", "prefix"):
                raise _err(f'invalid dst "{d}"')
            dsts.append(a)
        users = self._list(rule.get("users"), "users")
        if not users:
            raise _err("users must be specified")
        # Tailscale trims each login (" root" is root), so a blank one is an empty one
        users = [u.strip() if isinstance(u, str) else u for u in users]
        for u in users:
            if not isinstance(u, str) or u in ("", "*"):
                raise _err(f'user "{u}" is not valid')
            if u.startswith("localpart:*@"):
                domain = u[len("localpart:*@"):]
                if "*" in domain:
                    raise _err(f"{domain} is not associated with this Tailnet and cannot be used in user:*@<domain> expressions")
        period = None
        if action == "check":
            period = parse_check_period(rule.get("checkPeriod"))
        accept_env = self._list(rule.get("acceptEnv"), "acceptEnv")
        for e in accept_env:
            if not isinstance(e, str) or e == "":
                raise _err("acceptEnv values cannot be empty")
        self.check_self(srcs, dsts)
        return SSHRule(action, srcs, tuple(dsts), tuple(users), period, tuple(accept_env))

    def node_attr(self, attr: Any) -> NodeAttr:
        if not isinstance(attr, dict):
            raise _err("nodeAttrs: each entry must be an object")
        targets = tuple(self.alias(t, "target") for t in self._list(attr.get("target"), "target"))
        for t in targets:
            # Tailscale refuses it (with an internal error): an attribute belongs to a node, and
            # autogroup:self names no nodes, only a relation between two of them
            if t.kind == "autogroup" and t.value == "self":
                raise _err("nodeAttrs: autogroup:self cannot be a target")
        attrs = tuple(self._list(attr.get("attr"), "attr"))
        pool = tuple(self._list(attr.get("ipPool"), "ipPool"))
        for p in pool:
            net = parse_prefix(p) if isinstance(p, str) else None
            if net is None:
                raise _err(f"IPPool({p}): not a CIDR")
            if net.version == 4 and net.overlaps(ipaddress.ip_network("100.100.100.0/24")):
                raise _err(f"IPPool({p}): network within reserved range")
        app = attr.get("app")
        return NodeAttr(targets, attrs, pool, dict(app) if isinstance(app, dict) else None)

    def auto_approvers(self, section: Any) -> None:
        if not isinstance(section, dict):
            raise _err("autoApprovers must be an object")
        for prefix_text, approvers in (section.get("routes") or {}).items():
            prefix = parse_prefix(prefix_text)
            if prefix is None:
                raise _err(f'autoApprovers: "{prefix_text}" is not a valid prefix')
            self.p.auto_routes[prefix] = tuple(self.alias(a, "autoApprovers") for a in approvers or [])
        self.p.auto_exit = tuple(self.alias(a, "autoApprovers") for a in section.get("exitNode") or [])


_ALLOWED_TS_CAPS = re.compile(r"^tailscale\.com/cap/(relay|drive|drive-sharer|kubernetes|tsidp|webui|funnel-ports.*|file-sharing-target|file-send)$")

_DURATION_RE = re.compile(r"(-?\d+(?:\.\d+)?)(h|m|s|ms)")


def parse_check_period(value: Any) -> float | None:
    """An SSH rule's checkPeriod, a Go duration string ("12h", "1h30m"; no days, unlike the
    durations of config and CLI in shared/domain/durations.py) → seconds; None when absent."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise _err(f"checkPeriod {value!r} is not a duration")
    pos, total = 0, 0.0
    neg = value.startswith("-")
    body = value[1:] if neg else value
    for m in _DURATION_RE.finditer(body):
        if m.start() != pos:
            raise _err(f'checkPeriod "{value}" is not a duration')
        pos = m.end()
        total += float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[m.group(2)]
    if pos != len(body) or not body:
        raise _err(f'checkPeriod "{value}" is not a duration')
    if neg:
        total = -total
    if total <= 0:
        raise _err(f"checkPeriod {go_duration(total)} must be a positive duration")
    if total > MAX_CHECK_PERIOD:
        raise _err(f"checkPeriod {go_duration(total)} is above the max (168h)")
    return total


def go_duration(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    s = int(abs(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{sign}{h}h{m}m{sec}s"
    if m:
        return f"{sign}{m}m{sec}s"
    return f"{sign}{sec}s"


def parse_policy(text: str | bytes | dict[str, Any]) -> ParsedPolicy:
    return _Parser(load_document(text)).run()
