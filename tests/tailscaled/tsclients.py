"""Which real Tailscale clients the tests use, and where `make clients` put them.

`make clients` builds `tailscaled` and `tailscale` from tailscale.com at each pinned version with
`go install` into `$TRIOSCALE_CLIENTS_DIR/v<version>/` (default `~/.cache/trioscale/clients`),
outside the repository; the tests only look them up.
"""

from __future__ import annotations

import os
from pathlib import Path


def _versions_file() -> tuple[str, ...]:
    lines = (Path(__file__).with_name("versions.txt")).read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _versions() -> tuple[str, ...]:
    only = os.environ.get("TRIOSCALE_CLIENT_VERSIONS")  # e.g. "1.102.5" while developing
    if only:
        return tuple(v.strip() for v in only.split(",") if v.strip())
    return _versions_file()


# versions.txt is the one list (the Makefile reads it too): newest first, oldest supported last.
VERSIONS = _versions()
NEWEST, OLDEST = VERSIONS[0], VERSIONS[-1]


def clients_dir() -> Path:
    default = Path.home() / ".cache" / "trioscale" / "clients"
    return Path(os.environ.get("TRIOSCALE_CLIENTS_DIR", default))


def client_paths(version: str) -> tuple[Path, Path]:
    folder = clients_dir() / f"v{version}"
    return folder / "tailscaled", folder / "tailscale"


def missing(version: str) -> str | None:
    """Why this version cannot run here, or None."""
    for path in client_paths(version):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: run `make clients` (needs Go and the Go module proxy)"
    return None


def derper_path() -> Path:
    """Tailscale's DERP server, built by `make clients` at the newest version."""
    return clients_dir() / f"v{_versions_file()[0]}" / "derper"


def wasm_client() -> tuple[Path, Path, Path] | None:
    """Tailscale's WebAssembly client (built by `make clients` at the newest version), Go's
    wasm_exec.js for it, and the folder holding the `ws` npm package; None if any is missing."""
    folder = clients_dir() / f"v{_versions_file()[0]}"
    wasm, exec_js, modules = folder / "tsconnect.wasm", folder / "wasm_exec.js", clients_dir() / "npm" / "node_modules"
    if wasm.exists() and exec_js.exists() and (modules / "ws").is_dir():
        return wasm, exec_js, modules
    return None
