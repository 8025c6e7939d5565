"""The admin API: REST under /api/v1, shaped like Headscale's.

app: the app and its error handlers; api: what every route shares (handles, auth, the error shape,
the JSON body); fields: the request's fields, checked; lookups: the user, node or key named; shapes:
the records as JSON; one module per resource, each a blueprint (users, preauthkeys, apikeys, nodes,
registrations, tags, routes, sharing, policy, sshcheck, health); server: the listeners (unix
socket, TCP).
"""

from .app import create_admin_app
from .server import serve_admin

__all__ = ["create_admin_app", "serve_admin"]
