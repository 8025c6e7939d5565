"""DNS settings through the API: global nameservers, search paths, split DNS, MagicDNS.

    GET|POST       /api/v2/tailnet/{tailnet}/dns/nameservers  dns(:read)  {"dns": [...]} (POST: + "magicDNS")
    GET|POST       /api/v2/tailnet/{tailnet}/dns/searchpaths  dns(:read)  {"searchPaths": [...]}
    GET|PUT|PATCH  /api/v2/tailnet/{tailnet}/dns/split-dns    dns(:read)  {"domain": ["ns", ...]}; PATCH
                                                                          merges (null drops a domain)
    GET|POST       /api/v2/tailnet/{tailnet}/dns/preferences  dns(:read)  {"magicDNS": bool}
What the API sets is stored (a tailnet setting per kind, shared by every replica) and replaces the
configuration file's key of the same kind from then on (dnssettings.py applies it); until a kind is
set, the file's value is shown.
"""

from __future__ import annotations

from typing import Any

from trioscale.shared.domain.dnsconfig import resolver

from ..api import InvalidRequest, admin
from ... import dnssettings
from .auth import needs
from .common import PREFIX, blueprint, body, check_tailnet

MAX_ENTRIES = 64
MAX_TEXT = 253


async def _effective() -> dict[str, Any]:
    return dnssettings.effective(admin().options.dns, await dnssettings.load(admin().store))


async def _store(kind: str, value: Any) -> dict[str, Any]:
    handles = admin()
    await handles.store.set_setting(dnssettings.setting(kind), value)
    handles.log.info("API v2: DNS %s set", kind)
    await handles.caught_up()
    return await _effective()


def _texts(value: Any, field: str, check=None) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ENTRIES or \
            not all(isinstance(v, str) and 0 < len(v.strip()) <= MAX_TEXT for v in value):
        raise InvalidRequest(f"{field} must be a list of at most {MAX_ENTRIES} names or addresses")
    out = [v.strip() for v in value]
    for v in out:
        if check is not None and not check(v):
            raise InvalidRequest(f"{field}: {v!r} is neither an IP address nor a DoH URL")
    return list(dict.fromkeys(out))


def _nameserver(v: str) -> bool:
    return resolver(v) is not None


def _domain(v: str) -> bool:
    labels = v.strip(".").split(".")
    return all(0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels)


@blueprint.get(PREFIX + "/tailnet/<tailnet>/dns/nameservers")
@needs("dns", write=False)
async def get_nameservers(tailnet: str) -> Any:
    check_tailnet(tailnet)
    return {"dns": (await _effective())["nameservers"]}  # only lists: clients read it as map[string][]string


@blueprint.post(PREFIX + "/tailnet/<tailnet>/dns/nameservers")
@needs("dns", write=True)
async def set_nameservers(tailnet: str) -> Any:
    check_tailnet(tailnet)
    eff = await _store("nameservers", _texts((await body()).get("dns"), "dns", _nameserver))
    return {"dns": eff["nameservers"], "magicDNS": eff["magicDNS"]}


@blueprint.get(PREFIX + "/tailnet/<tailnet>/dns/searchpaths")
@needs("dns", write=False)
async def get_searchpaths(tailnet: str) -> Any:
    check_tailnet(tailnet)
    return {"searchPaths": (await _effective())["searchPaths"]}


@blueprint.post(PREFIX + "/tailnet/<tailnet>/dns/searchpaths")
@needs("dns", write=True)
async def set_searchpaths(tailnet: str) -> Any:
    check_tailnet(tailnet)
    paths = _texts((await body()).get("searchPaths"), "searchPaths", _domain)
    return {"searchPaths": (await _store("searchPaths", paths))["searchPaths"]}


def _split(data: dict[str, Any], *, merge_into: dict[str, list[str]] | None) -> dict[str, list[str]]:
    out = dict(merge_into or {})
    if len(data) > MAX_ENTRIES:
        raise InvalidRequest(f"at most {MAX_ENTRIES} split DNS domains")
    for domain, servers in data.items():
        name = domain.strip().strip(".").lower()
        if not _domain(name):
            raise InvalidRequest(f"split DNS: {domain!r} is not a domain name")
        if servers is None:
            out.pop(name, None)
            continue
        out[name] = _texts(servers, f"split DNS {name}", _nameserver)
        if not out[name]:
            out.pop(name)
    if len(out) > MAX_ENTRIES:
        raise InvalidRequest(f"at most {MAX_ENTRIES} split DNS domains")
    return out


@blueprint.get(PREFIX + "/tailnet/<tailnet>/dns/split-dns")
@needs("dns", write=False)
async def get_split_dns(tailnet: str) -> Any:
    check_tailnet(tailnet)
    return (await _effective())["splitDNS"]


@blueprint.put(PREFIX + "/tailnet/<tailnet>/dns/split-dns")
@needs("dns", write=True)
async def set_split_dns(tailnet: str) -> Any:
    check_tailnet(tailnet)
    return (await _store("splitDNS", _split(await body(), merge_into=None)))["splitDNS"]


@blueprint.patch(PREFIX + "/tailnet/<tailnet>/dns/split-dns")
@needs("dns", write=True)
async def update_split_dns(tailnet: str) -> Any:
    check_tailnet(tailnet)
    current = (await _effective())["splitDNS"]
    return (await _store("splitDNS", _split(await body(), merge_into=current)))["splitDNS"]


@blueprint.get(PREFIX + "/tailnet/<tailnet>/dns/preferences")
@needs("dns", write=False)
async def get_preferences(tailnet: str) -> Any:
    check_tailnet(tailnet)
    return {"magicDNS": (await _effective())["magicDNS"]}


@blueprint.post(PREFIX + "/tailnet/<tailnet>/dns/preferences")
@needs("dns", write=True)
async def set_preferences(tailnet: str) -> Any:
    check_tailnet(tailnet)
    magic = (await body()).get("magicDNS")
    if not isinstance(magic, bool):
        raise InvalidRequest("magicDNS must be true or false")
    return {"magicDNS": (await _store("magicDNS", magic))["magicDNS"]}
