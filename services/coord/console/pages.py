"""The console's pages and their forms. A page reads through the admin API (or, for what the API has
no route for, the store and the coordinator); a form posts here, the action is one admin API
request (apicall.py), and the browser is sent back to the page (post, redirect, get) with the API's
own words when it refused. A new key is kept in the session for the next page only: shown once.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from quart import Blueprint, Response, redirect, render_template, request

from trioscale.shared.domain.policy import Policy, PolicyError
from trioscale.shared.model import utcnow

from .apicall import ApiAnswer, path_part
from .context import PREFIX, console, session

__all__ = ["blueprint", "NAV"]

blueprint = Blueprint("console_pages", __name__)

NAV = (
    ("nodes", "Nodes"), ("registrations", "Pending"), ("users", "Users"), ("preauthkeys", "Pre-auth keys"),
    ("apikeys", "API keys"), ("policy", "Policy"), ("derp", "DERP"), ("dns", "DNS"),
)
_ID = re.compile(r"^[0-9]{1,19}$")
_REG_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_WHERE = re.compile(r"line (\d+), column (\d+)")


# ---------------------------------------------------------------------------------------------
# rendering


def ago(value: str | None) -> str:
    """An API timestamp as people read it on a list: '3 min ago', 'in 2 days', '—'."""
    if not value:
        return "—"
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.year <= 1:
        return "—"
    delta = (when - utcnow()).total_seconds()
    later, secs = delta > 0, abs(delta)
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            n = int(secs // size)
            text = f"{n} {unit}{'s' if unit == 'day' and n != 1 else ''}"
            return f"in {text}" if later else f"{text} ago"
    return "in a moment" if later else "just now"


def exact(value: str | None) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


@blueprint.app_template_filter("ago")
def _ago_filter(value: str | None) -> str:
    return ago(value)


@blueprint.app_template_filter("exact")
def _exact_filter(value: str | None) -> str:
    return exact(value)


async def page(name: str, title: str, topics: str, *, above: str | None = None, status: int = 200,
               **context: Any) -> Response:
    """The page `name`, or (`?fragment=live`) only its live part, which the script fetches again when
    the event stream names one of `topics`."""
    mine = session()
    common = {"csrf": mine.csrf, "who": mine.who, "prefix": PREFIX, **context}
    if request.args.get("fragment") == "live":
        return Response(await render_template(f"_{name}.html", **common), status=status, mimetype="text/html")
    html = await render_template(
        "page.html", title=title, nav=NAV, active=name.split("_")[0], topics=topics, fragment=f"_{name}.html",
        above=above, notices=mine.take_notices(), secret=mine.take_secret(), **common)
    return Response(html, status=status, mimetype="text/html")


def _bounced_fragment(to: str) -> Response | None:
    """A live fragment's fetch whose page is gone (its node deleted meanwhile) goes to the other
    page's fragment and notes nothing: the script cannot show a notice, and a whole page rendered
    for the fetch would take the notices the browser's next page load should show."""
    if request.args.get("fragment") != "live":
        return None
    return redirect(PREFIX + to + "?fragment=live", 303)


def back(to: str, answer: ApiAnswer | None = None, done: str = "") -> Response:
    """Note what happened for the next page and go there."""
    bounced = _bounced_fragment(to)
    if bounced is not None:
        return bounced
    mine = session()
    if answer is not None and not answer.ok:
        mine.notice("error", answer.error)
    elif done:
        mine.notice("ok", done)
    return redirect(PREFIX + to, 303)


def refuse(to: str, message: str) -> Response:
    bounced = _bounced_fragment(to)
    if bounced is not None:
        return bounced
    session().notice("error", message)
    return redirect(PREFIX + to, 303)


async def form() -> Any:
    return await request.form


def listed(text: str) -> list[str]:
    """A list typed into one field: commas or spaces between the items."""
    return [t for t in re.split(r"[\s,]+", text.strip()) if t]


async def acted(what: str, answer: ApiAnswer) -> ApiAnswer:
    c = console()
    if answer.ok:
        c.log.info("console: %s: %s", session().who, what)
    return answer


