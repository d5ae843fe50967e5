#!/usr/bin/env python3
"""Coverage-guided fuzzing of the Core with atheris (pip install atheris): only counted drops may happen.

Usage: python3 bench/fuzz_atheris.py -runs=1000000 | -max_total_time=SECONDS [other libFuzzer flags]

One Core with its link up (pyslirp/testing/fuzz.py brings it up) takes every input atheris makes: the first byte
chooses what the rest is (raw line bytes, a framed PPP frame of a protocol the next two bytes name, an IPv4 packet
in an IP frame), the rest is fed as that.  The service side answers as the runtime would and the clock moves on.
Any exception out of the Core is a crash for atheris (it prints the input and stops).  At the end the link must
still be up and answer a ping, and the drops the Core counted are printed.
"""

import os
import random
import sys

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

with atheris.instrument_imports():
    from pyslirp.testing.fuzz import _counters, _Fuzzer
    from pyslirp.testing.compliance import default_core
    from pyslirp.wire import hdlc, ppp as wppp

FUZZER = _Fuzzer(default_core(), random.Random(0))
RUNS = [0]
TARGET = [None]     # -runs=N: the report is printed after the N-th input (libFuzzer exits without atexit)
REPORT_EVERY = 50000    # ... and every so many (with -max_total_time the last of these is the figure)


def one_input(data):
    RUNS[0] += 1
    if RUNS[0] == TARGET[0] or RUNS[0] % REPORT_EVERY == 0:
        report()
    if not data:
        return
    fz = FUZZER
    kind = data[0] % 3
    body = data[1:]
    if kind == 0:
        raw = body
    elif kind == 1 and len(body) >= 2:
        protocol = (body[0] & 0xFE) << 8 | body[1] | 1      # RFC 1661 2: high octet even, low octet odd
        raw = hdlc.encode_frame(wppp.build_frame(protocol, body[2:]))
    else:
        raw = hdlc.encode_frame(wppp.build_frame(wppp.PROTO_IP, body))
    fz.core.receive_serial(raw, fz.now)
    fz.service()
    fz.core.take_serial_output(-1, fz.now)
    fz.now += 1
    deadline = fz.core.get_timer()
    if deadline is not None and deadline <= fz.now:
        fz.core.handle_timer(fz.now)
        fz.service()
        fz.core.take_serial_output(-1, fz.now)
    if not fz.core.is_up:
        from pyslirp.testing.compliance import LinkPeer
        fz.peer = LinkPeer(fz.core, fz.now)
        fz.peer.bring_up()


def report():
    fz = FUZZER
    ok = fz.core.is_up and fz.ping()
    drops = _counters(fz.core)
    print("atheris: %d inputs, link up and ping %s, %d counted drops" % (
        RUNS[0], "answered" if ok else "LOST", sum(drops.values())))
    sys.stdout.flush()


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        if arg.startswith("-runs="):
            TARGET[0] = int(arg.split("=", 1)[1])
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
