"""Run one coverage-guided (atheris/libFuzzer) fuzz target by hand, or briefly from pytest.

    .venv/bin/python tests/fuzz/atheris_run.py TARGET --runs 1000000      # one target
    .venv/bin/python tests/fuzz/atheris_run.py --list                     # the targets

The targets live in tests/fuzz/targets/fuzz_<TARGET>.py; each has ``MAX_LEN``, ``INSTRUMENT``
(module prefixes to instrument), ``seeds()``, ``test_one_input(data)`` and optionally
``DICTIONARY`` (tokens for libFuzzer's -dict).  The parent process starts
a child that runs libFuzzer (so a crash, a hang or the fuzzer's own exit never loses the summary),
keeps its output in ``--workdir`` and prints one summary line: inputs run, seconds, exec/s, edges
(cov), features (ft), corpus size, crashes.  A crashing input is saved as ``crash-*`` in the workdir;
reproduce it with ``atheris_run.py TARGET --reproduce FILE``.  Exit status: 0 clean, 1 crash or error.

Seeds come from the harness (nothing large in git); the working corpus is kept in
``--workdir``/corpus so a later run with the same workdir continues where the last one stopped.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS_DIR = HERE / "targets"
TARGETS = sorted(p.stem[len("fuzz_"):] for p in TARGETS_DIR.glob("fuzz_*.py"))


def _load(target: str):
    """Import the harness with its code under test instrumented for coverage."""
    import atheris

    sys.path.insert(0, str(TARGETS_DIR))
    # The harness declares what to instrument before importing it; nothing from trioscale may be
    # imported before this point, or it would be cached uninstrumented.
    spec_src = (TARGETS_DIR / f"fuzz_{target}.py").read_text()
    match = re.search(r"^INSTRUMENT = (\(.*?\))$", spec_src, re.M | re.S)
    include = list(ast.literal_eval(match.group(1))) if match else ["trioscale"]
    with atheris.instrument_imports(include=include + [f"fuzz_{target}", "_fuzzutil"]):
        return importlib.import_module(f"fuzz_{target}")


def _escape(token: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in token)


def _child(args: argparse.Namespace) -> None:
    import atheris

    mod = _load(args.target)
    argv = [sys.argv[0]]
    if args.reproduce:
        argv += [args.reproduce]
    else:
        corpus = Path(args.workdir) / "corpus"
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(mod.seeds()):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
        argv += [
            str(corpus),
            f"-runs={args.runs}",
            f"-max_len={args.max_len or mod.MAX_LEN}",
            "-print_final_stats=1",
            f"-artifact_prefix={Path(args.workdir)}/",
            "-timeout=20",
            "-rss_limit_mb=1536",
            f"-seed={args.seed}",
            "-reload=0",
        ]
        if args.seconds:
            argv.append(f"-max_total_time={args.seconds}")
        tokens = getattr(mod, "DICTIONARY", ())
        if tokens:
            # libFuzzer's dictionary: tokens the C parsers compare against (json, dnslib), which
            # Python-level coverage cannot see, e.g. NaN or a 5,000-digit number.
            dict_path = Path(args.workdir) / "tokens.dict"
            dict_path.write_text("".join(f'"{_escape(t)}"\n' for t in tokens))
            argv.append(f"-dict={dict_path}")
    atheris.Setup(argv, mod.test_one_input)
    atheris.Fuzz()


_DONE = re.compile(r"^#(\d+)\s+(?:DONE|pulse|NEW|REDUCE|INITED)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")


def summarize(output: str, workdir: Path, elapsed: float) -> dict:
    """The figures of a finished run, from libFuzzer's output."""
    last = None
    stats: dict[str, int] = {}
    for line in output.splitlines():
        m = _DONE.match(line)
        if m:
            last = m
        m = _STAT.match(line)
        if m:
            stats[m.group(1)] = int(m.group(2))
    crashes = sorted(p.name for p in workdir.glob("*") if p.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    runs = stats.get("number_of_executed_units", int(last.group(1)) if last else 0)
    return {
        "inputs": runs,
        "seconds": round(elapsed, 1),
        "exec_per_s": stats.get("average_exec_per_sec") or (int(runs / elapsed) if elapsed else 0),
        "cov": int(last.group(2)) if last else 0,
        "ft": int(last.group(3)) if last else 0,
        "corpus": int(last.group(4)) if last else 0,
        "peak_rss_mb": stats.get("peak_rss_mb", 0),
        "crashes": crashes,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", nargs="?", help=f"one of {', '.join(TARGETS)}")
    ap.add_argument("--runs", type=int, default=100_000, help="inputs to run (libFuzzer -runs)")
    ap.add_argument("--seconds", type=int, default=0, help="stop after this long (0: no limit)")
    ap.add_argument("--max-len", type=int, default=0, help="override the target's max input length")
    ap.add_argument("--seed", type=int, default=1, help="libFuzzer random seed")
    ap.add_argument("--workdir", help="corpus, crashes and log (default: a new temporary directory)")
    ap.add_argument("--reproduce", metavar="FILE", help="run one saved input and show its traceback")
    ap.add_argument("--list", action="store_true", help="list the targets")
    ap.add_argument("--quiet", action="store_true", help="print only the summary line")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    if args.target not in TARGETS:
        ap.error(f"unknown target {args.target!r}; targets: {', '.join(TARGETS)}")
    if args.child or args.reproduce:
        args.workdir = args.workdir or tempfile.mkdtemp(prefix=f"fuzz-{args.target}-")
        _child(args)
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"fuzz-{args.target}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), args.target, "--child", "--runs", str(args.runs),
           "--seconds", str(args.seconds), "--max-len", str(args.max_len), "--seed", str(args.seed),
           "--workdir", str(workdir)]
    log_path = workdir / "fuzz.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONHASHSEED="0"))
        rc = proc.wait()
    elapsed = time.monotonic() - started
    output = log_path.read_text(errors="replace")
    if not args.quiet:
        tail = [ln for ln in output.splitlines() if not ln.startswith("#")]
        print("\n".join(tail[-40:]))
    s = summarize(output, workdir, elapsed)
    ok = rc == 0 and not s["crashes"]
    print(
        f"target={args.target} inputs={s['inputs']} seconds={s['seconds']} exec/s={s['exec_per_s']} "
        f"cov={s['cov']} ft={s['ft']} corpus={s['corpus']} peak_rss_mb={s['peak_rss_mb']} "
        f"crashes={len(s['crashes'])} rc={rc} workdir={workdir}"
    )
    for name in s["crashes"]:
        print(f"  {workdir / name}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
