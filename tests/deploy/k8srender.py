"""Renders deploy/k8s's overlays as an operator would, for the tests beside this file.

Each overlay's Secrets come from files that are never in git (deploy/k8s/make-secrets.sh); here the
tree is copied to a temporary folder and given throwaway files, then rendered with `kubectl
kustomize` (or the pinned kustomize `make kustomize` builds where kubectl's is too old).
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
IN_CI = os.environ.get("CI") == "true"


def kustomize_command() -> list[str] | None:
    """`kubectl kustomize` when its kustomize is v5, else the cached pinned build, else None."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60)
        if re.search(r"^Kustomize Version: v5\.", out.stdout, re.M):
            return [kubectl, "kustomize"]
    version = re.search(r"^KUSTOMIZE_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    if version:
        cached = Path.home() / ".cache" / "trioscale" / f"kustomize-{version[1]}" / "kustomize"
        if os.access(cached, os.X_OK):
            return [str(cached), "build"]
    return None


def copy_tree(dest: Path) -> Path:
    """deploy/k8s without any secrets/ folder a developer may have made for a real cluster."""
    def skip(folder: str, names: list[str]) -> list[str]:
        return ["secrets"] if Path(folder).parent.name == "overlays" and "secrets" in names else []

    shutil.copytree(K8S, dest, ignore=skip)
    return dest


def self_signed(host: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class Rendered:
    """One overlay rendered: its objects, and the throwaway secret files it was given."""

    name: str
    docs: list[dict[str, Any]]
    secret_files: dict[str, bytes] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return found

    def workloads(self) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob")]


def render(kustomize: list[str], overlay_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*kustomize, str(overlay_dir)], capture_output=True, text=True, timeout=120)


def give_secrets(tree: Path, overlay: str, scratch: Path) -> dict[str, bytes]:
    """Run make-secrets.sh for `overlay` with a throwaway password and certificate; the files it made."""
    scratch.mkdir(parents=True, exist_ok=True)
    password = scratch / "postgres_password"
    password.write_bytes(os.urandom(18).hex().encode())
    cert, key = self_signed("derp.test.invalid")
    (scratch / "derp.crt").write_bytes(cert)
    (scratch / "derp.key").write_bytes(key)
    subprocess.run(
        [str(tree / "make-secrets.sh"), overlay, "--postgres-password-file", str(password),
         "--derp-cert", str(scratch / "derp.crt"), "--derp-key", str(scratch / "derp.key")],
        check=True, capture_output=True, timeout=60,
    )
    return {p.name: p.read_bytes() for p in (tree / "overlays" / overlay / "secrets").iterdir()}
