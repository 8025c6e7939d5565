"""trioscale/allocator.py: with the thresholds raised, large buffers reuse the process's pages
instead of faulting fresh ones in each time (counted in page faults, not timed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# builds and frees a 1 MiB buffer 50 times, and prints the minor page faults that took
PROBE = """
import resource, sys
from trioscale import allocator
if sys.argv[1] == "tuned":
    assert allocator.keep_large_buffers()
payload = b"x" * (1 << 20)
for _ in range(3):
    bytes(bytearray(payload))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    bytes(bytearray(payload))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffers_keep_their_pages_once_the_thresholds_are_raised():
    plain, tuned = faults("plain"), faults("tuned")
    assert plain >= 50 * 256  # each 1 MiB buffer faulted in anew: 256 pages and more, every time
    assert tuned < 256  # the pages stay in the process