async def _users() -> list[dict[str, Any]]:
    answer = await console().api.get("/api/v1/user")
    return answer.body.get("users", []) if answer.ok else []


@blueprint.get(PREFIX + "/")
async def home() -> Response:
    return redirect(PREFIX + "/nodes", 303)


# ---------------------------------------------------------------------------------------------
# users


@blueprint.get(PREFIX + "/users")
async def users_page() -> Response:
    c = console()
    nodes = (await c.api.get("/api/v1/node")).body.get("nodes", [])
    owned: dict[str, int] = {}
    for n in nodes:
        uid = (n.get("user") or {}).get("id")
        owned[uid] = owned.get(uid, 0) + 1
    return await page("users", "Users", "users nodes", above="users_forms.html", users=await _users(), owned=owned)


@blueprint.post(PREFIX + "/users")
async def create_user() -> Response:
    f = await form()
    body = {"name": f.get("name", "").strip()}
    for field, key in (("display_name", "displayName"), ("email", "email")):
        if f.get(field, "").strip():
            body[key] = f[field].strip()
    answer = await acted(f"created user {body['name']}", await console().api.post("/api/v1/user", body))
    return back("/users", answer, f"User {body['name']} created.")


@blueprint.post(PREFIX + "/users/<uid>/rename")
async def rename_user(uid: str) -> Response:
    if not _ID.match(uid):
        return refuse("/users", "no such user")
    name = (await form()).get("name", "").strip()
    answer = await acted(f"renamed user {uid} to {name}",
                         await console().api.post(f"/api/v1/user/{uid}/rename/{path_part(name)}"))
    return back("/users", answer, f"User renamed to {name}.")


@blueprint.post(PREFIX + "/users/<uid>/delete")
async def delete_user(uid: str) -> Response:
    if not _ID.match(uid):
        return refuse("/users", "no such user")
    answer = await acted(f"deleted user {uid}", await console().api.delete(f"/api/v1/user/{uid}"))
    return back("/users", answer, "User deleted.")


# ---------------------------------------------------------------------------------------------
# nodes


async def _client_versions() -> dict[str, str]:
    """Node id → the client's version (Hostinfo.IPNVersion), which the API's node shape lacks."""
    nodes = await console().store.list_nodes()
    return {str(n.id): str((n.hostinfo or {}).get("IPNVersion", "")) for n in nodes}


@blueprint.get(PREFIX + "/nodes")
async def nodes_page() -> Response:
    c = console()
    answer = await c.api.get("/api/v1/node")
    return await page("nodes", "Nodes", "nodes", nodes=answer.body.get("nodes", []), versions=await _client_versions(),
                      error="" if answer.ok else answer.error)


@blueprint.get(PREFIX + "/nodes/<nid>")
async def node_page(nid: str) -> Response:
    c = console()
    if not _ID.match(nid):
        return refuse("/nodes", "no such node")
    answer = await c.api.get(f"/api/v1/node/{nid}")
    if not answer.ok:
        return back("/nodes", answer)
    shares = (await c.api.get("/api/v1/shares", {"node": nid})).body.get("shares", [])
    node = answer.body["node"]
    routes = sorted(set(node.get("availableRoutes", [])) | set(node.get("approvedRoutes", [])))
    return await page("node", node.get("givenName") or f"Node {nid}", "nodes", node=node, shares=shares,
                      users=await _users(), routes=routes, version=(await _client_versions()).get(nid, ""))


async def _node_action(nid: str, what: str, call) -> Response:
    if not _ID.match(nid):
        return refuse("/nodes", "no such node")
    answer = await acted(f"{what} (node {nid})", await call())
    return back(f"/nodes/{nid}", answer, what[0].upper() + what[1:] + ".")


@blueprint.post(PREFIX + "/nodes/<nid>/rename")
async def rename_node(nid: str) -> Response:
    name = (await form()).get("name", "").strip()
    return await _node_action(nid, f"renamed to {name}",
                              lambda: console().api.post(f"/api/v1/node/{nid}/rename/{path_part(name)}"))


