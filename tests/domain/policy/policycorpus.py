"""Where the policy conformance cases are read from.

The corpus is captured into ../shared/conformance/policy next to the repository; when that
working copy is there it is used as it is. Elsewhere (a fresh clone, CI) the copy vendored in
corpus/policy.tar.xz is unpacked, once per process, into a temporary directory removed at exit.
With neither, `corpus_dir` raises: the conformance tests fail rather than skip, so a checkout
without its data cannot pass for one that conforms.
"""

from __future__ import annotations

import atexit
import shutil
import tarfile
import tempfile
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
#: the working copy the corpus is captured into (outside the repository)
SHARED = REPO_ROOT.parent / "shared" / "conformance" / "policy"
#: the vendored copy: `tar -C ../shared/conformance -c policy | xz -9` (corpus/README.md)
TARBALL = Path(__file__).with_name("corpus") / "policy.tar.xz"


class CorpusMissing(FileNotFoundError):
    pass


@cache
def corpus_dir() -> Path:
    """The folder holding <category>/<case>.json."""
    if SHARED.is_dir():
        return SHARED
    if not TARBALL.is_file():
        raise CorpusMissing(f"the policy conformance corpus is neither at {SHARED} nor at {TARBALL}")
    root = Path(tempfile.mkdtemp(prefix="trioscale-policy-corpus-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    # the "data" filter refuses links and paths outside `root`; Python before 3.11.4 lacks it,
    # and the tarball is our own
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(TARBALL, "r:xz") as tar:
        tar.extractall(root, **safe)
    return root / "policy"
