#!/usr/bin/env python3
"""Throughput of RFC 1662 framing: encode_frame and Deframer.feed on 1500-byte frames.

Usage: python3 bench/bench_hdlc.py [--seconds S] [--frames N]

Four payload/ACCM cases: random payloads and worst-case payloads made only of
octets that must be escaped (which doubles the wire size), each with ACCM 0
(only 0x7D and 0x7E escaped, the usual state after LCP) and ACCM 0xFFFFFFFF
(all control characters escaped, the default before LCP).  Decoding is measured
two ways: one feed() per frame, and a continuous stream cut into 4096-byte
reads as a serial port would deliver it.  MB/s counts payload octets
(10^6 octets per second); "wire" counts the escaped octets on the line.
"""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyslirp.wire.hdlc import Deframer, encode_frame  # noqa: E402

FRAME = 1500
READ_SIZE = 4096


def payloads(kind, accm, n, rng):
    header = b"\xff\x03\x00\x21"
    out = []
    if kind == "random":
        for _ in range(n):
            out.append(header + bytes(rng.getrandbits(8) for _ in range(FRAME - 4)))
    else:
        escaped = [0x7D, 0x7E] + [c for c in range(32) if (accm >> c) & 1]
        for _ in range(n):
            out.append(header + bytes(rng.choice(escaped) for _ in range(FRAME - 4)))
    return out


def timed(fn, seconds):
    """Run fn() repeatedly for about ``seconds``; return (calls, elapsed)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - start


def bench_case(kind, accm, seconds, nframes, rng):
    frames = payloads(kind, accm, nframes, rng)
    payload_bytes = sum(len(f) for f in frames)

    def encode():
        for f in frames:
            encode_frame(f, accm)

    calls, elapsed = timed(encode, seconds)
    enc_mbs = calls * payload_bytes / elapsed / 1e6

    wires = [encode_frame(f, accm) for f in frames]
    wire_bytes = sum(len(w) for w in wires)

    def decode_per_frame():
        d = Deframer(accm=accm)
        got = 0
        for w in wires:
            got += len(d.feed(w))
        assert got == len(wires), "decode lost frames"

    calls, elapsed = timed(decode_per_frame, seconds)
    dec_mbs = calls * payload_bytes / elapsed / 1e6

    stream = b"".join(wires)
    reads = [stream[i:i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]

    def decode_stream():
        d = Deframer(accm=accm)
        got = 0
        for r in reads:
            got += len(d.feed(r))
        assert got == len(wires), "stream decode lost frames"

    calls, elapsed = timed(decode_stream, seconds)
    str_mbs = calls * payload_bytes / elapsed / 1e6
    expansion = wire_bytes / float(payload_bytes)
    return enc_mbs, dec_mbs, str_mbs, expansion


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    parser.add_argument("--frames", type=int, default=64, help="distinct frames per case (default 64)")
    args = parser.parse_args(argv)
    rng = random.Random(1662)
    print("pyslirp HDLC framing, %d-byte frames, Python %s" % (FRAME, sys.version.split()[0]))
    print("%-14s %-10s %9s %11s %13s %7s" % ("payload", "ACCM", "encode", "decode/frm", "decode/4KiB",
                                             "wire/x"))
    for kind in ("random", "all-escaped"):
        for accm in (0, 0xFFFFFFFF):
            enc, dec, strm, expansion = bench_case(kind, accm, args.seconds, args.frames, rng)
            print("%-14s 0x%08x %6.1f MB/s %6.1f MB/s %8.1f MB/s %6.2fx" % (kind, accm, enc, dec, strm,
                                                                          expansion))
    return 0


if __name__ == "__main__":
    sys.exit(main())
