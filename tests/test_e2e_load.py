"""End to end: load_test (pyslirp/testing/load.py) through pyslirp and the real Linux pppd in User-Mode Linux.

The guest runs the load test's command line with the host's Python: 20 concurrent echo flows for 3 s to
10.0.0.1:7, which pyslirp maps to an echo server on the host's loopback.  Every flow must connect and run without
an error; the report comes back as JSON, and the host adds pyslirp's peak resident memory.
"""

import json
import os
import shlex

import pytest

from e2e import services
from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from pyslirp.testing.load import peak_rss_kb

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = os.path.join(ROOT, "pyslirp", "testing", "load.py")


def run_load(lab, connections, duration, relay_factory=None):
    """(guest report, pyslirp's peak RSS in kB, the echo server) for one load run through pppd."""
    echo = services.EchoServer()
    try:
        slirp = lab.start_pyslirp({"services": {"7": {"host": "127.0.0.1", "port": echo.port, "name": "echo"}},
                                   "limits": {"max_per_service": connections,
                                              "max_connections": max(64, connections)}})
        res = lab.run_guest("""
            pppd_start pppd noauth
            wait_ppp_up 30 pppd || exit 1
            $PYTHON {load} 10.0.0.1:7 --connections {n} --duration {d} --out "$RESULTS/load.json" \\
                > "$RESULTS/load.out" 2>&1
            pppd_stop pppd 15
        """.format(load=shlex.quote(LOAD), n=connections, d=duration), slirp=slirp, timeout=180,
            relay_factory=relay_factory)
        text = res.read("load.json")
        assert text, res.diagnostics()
        rss = peak_rss_kb(slirp.proc.pid)
        report = json.loads(text)
        assert slirp.stop() == 0, slirp.diagnostics()
        return report, rss, echo
    finally:
        echo.stop()


def test_twenty_concurrent_flows_for_three_seconds(lab):  # noqa: F811
    report, rss, echo = run_load(lab, 20, 3)
    assert report["connected"] == 20 and report["errors"] == {}, report
    assert echo.accepted == 20
    assert report["exchanges"] >= 20
    assert report["bytes_sent"] == report["bytes_received"] == report["exchanges"] * 64
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert rss > 0
    print("load through pppd: %d exchanges, %.0f B/s, latency %s ms, pyslirp peak RSS %d kB" % (
        report["exchanges"], report["throughput"], lat, rss))
