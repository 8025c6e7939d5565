"""The one host:port parser (shared/net/addr.py), used by every listener and the config check."""

import re

import pytest

from trioscale.shared.net.addr import format_sockaddr, join_host_port, split_host_port


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:443", ("127.0.0.1", 443)),
        (":3478", ("", 3478)),
        ("[::1]:0", ("::1", 0)),
        ("[::]:65535", ("::", 65535)),
        ("derp.example.com:8443", ("derp.example.com", 8443)),
    ],
)
def test_split(text, expected):
    assert split_host_port(text) == expected
    host, port = expected
    assert split_host_port(join_host_port(host, port)) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("8080", "expected host:port"),
        ("::1:80", "write IPv6 addresses as [addr]:port"),
        ("[::1]80", "expected [v6-address]:port"),
        ("[::1:80", "expected [v6-address]:port"),
        ("host:65536", "bad port"),
        ("host:-1", "bad port"),
        ("host:", "bad port"),
        ("host:http", "bad port"),
    ],
)
def test_errors_are_one_line(text, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        split_host_port(text)
    assert "\n" not in str(info.value) and repr(text) in str(info.value)


def test_format_sockaddr():
    assert format_sockaddr(("10.0.0.1", 80)) == "10.0.0.1:80"
    assert format_sockaddr(("fd7a::1", 80, 0, 0)) == "[fd7a::1]:80"
