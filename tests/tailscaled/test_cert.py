"""`tailscale cert` on a node: the certificate comes from an ACME server (Debian's pebble, offline)
that validated DNS-01 against our DNS server, after the node set the TXT record through
/machine/set-dns."""

from __future__ import annotations

import pytest

from tsclients import VERSIONS


@pytest.mark.scenario("tailscale cert (DNS-01 through set-dns, pebble)")
def test_tailscale_cert(cert_net, version):
    from cryptography import x509

    net = cert_net
    node = net.add_node(f"z{VERSIONS.index(version)}", version, env=net.acme_env)
    node.up(net.server.create_key("alice"))
    domain = f"{node.name}.certs.ts.net"
    crt, key = node.dir / "node.crt", node.dir / "node.key"
    node.ts("cert", f"--cert-file={crt}", f"--key-file={key}", domain, timeout=120)
    chain = x509.load_pem_x509_certificates(crt.read_bytes())
    intermediate = x509.load_pem_x509_certificates(net.pebble.issuing_chain())[-1]
    assert chain[0].issuer == intermediate.subject
    sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [domain]
    assert f"set TXT _acme-challenge.{domain}" in net.server.log()
