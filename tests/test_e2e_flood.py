"""End to end: flood resistance through the real Linux pppd (User-Mode Linux): SYN flood, spoofed flood, 300 at once.

The scenario is tests/e2e/flood.py's (one PPP session; an echo server on a free loopback port is the service on port
22; the guest holds one echo session open throughout and runs hping3 and the probes of tests/e2e/floodclients.py).
What is judged, with pyslirp's default [limits] (20 new connections a second, bursts of 40, 32 half-open):

* during ``hping3 --flood -S -p 22 -s BASE`` (a new source port for each SYN, from the client's own address) the
  held session keeps answering and at least 4 of 5 new connections succeed; the flood's SYNs, which never complete
  their handshake, open no service connections once SYN cookies have taken over (the echo server accepts at most
  the bucket's burst and a second's tokens, plus the probes);
* the spoofed flood (``--rand-source``) is dropped and counted (``ip_bad_src``) and changes nothing for the client;
* of 300 connections opened at once, the service sees no more than the rate allows, and every one of them is
  answered (echoed or refused, none left hanging);
* after each phase new connections work at once, pyslirp is still running and its peak RSS stays below 64 MB.
"""

import os

import pytest

from e2e import flood
from e2e.fixtures import lab, unavailable  # noqa: F401  (pytest fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BURST, RATE = 40, 20          # pyslirp's defaults: [limits] burst, new_connections_per_second
RSS_LIMIT_KIB = 64 * 1024


def _ok(probes):
    return sum(1 for p in probes["probes"] if p["ok"])


def test_syn_flood_spoofed_flood_and_300_at_once(lab):
    if not os.access(flood.HPING3, os.X_OK):
        unavailable("%s not found; install the hping3 package" % flood.HPING3)
    fig = flood.run(lab)
    figures, phases, held = fig["metrics"], fig["phases"], fig["held"]
    report = flood.summary(fig)
    print(report)                   # the figures (pytest -rP shows them)
    assert fig["pyslirp_running"], report
    assert fig["rss_peak_kib"] is not None and fig["rss_peak_kib"] < RSS_LIMIT_KIB, report
    assert held["connected"] and held["errors"] == [], report

    syn = phases["syn"]
    assert syn["hping_sent"] and syn["hping_sent"] > 10000, report      # it was a flood
    assert _ok(syn["during"]) >= 4, report
    assert _ok(syn["after"]) == 3, report
    rtts, errors = flood.held_rtts(held, syn["window"])
    assert errors == 0 and len(rtts) >= 10 and max(rtts) < 5.0, report
    # Before the cookies took over (within the first second) at most the bucket's burst and a second's worth of
    # tokens got state; then only the probes' handshakes: the flood's SYNs opened no service connections.
    assert syn["accepts"] <= BURST + RATE + 5, report
    assert flood.metric(figures, "pyslirp_syn_cookies_total", result="sent") > 0, report
    assert flood.metric(figures, "pyslirp_syn_cookies_total", result="valid") >= 4, report

    spoof = phases["spoof"]
    bad_src = flood.metric(figures, "pyslirp_ip_dropped_total", reason="ip_bad_src")
    assert spoof["hping_sent"] and bad_src >= 0.9 * spoof["hping_sent"], report
    assert _ok(spoof["during"]) >= 4 and _ok(spoof["after"]) == 3, report
    assert spoof["accepts"] == _ok(spoof["during"]), report           # nothing but the probes reached the service
    rtts, errors = flood.held_rtts(held, spoof["window"])
    assert errors == 0 and rtts, report

    burst = phases["burst"]
    outcomes = burst["result"]["outcomes"]
    assert sum(outcomes.values()) == 300 and set(outcomes) <= {"ok", "refused"}, report
    assert outcomes.get("ok", 0) >= 1, report
    assert burst["accepts"] <= BURST + RATE * burst["seconds"] + 1, report
    assert _ok(burst["after"]) == 3, report
