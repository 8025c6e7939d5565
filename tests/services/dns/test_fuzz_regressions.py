"""Queries the coverage-guided fuzzer (tests/fuzz/targets/fuzz_dns.py) found to raise inside the
resolver (answered SERVFAIL and counted as an internal error); each now gets its proper answer.
(Run the fuzzer: .venv/bin/python tests/fuzz/atheris_run.py dns --runs 1000000.)"""

from __future__ import annotations

import base64
import struct

from trioscale.services.dns.resolver import Resolver
from trioscale.services.dns.txt import TxtRecords
from trioscale.services.dns.zone import Zone

FORMERR = 1

#: PTR query whose 5th label claims 69 bytes (0x45: a reserved label type); dnslib reads it but
#: cannot pack the question back ("Label component too long")
LONG_LABEL = base64.b64decode(
    "EjQBAAABAAAAAAAAATEBMAI2NAMxMDAHaW4uYUVFRUVFRUVFRUVFRUVFRUVFRUVFRUVFRUVFRUVFRUVFRUVFRUVFRU"
    "VFRUVFRUVFRUVFRUVFRUVFRUVFRUVFRUVFZGRyBGFycGEAAAwAAQ=="
)


def test_label_dnslib_cannot_write_back_is_formerr() -> None:
    zone = Zone("fuzz.ts.net", txt=TxtRecords())
    res = Resolver(zone)
    out = res.handle(LONG_LABEL, source=("100.64.0.1", 5353), now=0.0)
    assert isinstance(out, bytes)
    qid, flags = struct.unpack_from("!HH", out)
    assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == FORMERR
    assert res.stats.internal_errors == 0
