"""Run the import-linter contracts in pyproject.toml over a staged copy of the package.

`make test` runs plain `lint-imports` in the repository: trioscale/services and trioscale/shared are
symlinks to the top-level folders, so it reads the package laid out as installed. This module copies
the three folders into one `trioscale` package in a temporary directory, so tests/cli/test_layers.py
can add a deliberately wrong import there (`check`) and show the contracts fail, without touching
the working tree.

    python tools/lint_layers.py            # exit status 0 when every contract holds
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"trioscale": "trioscale", "trioscale/services": "services", "trioscale/shared": "shared"}


def stage(into: Path) -> Path:
    """Copy the package's Python files into `into/trioscale`, laid out as installed."""
    for dest, folder in FOLDERS.items():
        for src in (REPO / folder).rglob("*.py"):
            target = into / dest / src.relative_to(REPO / folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return into


def check(extra: Mapping[str, str] = {}) -> subprocess.CompletedProcess:
    """Run lint-imports on a staged copy; `extra` adds or replaces files (path under trioscale/ → text)."""
    with tempfile.TemporaryDirectory(prefix="trioscale-layers-") as tmp:
        root = stage(Path(tmp))
        for rel, text in extra.items():
            path = root / "trioscale" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        lint = Path(sys.executable).with_name("lint-imports")
        return subprocess.run(
            [str(lint), str(REPO / "pyproject.toml"), "--no-cache"],
            cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True,
        )


def main() -> int:
    result = check()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
