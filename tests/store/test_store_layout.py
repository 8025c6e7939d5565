"""Each database driver stays in its one module: the operations, rows and Store methods are shared by
both stores only while none of them knows a driver (and asyncio must not leak into Trio code)."""

from __future__ import annotations

import ast
from pathlib import Path

import trioscale.shared.store as store_pkg

STORE_DIR = Path(store_pkg.__file__).resolve().parent

#: top-level module -> the one store module allowed to import it
CONFINED = {
    "asyncpg": "postgres.py",
    "trio_asyncio": "postgres.py",
    "asyncio": "postgres.py",
    "sqlite3": "sqlite.py",
}


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_drivers_are_confined_to_their_store_module():
    files = sorted(STORE_DIR.rglob("*.py"))
    assert any(f.parent.name == "ops" for f in files), "the operations package is missing"
    misplaced = [
        f"{f.relative_to(STORE_DIR)} imports {root}"
        for f in files
        for root in sorted(_imported_roots(f) & CONFINED.keys())
        if f.relative_to(STORE_DIR).as_posix() != CONFINED[root]
    ]
    assert misplaced == []
