"""End to end: pyslirp's VJ codec against the Linux kernel's slhc, live.

Boots one User-Mode Linux guest in which two pppd's (one per network namespace) carry a TCP workload with VJ
compression on (see ``tests/e2e/vj_slhc.py``).  For every packet a kernel handed to its PPP unit, pyslirp's
compressor must produce exactly the frame slhc put on the line, and pyslirp's decompressor must rebuild exactly the
packet the other kernel rebuilt.  ``tests/test_vj.py`` checks the same against a stored capture.
"""

import pytest

from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from e2e.vj_slhc import capture
from pyslirp.wire.vj import PROTO_VJ_COMPRESSED, VjCompressor, VjDecompressor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_codec_matches_linux_slhc_both_ways(lab):
    _res, vectors = capture(lab)
    for stream in vectors["streams"]:
        packets = stream["packets"]
        assert sum(1 for p in packets if p["protocol"] == PROTO_VJ_COMPRESSED) > 50, stream["name"]
        comp = VjCompressor(stream["slots"], stream["compress_slot_id"])
        decomp = VjDecompressor(stream["slots"])
        for i, entry in enumerate(packets):
            protocol, data = comp.compress(bytes.fromhex(entry["packet"]))
            assert (protocol, data.hex()) == (entry["protocol"], entry["info"]), "%s packet %d" % (stream["name"], i)
            out = decomp.decompress(entry["protocol"], bytes.fromhex(entry["info"]))
            assert out.hex() == entry.get("rebuilt", entry["packet"]), "%s packet %d" % (stream["name"], i)
