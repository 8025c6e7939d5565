"""Real `tailscaled` nodes in network namespaces (tslab.py). Each test names its scenario with
`@pytest.mark.scenario("…")` and takes a client `version`; the outcomes of a run are written to
`<clients dir>/last-run.json`, from which `python tests/tailscaled/report.py` makes docs/clients.md."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tsclients as clients  # noqa: E402
from tslab import Tailnet, skip_or_fail, tools_missing  # noqa: E402

_results: list[dict] = []
CAPVERS: dict[str, int] = {}  # version -> capability version the client sent (from the server's log)
ENDPOINTS: dict[int, set[str]] = {}  # capability version -> Noise requests seen from such clients


#: where Tailscale's programs put state when told nothing else; the tests must leave them alone
DEFAULT_STATE_DIRS = (Path("/var/lib/tailscale"), Path("/var/lib/derper"), Path("/var/cache/tailscale"))


@pytest.fixture(autouse=True, scope="session")
def _nothing_written_to_var():
    before = {p for p in DEFAULT_STATE_DIRS if p.exists()}
    yield
    created = {p for p in DEFAULT_STATE_DIRS if p.exists()} - before
    assert not created, f"a real client wrote outside its test folders: {sorted(map(str, created))}"


@pytest.fixture(autouse=True, scope="module")
def _collect_endpoints():
    """After each module, add the Noise endpoints its servers saw to ENDPOINTS (docs/clients.md)."""
    yield
    for net in Tailnet.instances:
        for capver, paths in net.endpoints_by_capver().items():
            ENDPOINTS.setdefault(capver, set()).update(paths)
    Tailnet.instances.clear()


def pytest_generate_tests(metafunc):
    if "version" in metafunc.fixturenames and not any(m.name == "parametrize" and "version" in m.args[0]
                                                       for m in metafunc.definition.iter_markers()):
        metafunc.parametrize("version", clients.VERSIONS)


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.tailscaled)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("scenario")
    if marker is None:
        return
    version = (getattr(item, "callspec", None) and item.callspec.params.get("version")) or "mixed"
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _results.append({"scenario": marker.args[0], "version": version, "outcome": report.outcome,
                         "test": item.nodeid})


def pytest_sessionfinish(session, exitstatus):
    if not _results:
        return
    path = clients.clients_dir() / "last-run.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "capvers": CAPVERS, "results": _results,
                                    "endpoints": {str(k): sorted(v) for k, v in ENDPOINTS.items()}},
                                   indent=1))
    except OSError:
        pass


def mixed_tailnet(tmp_path_factory, *, block_udp: bool = False, setup=None, **server_config):
    """A server and one node per client version (n0, n1, … in versions.txt order) of user alice,
    joined with a pre-auth key; a generator for module fixtures."""
    reason = tools_missing() or next((clients.missing(v) for v in clients.VERSIONS if clients.missing(v)), None)
    skip_or_fail(reason)
    net = Tailnet(tmp_path_factory.mktemp("tailnet"))
    try:
        srv = net.start_server(**server_config)
        if setup is not None:
            setup(net)
        srv.create_user("alice")
        key = srv.create_key("alice", "--reusable")
        for i, v in enumerate(clients.VERSIONS):
            node = net.add_node(f"n{i}", v)
            if block_udp:
                node.block_udp_to_peers()
            node.up(key)
        net.record_capvers(CAPVERS)
        yield net
    except BaseException:
        print(net.diagnostics())
        raise
    finally:
        net.close()


@pytest.fixture(scope="module")
def tailnet(tmp_path_factory):
    yield from mixed_tailnet(tmp_path_factory)


@pytest.fixture(scope="module")
def derp_tailnet(tmp_path_factory):
    """Like `tailnet`, with UDP between the nodes dropped: peers meet only through our relay."""
    yield from mixed_tailnet(tmp_path_factory, block_udp=True)


def empty_tailnet(tmp_path_factory, name: str, setup=None, **server_config):
    """A server with users alice and bob and no nodes: tests add the nodes they need. `setup(net)`
    runs right after the server starts (hosts it adds get the next lab addresses)."""
    skip_or_fail(tools_missing() or next((clients.missing(v) for v in clients.VERSIONS if clients.missing(v)), None))
    net = Tailnet(tmp_path_factory.mktemp(name))
    try:
        srv = net.start_server(**server_config)
        if setup is not None:
            setup(net)
        srv.create_user("alice")
        srv.create_user("bob")
        yield net
    except BaseException:
        print(net.diagnostics())
        raise
    finally:
        if getattr(net, "pebble", None) is not None:
            net.pebble.stop()
        net.close()


@pytest.fixture(scope="module")
def login_tailnet(tmp_path_factory):
    yield from empty_tailnet(tmp_path_factory, "login")


@pytest.fixture(scope="module")
def nodes_tailnet(tmp_path_factory):
    yield from empty_tailnet(tmp_path_factory, "nodes", node={"ephemeral": {"inactivity_timeout": "3s"}})


@pytest.fixture(scope="module")
def dns_net(tmp_path_factory):
    """Extra records, and split DNS for corp.example to a DNS server of its own on host corpdns
    (the lab's second host, so its address is known before the server starts)."""
    corp_ip = "10.77.0.3"

    def corp_dns(net):
        assert net.lab.add_host("corpdns") == corp_ip
        net.serve_dns("corpdns", {"db.corp.example": "192.0.2.55"})

    dns = {"extra_records": [{"name": "grafana.ts.test", "type": "A", "value": "100.64.0.99"}],
           "nameservers": {"split": {"corp.example": [corp_ip]}}}
    yield from empty_tailnet(tmp_path_factory, "dns", setup=corp_dns, dns=dns)


@pytest.fixture(scope="module")
def derper_tailnet(tmp_path_factory):
    """Nodes of every version whose only DERP region is Tailscale's derper (on host "derper",
    the lab's second host), verifying clients against our /verify; UDP between nodes dropped."""
    derper_ip = "10.77.0.3"
    derper = clients.derper_path()
    skip_or_fail(None if derper.exists() else f"{derper} is missing: run `make clients`")

    def start_derper(net):
        assert net.lab.add_host("derper") == derper_ip
        net.start_derper(derper, derper_ip)

    region = {"RegionID": 901, "RegionCode": "tsderper", "RegionName": "Tailscale derper",
              "Nodes": [{"Name": "901a", "RegionID": 901, "HostName": derper_ip, "IPv4": derper_ip,
                         "DERPPort": 443, "STUNPort": -1, "InsecureForTests": True}]}
    yield from mixed_tailnet(tmp_path_factory, block_udp=True, setup=start_derper,
                             derp={"server": {"enabled": False}, "regions": [region]})


@pytest.fixture(scope="module")
def cert_net(tmp_path_factory):
    """A tailnet whose base domain ends in .ts.net, with Debian's pebble (ACME) on host "ctl"
    validating DNS-01 against our DNS server; `net.acme_env` is what a node's tailscaled needs to
    use it (TS_DEBUG_ACME_DIRECTORY_URL, and trust in pebble's listener and issuing CAs)."""
    if shutil.which("pebble") is None:
        skip_or_fail("Debian's pebble ACME test server is missing (make test installs it)")
    from acmepebble import Pebble

    def start_pebble(net):
        ip = net.server.ip
        pebble = Pebble(net.workdir, f"{ip}:53", host=ip,
                        popen=lambda argv, **kw: net.lab.popen("ctl", argv, **kw), inside=lambda: net.lab.inside("ctl"))
        pebble.start()
        bundle = net.workdir / "acme-trust.pem"
        bundle.write_bytes(pebble.listener_ca.read_bytes() + pebble.issuing_chain())
        net.pebble = pebble
        net.acme_env = {"TS_DEBUG_ACME_DIRECTORY_URL": pebble.directory_url, "SSL_CERT_FILE": str(bundle)}

    yield from empty_tailnet(tmp_path_factory, "cert", setup=start_pebble, dns={"base_domain": "certs.ts.net"})


@pytest.fixture(scope="module")
def apiv2_tailnet(tmp_path_factory):
    """A server whose admin API also listens on TCP (:8081 in its host), the policy in the database:
    for API clients such as Tailscale's (test_apiv2_client.py)."""
    yield from empty_tailnet(tmp_path_factory, "apiv2", admin={"listen_addr": "0.0.0.0:8081"},
                             policy={"mode": "database"})
