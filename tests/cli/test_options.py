"""trioscale/options.py: the one place configuration keys become the services' typed options."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from trioscale.config import config_from_dict, load_config
from trioscale.options import (
    admin_options,
    coord_options,
    derp_options,
    dns_config_options,
    dns_options,
    reloader,
    stun_options,
)


def test_each_service_gets_its_keys():
    cfg = config_from_dict({
        "server_url": "https://ts.example.com",
        "listen_addr": "127.0.0.1:9000",
        "admin": {"listen_addr": "127.0.0.1:9001"},
        "prefixes": {"v4": "100.64.0.0/16"},
        "derp": {"server": {"listen_addr": "[::1]:8443", "stun_listen_addr": "0.0.0.0:3479", "mesh_key": "ab" * 32,
                            "handshake_timeout": "7s"}, "relay_timeout": "45s"},
        "dns": {"base_domain": "ts.test", "listen_addr": "127.0.0.1:5353", "nameservers": {"global": ["9.9.9.9"]},
                "search_domains": ["corp.example"]},
        "control": {"max_streams": 99},
    })
    assert stun_options(cfg).listen_host == "0.0.0.0" and stun_options(cfg).listen_port == 3479
    derp = derp_options(cfg)
    assert (derp.listen_host, derp.listen_port, derp.stun_port) == ("::1", 8443, 3479)
    assert derp.handshake_timeout == 7.0 and derp.relay_timeout == 45.0 and derp.mesh_key == "ab" * 32
    dns = dns_options(cfg)
    assert dns.listen == ("127.0.0.1", 5353) and dns.upstreams == ("9.9.9.9",) and dns.base_domain == "ts.test"
    coord = coord_options(cfg)
    assert coord.listen_addr == "127.0.0.1:9000" and coord.control.max_concurrent_streams == 99
    assert coord.registration.server_url == "https://ts.example.com" and coord.registration.prefix_v4 == "100.64.0.0/16"
    assert coord.relay_timeout == timedelta(seconds=45)
    assert coord.dns.prefixes == ("100.64.0.0/16", "fd7a:115c:a1e0::/48") == dns.prefixes
    assert coord.dns.search_domains == ("corp.example",) and coord.config_file is None
    admin = admin_options(cfg)
    assert admin.listen_addr == "127.0.0.1:9001" and admin.policy == coord.policy
    assert admin.unix_socket_mode == cfg.unix_socket_mode


def test_an_empty_dns_listen_addr_is_no_dns_server():
    assert dns_options(config_from_dict({"dns": {"listen_addr": ""}})).listen is None


def test_reloader_reads_the_file_again(tmp_path: Path):
    assert reloader(config_from_dict({}), dns_config_options) is None  # not from a file: nothing to watch
    conf = tmp_path / "trioscale.yaml"
    conf.write_text(yaml.safe_dump({"dns": {"base_domain": "ts.test"}}))
    reload = reloader(load_config(conf, env={}), dns_config_options)
    assert reload is not None and reload().search_domains == ()
    conf.write_text(yaml.safe_dump({"dns": {"base_domain": "ts.test", "search_domains": ["corp.example"]}}))
    assert reload().search_domains == ("corp.example",)
    conf.write_text(yaml.safe_dump({"dns": {"magic_dns": "perhaps"}}))
    with pytest.raises(ValueError, match="magic_dns"):
        reload()


def test_connection_caps_from_the_limits_keys():
    from trioscale.options import connection_caps
    from trioscale.shared.net.limits import ListenerCaps

    cfg = config_from_dict({"limits": {"admin": {"max_connections": 40, "max_connections_per_source": 4},
                                       "dns": {"max_connections": 8, "max_connections_per_source": 2}}})
    caps = connection_caps(cfg, ["dns", "admin", "admin_unix"])
    assert caps == {"dns": ListenerCaps(8, 2), "admin": ListenerCaps(40, 4),
                    "admin_unix": ListenerCaps(40, 40)}  # every local peer is one source
