"""The reverse zones of the tailnet's prefixes (shared/domain/reversedns.py), one answer for the
coordinator's DNSConfig routes and the DNS server's apexes."""

from __future__ import annotations

from trioscale.shared.domain.reversedns import reverse_zones


def test_prefixes_on_a_boundary_are_one_zone():
    assert reverse_zones("100.64.0.0/16") == ["64.100.in-addr.arpa"]
    assert reverse_zones("fd7a:115c:a1e0::/48") == ["0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa"]


def test_an_ipv4_prefix_between_octets_is_every_zone_of_the_next_octet():
    zones = reverse_zones("100.64.0.0/10")
    assert len(zones) == 64
    assert zones[0] == "64.100.in-addr.arpa" and zones[-1] == "127.100.in-addr.arpa"


def test_an_ipv6_prefix_between_nibbles_is_every_zone_of_the_next_nibble():
    # a /49 is eight /52s: the first nibble after the /48 runs 0-7 (the other half is not ours)
    zones = reverse_zones("fd7a:115c:a1e0::/49")
    assert zones == [f"{n:x}.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa" for n in range(8)]
    assert reverse_zones("fd7a:115c:a1e0:8000::/50") == [
        f"{n:x}.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa" for n in range(8, 12)]


def test_host_bits_in_the_prefix_are_ignored():
    assert reverse_zones("100.64.1.2/10") == reverse_zones("100.64.0.0/10")