@blueprint.post(PREFIX + "/nodes/<nid>/tags")
async def tag_node(nid: str) -> Response:
    tags = listed((await form()).get("tags", ""))
    return await _node_action(nid, f"tags set to {', '.join(tags) or '(none)'}",
                              lambda: console().api.post(f"/api/v1/node/{nid}/tags", {"tags": tags}))


@blueprint.post(PREFIX + "/nodes/<nid>/expire")
async def expire_node(nid: str) -> Response:
    never = (await form()).get("when") == "never"
    query = {"disableExpiry": "true"} if never else None
    return await _node_action(nid, "expiry disabled" if never else "expired now",
                              lambda: console().api.post(f"/api/v1/node/{nid}/expire", query=query))


@blueprint.post(PREFIX + "/nodes/<nid>/routes")
async def approve_routes(nid: str) -> Response:
    routes = (await form()).getlist("route")[:256]
    return await _node_action(nid, f"approved routes {', '.join(routes) or '(none)'}",
                              lambda: console().api.post(f"/api/v1/node/{nid}/approve_routes", {"routes": routes}))


@blueprint.post(PREFIX + "/nodes/<nid>/share")
async def share_node(nid: str) -> Response:
    user = (await form()).get("user", "")
    return await _node_action(nid, f"shared with user {user}",
                              lambda: console().api.post(f"/api/v1/node/{nid}/share", {"user": user}))


@blueprint.post(PREFIX + "/nodes/<nid>/unshare")
async def unshare_node(nid: str) -> Response:
    user = (await form()).get("user", "")
    return await _node_action(nid, f"no longer shared with user {user}",
                              lambda: console().api.delete(f"/api/v1/node/{nid}/share/{path_part(user)}"))


@blueprint.post(PREFIX + "/nodes/<nid>/delete")
async def delete_node(nid: str) -> Response:
    if not _ID.match(nid):
        return refuse("/nodes", "no such node")
    answer = await acted(f"deleted node {nid}", await console().api.delete(f"/api/v1/node/{nid}"))
    if not answer.ok:
        return back(f"/nodes/{nid}", answer)
    return back("/nodes", answer, "Node deleted.")


# ---------------------------------------------------------------------------------------------
# pending registrations (the API has no list of them: the store's)


@blueprint.get(PREFIX + "/registrations")
async def registrations_page() -> Response:
    pending = await console().store.list_pending_registrations()
    rows = [{"id": r.id, "hostname": str((r.hostinfo or {}).get("Hostname", "")),
             "os": str((r.hostinfo or {}).get("OS", "")), "version": str((r.hostinfo or {}).get("IPNVersion", "")),
             "created": r.created_at.isoformat()} for r in pending]
    return await page("registrations", "Pending registrations", "registrations users", registrations=rows,
                      users=await _users())


@blueprint.post(PREFIX + "/registrations/<rid>/approve")
async def approve_registration(rid: str) -> Response:
    if not _REG_ID.match(rid):
        return refuse("/registrations", "no such registration")
    user = (await form()).get("user", "")
    answer = await acted(f"approved registration {rid} for user {user}",
                         await console().api.post("/api/v1/auth/register", {"user": user, "authId": rid}))
    if answer.ok and answer.body.get("node"):
        node = answer.body["node"]
        return back(f"/nodes/{node['id']}", answer, f"Approved: {node.get('givenName')} joined.")
    return back("/registrations", answer, "Approved.")


# ---------------------------------------------------------------------------------------------
# pre-auth keys


@blueprint.get(PREFIX + "/preauthkeys")
async def preauthkeys_page() -> Response:
    answer = await console().api.get("/api/v1/preauthkey")
    return await page("preauthkeys", "Pre-auth keys", "preauthkeys", above="preauthkeys_forms.html",
                      keys=answer.body.get("preAuthKeys", []), users=await _users())


