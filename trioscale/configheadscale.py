"""Headscale's configuration keys, as trioscale reads them (Headscale v0.29.2's file starts trioscale).

Most of Headscale's keys are ours under the same name (`server_url`, `noise.private_key_path`,
`prefixes.*`, `derp.server.*`, `dns.*`, `policy.*`, `node.*`, …) and need nothing here. This module
holds the rest:

* :data:`RENAMED`: Headscale's other spellings of one of our keys (older names Headscale still
  reads). Each is the same setting under a second name: giving both with different values is an error.
* :data:`UNSUPPORTED`: Headscale's keys trioscale does not implement. A file may give them; they
  are reported together in one warning (an error with ``--strict``), except where the value asks
  for nothing trioscale does not do anyway (`trusted_proxies: []`, `logtail.enabled: false`: we
  never trust proxy headers and always tell clients not to send logs), or where the key has no
  effect without another one (the `oidc` keys without `oidc.issuer`).

Keys Headscale itself refuses (`oidc.strip_email_domain`, `dns.use_username_in_magic_dns`, …) and
keys neither server knows stay errors; `randomize_client_port`, which Headscale 0.29 moved into the
policy, is reported like an unsupported key so that files of earlier releases still start.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trioscale.configschema import Foreign, parse_duration

__all__ = ["RENAMED", "SHARED", "UNSUPPORTED"]

#: Headscale v0.29.2's keys that are ours under the same name (`database.postgres.pass` is the
#: alias of our `database.postgres.password`); listed for the doc, checked against the schema by a test
SHARED: tuple[str, ...] = (
    "server_url",
    "listen_addr",
    "metrics_listen_addr",
    "noise.private_key_path",
    "prefixes.v4",
    "prefixes.v6",
    "prefixes.allocation",
    "derp.server.enabled",
    "derp.server.region_id",
    "derp.server.region_code",
    "derp.server.region_name",
    "derp.server.verify_clients",
    "derp.server.stun_listen_addr",
    "derp.server.private_key_path",
    "derp.server.ipv4",
    "derp.server.ipv6",
    "derp.urls",
    "derp.auto_update_enabled",
    "derp.update_frequency",
    "derp.paths",
    "node.expiry",
    "node.ephemeral.inactivity_timeout",
    "database.type",
    "database.sqlite.path",
    "database.postgres.host",
    "database.postgres.port",
    "database.postgres.name",
    "database.postgres.user",
    "database.postgres.pass",
    "database.postgres.ssl",
    "database.postgres.max_open_conns",
    "database.postgres.conn_max_idle_time_secs",
    "log.level",
    "log.format",
    "policy.mode",
    "policy.path",
    "dns.magic_dns",
    "dns.base_domain",
    "dns.override_local_dns",
    "dns.nameservers.global",
    "dns.nameservers.split",
    "dns.search_domains",
    "dns.extra_records",
    "dns.extra_records_path",
    "unix_socket",
    "unix_socket_permission",
    "tls_cert_path",
    "tls_key_path",
    "tls_letsencrypt_hostname",
    "tls_letsencrypt_cache_dir",
    "tls_letsencrypt_challenge_type",
    "tls_letsencrypt_listen",
    "acme_url",
    "acme_email",
)

RENAMED: dict[str, str] = {
    # Headscale reads the old name when the new one is absent (hscontrol/types/config.go)
    "ephemeral_node_inactivity_timeout": "node.ephemeral.inactivity_timeout",
    "acl_policy_path": "policy.path",
    "dns_config.magic_dns": "dns.magic_dns",
    "dns_config.base_domain": "dns.base_domain",
    "dns_config.override_local_dns": "dns.override_local_dns",
    "dns_config.nameservers": "dns.nameservers.global",
    "dns_config.restricted_nameservers": "dns.nameservers.split",
    "dns_config.domains": "dns.search_domains",
    "dns_config.extra_records": "dns.extra_records",
}


def _is(*values: Any) -> Callable[[Any], bool]:
    """Inert when the value is one of `values` (YAML's true/false/numbers compared as typed)."""
    return lambda value: any(value == v and type(value) is type(v) for v in values)


def _empty(value: Any) -> bool:
    return value in (None, "", [], {})


def _any(value: Any) -> bool:
    return True


def _duration_is(expected: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        try:
            return parse_duration(value) == parse_duration(expected)
        except ValueError:
            return False

    return check


_OFF = "empty (or absent)"
_NO_GRPC = "trioscale has no gRPC API: the admin API is HTTP (`admin.listen_addr`, the unix socket)"
_GORM = "Headscale's ORM setting: trioscale has no ORM"
_TUNING = "Headscale's internal batching and caches: trioscale has no counterpart"

UNSUPPORTED: dict[str, Foreign] = {
    "grpc_listen_addr": Foreign(_NO_GRPC, _empty, inert_doc=_OFF),
    "grpc_allow_insecure": Foreign(_NO_GRPC, _is(False), inert_doc="`false`"),
    "trusted_proxies": Foreign(
        "client addresses are never taken from proxy headers", _empty, inert_doc="`[]`"
    ),
    # Headscale before 0.29 (0.29 refuses it): older files still have it
    "randomize_client_port": Foreign(
        "set `randomizeClientPort` in the policy (as Headscale 0.29 does)", _is(False), inert_doc="`false`"
    ),
    "disable_check_updates": Foreign("trioscale never checks for updates", _any, inert_doc="anything"),
    "derp.server.automatically_add_embedded_derp_region": Foreign(
        "the embedded relay always appears in the DERP map", _is(True), inert_doc="`true`"
    ),
    "node.routes.ha.probe_interval": Foreign(
        "subnet routers are not pinged: a primary route moves when its router goes offline",
        _duration_is("0s"),
        inert_doc="`0`",
    ),
    "node.routes.ha.probe_timeout": Foreign(
        "subnet routers are not pinged (see `node.routes.ha.probe_interval`)", only_with="node.routes.ha.probe_interval"
    ),
    "preauth_keys.revoked_retention": Foreign("expired pre-auth keys are kept until deleted"),
    "database.debug": Foreign("no SQL statement log", _is(False), inert_doc="`false`"),
    "database.gorm.prepare_stmt": Foreign(_GORM, _is(True), inert_doc="`true` (statements are prepared anyway)"),
    "database.gorm.parameterized_queries": Foreign(_GORM, _is(True), inert_doc="`true` (queries are parameterized anyway)"),
    "database.gorm.skip_err_record_not_found": Foreign(_GORM, _is(True), inert_doc="`true` (nothing found is not logged anyway)"),
    "database.gorm.slow_threshold": Foreign("slow queries are not logged"),
    "database.sqlite.write_ahead_log": Foreign(
        "the SQLite database is always in WAL mode", _is(True), inert_doc="`true`"
    ),
    "database.sqlite.wal_autocheckpoint": Foreign(
        "SQLite's own checkpoint interval is used", _is(1000), inert_doc="`1000` (SQLite's default)"
    ),
    "database.postgres.max_idle_conns": Foreign(
        "idle pooled connections are not capped, only closed after `conn_max_idle_time_secs`"
    ),
    "logtail.enabled": Foreign(
        "clients are always told not to send logs to Tailscale Inc. (`DisableLogTail`)", _is(False), inert_doc="`false`"
    ),
    "taildrop.enabled": Foreign("every node is given the file-sharing capability", _is(True), inert_doc="`true`"),
    "auto_update.enabled": Foreign("nodes are not told to update themselves", _is(False), inert_doc="`false`"),
    # OIDC login is on when oidc.issuer is set (Headscale also reads this key, undocumented)
    "oidc.enabled": Foreign("OIDC login is on when `oidc.issuer` is set", only_with="oidc.issuer"),
    # Headscale 0.29 refuses it (moved to node.expiry); files for older versions still have it
    "oidc.expiry": Foreign("a node logged in through OIDC expires after `node.expiry` (as in Headscale 0.29)"),
    **{
        f"tuning.{name}": Foreign(_TUNING)
        for name in (
            "batch_change_delay",
            "batcher_workers",
            "node_mapsession_buffered_chan_size",
            "node_store_batch_size",
            "node_store_batch_timeout",
            "notifier_send_timeout",
            "register_cache_expiration",
            "register_cache_max_entries",
        )
    },
    **{
        f"cli.{name}": Foreign("the CLI reads `--address`/`--api-key` or TRIOSCALE_CLI_ADDRESS/TRIOSCALE_CLI_API_KEY")
        for name in ("address", "api_key", "timeout", "insecure")
    },
}
