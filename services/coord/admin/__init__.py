"""The admin API: REST under /api/v1, Headscale's routes and JSON (camelCase, string ids, enum
names, RFC 3339 times, RFC 7807 errors); our additions follow the same conventions.

app: the app and its error handlers; api: what every route shares (handles, auth, the problem shape,
the JSON body); fields: the request's fields, checked (unknown ones refused); lookups: the user,
node or key named; shapes: the records as Headscale's JSON; nodeview: a node with what the
coordinator knows of it; one module per resource, each a blueprint (users, preauthkeys, apikeys, nodes,
registrations, tags, routes, sharing, policy, sshcheck, health); server: the listeners (unix
socket, TCP).
"""

from .app import create_admin_app
from .server import serve_admin

__all__ = ["create_admin_app", "serve_admin"]
