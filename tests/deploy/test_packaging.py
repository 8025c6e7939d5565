"""`pipx install .` works: the wheel built from exactly what the image's build stage copies holds
every module once and the `trioscale` command, and installed into a fresh virtualenv with nothing
but its declared dependencies it runs (`--version`, `configtest` on the shipped example
configurations) and serves /health. Offline: the wheel is built without build isolation and the
dependencies are this checkout's installed distributions, linked in one by one, so an import the
package does not declare fails here as it would after `pipx install`."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build_stage_sources() -> list[str]:
    """What the Dockerfile's build stage copies into the source folder (its COPY lines)."""
    text = (ROOT / "Dockerfile").read_text()
    build = text.split("\nFROM ", 2)[1]
    sources = []
    for line in build.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            sources += [s.rstrip("/") for s in line.split()[1:-1]]
    return sources


def closure(names: list[str]) -> set[str]:
    """The installed distributions `names` need, with theirs (markers for this interpreter, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def link_distributions(names: set[str], dest: Path) -> None:
    """Each distribution's top-level files and folders (from its RECORD), symlinked into `dest`."""
    dest.mkdir()
    for name in names:
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        for entry in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")} - {"__pycache__"}:
            if not (dest / entry).exists():
                (dest / entry).symlink_to(base / entry)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    for source in build_stage_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, src / source, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / source)
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "--wheel-dir", str(wheels), str(src)], check=True, timeout=300)
    (wheel,) = wheels.glob("trioscale-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, timeout=300)
    meta = md.PathDistribution(next((venv / "lib").glob("python*/site-packages/trioscale-*.dist-info")))
    declared = [Requirement(r).name for r in meta.requires or [] if "extra ==" not in r]
    link_distributions(closure(declared), tmp / "deps")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz_declared_dependencies.pth").write_text(str(tmp / "deps") + "\n")
    return venv


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRIOSCALE_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(extra)
    return env


def test_the_wheel_holds_every_module_once_and_the_command(installed):
    (wheel,) = installed.parent.glob("wheels/trioscale-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert len(names) == len(set(names))
    expected = set()
    for folder, package in (("trioscale", "trioscale"), ("services", "trioscale/services"), ("shared", "trioscale/shared")):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder)
            if folder == "trioscale" and rel.parts[0] in ("services", "shared"):
                continue  # the symlinks to the top-level folders
            expected.add(f"{package}/{rel.as_posix()}")
    missing = expected - set(names)
    assert not missing, f"not in the wheel: {sorted(missing)[:10]}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "trioscale = trioscale.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_command_runs_from_the_fresh_environment(installed):
    trioscale = installed / "bin" / "trioscale"
    out = subprocess.run([str(trioscale), "--version"], capture_output=True, text=True, env=clean_env(), timeout=120, cwd=installed)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"trioscale {VERSION}"
    # from another folder: in this checkout's root `python -c` would import the checkout's package
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import trioscale.services.coord.service as m; print(m.__file__)"],
                           capture_output=True, text=True, env=clean_env(), timeout=120, cwd=installed)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
    for example in ("deploy/docker/config.yaml", "deploy/systemd/config.yaml"):
        check = subprocess.run([str(trioscale), "configtest", "-c", str(ROOT / example)],
                               capture_output=True, text=True, env=clean_env(), timeout=120, cwd=installed)
        assert check.returncode == 0 and "config OK" in check.stdout, f"{example}: {check.stdout}{check.stderr}"


def test_the_installed_stun_process_answers_health(installed, tmp_path):
    """One process shape from the fresh install, up to its health endpoint, stopped by its PID."""
    env = clean_env(
        TRIOSCALE_DATA_DIR=str(tmp_path / "data"),
        TRIOSCALE_DERP_SERVER_STUN_LISTEN_ADDR="127.0.0.1:0",
        TRIOSCALE_METRICS_LISTEN_ADDR="127.0.0.1:0",
    )
    proc = subprocess.Popen([str(installed / "bin" / "trioscale"), "stun"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        address = None
        lines = []
        for line in proc.stdout:  # the listener logs its address once bound
            lines.append(line)
            match = re.search(r"on http://(127\.0\.0\.1:\d+)/metrics", line)
            if match:
                address = match[1]
                break
        assert address, "".join(lines)
        host, port = address.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.returncode