@blueprint.post(PREFIX + "/preauthkeys")
async def create_preauthkey() -> Response:
    f = await form()
    body = {"user": f.get("user", ""), "reusable": f.get("reusable") == "on", "ephemeral": f.get("ephemeral") == "on",
            "expiration": f.get("expiration", "").strip(), "aclTags": listed(f.get("tags", ""))}
    answer = await acted(f"created a pre-auth key for user {body['user']}",
                         await console().api.post("/api/v1/preauthkey", body))
    if answer.ok:
        session().secret = ("New pre-auth key", answer.body["preAuthKey"]["key"])
    return back("/preauthkeys", answer, "Pre-auth key created.")


@blueprint.post(PREFIX + "/preauthkeys/<kid>/expire")
async def expire_preauthkey(kid: str) -> Response:
    if not _ID.match(kid):
        return refuse("/preauthkeys", "no such key")
    answer = await acted(f"expired pre-auth key {kid}", await console().api.post("/api/v1/preauthkey/expire", {"id": kid}))
    return back("/preauthkeys", answer, "Pre-auth key expired.")


@blueprint.post(PREFIX + "/preauthkeys/<kid>/delete")
async def delete_preauthkey(kid: str) -> Response:
    if not _ID.match(kid):
        return refuse("/preauthkeys", "no such key")
    answer = await acted(f"deleted pre-auth key {kid}", await console().api.delete("/api/v1/preauthkey", {"id": kid}))
    return back("/preauthkeys", answer, "Pre-auth key deleted.")


# ---------------------------------------------------------------------------------------------
# API keys


@blueprint.get(PREFIX + "/apikeys")
async def apikeys_page() -> Response:
    answer = await console().api.get("/api/v1/apikey")
    return await page("apikeys", "API keys", "apikeys", above="apikeys_forms.html",
                      keys=answer.body.get("apiKeys", []), mine=session().api_key_prefix)


@blueprint.post(PREFIX + "/apikeys")
async def create_apikey() -> Response:
    expiration = (await form()).get("expiration", "").strip()
    answer = await acted("created an API key", await console().api.post("/api/v1/apikey", {"expiration": expiration}))
    if answer.ok:
        session().secret = ("New API key", answer.body["apiKey"])
    return back("/apikeys", answer, "API key created.")


@blueprint.post(PREFIX + "/apikeys/<kid>/expire")
async def expire_apikey(kid: str) -> Response:
    if not _ID.match(kid):
        return refuse("/apikeys", "no such key")
    answer = await acted(f"expired API key {kid}", await console().api.post("/api/v1/apikey/expire", {"id": kid}))
    return back("/apikeys", answer, "API key expired.")


@blueprint.post(PREFIX + "/apikeys/<kid>/delete")
async def delete_apikey(kid: str) -> Response:
    if not _ID.match(kid):
        return refuse("/apikeys", "no such key")
    answer = await acted(f"deleted API key {kid}", await console().api.delete("/api/v1/apikey", {"id": kid}))
    return back("/apikeys", answer, "API key deleted.")


# ---------------------------------------------------------------------------------------------
# the policy


def tests_summary(text: str) -> str:
    """What a policy the API accepted holds of tests (they all passed: the API refuses otherwise)."""
    try:
        policy = Policy.parse(text)
    except PolicyError:
        return ""
    n, s = len(policy.parsed.tests), len(policy.parsed.ssh_tests)
    if not n and not s:
        return "The policy has no tests."
    return f"All {n} test{'s' if n != 1 else ''} and {s} sshTest{'s' if s != 1 else ''} pass."


async def _policy_page(text: str | None = None, *, error: str = "", checked: str = "", status: int = 200) -> Response:
    answer = await console().api.get("/api/v1/policy")
    current = answer.body if answer.ok else {"policy": "", "mode": console().admin_options.policy.mode}
    where = _WHERE.search(error)
    if where:  # the page shows the position on its own
        error = error.replace(where.group(0) + ": ", "", 1)
    return await page(
        "policy", "Policy", "policy", above="policy_forms.html", status=status, current=current,
        text=current.get("policy", "") if text is None else text, error=error, checked=checked,
        line=int(where.group(1)) if where else None, column=int(where.group(2)) if where else None,
        summary=tests_summary(current.get("policy", "")) if text is None and current.get("policy") else "")


