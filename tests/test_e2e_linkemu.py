"""End to end: the real Linux pppd against pyslirp over an emulated bad line (pyslirp/testing/linkemu.py through
tests/e2e/linkrelay.py): 115200 bit/s with bit errors, dropped bytes and XON/XOFF noise both ways, seeded.

A download and an upload of a seeded payload must arrive intact (sha256 at the receiver) although the emulator
damaged frames in both directions (its counters say so) and pyslirp counted bad frames: with the defaults (Van
Jacobson and Deflate: a lost frame puts a decompressor out of step, see pyslirp/ppp/ccp.py "Resynchronising" and
``Ccp.toss``) and with Deflate off (VJ alone).
"""

import json
import os
import shlex

import pytest

from e2e import services
from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from e2e.linkrelay import EmulatedRelay
from pyslirp.testing.linkemu import Impairments

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "reliability.py")
SIZE = 20000
SEED = 5


@pytest.mark.parametrize("ppp", [{}, {"compression": "none"}], ids=["defaults", "no-deflate"])
def test_transfers_are_intact_over_a_noisy_paced_line(lab, ppp):  # noqa: F811
    source = services.PayloadSource(seed=SEED, size=SIZE)
    sink = services.HashSink()
    try:
        slirp = lab.start_pyslirp({"ppp": ppp,
                                   "services": {"5001": {"host": "127.0.0.1", "port": sink.port, "name": "sink"},
                                                "5002": {"host": "127.0.0.1", "port": source.port,
                                                         "name": "source"}}})
        imp = Impairments(baud=115200, ber=3e-5, drop_rate=2e-5, xonxoff_rate=2e-5)
        guest = lab.boot_guest("""
            pppd_start pppd noauth
            wait_ppp_up 30 pppd || exit 1
            $PYTHON {bench} --guest download 5002 "$RESULTS/dl.json"
            $PYTHON {bench} --guest upload 5001 {seed} {size} "$RESULTS/ul.json"
            pppd_stop pppd 15
        """.format(bench=shlex.quote(BENCH), seed=SEED + 1, size=SIZE), slirp=slirp, timeout=300,
            relay_factory=EmulatedRelay.factory(imp, seed=SEED))
        res = guest.wait().check_ran()
        dl = json.loads(res.read("dl.json") or "null")
        ul = json.loads(res.read("ul.json") or "null")
        assert dl and ul, res.diagnostics()
        assert dl["bytes"] == SIZE and dl["sha256"] == source.sha256, dl
        assert ul["reply"] == "%d %s" % (SIZE, ul["sha256"]), ul
        c = guest.relay.counters
        damaged = [c[d]["bits_flipped"] + c[d]["bytes_dropped"] + c[d]["bytes_inserted"]
                   for d in ("to_guest", "from_guest")]
        assert all(n > 0 for n in damaged), c
        assert slirp.stop() == 0, slirp.diagnostics()
        print("noisy line (%s): %s; down %.1f s, up %.1f s" % (ppp or "defaults", guest.relay.summary(),
                                                               dl["end"] - dl["t0"], ul["end"] - ul["t0"]))
    finally:
        source.stop()
        sink.stop()
