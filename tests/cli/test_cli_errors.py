"""With -o json|json-line|yaml the CLI prints its errors in that format too, as Headscale's
(`{"error": "..."}` on stderr, exit 1; 2 for a usage mistake), for every kind of failure: a refusal
by the API, a server that is not there, a bad flag, a bad configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from trioscale.cli.root import output_asked
from util import TrioscaleServer, free_ports_config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrioscaleServer]:
    workdir = tmp_path_factory.mktemp("clierr")
    srv = TrioscaleServer(workdir, free_ports_config(workdir / "data"))
    srv.start()
    yield srv
    assert srv.stop() == 0, srv.stderr()[-4000:]


def parse(kind: str, text: str) -> dict:
    if kind == "yaml":
        return yaml.safe_load(text)
    if kind == "json-line":
        assert text.count("\n") == 1, text
    return json.loads(text)


@pytest.mark.parametrize("kind", ["json", "json-line", "yaml"])
def test_api_refusals_in_the_format_asked(server: TrioscaleServer, kind: str) -> None:
    for args in (("users", "create", "bad name!"), ("nodes", "delete", "--identifier", "999"),
                 ("preauthkeys", "create", "--user", "nobody"), ("users", "rename", "--name", "x")):
        for where in ("before", "after"):  # the root's -o, or the command's
            argv = ["-o", kind, *args] if where == "before" else [*args, "--output", kind]
            proc = server.cli(*argv, "--force") if args[1] == "delete" else server.cli(*argv)
            assert proc.returncode in (1, 2), proc
            assert proc.stdout == ""
            doc = parse(kind, proc.stderr)
            assert list(doc) == ["error"] and doc["error"] and not doc["error"].startswith("Error"), proc.stderr
            assert "Traceback" not in proc.stderr


def test_people_still_get_one_line(server: TrioscaleServer) -> None:
    proc = server.cli("users", "create", "bad name!")
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1
    proc = server.cli("users", "create", "bad name!", "-o", "table")
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ")


def test_errors_without_a_server_or_with_bad_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    env = {**os.environ, "TRIOSCALE_CONFIG": str(config)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "trioscale.cli", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, timeout=60)
    proc = run("users", "list", "-o", "json")
    assert proc.returncode == 1 and "cannot reach" in json.loads(proc.stderr)["error"]
    proc = run("-o", "json-line", "users", "list", "--no-such-flag")
    assert proc.returncode == 2 and "no-such-flag" in json.loads(proc.stderr)["error"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("server_url: 12\nlisten_addr: nope\n")
    proc = run("configtest", "-c", str(bad), "-o", "yaml")
    doc = yaml.safe_load(proc.stderr)
    assert proc.returncode == 1 and doc["error"] and len(doc["problems"]) >= 2, proc.stderr


def test_the_asked_format_is_read_from_the_words() -> None:
    assert output_asked(["-o", "json", "users", "list"]) == "json"
    assert output_asked(["users", "list", "--output=yaml"]) == "yaml"
    assert output_asked(["-ojson-line", "users"]) == "json-line"
    assert output_asked(["-o", "json", "users", "list", "-o", "table"]) is None  # the last one wins
    assert output_asked(["users", "create", "--", "-o", "json"]) is None
    assert output_asked(["users", "list", "-o"]) is None
