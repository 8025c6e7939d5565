"""Real `tailscaled` + `tailscale` nodes on kernel networking, each a host of its own.

    net = Tailnet(workdir)                       # a netlab Lab; nothing started yet
    srv = net.start_server(**config_overrides)   # `trioscale serve` on host "ctl"
    a = net.add_node("a", "1.102.5")             # host "a": tailscaled with a kernel TUN
    a.up(authkey=key)                            # `tailscale up --login-server … --authkey …`
    a.status()                                   # `tailscale status --json`, parsed
    net.close()                                  # every process by PID, every namespace

Every node runs in its own network namespace (netlab) and its own mount namespace in which a
file of its own is bind-mounted over /etc/resolv.conf, so that `--accept-dns` never touches the
machine's resolver. Clients come from `make clients` (tests/tailscaled/tsclients.py); nothing is
downloaded here.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "multihost"))

from netlab import Lab  # noqa: E402

from tsclients import client_paths  # noqa: E402
from util import ServerCli  # noqa: E402

TRIOSCALE = [sys.executable, "-m", "trioscale.cli"]
CONTROL_PORT = 8080
DERP_PORT = 8443
STUN_PORT = 3478
DNS_PORT = 53
BASE_DOMAIN = "ts.test"

# Hygiene for every client process: nothing leaves for Tailscale's services, no gateway probing.
CLIENT_ENV = {
    "TS_NO_LOGS_NO_SUPPORT": "true",
    "TS_DISABLE_PORTMAPPER": "1",
    "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Like tests/util.py's, but a failing `tailscale` command (an AssertionError from Node.ts)
    is one more "not yet": clients answer errors while they reconnect."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


class Server(ServerCli):
    """`trioscale serve` on lab host "ctl", listening on its lab address."""

    def __init__(self, net: "Tailnet", config: dict[str, Any]) -> None:
        self.net = net
        self.dir = net.workdir / "ctl"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "trioscale.yaml"
        self.cli_cwd = self.dir  # the CLI reaches the server over its unix socket, from any namespace
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "trioscale.log"
        self.proc: subprocess.Popen | None = None
        self.ip = net.lab.ip("ctl")
        self.url = f"http://{self.ip}:{CONTROL_PORT}"

    def start(self) -> "Server":
        log = open(self.log_path, "ab")
        try:
            self.proc = self.net.lab.popen(
                "ctl", [*TRIOSCALE, "--config", str(self.config_path), "serve"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
            )
        finally:
            log.close()
        wait_for(self._healthy, 30, "trioscale to answer /health")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"trioscale exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        with self.net.lab.inside("ctl"), urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
            return resp.status == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def set_policy(self, policy: dict | str) -> None:
        text = policy if isinstance(policy, str) else json.dumps(policy)
        path = self.dir / "policy.hujson"
        path.write_text(text)
        self.cli("policy", "set", "-f", str(path))


class Node:
    """`tailscaled` on a lab host of its own, with the matching `tailscale` CLI."""

    def __init__(self, net: "Tailnet", name: str, version: str, env: dict[str, str] | None = None) -> None:
        self.net = net
        self.extra_env = dict(env or {})
        self.name = name
        self.version = version
        self.tailscaled, self.tailscale_bin = client_paths(version)
        self.dir = net.workdir / name
        (self.dir / "state").mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "tailscaled.sock"
        self.resolv = self.dir / "resolv.conf"
        self.resolv.write_text("# this node's own resolv.conf (bind-mounted in its mount namespace)\n")
        self.log_path = self.dir / "tailscaled.log"
        self.ip = net.lab.add_host(name)
        self.proc: subprocess.Popen | None = None

    def _mount_ns_argv(self, argv: list[str]) -> list[str]:
        # A private mount namespace whose /etc/resolv.conf is this node's own file.
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(self.resolv), *argv]

    def start(self) -> "Node":
        log = open(self.log_path, "ab")
        argv = [
            str(self.tailscaled),
            f"--statedir={self.dir / 'state'}",
            f"--socket={self.socket}",
            "--tun=tailscale0",
            "--port=41641",
            "--no-logs-no-support",
        ]
        try:
            self.proc = self.net.lab.popen(self.name, self._mount_ns_argv(argv), stdout=log,
                                           stderr=subprocess.STDOUT, env=self.env(), cwd=self.dir)
        finally:
            log.close()
        wait_for(lambda: self._alive() and self.socket.exists(), 30, f"{self.name}: tailscaled socket")
        return self

    def env(self) -> dict[str, str]:
        # TS_LOGS_DIR: tailscaled keeps its log configuration there (default /var/lib/tailscale)
        logs = self.dir / "logs"
        logs.mkdir(exist_ok=True)
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "TS_LOGS_DIR": str(logs),
                **CLIENT_ENV, **self.extra_env}

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name}: tailscaled exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ts(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run the `tailscale` CLI against this node's daemon (inside its host)."""
        argv = ["ip", "netns", "exec", self.net.lab.ns(self.name), str(self.tailscale_bin),
                f"--socket={self.socket}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env())
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: tailscale {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def up(self, authkey: str | None = None, *flags: str, timeout: float = 60,
           check: bool = True) -> subprocess.CompletedProcess:
        args = ["up", f"--login-server={self.net.server.url}", *self._defaults(flags), *flags]
        if authkey is not None:
            args.append(f"--authkey={authkey}")
        return self.ts(*args, timeout=timeout, check=check)

    def _defaults(self, flags: tuple[str, ...]) -> list[str]:
        """Our `up` defaults, each unless the caller gave that flag: the lab host's name, no DNS
        changes, no firewall rules (routers and exit nodes turn netfilter on)."""
        given = {f.split("=", 1)[0] for f in flags}
        defaults = {"--hostname": self.name, "--accept-dns": "false", "--netfilter-mode": "off"}
        # --reset: every `up` states the whole configuration, so a second one (after a logout or
        # an expiry) never trips over settings an earlier one left behind
        return [f"{k}={v}" for k, v in defaults.items() if k not in given] + ["--reset"]

    def logout(self) -> None:
        """`tailscale logout`, after `tailscale down` has taken the tunnel's addresses away.

        Logging out of a running client takes tailscale0's addresses away too, and the client's
        link-change handling then closes the connection the logout request is using (a client-side
        race, "use of closed network connection", seen with 1.80.3 and 1.90.9): the first attempt
        fails, and may already have dropped the node key, so a second finds "no nodekey to log out"
        while the server never heard of it and the client stays Stopped instead of NeedsLogin.
        Going down first lets that link change happen before the logout starts."""
        # watch the namespace's address changes (netlink) from before `down`, so the removal
        # cannot happen unseen between a look and the wait
        monitor = subprocess.Popen(["ip", "-n", self.net.lab.ns(self.name), "monitor", "address"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            self.ts("down", check=False)
            deadline = time.monotonic() + 10
            while self._tunnel_has_addresses():
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([monitor.stdout], [], [], left)[0]:
                    break  # not gone in time: log out anyway, as before this wait existed
                if not monitor.stdout.readline():
                    break
        finally:
            monitor.kill()
            monitor.wait()
        for attempt in range(3):
            proc = self.ts("logout", check=False)
            if proc.returncode == 0:
                return
            out = proc.stdout + proc.stderr
            # the attempt the link change cut short may still have dropped the node key locally
            # (LoggedOut is set before the request goes out): the retry then finds none to log out
            if attempt > 0 and "no nodekey to log out" in out:
                return
            if "use of closed network connection" not in out:
                break
        raise AssertionError(f"{self.name}: tailscale logout failed: {proc.stdout}{proc.stderr}")

    def _tunnel_has_addresses(self) -> bool:
        shown = subprocess.run(["ip", "-n", self.net.lab.ns(self.name), "-o", "addr", "show", "dev", "tailscale0"],
                               capture_output=True, text=True)
        # the tailnet's addresses (100.64.0.0/10, fd7a:115c:a1e0::/48), not the link-local one that stays
        return shown.returncode == 0 and re.search(r"inet 100\.|inet6 fd7a:", shown.stdout) is not None

    def up_interactive(self, *flags: str) -> tuple[subprocess.Popen, str]:
        """`tailscale up` without a key: returns the running CLI and the registration id of the URL
        it printed (…/register/<id>). The caller approves it and waits for the CLI to end."""
        argv = ["ip", "netns", "exec", self.net.lab.ns(self.name), str(self.tailscale_bin), f"--socket={self.socket}",
                "up", f"--login-server={self.net.server.url}", *self._defaults(flags), *flags]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env())
        self.net.lab.procs.append((self.name, proc))
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"{self.name}: tailscale up ended without a URL:\n{''.join(seen)}")
            seen.append(line)
            match = re.search(r"/register/([A-Za-z0-9_-]+)", line)
            if match:
                return proc, match.group(1)
        raise AssertionError(f"{self.name}: no login URL within 60 s:\n{''.join(seen)}")

    def user_login(self) -> str:
        """The login name of the user this node is logged in as."""
        st = self.status()
        return st["User"][str(st["Self"]["UserID"])]["LoginName"]

    def status(self) -> dict:
        return json.loads(self.ts("status", "--json").stdout)

    def backend_state(self) -> str:
        return self.status().get("BackendState", "")

    def tailscale_ips(self) -> list[str]:
        return self.status()["Self"].get("TailscaleIPs") or []

    def ipv4(self) -> str:
        return next(ip for ip in self.tailscale_ips() if ":" not in ip)

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A plain command in this node's host (ping, nc, curl …)."""
        return subprocess.run(["ip", "netns", "exec", self.net.lab.ns(self.name), *argv],
                              capture_output=True, text=True, timeout=timeout)

    def block_udp_to_peers(self) -> None:
        """Drop UDP between this host and every lab host but the server's (STUN still answers), so
        peers can only reach each other through the DERP relay."""
        ctl = self.net.server.ip
        rules = (
            "table inet tsl_block {\n"
            "  chain out { type filter hook output priority 0; policy accept;\n"
            f"    ip daddr != {ctl} ip daddr 10.77.0.0/24 meta l4proto udp drop; }}\n"
            "  chain in { type filter hook input priority 0; policy accept;\n"
            f"    ip saddr != {ctl} ip saddr 10.77.0.0/24 meta l4proto udp drop; }}\n"
            "}\n"
        )
        proc = subprocess.run(["ip", "netns", "exec", self.net.lab.ns(self.name), "nft", "-f", "-"],
                              input=rules, capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise AssertionError(f"{self.name}: nft failed: {proc.stderr}")

    def http_get(self, url: str, timeout: float = 10) -> str:
        """GET `url` from this node's host (through its kernel routes, so through the tailnet)."""
        code = ("import sys,urllib.request\n"
                "print(urllib.request.urlopen(sys.argv[1],timeout=float(sys.argv[2])).read().decode())\n")
        proc = self.run(sys.executable, "-c", code, url, str(timeout), timeout=timeout + 10)
        if proc.returncode != 0:
            raise AssertionError(f"{self.name}: GET {url} failed: {proc.stderr.strip().splitlines()[-1:]}")
        return proc.stdout.strip()

    def resolve(self, name: str, server: str = "100.100.100.100", rdtype: str = "A") -> list[str]:
        """Ask `server` (by default the node's own MagicDNS resolver) for `name`, from this host."""
        code = ("import sys,dns.message,dns.query\n"
                "q=dns.message.make_query(sys.argv[1],sys.argv[3])\n"
                "r=dns.query.udp(q,sys.argv[2],timeout=5)\n"
                "print(' '.join(i.to_text() for a in r.answer for i in a))\n")
        proc = self.run(sys.executable, "-c", code, name, server, rdtype, timeout=20)
        if proc.returncode != 0:
            raise AssertionError(f"{self.name}: query {name} @{server} failed: {proc.stderr.strip()[-300:]}")
        return proc.stdout.split()

    def resolv_conf(self) -> str:
        """What this node wrote to its /etc/resolv.conf (with --accept-dns)."""
        return self.resolv.read_text()

    def stop(self) -> None:
        if self.proc is not None:
            Lab.stop(self.proc)


class Tailnet:
    """A lab with our server on host "ctl" and tailscaled nodes on hosts of their own."""

    instances: list["Tailnet"] = []  # every tailnet built, for reports after a module (conftest.py)

    def __init__(self, workdir: Path) -> None:
        Tailnet.instances.append(self)
        self.workdir = workdir
        self.lab = Lab()
        self.server: Server | None = None
        self.nodes: dict[str, Node] = {}
        self.segments: dict[str, str] = {}
        self.plain_hosts: set[str] = set()
        self._links = 0

    def start_server(self, start: bool = True, **overrides: Any) -> Server:
        """`trioscale serve` on host "ctl" (made here unless another control server made it first);
        with start=False only its configuration is written (the caller starts it)."""
        ip = self.lab.ip("ctl") if "ctl" in self.lab.hosts else self.lab.add_host("ctl")
        data_dir = self.workdir / "ctl" / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "server_url": f"http://{ip}:{CONTROL_PORT}",
            "listen_addr": f"0.0.0.0:{CONTROL_PORT}",
            "data_dir": str(data_dir),
            "derp": {"server": {
                "region_id": 900, "region_code": "lab", "region_name": "lab relay",
                "listen_addr": f"0.0.0.0:{DERP_PORT}", "stun_listen_addr": f"0.0.0.0:{STUN_PORT}",
                "hostname": ip, "ipv4": ip,
            }},
            "dns": {"base_domain": BASE_DOMAIN, "listen_addr": f"{ip}:{DNS_PORT}"},
            "log": {"level": "debug"},
        }
        _merge(config, overrides)
        self.server = Server(self, config)
        return self.server.start() if start else self.server

    def add_node(self, name: str, version: str, start: bool = True, env: dict[str, str] | None = None) -> Node:
        node = Node(self, name, version, env)
        self.nodes[name] = node
        return node.start() if start else node

    def add_segment(self, name: str) -> str:
        """A network of its own (a bridge in a namespace), apart from the lab's: a LAN behind a
        subnet router, or an "internet" behind an exit node. Returns the bridge's namespace."""
        ns = self.lab.ns(f"seg-{name}")
        _run("ip", "netns", "add", ns)
        self.lab.namespaces.append(ns)
        _run("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", ns, "link", "set", "br0", "up")
        self.segments[name] = ns
        return ns

    def attach(self, host: str, segment: str, cidr: str, *, gateway: str | None = None) -> None:
        """Give lab host `host` an interface on `segment` with address `cidr`; `gateway` makes it
        the host's default route. Plain hosts (no tailscaled) are created here when new."""
        seg = self.segments[segment]
        ns = self.lab.ns(host)
        if host not in self.plain_hosts and host not in self.nodes and host != "ctl":
            _run("ip", "netns", "add", ns)
            self.lab.namespaces.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            self.plain_hosts.add(host)
        self._links += 1
        port, dev = f"s{self._links}", f"{segment[:6]}0"
        _run("ip", "-n", seg, "link", "add", port, "type", "veth", "peer", "name", dev, "netns", ns)
        _run("ip", "-n", seg, "link", "set", port, "master", "br0")
        _run("ip", "-n", seg, "link", "set", port, "up")
        _run("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
        _run("ip", "-n", ns, "link", "set", dev, "up")
        if gateway:
            _run("ip", "-n", ns, "route", "add", "default", "via", gateway)

    def forwarding(self, host: str) -> None:
        """Let `host` forward packets (a subnet router or exit node)."""
        _run("ip", "netns", "exec", self.lab.ns(host), "sh", "-c",
             "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")

    def host_run(self, host: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.lab.ns(host), *argv],
                              capture_output=True, text=True, timeout=timeout)

    def serve_http(self, host: str, port: int, text: str) -> None:
        """A tiny HTTP server on `host` answering `text` (stopped with the lab)."""
        code = ("import http.server,sys\n"
                "class H(http.server.BaseHTTPRequestHandler):\n"
                "    def do_GET(self):\n"
                "        b=sys.argv[2].encode(); self.send_response(200)\n"
                "        self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)\n"
                "    def log_message(self,*a): pass\n"
                "http.server.ThreadingHTTPServer(('0.0.0.0',int(sys.argv[1])),H).serve_forever()\n")
        self.lab.popen(host, [sys.executable, "-c", code, str(port), text],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def serve_dns(self, host: str, records: dict[str, str]) -> None:
        """A tiny authoritative DNS server on `host`:53 (UDP) answering A `records` (name -> IP)."""
        code = ("import socket,sys,json\n"
                "from dnslib import DNSRecord,RR,A,QTYPE,RCODE\n"
                "recs=json.loads(sys.argv[1]); s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "s.bind(('0.0.0.0',53))\n"
                "while True:\n"
                "    data,peer=s.recvfrom(4096)\n"
                "    try: q=DNSRecord.parse(data)\n"
                "    except Exception: continue\n"
                "    r=q.reply(); name=str(q.q.qname).rstrip('.').lower()\n"
                "    if name in recs and q.q.qtype==QTYPE.A: r.add_answer(RR(q.q.qname,QTYPE.A,rdata=A(recs[name]),ttl=60))\n"
                "    else: r.header.rcode=RCODE.NXDOMAIN\n"
                "    s.sendto(r.pack(),peer)\n")
        self.lab.popen(host, [sys.executable, "-c", code, json.dumps(records)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start_derper(self, binary: Path, ip: str) -> None:
        """Tailscale's derper on lab host "derper" (TLS on :443 with a self-signed certificate for
        `ip`), admitting only the clients our coordinator's /verify allows."""
        from trioscale.shared.net import tls as tlsutil

        certdir = self.workdir / "derper"
        certdir.mkdir(parents=True, exist_ok=True)
        tlsutil.write_self_signed(certdir / f"{ip}.crt", certdir / f"{ip}.key", [ip])
        self.derper_log_path = certdir / "derper.log"
        log = open(self.derper_log_path, "ab")
        try:
            self.lab.popen("derper", [
                # -c: its key file in our folder (the default is /var/lib/derper)
                str(binary), f"-c={certdir / 'derper.json'}", f"--hostname={ip}", "--certmode=manual",
                f"--certdir={certdir}", "-a", ":443",
                "--stun=false", f"--verify-client-url={self.server.url}/verify",
                "--verify-client-url-fail-open=false",
            ], stdout=log, stderr=subprocess.STDOUT, cwd=certdir)
        finally:
            log.close()

    def derper_log(self) -> str:
        return self.derper_log_path.read_text(errors="replace")

    def start_wasm_client(self, host: str, authkey: str, hostname: str, fetch_url: str) -> Path:
        """Tailscale's WebAssembly client under Node.js on plain lab host `host`: it joins with
        `authkey` (control over WebSocket), then GETs `fetch_url` across the tailnet (through DERP
        over WebSocket). Node trusts our relay's certificate as a browser would trust a real one.
        Returns its log, whose lines the test waits on (run_ipn.js)."""
        from tsclients import wasm_client

        wasm, exec_js, modules = wasm_client()
        if host not in self.lab.hosts:
            self.lab.add_host(host)
        log_path = self.workdir / f"{host}-wasm.log"
        log = open(log_path, "ab")
        script = Path(__file__).with_name("wasm") / "run_ipn.js"
        cert = self.workdir / "ctl" / "data" / "derp_tls_cert.pem"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir), "NODE_EXTRA_CA_CERTS": str(cert)}
        try:
            # argv0 "browser": Go's js/wasm net/http then uses fetch(), as in a browser (run_ipn.js)
            self.lab.popen(host, ["bash", "-c", 'exec -a browser node "$@"', "node", str(script), str(wasm),
                                  str(exec_js), str(modules), self.server.url, authkey, hostname, fetch_url],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        finally:
            log.close()
        return log_path

    def record_capvers(self, into: dict[str, int]) -> None:
        """The capability version each node's client sent, as the server logged it at map time."""
        ids = {str(n.get("id")): n.get("givenName") or n.get("name") for n in self.server.nodes()}
        for match in re.finditer(r"map session of node (\d+) opened \(capver (\d+)\)", self.server.log()):
            node = self.nodes.get(ids.get(match.group(1), ""))
            if node is not None:
                into[node.version] = int(match.group(2))

    def diagnostics(self) -> str:
        parts = []
        if self.server is not None:
            parts.append(f"--- trioscale ---\n{self.server.log()[-5000:]}")
        for node in self.nodes.values():
            parts.append(f"--- {node.name} ({node.version}) ---\n{node.log()[-3000:]}")
        return "\n".join(parts)

    def endpoints_by_capver(self) -> dict[int, set[str]]:
        """The Noise requests (method and path) the server saw, by the client's capability version."""
        seen: dict[int, set[str]] = {}
        if self.server is not None:
            for m in re.finditer(r"noise (\w+) (\S+) \(capver (\d+)\)", self.server.log()):
                seen.setdefault(int(m.group(3)), set()).add(f"{m.group(1)} {m.group(2)}")
        return seen

    def close(self) -> None:
        # tailscaled first (a clean shutdown removes its TUN), then the server, then the namespaces.
        for node in self.nodes.values():
            node.stop()
        self.lab.close()


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def tools_missing() -> str | None:
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"tailscaled tests need {tool}(8)"
    if os.geteuid() != 0:
        return "tailscaled tests need root (network and mount namespaces, kernel TUN)"
    if not Path("/dev/net/tun").exists():
        return "tailscaled tests need /dev/net/tun"
    return None


def skip_or_fail(reason: str | None) -> None:
    """Skip where the machine cannot run real clients; in CI, where Go exists, that is a failure."""
    if reason is None:
        return
    if os.environ.get("CI") and shutil.which("go") and "missing" in reason:
        pytest.fail(reason)
    pytest.skip(reason)
