#!/usr/bin/env python3
"""Flood benchmark: a SYN flood, a spoofed flood and 300 connections at once, through the real pppd.

Usage: python3 bench/bench_flood.py [--baud 115200] [--syns-per-second N] [--flood-seconds 12]
                                    [--set SECTION.KEY=VALUE ...] [--json FILE] [--keep]

The scenario is tests/e2e/flood.py's, the one tests/test_e2e_flood.py judges: one PPP session with the real Linux
pppd in a User-Mode Linux guest; an echo server on a loopback port the benchmark starts is the service on port 22;
the guest holds one echo session open throughout (a short line every 200 ms, timed) and runs, in turn,
``hping3 --flood -S -p 22 -s 20000`` (the client's own address, a new source port for each SYN), the same flood
with ``--rand-source``, and 300 connections opened at once; five new connections are tried during each flood and
three after each phase.  It prints what the client saw (connections, the held session's RTTs), what the service
saw (connections accepted in each phase), pyslirp's CPU per phase and peak RSS, and its counters.

Without ``--baud`` the serial line is relayed as fast as it goes (about 2 MB/s); with it, tests/e2e/pacing.py
emulates a real line at that speed.  ``hping3 --flood`` then fills the client's own uplink: its queue toward the
line drops the client's other packets before pyslirp sees them, so measure with ``--syns-per-second`` below the
line's capacity (about 240 bare SYNs a second at 115200).  Nothing here talks to anything but
127.0.0.1 and the guest's own PPP link.
"""

import argparse
import json
import os
import sys

from _common import parse_set, run_directory, uml_unavailable, use_e2e


def _jsonable(figures):
    """A metrics scrape ({name: {((label, value), ...): value}}) with its label tuples as "k=v,..." strings."""
    return dict((name, dict((",".join("%s=%s" % kv for kv in labels), value) for labels, value in samples.items()))
                for name, samples in figures.items())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baud", type=int, default=0, help="pace the line at this speed (default: unpaced)")
    p.add_argument("--flood-seconds", type=int, default=12, help="each flood lasts about this long")
    p.add_argument("--syns-per-second", type=int, default=0,
                   help="hping3's rate (-i uN); default: --flood, as fast as the guest sends")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="pyslirp configuration override, e.g. limits.burst=10 (repeatable)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the run directory (printed)")
    a = p.parse_args(argv)
    use_e2e()
    from e2e import flood, uml
    reason = uml_unavailable()
    if reason or not os.access(flood.HPING3, os.X_OK):
        sys.stderr.write("cannot run: %s\n" % (reason or "%s not found (the hping3 package)" % flood.HPING3))
        return 2
    relay_factory = None
    if a.baud:
        from e2e.pacing import PacedRelay
        relay_factory = PacedRelay.factory(a.baud)
    with run_directory("pyslirp-bench-flood-", a.keep) as basedir:
        lab = uml.Lab(basedir)
        try:
            fig = flood.run(lab, extra_config=parse_set(a.set), relay_factory=relay_factory,
                            flood_seconds=a.flood_seconds, syns_per_second=a.syns_per_second)
        except Exception:
            sys.stderr.write(lab.diagnostics() + "\n")
            raise
        finally:
            lab.close()
    print("line: %s; settings: %s" % ("%d bit/s (paced)" % a.baud if a.baud else "unpaced", a.set or "defaults"))
    print(flood.summary(fig))
    if a.json:
        out = dict(fig)
        out["metrics"] = _jsonable(fig["metrics"])
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
