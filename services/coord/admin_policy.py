"""Admin API routes for access control: the policy, node tags, routes and sharing.

    GET  /api/v1/policy                       the policy in force ({"policy", "version", "mode", ...})
    PUT  /api/v1/policy        {"policy": T}  check and store a new version (database mode)
    POST /api/v1/policy/check  {"policy": T}  check only: {"ok": true} or 400 with the reason
    POST /api/v1/node/{id}/tags            {"tags": ["tag:a"]}     set (or, with [], clear) tags
    POST /api/v1/node/{id}/approve_routes  {"routes": ["10.0.0.0/8"]} set approved routes ([] clears)
    GET  /api/v1/routes[?node=ID]             advertised / approved / serving / primary routes
    POST /api/v1/node/{id}/share           {"user": "bob"}         share a node with a user
    DELETE /api/v1/node/{id}/share/{user}                           stop sharing it
    GET  /api/v1/shares[?node=ID]

A policy is checked against the current tailnet (users and nodes): syntax (line and column),
structure, unknown groups / tags, and its `tests` / `sshTests`. A refused policy changes nothing.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import request

from trioscale.shared.model import Node, Share, User
from trioscale.shared.store.base import Conflict, NotFound

from trioscale.shared.domain.policy import PolicyError
from trioscale.shared.domain.routes import RouteError, advertised_routes, normalize_routes
from .policyhost import parse_and_check

#: how long a policy change waits for this process's coordinator to install it before answering
APPLY_WAIT = 5.0


def register_policy_routes(app, ctx, *, BadRequest, find_node, find_user, users_by_id, node_json,
                           validate_tag, ts, utcnow, is_online, json_body) -> None:
    store = ctx.store
    log = ctx.log.getChild("admin")

    def coord():
        return ctx.registry.get("coord")

    def mode() -> str:
        return ctx.config.policy.mode

    async def body_text(data: dict[str, Any]) -> str:
        text = data.get("policy")
        if not isinstance(text, str):
            raise BadRequest("give the policy text in \"policy\"")
        if not text.strip():
            raise BadRequest("invalid policy: the policy is empty")
        return text

    async def check(text: str):
        try:
            return parse_and_check(text, await store.list_users(), await store.list_nodes())
        except PolicyError as exc:
            raise BadRequest(f"invalid policy: {exc}") from None

    async def caught_up() -> None:
        c = coord()
        if c is not None:
            with trio.move_on_after(APPLY_WAIT):
                await c.caught_up()

    # -- policy ----------------------------------------------------------------------------------
    @app.get("/api/v1/policy")
    async def get_policy() -> Any:
        c = coord()
        if mode() == "file":
            text = c.policy.text if c is not None else None
            if text is None:
                path = ctx.config.policy.path
                try:
                    text = open(path, encoding="utf-8").read() if path else None
                except OSError as exc:
                    raise BadRequest(f"policy file {path}: {exc.strerror}") from None
            return {"policy": text or "", "mode": "file", "path": str(ctx.config.policy.path)}
        record = await store.get_policy()
        if record is None:
            raise NotFound("no policy is set: all traffic is allowed (set one with `trioscale policy set -f FILE`)")
        return {"policy": record.text, "mode": "database", "version": record.version,
                "updated_at": ts(record.created_at)}

    @app.put("/api/v1/policy")
    async def set_policy() -> Any:
        data = await json_body()
        text = await body_text(data)
        if mode() == "file":
            raise BadRequest(f"policy.mode is file: edit {ctx.config.policy.path} instead "
                             "(it is reloaded when it changes and on SIGHUP)")
        await check(text)
        record = await store.set_policy(text)
        log.info("policy version %d stored", record.version)
        await caught_up()
        return {"policy": record.text, "mode": "database", "version": record.version,
                "updated_at": ts(record.created_at)}

    @app.post("/api/v1/policy/check")
    async def check_policy() -> Any:
        data = await json_body()
        await check(await body_text(data))
        return {"ok": True}

    # -- tags ------------------------------------------------------------------------------------
    @app.post("/api/v1/node/<ref>/tags")
    async def tag_node(ref: str) -> Any:
        node = await find_node(ref)
        data = await json_body()
        tags_in = data.get("tags", [])
        if isinstance(tags_in, str):
            tags_in = [t.strip() for t in tags_in.split(",") if t.strip()]
        if not isinstance(tags_in, list):
            raise BadRequest("tags must be a list of tag:name strings")
        tags = tuple(sorted(dict.fromkeys(validate_tag(t) for t in tags_in)))
        c = coord()
        if tags and c is not None and c.policy.has_policy:
            undefined = [t for t in tags if not c.policy.tag_defined(t)]
            if undefined:
                raise BadRequest(f"tag(s) {', '.join(undefined)} not defined in the policy's tagOwners")
        fields: dict[str, Any] = {"tags": tags}
        if tags:
            fields["expiry"] = None  # a tagged node does not expire
        node = await store.update_node(node.id, **fields)
        log.info("node %d tags set to %s", node.id, ",".join(tags) or "(none)")
        await caught_up()
        return {"node": node_json(node, await users_by_id(), utcnow(), is_online(node.id))}

    # -- routes ----------------------------------------------------------------------------------
    def routes_json(node: Node) -> dict[str, Any]:
        c = coord()
        serving = c.policy.effective_routes(node.id) if c is not None else []
        primary = c.policy.primary_routes(node.id) if c is not None else []
        return {
            "id": node.id,
            "given_name": node.given_name,
            "available_routes": list(advertised_routes(node.hostinfo)),
            "approved_routes": list(node.approved_routes),
            "serving_routes": sorted(serving),
            "primary_routes": sorted(primary),
            "exit_node": "0.0.0.0/0" in serving and "::/0" in serving,
            "online": is_online(node.id),
        }

    @app.post("/api/v1/node/<ref>/approve_routes")
    async def approve_routes(ref: str) -> Any:
        node = await find_node(ref)
        data = await json_body()
        routes_in = data.get("routes", [])
        if isinstance(routes_in, str):
            routes_in = [r for r in routes_in.split(",")]
        if not isinstance(routes_in, list):
            raise BadRequest("routes must be a list of prefixes")
        try:
            routes = normalize_routes(routes_in)
        except RouteError as exc:
            raise BadRequest(str(exc)) from None
        node = await store.update_node(node.id, approved_routes=routes)
        log.info("node %d approved routes: %s", node.id, ",".join(routes) or "(none)")
        await caught_up()
        node = await store.get_node(node.id) or node
        return {"node": node_json(node, await users_by_id(), utcnow(), is_online(node.id)),
                "routes": routes_json(node)}

    @app.get("/api/v1/routes")
    async def list_routes() -> Any:
        ref = request.args.get("node")
        nodes = [await find_node(ref)] if ref else await store.list_nodes()
        return {"routes": [routes_json(n) for n in nodes
                           if ref or n.approved_routes or advertised_routes(n.hostinfo)]}

    # -- sharing ---------------------------------------------------------------------------------
    def share_json(s: Share, nodes: dict[int, Node], users: dict[int, User]) -> dict[str, Any]:
        n, u = nodes.get(s.node_id), users.get(s.user_id)
        return {"node": {"id": s.node_id, "given_name": n.given_name if n else ""},
                "user": {"id": s.user_id, "name": u.name if u else ""},
                "created_at": ts(s.created_at)}

    @app.post("/api/v1/node/<ref>/share")
    async def share_node(ref: str) -> Any:
        node = await find_node(ref)
        data = await json_body()
        user = await find_user(data.get("user"))
        if node.user_id == user.id and not node.tags:
            raise Conflict(f"node {node.id} already belongs to user {user.name!r}")
        share = await store.add_share(node.id, user.id)
        log.info("node %d shared with user %s", node.id, user.name)
        await caught_up()
        return {"share": share_json(share, {node.id: node}, {user.id: user})}, 201

    @app.delete("/api/v1/node/<ref>/share/<user_ref>")
    async def unshare_node(ref: str, user_ref: str) -> Any:
        node = await find_node(ref)
        user = await find_user(user_ref)
        try:
            await store.remove_share(node.id, user.id)
        except NotFound:
            raise NotFound(f"node {node.id} is not shared with user {user.name!r}") from None
        log.info("node %d no longer shared with user %s", node.id, user.name)
        await caught_up()
        return {}

    @app.get("/api/v1/shares")
    async def list_shares() -> Any:
        ref = request.args.get("node")
        node_id = (await find_node(ref)).id if ref else None
        shares = await store.list_shares(node_id)
        nodes = {n.id: n for n in await store.list_nodes()}
        users = await users_by_id()
        return {"shares": [share_json(s, nodes, users) for s in shares]}
