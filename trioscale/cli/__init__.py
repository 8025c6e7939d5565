"""The `trioscale` command line: the root command and entry point in root, the shared plumbing
(options, admin client calls, output) in base, one module per command group (users, preauthkeys,
apikeys, nodes, auth, policy, debug, configtest, version, services), the admin API client in client."""

from .root import cli, main

__all__ = ["cli", "main"]
