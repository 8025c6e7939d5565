"""glibc malloc thresholds for a server process.

Python takes every object over 512 bytes from malloc. glibc maps a request above its mmap threshold
from fresh kernel pages and unmaps it when freed, and gives the heap's free top back to the kernel
once it exceeds the trim threshold; both thresholds start small (128 KiB). A coordinator builds,
compresses and encrypts map messages of hundreds of kilobytes to megabytes, so it paid one page
fault per 4 KiB of each buffer, every time: in a 5,000-node join storm, sealing a first map into
Noise records took twice as long as the cipher itself. With both thresholds raised the pages stay
in the process for the next buffer; RSS then holds at most the trim threshold above what is live.
"""

from __future__ import annotations

import ctypes

#: mallopt parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: below this a buffer comes from the heap (a 10,000-node first map's JSON is about 6 MB)
MMAP_THRESHOLD = 16 << 20
#: free heap kept for later buffers before any goes back to the kernel
TRIM_THRESHOLD = 64 << 20


def keep_large_buffers() -> bool:
    """Raise the thresholds in this process; False where malloc has no `mallopt` (not glibc) or
    refuses them."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
