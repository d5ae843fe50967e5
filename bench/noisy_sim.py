#!/usr/bin/env python3
"""The bit-error row of bench/reliability.py in memory: a server Core against the client role's core over a
paced, noisy emulated line, on a fake clock.

Usage: python3 bench/noisy_sim.py [--ber 1e-5] [--drop P] [--xonxoff P] [--size 200000] [--seeds 1,2,3] [--compression deflate|none]
                                  [--no-vj] [--slhc] [--mss N]

Both ends are pyslirp (pyslirp.testing.SimulatedClient's cores), so it is no substitute for the pppd row; what it
gives is the same line (pyslirp/testing/linkemu.py's LineDirection, 115200 bit/s 8N1, seeded bit errors) and every
counter of both ends after each transfer: where the time went (retransmission timeouts against fast
retransmissions, SACK-driven retransmissions, VJ tosses, Deflate resets).  Runs take seconds, not minutes.

The server's output is taken as the runtime takes it (a budget of about 10 ms of line time beyond what is already
queued toward the line); the client's as pppd's would be (everything at once, into a tty buffer).
"""

import argparse
import hashlib
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from pyslirp.net.stack import Service, StackConfig  # noqa: E402
from pyslirp.ppp.link import LinkConfig  # noqa: E402
from pyslirp.testing.client import LineSimulatedClient, client_link_config  # noqa: E402
from pyslirp.testing.linkemu import Impairments, LineDirection  # noqa: E402

LINE_RATE = 11520.0
SERVER_BOUND = 128          # bytes queued toward the line before the server is asked for more (MIN_TARGET)


class Source(object):
    def __init__(self, payload):
        self.payload = payload
        self.received = bytearray()

    def data(self, data):
        return b""

    def eof(self):
        return True


class Sink(object):
    def __init__(self):
        self.received = bytearray()

    def data(self, data):
        self.received += data
        return b""

    def eof(self):
        return True


class NoisySim(LineSimulatedClient):
    """LineSimulatedClient over two seeded LineDirections with the same impairments (up: client to server)."""

    def __init__(self, imp, seed, **kw):
        super().__init__(LineDirection(imp, seed=seed * 2 + 2, name="down"),
                         LineDirection(imp, seed=seed * 2 + 1, name="up"),
                         LINE_RATE, server_bound=SERVER_BOUND, seed=seed, **kw)

    def _server_events(self):
        before = set(self._server_conns)
        moved = super()._server_events()
        for conn_id in set(self._server_conns) - before:
            conn = self._server_conns[conn_id]
            if isinstance(conn.service, Source):
                conn._outbox += conn.service.payload
                conn._eof_pending = True
        return moved

    def run(self, until=None, timeout=60000):
        """Step the clock 1 ms at a time (the line needs its caller often)."""
        self.start()
        end = self.now + timeout
        while self.now < end:
            self._exchange()
            if until is not None and until():
                return True
            self.now += 1
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
        return False


def _conn_stats(core):
    out = {}
    stack = core.stack
    conns = getattr(stack, "_conns", None)
    if conns is None:
        conns = getattr(stack, "_flows", {})        # the client role's stack
    for rec in conns.values():
        c = getattr(rec, "conn", None)
        if c is None:
            continue
        for k in ("retransmits", "fast_retransmits", "lost_retransmits", "rto_count", "dup_acks", "ooo_segments",
                  "segs_out"):
            out[k] = out.get(k, 0) + getattr(c, k, 0)
        for k, v in getattr(c, "counters", {}).items():
            out["drop:" + k] = out.get("drop:" + k, 0) + v
    return out


def _link_stats(core):
    link = core.link
    out = {}
    for name in ("counters",):
        for k, v in getattr(link, name, {}).items():
            if v:
                out[k] = v
    ccp = getattr(link, "ccp", None)
    if ccp is not None:
        for k, v in getattr(ccp, "counters", {}).items():
            if v:
                out["ccp:" + k] = v
    return out


def one(seed, args):
    imp = Impairments(baud=115200, ber=args.ber, drop_rate=args.drop, xonxoff_rate=args.xonxoff)
    payload = random.Random(seed).getrandbits(args.size * 8).to_bytes(args.size, "little")
    source, sink = Source(payload), Sink()
    services = (Service(5002, "127.0.0.1", 5002, "source"), Service(5001, "127.0.0.1", 5001, "sink"))
    stack = StackConfig(services=services)
    lc = dict(compression=args.compression, vj=not args.no_vj)
    sim = NoisySim(imp, seed, services={5002: lambda: source, 5001: lambda: sink},
                   server_stack_config=stack, server_link_config=LinkConfig(**lc),
                   link_config=client_link_config(**lc))
    assert sim.link_up(), "link did not come up"
    if args.slhc:
        # Linux's slhc has no repair: after a lost frame it tosses every compressed packet until an uncompressed
        # one (or an explicit slot) arrives, so the pppd row's client recovers a download loss only by our timer.
        sim.client.link.ipcp.vj.decompressor.repair = False
    result = {}
    # Download.
    flow = sim.connect("10.0.0.1", 5002)
    first = [None]

    def dl_done():
        if first[0] is None and flow.received:
            first[0] = sim.now
        return flow.done or len(flow.received) >= args.size
    sim.run(dl_done, 600000)
    dl_ok = bytes(flow.received) == payload
    result["down"] = args.size / ((sim.now - first[0]) / 1000.0) / LINE_RATE if dl_ok else 0.0
    result["down_server"] = _conn_stats(sim.server)
    result["down_link_server"] = _link_stats(sim.server)
    result["down_link_client"] = _link_stats(sim.client)
    sim.run(lambda: flow.done, 20000)
    # Upload.
    data = random.Random(seed + 1).getrandbits(args.size * 8).to_bytes(args.size, "little")
    flow = sim.connect("10.0.0.1", 5001)
    sim.run(lambda: flow.connected, 20000)
    t0 = sim.now
    flow.send(data)
    flow.shutdown()
    sim.run(lambda: len(sink.received) >= args.size or flow.done, 600000)
    result["up_client"] = _conn_stats(sim.client)
    ul_ok = hashlib.sha256(bytes(sink.received)).digest() == hashlib.sha256(data).digest()
    result["up"] = args.size / ((sim.now - t0) / 1000.0) / LINE_RATE if ul_ok else 0.0
    result["link_server"] = _link_stats(sim.server)
    result["link_client"] = _link_stats(sim.client)
    result["flips"] = (sim.down.counters["bits_flipped"], sim.up.counters["bits_flipped"])
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ber", type=float, default=1e-5)
    p.add_argument("--drop", type=float, default=0.0, help="per byte (an overrun)")
    p.add_argument("--xonxoff", type=float, default=0.0, help="per byte: an XON/XOFF inserted")
    p.add_argument("--size", type=int, default=200000)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--compression", default="deflate")
    p.add_argument("--no-vj", action="store_true")
    p.add_argument("--slhc", action="store_true",
                   help="the client's VJ decompressor without repair, as Linux's slhc (the pppd row's client)")
    p.add_argument("-v", action="store_true", help="print every counter")
    a = p.parse_args(argv)
    for seed in [int(x) for x in a.seeds.split(",")]:
        r = one(seed, a)
        print("seed %d: down %.2f up %.2f (flips %d/%d, server RTOs %d)" % (
            seed, r["down"], r["up"], r["flips"][0], r["flips"][1], r["down_server"].get("rto_count", 0)))
        if a.v:
            for k in sorted(r):
                if isinstance(r[k], dict):
                    print("   %s: %s" % (k, r[k]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
