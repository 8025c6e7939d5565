"""The Dockerfile's rules, read from the file (no Docker daemon runs here or in CI): a pinned base,
two stages, no ADD, a non-root numeric user, one entry point for every process shape, state in the
volume its configuration names, the ports and health check that configuration gives; and a
.dockerignore that lets in what the build copies and nothing private. Where a daemon answers, the
image is built and run with a read-only root file system."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from trioscale.cli.services import COMMANDS
from trioscale.config import config_from_dict
from trioscale.shared.net.addr import split_host_port

ROOT = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


DOCKERFILE = instructions((ROOT / "Dockerfile").read_text())


def args_of(name: str) -> list[str]:
    return [rest for word, rest in DOCKERFILE if word == name]


def final_stage() -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(DOCKERFILE) if word == "FROM"]
    return DOCKERFILE[starts[-1]:]


def image_config() -> dict:
    """deploy/docker/config.yaml, which the image copies to $TRIOSCALE_CONFIG."""
    (copy,) = [rest for word, rest in final_stage() if word == "COPY" and rest.startswith("deploy/docker/")]
    source, dest = copy.split()
    env = " ".join(rest for word, rest in final_stage() if word == "ENV")
    assert f"TRIOSCALE_CONFIG={dest}" in env
    return yaml.safe_load((ROOT / source).read_text())


def test_the_base_image_is_pinned():
    defaults = dict(re.match(r"(\w+)=(\S+)", a).groups() for a in args_of("ARG") if "=" in a)
    froms = args_of("FROM")
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for line in froms:
        image = line.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], image)
        name, _, tag = image.partition("@")[0].rpartition(":")
        pinned_digest = "@sha256:" in image
        assert pinned_digest or (name and re.match(r"\d+\.\d+\.\d+", tag)), f"{image}: pin a version tag or a digest"
        assert tag != "latest"


def test_no_add_and_no_download_in_the_build():
    assert not args_of("ADD"), "COPY only: ADD fetches URLs and unpacks archives"
    for run in args_of("RUN"):
        assert not re.search(r"\b(curl|wget)\b|https?://", run), run


def test_the_process_runs_as_a_numeric_non_root_user():
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    # the deploy manifests run as that same user
    coord = (ROOT / "deploy" / "k8s" / "base" / "coord.yaml").read_text()
    assert f"runAsUser: {uid}" in coord


def test_one_image_runs_every_process_shape():
    (entrypoint,) = args_of("ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == ["trioscale"]
    (cmd,) = args_of("CMD")
    shapes = {c.name for c in COMMANDS}
    assert {"serve", "coord", "derp", "stun", "dns"} <= shapes
    assert yaml.safe_load(cmd) == ["serve"]


def test_state_lives_in_the_volume_and_the_ports_are_the_configurations():
    data = image_config()
    cfg = config_from_dict(data)
    (volume,) = args_of("VOLUME")
    assert yaml.safe_load(volume) == [str(cfg.data_dir)]
    exposed = set(" ".join(args_of("EXPOSE")).split())
    listens = {
        "tcp": [cfg.listen_addr, cfg.derp.server.listen_addr, cfg.metrics_listen_addr, cfg.dns.listen_addr],
        "udp": [cfg.derp.server.stun_listen_addr, cfg.dns.listen_addr],
    }
    for protocol, addrs in listens.items():
        for addr in addrs:
            host, port = split_host_port(addr)
            assert host in ("0.0.0.0", "::"), f"{addr}: a published port needs a non-loopback address"
            assert f"{port}/{protocol}" in exposed, f"{port}/{protocol} not exposed"
    (check,) = args_of("HEALTHCHECK")
    metrics_port = split_host_port(cfg.metrics_listen_addr)[1]
    assert f"127.0.0.1:{metrics_port}/health" in check


def ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches decides."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", "*/"))
               or (pattern.startswith("**/") and fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern[3:])) for p in prefixes):
            result = not negate
    return result


def test_dockerignore_lets_in_what_is_copied_and_keeps_out_what_is_private():
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for word, rest in DOCKERFILE:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert not ignored(patterns, source.rstrip("/")), f"{source} is copied but .dockerignore drops it"
    for private in (".git/config", ".venv/bin/python", "var/noise_private.key", "deploy/k8s/overlays/single/secrets/mesh_key",
                    "tests/conftest.py", "trioscale/__pycache__/config.cpython-311.pyc"):
        assert ignored(patterns, private), f"{private} would be sent to the Docker daemon"
    assert not ignored(patterns, "services/coord/service.py")


@pytest.mark.skipif(
    shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0,
    reason="no Docker daemon answers here (`make image` says the same); the rules above still hold the Dockerfile",
)
def test_the_image_builds_and_runs_read_only(tmp_path):
    tag = "trioscale:test-" + os.urandom(4).hex()
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1200)
    try:
        run = ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", tag]
        out = subprocess.run([*run, "version"], capture_output=True, text=True, check=True, timeout=120)
        assert out.stdout.startswith("trioscale ")
        subprocess.run([*run, "configtest"], check=True, timeout=120)
        whoami = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True, text=True, timeout=120)
        assert whoami.stdout.strip() != "0"
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
