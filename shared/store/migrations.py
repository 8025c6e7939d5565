"""Versioned schema migrations, one ordered list per database.

Version N of the schema is what MIGRATIONS[N-1] leaves behind; `schema_version` holds the version a
database is at (one row). A store applies the missing steps in order, each in its own transaction,
and refuses to open a database whose version is newer than the newest it knows (SchemaTooNew).
Never edit a released step: append a new one.
"""

from __future__ import annotations

from trioscale.shared.store.base import SchemaTooNew

SQLITE_MIGRATIONS: list[list[str]] = [
    # 1: the first schema
    [
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            display_name TEXT NOT NULL DEFAULT '',
            email TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE preauth_keys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            prefix TEXT NOT NULL UNIQUE,
            key_hash BLOB NOT NULL,
            user_id INTEGER NOT NULL REFERENCES users (id),
            reusable INTEGER NOT NULL DEFAULT 0,
            ephemeral INTEGER NOT NULL DEFAULT 0,
            used INTEGER NOT NULL DEFAULT 0,
            tags TEXT NOT NULL DEFAULT '[]',
            expiration TEXT,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX preauth_keys_user ON preauth_keys (user_id)",
        """CREATE TABLE nodes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            machine_key BLOB NOT NULL UNIQUE,
            node_key BLOB NOT NULL UNIQUE,
            user_id INTEGER NOT NULL REFERENCES users (id),
            hostname TEXT NOT NULL,
            given_name TEXT NOT NULL UNIQUE,
            ipv4 TEXT UNIQUE,
            ipv6 TEXT UNIQUE,
            disco_key BLOB,
            endpoints TEXT NOT NULL DEFAULT '[]',
            hostinfo TEXT NOT NULL DEFAULT '{}',
            home_derp INTEGER NOT NULL DEFAULT 0,
            tags TEXT NOT NULL DEFAULT '[]',
            approved_routes TEXT NOT NULL DEFAULT '[]',
            ephemeral INTEGER NOT NULL DEFAULT 0,
            auth_key_id INTEGER,
            expiry TEXT,
            created_at TEXT NOT NULL,
            last_seen TEXT,
            register_method TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX nodes_user ON nodes (user_id)",
        """CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            prefix TEXT NOT NULL UNIQUE,
            key_hash BLOB NOT NULL,
            expiration TEXT,
            created_at TEXT NOT NULL,
            last_seen TEXT
        )""",
        """CREATE TABLE policies (
            version INTEGER PRIMARY KEY,
            text TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE pending_registrations (
            pos INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            machine_key BLOB NOT NULL,
            node_key BLOB NOT NULL,
            hostinfo TEXT NOT NULL DEFAULT '{}',
            expiry TEXT,
            created_at TEXT NOT NULL,
            node_id INTEGER,
            user_id INTEGER
        )""",
        "CREATE INDEX pending_registrations_age ON pending_registrations (created_at, pos)",
        """CREATE TABLE derp_relays (
            region_id INTEGER NOT NULL,
            name TEXT NOT NULL,
            host TEXT NOT NULL,
            region_code TEXT NOT NULL DEFAULT '',
            region_name TEXT NOT NULL DEFAULT '',
            ipv4 TEXT NOT NULL DEFAULT '',
            ipv6 TEXT NOT NULL DEFAULT '',
            derp_port INTEGER NOT NULL,
            stun_port INTEGER NOT NULL,
            heartbeat_at TEXT NOT NULL,
            cert_name TEXT NOT NULL DEFAULT '',
            insecure_for_tests INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (region_id, name)
        )""",
        """CREATE TABLE shares (
            node_id INTEGER NOT NULL REFERENCES nodes (id),
            user_id INTEGER NOT NULL REFERENCES users (id),
            created_at TEXT NOT NULL,
            PRIMARY KEY (node_id, user_id)
        )""",
        "CREATE INDEX shares_user ON shares (user_id)",
        """CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            data BLOB NOT NULL,
            at TEXT NOT NULL
        )""",
     ],
    # 2: presence of map sessions per coordinator replica (heartbeat leases)
    [
        """CREATE TABLE presence (
            node_id INTEGER NOT NULL,
            replica_id TEXT NOT NULL,
            lease_expires TEXT NOT NULL,
            PRIMARY KEY (node_id, replica_id)
        )""",
        "CREATE INDEX presence_replica ON presence (replica_id)",
        "CREATE INDEX presence_lease ON presence (lease_expires)",
    ],
    # 3: TXT records set by nodes through /machine/set-dns (ACME DNS-01), for DNS servers anywhere
    [
        """CREATE TABLE dns_txt (
            name TEXT PRIMARY KEY,
            vals TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX dns_txt_expires ON dns_txt (expires_at)",
    ],
    # 4: pending registrations bounded in bytes and per source; change-log subscriber positions
    # (leases) so the log can be trimmed below the slowest live subscriber
    [
        "ALTER TABLE pending_registrations ADD COLUMN source TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE pending_registrations ADD COLUMN size INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX pending_registrations_source ON pending_registrations (source, created_at, pos)",
        "CREATE INDEX pending_registrations_machine ON pending_registrations (machine_key)",
        """CREATE TABLE change_subscribers (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL,
            lease_expires TEXT NOT NULL
        )""",
    ],
    # 5: Tailscale SSH sessions held by a check rule until an administrator decides
    [
        """CREATE TABLE ssh_checks (
            id TEXT PRIMARY KEY,
            src_node_id INTEGER NOT NULL,
            dst_node_id INTEGER NOT NULL,
            local_user TEXT NOT NULL,
            decision TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL
        )""",
        "CREATE INDEX ssh_checks_expires ON ssh_checks (expires_at)",
    ],
    # 6: the login provider's identity of a user (kept from Headscale's OIDC users), one user per identity
    [
        "ALTER TABLE users ADD COLUMN provider TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE users ADD COLUMN provider_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE users ADD COLUMN profile_pic_url TEXT NOT NULL DEFAULT ''",
        "CREATE UNIQUE INDEX users_provider_id ON users (provider_id) WHERE provider_id != ''",
    ],
    # 7: Tailscale's API v2: OAuth clients (scopes, the tags their keys and devices may carry),
    # scoped API keys (an OAuth client's access tokens are API keys naming it; no scopes = all access),
    # an auth key's description, and tailnet settings set through the API (the DNS settings)
    [
        """CREATE TABLE oauth_clients (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            client_id TEXT NOT NULL UNIQUE,
            secret_hash BLOB NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            scopes TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '[]',
            created_at TEXT NOT NULL,
            last_used TEXT
        )""",
        "ALTER TABLE api_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE api_keys ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE api_keys ADD COLUMN oauth_client_id INTEGER REFERENCES oauth_clients (id) ON DELETE CASCADE",
        "CREATE INDEX api_keys_oauth_client ON api_keys (oauth_client_id, expiration)",
        "ALTER TABLE preauth_keys ADD COLUMN description TEXT NOT NULL DEFAULT ''",
        """CREATE TABLE tailnet_settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
    ],
]

POSTGRES_MIGRATIONS: list[list[str]] = [
    # 1: the first schema
    [
        """CREATE TABLE users (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            name text NOT NULL CONSTRAINT users_name_unique UNIQUE,
            display_name text NOT NULL DEFAULT '',
            email text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL
        )""",
        """CREATE TABLE preauth_keys (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            prefix text NOT NULL CONSTRAINT preauth_keys_prefix_unique UNIQUE,
            key_hash bytea NOT NULL,
            user_id bigint NOT NULL REFERENCES users (id),
            reusable boolean NOT NULL DEFAULT false,
            ephemeral boolean NOT NULL DEFAULT false,
            used boolean NOT NULL DEFAULT false,
            tags text[] NOT NULL DEFAULT '{}',
            expiration timestamptz,
            created_at timestamptz NOT NULL
        )""",
        "CREATE INDEX preauth_keys_user ON preauth_keys (user_id)",
        """CREATE TABLE nodes (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            machine_key bytea NOT NULL CONSTRAINT nodes_machine_key_unique UNIQUE,
            node_key bytea NOT NULL CONSTRAINT nodes_node_key_unique UNIQUE,
            user_id bigint NOT NULL REFERENCES users (id),
            hostname text NOT NULL,
            given_name text NOT NULL CONSTRAINT nodes_given_name_unique UNIQUE,
            ipv4 text CONSTRAINT nodes_ipv4_unique UNIQUE,
            ipv6 text CONSTRAINT nodes_ipv6_unique UNIQUE,
            disco_key bytea,
            endpoints text[] NOT NULL DEFAULT '{}',
            hostinfo jsonb NOT NULL DEFAULT '{}',
            home_derp integer NOT NULL DEFAULT 0,
            tags text[] NOT NULL DEFAULT '{}',
            approved_routes text[] NOT NULL DEFAULT '{}',
            ephemeral boolean NOT NULL DEFAULT false,
            auth_key_id bigint,
            expiry timestamptz,
            created_at timestamptz NOT NULL,
            last_seen timestamptz,
            register_method text NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX nodes_user ON nodes (user_id)",
        """CREATE TABLE api_keys (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            prefix text NOT NULL CONSTRAINT api_keys_prefix_unique UNIQUE,
            key_hash bytea NOT NULL,
            expiration timestamptz,
            created_at timestamptz NOT NULL,
            last_seen timestamptz
        )""",
        """CREATE TABLE policies (
            version integer PRIMARY KEY,
            text text NOT NULL,
            created_at timestamptz NOT NULL
        )""",
        """CREATE TABLE pending_registrations (
            pos bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL CONSTRAINT pending_registrations_id_unique UNIQUE,
            machine_key bytea NOT NULL,
            node_key bytea NOT NULL,
            hostinfo jsonb NOT NULL DEFAULT '{}',
            expiry timestamptz,
            created_at timestamptz NOT NULL,
            node_id bigint,
            user_id bigint
        )""",
        "CREATE INDEX pending_registrations_age ON pending_registrations (created_at, pos)",
        """CREATE TABLE derp_relays (
            region_id integer NOT NULL,
            name text NOT NULL,
            host text NOT NULL,
            region_code text NOT NULL DEFAULT '',
            region_name text NOT NULL DEFAULT '',
            ipv4 text NOT NULL DEFAULT '',
            ipv6 text NOT NULL DEFAULT '',
            derp_port integer NOT NULL,
            stun_port integer NOT NULL,
            heartbeat_at timestamptz NOT NULL,
            cert_name text NOT NULL DEFAULT '',
            insecure_for_tests boolean NOT NULL DEFAULT false,
            PRIMARY KEY (region_id, name)
        )""",
        """CREATE TABLE shares (
            node_id bigint NOT NULL REFERENCES nodes (id),
            user_id bigint NOT NULL REFERENCES users (id),
            created_at timestamptz NOT NULL,
            PRIMARY KEY (node_id, user_id)
        )""",
        "CREATE INDEX shares_user ON shares (user_id)",
        # seq is assigned as max(seq)+1 under a transaction-level advisory lock, so seq order is
        # commit order and the log has no holes
        """CREATE TABLE changes (
            seq bigint PRIMARY KEY,
            kind text NOT NULL,
            data bytea NOT NULL,
            at timestamptz NOT NULL
        )""",
     ],
    # 2: presence of map sessions per coordinator replica (heartbeat leases)
    [
        """CREATE TABLE presence (
            node_id bigint NOT NULL,
            replica_id text NOT NULL,
            lease_expires timestamptz NOT NULL,
            PRIMARY KEY (node_id, replica_id)
        )""",
        "CREATE INDEX presence_replica ON presence (replica_id)",
        "CREATE INDEX presence_lease ON presence (lease_expires)",
    ],
    # 3: TXT records set by nodes through /machine/set-dns (ACME DNS-01), for DNS servers anywhere
    [
        """CREATE TABLE dns_txt (
            name text PRIMARY KEY,
            vals text[] NOT NULL,
            expires_at timestamptz NOT NULL
        )""",
        "CREATE INDEX dns_txt_expires ON dns_txt (expires_at)",
    ],
    # 4: pending registrations bounded in bytes and per source; change-log subscriber positions
    # (leases) so the log can be trimmed below the slowest live subscriber
    [
        "ALTER TABLE pending_registrations ADD COLUMN source text NOT NULL DEFAULT ''",
        "ALTER TABLE pending_registrations ADD COLUMN size integer NOT NULL DEFAULT 0",
        "CREATE INDEX pending_registrations_source ON pending_registrations (source, created_at, pos)",
        "CREATE INDEX pending_registrations_machine ON pending_registrations (machine_key)",
        """CREATE TABLE change_subscribers (
            id text PRIMARY KEY,
            seq bigint NOT NULL,
            lease_expires timestamptz NOT NULL
        )""",
    ],
    # 5: Tailscale SSH sessions held by a check rule until an administrator decides
    [
        """CREATE TABLE ssh_checks (
            id text PRIMARY KEY,
            src_node_id bigint NOT NULL,
            dst_node_id bigint NOT NULL,
            local_user text NOT NULL,
            decision text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL,
            expires_at timestamptz NOT NULL
        )""",
        "CREATE INDEX ssh_checks_expires ON ssh_checks (expires_at)",
    ],
    # 6: the login provider's identity of a user (kept from Headscale's OIDC users), one user per identity
    [
        "ALTER TABLE users ADD COLUMN provider text NOT NULL DEFAULT ''",
        "ALTER TABLE users ADD COLUMN provider_id text NOT NULL DEFAULT ''",
        "ALTER TABLE users ADD COLUMN profile_pic_url text NOT NULL DEFAULT ''",
        "CREATE UNIQUE INDEX users_provider_id ON users (provider_id) WHERE provider_id <> ''",
    ],
    # 7: Tailscale's API v2: OAuth clients (scopes, the tags their keys and devices may carry),
    # scoped API keys (an OAuth client's access tokens are API keys naming it; no scopes = all access),
    # an auth key's description, and tailnet settings set through the API (the DNS settings)
    [
        """CREATE TABLE oauth_clients (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            client_id text NOT NULL CONSTRAINT oauth_clients_client_id_unique UNIQUE,
            secret_hash bytea NOT NULL,
            description text NOT NULL DEFAULT '',
            scopes text[] NOT NULL DEFAULT '{}',
            tags text[] NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL,
            last_used timestamptz
        )""",
        "ALTER TABLE api_keys ADD COLUMN scopes text[] NOT NULL DEFAULT '{}'",
        "ALTER TABLE api_keys ADD COLUMN tags text[] NOT NULL DEFAULT '{}'",
        "ALTER TABLE api_keys ADD COLUMN oauth_client_id bigint REFERENCES oauth_clients (id) ON DELETE CASCADE",
        "CREATE INDEX api_keys_oauth_client ON api_keys (oauth_client_id, expiration)",
        "ALTER TABLE preauth_keys ADD COLUMN description text NOT NULL DEFAULT ''",
        """CREATE TABLE tailnet_settings (
            name text PRIMARY KEY,
            value text NOT NULL
        )""",
    ],
]

#: unique constraint (PostgreSQL name or SQLite "table.column") -> the message for a Conflict
UNIQUE_MESSAGES = {
    "users_name_unique": "user name already exists",
    "users.name": "user name already exists",
    "users_provider_id": "another user has this login identity",
    "users.provider_id": "another user has this login identity",
    "preauth_keys_prefix_unique": "a pre-auth key with this prefix already exists",
    "preauth_keys.prefix": "a pre-auth key with this prefix already exists",
    "api_keys_prefix_unique": "an API key with this prefix already exists",
    "api_keys.prefix": "an API key with this prefix already exists",
    "oauth_clients_client_id_unique": "an OAuth client with this id already exists",
    "oauth_clients.client_id": "an OAuth client with this id already exists",
    "nodes_machine_key_unique": "a node with this machine key is already registered",
    "nodes.machine_key": "a node with this machine key is already registered",
    "nodes_node_key_unique": "a node with this node key is already registered",
    "nodes.node_key": "a node with this node key is already registered",
    "nodes_given_name_unique": "node name is already taken",
    "nodes.given_name": "node name is already taken",
    "nodes_ipv4_unique": "address is already assigned to another node",
    "nodes.ipv4": "address is already assigned to another node",
    "nodes_ipv6_unique": "address is already assigned to another node",
    "nodes.ipv6": "address is already assigned to another node",
}


def check_version(found: int, known: int) -> None:
    if found > known:
        raise SchemaTooNew(
            f"database schema version {found} is newer than this trioscale "
            f"(knows up to {known}); upgrade trioscale"
        )
