"""The admin API: REST under /api/v1, shaped like Headscale's.

app: the app and its error shape; api: what every route shares (handles, auth, body parsing);
one module per resource, each a blueprint (users, preauthkeys, apikeys, nodes, registrations, tags,
routes, sharing, policy, sshcheck, health); server: the listeners (unix socket, TCP).
"""

from .app import create_admin_app
from .server import serve_admin

__all__ = ["create_admin_app", "serve_admin"]
