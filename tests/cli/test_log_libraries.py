"""The one formatter takes every library's lines too: hypercorn's error log even with its default
("-": a stream handler of its own), Quart's, asyncpg's, trio-asyncio's, Python's warnings; each
carries the request id of the task that wrote it."""

from __future__ import annotations

import json
import logging
import warnings
from io import StringIO

import trio

from trioscale.log import setup_logging
from trioscale.shared.net.requestid import REQUEST_ID, begin_request


def test_library_lines_and_warnings_come_out_in_the_one_format(capsys) -> None:
    out = StringIO()
    setup_logging("debug", "json", stream=out)
    try:
        from hypercorn.config import Config

        hc = Config()  # errorlog "-": hypercorn would print its own plain line to stderr

        async def main() -> None:
            await hc.log.error("hypercorn says %s", "hi")

        trio.run(main)
        logging.getLogger("quart.app").error("quart says hi")
        logging.getLogger("asyncpg").warning("asyncpg says hi")
        logging.getLogger("trio_asyncio").warning("trio-asyncio says hi")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
        entries = [json.loads(line) for line in out.getvalue().splitlines()]
        by_logger = {e["logger"]: e["msg"] for e in entries}
        assert by_logger["hypercorn.error"] == "hypercorn says hi"
        assert by_logger["quart.app"] == "quart says hi"
        assert by_logger["asyncpg"] == "asyncpg says hi"
        assert by_logger["trio_asyncio"] == "trio-asyncio says hi"
        assert "a deprecation" in by_logger["py.warnings"]
        captured = capsys.readouterr()
        assert "hypercorn says" not in captured.err and "hypercorn says" not in captured.out
    finally:
        setup_logging("info", "text")
        logging.captureWarnings(False)


def test_lines_carry_the_request_id_of_their_task() -> None:
    out = StringIO()
    setup_logging("debug", "text", stream=out)
    log = logging.getLogger("trioscale.test")
    seen: dict[str, str] = {}
    begun = {"one": trio.Event(), "two": trio.Event()}

    async def request(name: str, given: str | None) -> None:
        seen[name] = begin_request(given)
        begun[name].set()
        # both requests have begun before either logs: their ids must not mix
        await begun["two" if name == "one" else "one"].wait()
        log.info("serving %s", name)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "one", None)
            nursery.start_soon(request, "two", "proxy-7")
        log.info("outside any request")

    try:
        trio.run(main)
        lines = out.getvalue().splitlines()
        assert seen["two"] == "proxy-7" and len(seen["one"]) == 12
        assert any(f"trioscale.test [{seen['one']}]: serving one" in line for line in lines)
        assert any("trioscale.test [proxy-7]: serving two" in line for line in lines)
        assert any(line.endswith("trioscale.test: outside any request") for line in lines)
        assert begin_request('bad" id\n') != 'bad" id\n'
        REQUEST_ID.set("")
    finally:
        setup_logging("info", "text")
