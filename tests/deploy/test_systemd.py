"""deploy/systemd: the units carry at least the hardening Headscale's own unit ships, systemd reads
them without a complaint, systemd's own exposure score is no worse than that set's, and the paths
the units give the process agree with the example configuration they point at."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trioscale.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = ("trioscale.service", "trioscale@.service")
IN_CI = os.environ.get("CI") == "true"
TRIOSCALE = Path(sys.executable).with_name("trioscale")

#: the [Service] hardening of Headscale v0.29's packaging/systemd/headscale.service: the floor
HEADSCALE_HARDENING = {
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "LockPersonality": "true",
    "NoNewPrivileges": "true",
    "PrivateDevices": "true",
    "PrivateMounts": "true",
    "PrivateTmp": "true",
    "ProcSubset": "pid",
    "ProtectClock": "true",
    "ProtectControlGroups": "true",
    "ProtectHome": "true",
    "ProtectHostname": "true",
    "ProtectKernelLogs": "true",
    "ProtectKernelModules": "true",
    "ProtectKernelTunables": "true",
    "ProtectProc": "invisible",
    "ProtectSystem": "strict",
    "RemoveIPC": "true",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "true",
    "RestrictRealtime": "true",
    "RestrictSUIDSGID": "true",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": ["@system-service", "~@privileged"],
    "UMask": "0077",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} not found")
        pytest.skip(f"{name} not found (systemd's tools)")
    return path


def service_section(text: str) -> dict[str, list[str]]:
    """[Service] settings; a key given several times keeps every value, in order."""
    out: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def runnable_copy(unit: str, dest: Path, name: str | None = None) -> Path:
    """The unit with ExecStart's binary replaced by this checkout's (systemd-analyze verify checks it exists)."""
    text = (SYSTEMD / unit).read_text().replace("/usr/local/bin/trioscale", str(TRIOSCALE))
    path = dest / (name or unit)
    path.write_text(text)
    return path


@pytest.mark.parametrize("unit", UNITS)
def test_hardening_is_at_least_headscales(unit):
    settings = service_section((SYSTEMD / unit).read_text())
    for key, value in HEADSCALE_HARDENING.items():
        wanted = value if isinstance(value, list) else [value]
        assert settings.get(key) == wanted, f"{unit}: {key}={settings.get(key)}, Headscale has {wanted}"
    assert settings["User"] == ["trioscale"] and settings["StateDirectory"] == ["trioscale"]


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_reads_the_unit_without_a_complaint(unit, tmp_path):
    analyze = tool("systemd-analyze")
    path = runnable_copy(unit, tmp_path, "trioscale@coord.service" if "@" in unit else None)
    proc = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=120)
    complaints = [line for line in proc.stderr.splitlines() if path.name in line or "trioscale" in line]
    assert proc.returncode == 0 and not complaints, proc.stderr


def exposure(analyze: str, path: Path) -> float:
    proc = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(path)],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match[1])


def test_exposure_is_no_worse_than_headscales_set(tmp_path):
    analyze = tool("systemd-analyze")
    ours = exposure(analyze, runnable_copy("trioscale.service", tmp_path))
    theirs_dir = tmp_path / "floor"
    theirs_dir.mkdir()
    lines = ["[Unit]", "Description=the floor", "[Service]", "Type=simple", "User=trioscale",
             f"ExecStart={TRIOSCALE} serve", "StateDirectory=trioscale"]
    for key, value in HEADSCALE_HARDENING.items():
        lines += [f"{key}={v}" for v in (value if isinstance(value, list) else [value])]
    floor = theirs_dir / "floor.service"
    floor.write_text("\n".join(lines) + "\n")
    assert ours <= exposure(analyze, floor)


def test_the_sysusers_file_makes_the_units_user(tmp_path):
    sysusers = tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    subprocess.run([sysusers, f"--root={tmp_path}", str(SYSTEMD / "trioscale.sysusers")],
                   check=True, capture_output=True, timeout=60)
    entry = next(line for line in (tmp_path / "etc" / "passwd").read_text().splitlines() if line.startswith("trioscale:"))
    assert entry.split(":")[5:] == ["/var/lib/trioscale", "/usr/sbin/nologin"]


def test_the_example_configuration_fits_the_units(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TRIOSCALE_"):
            monkeypatch.delenv(name)
    cfg = load_config(SYSTEMD / "config.yaml")
    settings = service_section((SYSTEMD / "trioscale.service").read_text())
    (exec_start,) = settings["ExecStart"]
    assert exec_start.split()[:3] == ["/usr/local/bin/trioscale", "--config", "/etc/trioscale/config.yaml"]
    assert str(cfg.data_dir) == "/var/lib/trioscale" == settings["WorkingDirectory"][0]
    # the unix socket is in the unit's RuntimeDirectory, the only other place it may write
    assert cfg.unix_socket.parent == Path("/run") / settings["RuntimeDirectory"][0]
    template = service_section((SYSTEMD / "trioscale@.service").read_text())
    assert template["ExecStart"] == ["/usr/local/bin/trioscale --config /etc/trioscale/config.yaml %i"]

