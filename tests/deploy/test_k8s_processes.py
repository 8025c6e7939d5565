"""The single overlay's containers, run as the kubelet would run them (same arguments, environment,
ConfigMap and Secret files), against a throwaway PostgreSQL: each process's liveness probe path
answers on its metrics listener and its readiness probe path turns ready. What differs from a pod
is only what a pod has of its own: its volumes are folders here, every address it binds is a free
loopback port, and the ExternalName Service `postgres` is the throwaway cluster."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from k8sobjects import by_name, container_env, pod_spec, process_config
from pgfixtures import pg_cluster  # noqa: F401  (the session cluster fixture)
from util import free_port, free_tcp_udp_port, free_udp_port

from trioscale.config import env_name

pytestmark = pytest.mark.postgres

TRIOSCALE = Path(sys.executable).with_name("trioscale")


def materialize(docs, workload, container, root: Path) -> dict[str, Path]:
    """Each of the container's mounts as a folder (or file) under `root`: mountPath -> local path."""
    spec = pod_spec(workload)
    config_maps, secrets = by_name(docs, "ConfigMap"), by_name(docs, "Secret")
    out = {}
    for i, mount in enumerate(container.get("volumeMounts", [])):
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        local = root / f"volume{i}-{mount['name']}"
        files: dict[str, bytes] = {}
        if "configMap" in volume:
            files = {k: v.encode() for k, v in config_maps[volume["configMap"]["name"]]["data"].items()}
        elif "secret" in volume:
            data = {k: base64.b64decode(v) for k, v in secrets[volume["secret"]["secretName"]]["data"].items()}
            items = volume["secret"].get("items")
            files = {i["path"]: data[i["key"]] for i in items} if items else data
        local.mkdir(parents=True)
        for name, content in files.items():
            (local / name).write_bytes(content)
            (local / name).chmod(0o600)
        out[mount["mountPath"]] = local / mount["subPath"] if "subPath" in mount else local
    return out


def local_path(mounts: dict[str, Path], path: Path) -> str:
    for mount_path, local in mounts.items():
        if path == Path(mount_path) or Path(mount_path) in path.parents:
            return str(local / path.relative_to(mount_path))
    raise AssertionError(f"{path} is on no volume of the container (the root file system is read-only)")


def pod_local_env(docs, workload, container, root: Path, pg) -> tuple[dict[str, str], int]:
    """The container's environment, with its pod's own addresses, folders and database made local."""
    cfg = process_config(docs, workload, container)
    mounts = materialize(docs, workload, container, root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIOSCALE_")}
    env.update(container_env(docs, container))
    metrics = free_port()
    env.update({
        "TRIOSCALE_CONFIG": str(mounts["/etc/trioscale/config.yaml"]),
        env_name("data_dir"): local_path(mounts, cfg.data_dir),
        env_name("metrics_listen_addr"): f"127.0.0.1:{metrics}",
        env_name("listen_addr"): f"127.0.0.1:{free_port()}",
        env_name("admin.listen_addr"): f"127.0.0.1:{free_port()}",
        env_name("derp.server.listen_addr"): f"127.0.0.1:{free_port()}",
        env_name("derp.server.stun_listen_addr"): f"127.0.0.1:{free_udp_port()}",
        env_name("dns.listen_addr"): f"127.0.0.1:{free_tcp_udp_port()}",
        env_name("database.postgres.host"): pg.host,
        env_name("database.postgres.port"): str(pg.port),
        env_name("database.postgres.user"): pg.user,
        env_name("database.postgres.name"): pg.database,
        env_name("database.postgres.ssl"): "disable",  # the throwaway cluster has no TLS
    })
    shape = container["args"][0]
    if shape == "coord":
        env[env_name("noise.private_key_path")] = local_path(mounts, cfg.noise.private_key_path)
    if shape == "derp":
        env[env_name("derp.server.tls_cert_path")] = local_path(mounts, cfg.derp.server.tls_cert_path)
        env[env_name("derp.server.tls_key_path")] = local_path(mounts, cfg.derp.server.tls_key_path)
    return env, metrics


def get(port: int, path: str) -> int | None:
    """The status of GET `path` on 127.0.0.1:`port`, or None while nothing listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return None
    return int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else None


def wait_status(proc: subprocess.Popen, port: int, path: str, want: int, deadline: float) -> None:
    """Poll the probe as a kubelet would (a bounded deadline); fail at once if the process exits."""
    status = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        status = get(port, path)
        if status == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path}: {status}, not {want}")


def test_every_container_of_the_single_overlay_passes_its_probes(rendered, pg_cluster, tmp_path):  # noqa: F811
    docs = rendered["single"].docs
    started: list[tuple[str, subprocess.Popen, int, dict]] = []
    try:
        for workload in rendered["single"].workloads():
            for container in pod_spec(workload)["containers"]:
                name = f"{workload['metadata']['name']}-{container['name']}"
                env, metrics = pod_local_env(docs, workload, container, tmp_path / name, pg_cluster)
                log = open(tmp_path / f"{name}.log", "wb")
                proc = subprocess.Popen([str(TRIOSCALE), *container["args"]], env=env, cwd=tmp_path,
                                        stdout=log, stderr=subprocess.STDOUT)
                log.close()
                started.append((name, proc, metrics, container))
        deadline = time.monotonic() + 90
        for name, proc, metrics, container in started:
            try:
                wait_status(proc, metrics, container["livenessProbe"]["httpGet"]["path"], 200, deadline)
                wait_status(proc, metrics, container["readinessProbe"]["httpGet"]["path"], 200, deadline)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}\n{(tmp_path / f'{name}.log').read_text()[-3000:]}") from None
        assert {c["args"][0] for _, _, _, c in started} == {"coord", "derp", "stun", "dns"}
    finally:
        for _, proc, _, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, _, _ in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for name, proc, _, _ in started:
        assert proc.returncode == 0, f"{name} exited with {proc.returncode}: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