@blueprint.get(PREFIX + "/policy")
async def policy_page() -> Response:
    return await _policy_page()


@blueprint.post(PREFIX + "/policy")
async def policy_post() -> Response:
    f = await form()
    text = f.get("policy", "").replace("\r\n", "\n")
    c = console()
    if f.get("action") == "save":
        answer = await acted("stored a new policy", await c.api.put("/api/v1/policy", {"policy": text}))
        if not answer.ok:
            return await _policy_page(text, error=answer.error, status=422)
        return back("/policy", answer, f"Policy version {answer.body.get('version')} saved. {tests_summary(text)}")
    answer = await c.api.post("/api/v1/policy/check", {"policy": text})
    if not answer.ok:
        return await _policy_page(text, error=answer.error, status=422)
    return await _policy_page(text, checked=f"The policy is valid (not saved yet). {tests_summary(text)}")


# ---------------------------------------------------------------------------------------------
# the DERP fleet and DNS (configuration and the relays' heartbeats: nothing to edit here)


@blueprint.get(PREFIX + "/derp")
async def derp_page() -> Response:
    c = console()
    relays = {(r.region_id, r.name): r for r in await c.store.list_relays()}
    derp_map = c.coordinator.tailnet.settings.derp_map if c.coordinator is not None else {"Regions": {}}
    regions = []
    for rid, region in sorted((derp_map.get("Regions") or {}).items(), key=lambda kv: int(kv[0])):
        nodes = []
        for n in region.get("Nodes") or []:
            relay = relays.get((int(rid), n.get("Name", "")))
            nodes.append({**n, "heartbeat": relay.heartbeat_at.isoformat() if relay else None})
        regions.append({"id": int(rid), "code": region.get("RegionCode", ""), "name": region.get("RegionName", ""),
                        "nodes": nodes})
    return await page("derp", "DERP fleet", "derp", regions=regions, coordinator=c.coordinator is not None)


DNS_API = "/api/v2/tailnet/-/dns"


@blueprint.get(PREFIX + "/dns")
async def dns_page() -> Response:
    """What clients get now (the coordinator's DNSConfig), and the settings the API sets (Tailscale's
    API v2 DNS routes: they replace the configuration file's keys of the same kind once set)."""
    c = console()
    dns = c.coordinator.tailnet.settings.dns_config if c.coordinator is not None else None
    base = c.coordinator.tailnet.settings.base_domain if c.coordinator is not None else ""
    settings: dict[str, Any] = {}
    for part, key in (("nameservers", "dns"), ("searchpaths", "searchPaths"), ("preferences", "magicDNS")):
        answer = await c.api.get(f"{DNS_API}/{part}")
        settings[key] = answer.body.get(key) if answer.ok else None
    split = await c.api.get(f"{DNS_API}/split-dns")
    settings["split"] = split.body if split.ok else {}
    return await page("dns", "DNS", "dns", above="dns_forms.html", dns=dns or {}, base_domain=base,
                      coordinator=c.coordinator is not None, settings=settings)


@blueprint.post(PREFIX + "/dns")
async def dns_post() -> Response:
    """One form, the API's four settings in turn; the first refusal stops (what came before it stays set)."""
    c = console()
    f = await form()
    split: dict[str, list[str]] = {}
    for line in f.get("split", "").splitlines()[:64]:
        if line.strip():
            domain, _, servers = line.strip().partition(" ")
            split[domain.rstrip(":")] = listed(servers)
    steps = (
        ("post", "preferences", {"magicDNS": f.get("magic_dns") == "on"}),
        ("post", "nameservers", {"dns": listed(f.get("nameservers", ""))}),
        ("post", "searchpaths", {"searchPaths": listed(f.get("search_paths", ""))}),
        ("put", "split-dns", split),
    )
    for verb, part, body in steps:
        answer = await getattr(c.api, verb)(f"{DNS_API}/{part}", body)
        if not answer.ok:
            return back("/dns", answer)
    await acted("set the DNS settings", answer)
    return back("/dns", answer, "DNS settings saved; clients get them now.")
