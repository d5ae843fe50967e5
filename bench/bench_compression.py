#!/usr/bin/env python3
"""Compression benchmark: text through a paced 115200 bit/s line with CCP Deflate (and VJ) on and off.

Usage: python3 bench/bench_compression.py [--baud 115200] [--kbytes 300] [--modes deflate,none] [--keep]

The client is Linux pppd with its defaults in a User-Mode Linux guest (tests/e2e/); the serial line between
pyslirp's pty and the guest is tests/e2e/pacing.py's ``PacedRelay`` (an 8N1 UART at ``--baud`` in each direction,
11,520 bytes/s at 115200).  For each mode -- ``deflate`` (pyslirp's defaults: CCP Deflate and VJ), ``none``
(``[ppp] compression = "none"`` and ``vj = false``), or any of ``vj-only`` / ``deflate-only`` -- one PPP session:
the guest downloads ``--kbytes`` kB of text (this repository's source files, about 3:1 with Deflate) from a
loopback source, then uploads the same text to a loopback sink.  Each figure is payload bytes per second as
measured by the receiver, and as a multiple of the line rate (baud / 10): above 1.0 only compression gets there.

A program, not a test: it prints figures and checks only that every byte arrived intact.  Nothing here talks to
anything but 127.0.0.1 and the guest's own PPP link.
"""

import argparse
import hashlib
import json
import os
import shlex
import sys

from _common import ROOT, ppp_session_script, run_directory, uml_unavailable, use_e2e

MODES = {
    "deflate": {},
    "none": {"ppp": {"compression": "none", "vj": False}},
    "deflate-only": {"ppp": {"vj": False}},
    "vj-only": {"ppp": {"compression": "none"}},
}

GUEST = r"""
import hashlib, json, socket, sys, time
ip, sink_port, source_port, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
out = {}
h, n = hashlib.sha256(), 0
c = socket.create_connection((ip, source_port), timeout=120)
t0 = time.monotonic()
first = None
while True:
    d = c.recv(65536)
    if not d:
        break
    if first is None:
        first = time.monotonic()
    h.update(d)
    n += len(d)
end = time.monotonic()
c.close()
out["download"] = {"bytes": n, "sha256": h.hexdigest(), "seconds": end - (first or t0)}
data = open(path, "rb").read()
c = socket.create_connection((ip, sink_port), timeout=120)
t0 = time.monotonic()
c.sendall(data)
c.shutdown(socket.SHUT_WR)
answer = b""
while True:
    d = c.recv(4096)
    if not d:
        break
    answer += d
out["upload"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "answer": answer.decode(),
                 "seconds": time.monotonic() - t0}
c.close()
print(json.dumps(out))
"""


def text_payload(size):
    """``size`` bytes of this repository's Python and Markdown files, in a fixed order, repeated as needed."""
    parts = []
    for base, dirs, files in sorted(os.walk(os.path.join(ROOT, "pyslirp"))):
        dirs.sort()
        parts.extend(os.path.join(base, f) for f in sorted(files) if f.endswith(".py"))
    parts += [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "docs", "ARCHITECTURE.md")]
    blob = b"".join(open(p, "rb").read() for p in parts)
    return (blob * (size // len(blob) + 1))[:size]


def run_mode(basedir, mode, text, baud):
    use_e2e()
    from e2e import services, uml
    from e2e.pacing import PacedRelay
    from e2e.programs import json_result, write_script

    lab = uml.Lab(os.path.join(basedir, mode))
    os.makedirs(lab.basedir, exist_ok=True)
    svc = services.ServiceSet()
    try:
        sink = svc.add(services.HashSink())
        source = svc.add(services.PayloadSource(data=text))
        cfg = json.loads(json.dumps(MODES[mode]))
        cfg["services"] = {"5001": {"host": "127.0.0.1", "port": sink.port, "name": "sink"},
                           "5002": {"host": "127.0.0.1", "port": source.port, "name": "text"}}
        slirp = lab.start_pyslirp(cfg, debug=False)
        guest_py = write_script(lab, "guest.py", GUEST)
        text_path = os.path.join(lab.basedir, "text.bin")
        with open(text_path, "wb") as f:
            f.write(text)
        script = ppp_session_script("""
            timeout 600 $PYTHON {guest} 10.0.0.1 5001 5002 {text} > "$RESULTS/bench.out" 2>&1
            pppstats -z ppp0 > "$RESULTS/stats-z.out" 2>&1
        """.format(guest=shlex.quote(guest_py), text=shlex.quote(text_path)), stop_wait=15)
        res = lab.boot_guest(script, slirp=slirp, timeout=900, name="guest",
                             relay_factory=PacedRelay.factory(baud)).wait().check_ran()
        out = json_result(res, "bench")
        want = hashlib.sha256(text).hexdigest()
        for key in ("download", "upload"):
            if out[key]["bytes"] != len(text) or out[key]["sha256"] != want:
                raise RuntimeError("%s %s: not intact: %r" % (mode, key, out[key]))
        if sink.results != [(len(text), want)]:
            raise RuntimeError("%s: the sink received %r" % (mode, sink.results))
        out["ccp"] = "compression enabled" in res.pppd_log()
        out["pppstats_z"] = (res.read("stats-z.out") or "").strip()
        slirp.stop()
        return out
    except Exception:
        sys.stderr.write(lab.diagnostics() + "\n")
        raise
    finally:
        svc.stop()
        lab.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--kbytes", type=int, default=300, help="kB of text each way")
    p.add_argument("--modes", default="deflate,none", help="comma-separated: " + ", ".join(sorted(MODES)))
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    a = p.parse_args(argv)
    reason = uml_unavailable()
    if reason:
        sys.stderr.write("cannot run: %s\n" % reason)
        return 2
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            p.error("unknown mode %r" % m)
    text = text_payload(a.kbytes * 1000)
    line = a.baud / 10.0
    results = {"baud": a.baud, "line_rate": line, "bytes": len(text), "modes": {}}
    with run_directory("pyslirp-bench-compression-", a.keep) as basedir:
        for mode in modes:
            results["modes"][mode] = run_mode(basedir, mode, text, a.baud)
    print("%d kB of text each way, %d bit/s 8N1 (line rate %d bytes/s each way), Linux pppd defaults:"
          % (len(text) // 1000, a.baud, line))
    for mode in modes:
        r = results["modes"][mode]
        figures = []
        for key in ("download", "upload"):
            rate = r[key]["bytes"] / r[key]["seconds"]
            r[key]["bytes_per_s"] = rate
            r[key]["x_line"] = rate / line
            figures.append("%s %.0f B/s (%.2fx the line)" % (key, rate, rate / line))
        print("  %-13s %s%s" % (mode + ":", ", ".join(figures), "" if r["ccp"] else "  [no CCP]"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
