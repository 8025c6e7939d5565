"""The policy engine (pure: no I/O, no Trio).

    policy = Policy.parse(text)                     # PolicyError(message, line, column)
    compiled = compile_policy(policy, users, nodes) # UserInfo / NodeInfo lists
    compiled.packet_filter(node_id); compiled.visible_peers(node_id); compiled.ssh_policy(node_id) ...

See docs/policy-conformance.md for how it is checked against Tailscale's own compiler.
"""

from .compile import CompiledPolicy, Policy, TailnetIndex, compile_policy
from .errors import PolicyError
from .model import NodeInfo, UserInfo, node_info, user_info

__all__ = [
    "CompiledPolicy", "NodeInfo", "Policy", "PolicyError", "TailnetIndex", "UserInfo", "compile_policy",
    "node_info", "user_info",
]
