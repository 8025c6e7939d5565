"""Comparison of the engine's output with a conformance case (shared by the tests and the docs).

What is compared, per node of an accepted case:

* packet_filter_rules: a multiset of rules; inside a rule SrcIPs, DstPorts, IPProto and CapGrant
  (each grant's Dsts too) are sets; CapMap values are compared as JSON. Rule order is ignored
  (the filter's effect does not depend on it).
* peers: the set of visible peer names; per peer AllowedIPs and PrimaryRoutes as sets, CapMap as
  JSON (null and {} equal).
* ssh_policy: rules as a multiset; principals and acceptEnv as sets, sshUsers as a mapping.
* self_cap_map: only capabilities the policy itself can produce are compared (see POLICY_CAPS);
  Tailscale's SaaS adds tailnet-state capabilities (is-owner, is-admin, tailnet-lock, ...) that do
  not come from the policy.
* self_allowed_ips, self_primary_routes: sets.

A case Tailscale rejected passes when the engine rejects it too (the error text is reported, and
counted separately, but not required to match).
"""

from __future__ import annotations

import json
from typing import Any

#: capabilities in self_cap_map that Tailscale's SaaS sets from tailnet state, not from the policy
SAAS_CAPS = frozenset({
    "https://tailscale.com/cap/file-sharing", "https://tailscale.com/cap/ssh",
    "https://tailscale.com/cap/tailnet-lock", "probe-udp-lifetime", "ssh-behavior-v1",
    "ssh-env-vars", "store-appc-routes", "tailnet-display-name", "https://tailscale.com/cap/is-owner",
    "https://tailscale.com/cap/is-admin", "default-auto-update",
})


def _j(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def norm_rule(r: dict[str, Any]) -> str:
    out: dict[str, Any] = {"SrcIPs": sorted(set(r.get("SrcIPs") or []))}
    if r.get("DstPorts"):
        out["DstPorts"] = sorted({_j(d) for d in r["DstPorts"]})
    if r.get("IPProto"):
        out["IPProto"] = sorted(set(r["IPProto"]))
    if r.get("CapGrant"):
        out["CapGrant"] = sorted(
            _j({"Dsts": sorted(set(g.get("Dsts") or [])), "CapMap": g.get("CapMap")}) for g in r["CapGrant"]
        )
    return _j(out)


def norm_rules(rules: list[dict[str, Any]] | None) -> list[str]:
    return sorted(norm_rule(r) for r in rules or [])


def norm_ssh(p: dict[str, Any] | None) -> list[str]:
    rules = (p or {}).get("rules") or []
    out = []
    for r in rules:
        d = dict(r)
        d["principals"] = sorted(_j(x) for x in r.get("principals") or [])
        if "acceptEnv" in r:
            d["acceptEnv"] = sorted(r.get("acceptEnv") or [])
        out.append(_j(d))
    return sorted(out)


def norm_caps(c: dict[str, Any] | None) -> str:
    return _j({k: v for k, v in (c or {}).items() if k not in SAAS_CAPS})


def norm_peers(peers: list[dict[str, Any]]) -> dict[str, str]:
    return {
        p["name"]: _j({
            "AllowedIPs": sorted(set(p.get("AllowedIPs") or [])),
            "PrimaryRoutes": sorted(set(p.get("PrimaryRoutes") or [])),
            "CapMap": p.get("CapMap") or None,
        })
        for p in peers
    }


FIELDS = ("packet_filter_rules", "peers", "ssh_policy", "self_cap_map", "self_allowed_ips", "self_primary_routes")


def diff_node(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Names of the fields that differ, with a short explanation each."""
    problems = []
    if norm_rules(want.get("packet_filter_rules")) != norm_rules(got.get("packet_filter_rules")):
        w = set(norm_rules(want.get("packet_filter_rules")))
        g = set(norm_rules(got.get("packet_filter_rules")))
        problems.append(f"packet_filter_rules: missing {sorted(w - g)} extra {sorted(g - w)}")
    wp, gp = norm_peers(want.get("peers") or []), norm_peers(got.get("peers") or [])
    if wp != gp:
        detail = [f"missing {sorted(set(wp) - set(gp))}", f"extra {sorted(set(gp) - set(wp))}"]
        detail += [f"{n}: want {wp[n]} got {gp[n]}" for n in sorted(set(wp) & set(gp)) if wp[n] != gp[n]]
        problems.append("peers: " + "; ".join(detail))
    if norm_ssh(want.get("ssh_policy")) != norm_ssh(got.get("ssh_policy")):
        problems.append(f"ssh_policy: want {norm_ssh(want.get('ssh_policy'))} got {norm_ssh(got.get('ssh_policy'))}")
    if norm_caps(want.get("self_cap_map")) != norm_caps(got.get("self_cap_map")):
        problems.append(f"self_cap_map: want {norm_caps(want.get('self_cap_map'))} got {norm_caps(got.get('self_cap_map'))}")
    for f in ("self_allowed_ips", "self_primary_routes"):
        if sorted(set(want.get(f) or [])) != sorted(set(got.get(f) or [])):
            problems.append(f"{f}: want {sorted(want.get(f) or [])} got {sorted(got.get(f) or [])}")
    return problems


def compare_case(case: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Empty list = the engine matches the case."""
    if not case["accepted"]:
        if result["accepted"]:
            return [f"Tailscale rejected the policy ({_j(case.get('error_body'))}) but the engine accepted it"]
        return []
    if not result["accepted"]:
        return [f"Tailscale accepted the policy but the engine rejected it: {result['error']}"]
    problems = []
    for name, want in sorted(case["expect"].items()):
        got = result.get(name)
        if got is None:
            problems.append(f"{name}: node missing from the engine's output")
            continue
        problems += [f"{name}: {p}" for p in diff_node(want, got)]
    return problems
