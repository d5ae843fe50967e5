#!/usr/bin/env python3
"""Link benchmark: bulk throughput, goodput at 115200 bit/s and latency under load, through the real pppd.

Usage: python3 bench/bench_link.py [--baud 115200] [--seconds 20] [--two-way-seconds 30] [--mbytes 8]
                                   [--only unpaced|paced] [--set SECTION.KEY=VALUE ...] [--json FILE] [--keep]

The client is Linux pppd in a User-Mode Linux guest (tests/e2e/); pyslirp runs on a pty with three loopback
services started here: a sink, a source of random bytes and an echo server.  The guest runs this same file
(``--guest ...``) with the host's Python for its side of each transfer.

1. Unpaced: the guest's serial line is relayed as fast as it goes (UML caps it at about 2 MB/s).  The guest
   downloads, then uploads, ``--mbytes`` MB; MB/s each way (10^6 bytes/s, measured by the receiver), and
   pyslirp's CPU seconds per MB (utime + stime from /proc/<pid>/stat between the service's accept and the end).
2. Paced: tests/e2e/pacing.py emulates an 8N1 line at ``--baud`` (11,520 bytes/s each direction at 115200,
   independently, with a 64-byte UART FIFO).  One-way download for ``--seconds``, one-way upload, then both at once
   for ``--two-way-seconds`` with 64-byte request/response exchanges (TCP_NODELAY, one every ``--probe-gap``
   seconds after the previous answer) over a third connection.  Goodput is payload bytes per second, measured by
   the receiver over the steady state (the first ``--warmup`` seconds and the last second left out), as a
   fraction of the line rate (baud / 10); RTTs are measured by the guest.

Each phase is one guest boot (one PPP session); pyslirp runs with its defaults unless ``--set`` changes them
(e.g. ``--set tcp.mss=536``).  Nothing here talks to anything but 127.0.0.1 and the guest's own PPP link.
"""

import argparse
import json
import os
import random
import socket
import struct
import sys
import threading
import time

from _common import ROOT, guest_json, parse_set, ppp_session_script, uml_unavailable, use_e2e

PROBE_SIZE = 64
SAMPLE_EVERY = 0.1          # seconds between receiver samples


# ======================================================================= guest side (runs inside UML)

def _sampler():
    state = {"total": 0, "first": None, "next": 0.0, "samples": []}

    def add(n, now):
        state["total"] += n
        if state["first"] is None:
            state["first"] = now
        if now >= state["next"]:
            state["samples"].append((now, state["total"]))
            state["next"] = now + SAMPLE_EVERY
    return state, add


def guest_download(host, port, nbytes, seconds, out):
    """Receive from the source: ``nbytes`` (then the source closes) or for ``seconds`` (then we close)."""
    s = socket.create_connection((host, port), timeout=120)
    s.sendall(b"%d\n" % nbytes)
    t0 = time.monotonic()
    state, add = _sampler()
    deadline = t0 + seconds if seconds else None
    while True:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        if not data:
            break
        add(len(data), time.monotonic())
    end = time.monotonic()
    state["samples"].append((end, state["total"]))
    s.close()
    _dump(out, dict(kind="download", t0=t0, end=end, first=state["first"], bytes=state["total"],
                    samples=state["samples"]))


def guest_upload(host, port, nbytes, seconds, out):
    """Send random bytes to the sink: ``nbytes`` then wait for its count, or for ``seconds``."""
    s = socket.create_connection((host, port), timeout=120)
    block = os.urandom(1 << 16)
    t0 = time.monotonic()
    sent = 0
    if seconds:
        deadline = t0 + seconds
        s.settimeout(1.0)
        view = memoryview(block)
        while time.monotonic() < deadline:
            # Continue where the last (partial) send stopped: the stream cycles through 64 KB of random bytes,
            # farther apart than Deflate's 32 KB window, so the link cannot compress it.
            off = sent % len(block)
            try:
                sent += s.send(view[off:])
            except socket.timeout:
                pass
        end = time.monotonic()
        # Drop what the guest still holds (its socket buffer): the phase ends now, not when that drains.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        acked = None
    else:
        view = memoryview(block)
        while sent < nbytes:
            n = min(len(block), nbytes - sent)
            s.sendall(view[:n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        reply = _recv_exact(s, 8)
        end = time.monotonic()
        acked = struct.unpack("!Q", reply)[0] if len(reply) == 8 else None
        s.close()
    _dump(out, dict(kind="upload", t0=t0, end=end, bytes=sent, acked=acked))


def guest_probe(host, port, seconds, gap, out):
    """64-byte request/response exchanges: [(t, rtt seconds)]."""
    s = socket.create_connection((host, port), timeout=120)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rng = random.Random(1)
    t0 = time.monotonic()
    deadline = t0 + seconds
    rtts = []
    n = 0
    while time.monotonic() < deadline:
        msg = probe_message(n)
        t = time.monotonic()
        s.sendall(msg)
        reply = _recv_exact(s, PROBE_SIZE)
        now = time.monotonic()
        if reply != msg:
            rtts.append((t - t0, None))
            break
        rtts.append((t - t0, now - t))
        n += 1
        # A random pause (0.5 to 1.5 times the gap, seeded): keystrokes do not keep step with the bulk
        # frames, and neither may the probes, or every exchange would meet the same phase of them.
        time.sleep(gap * (0.5 + rng.random()))
    s.close()
    _dump(out, dict(kind="probe", t0=t0, rtts=rtts))


def _recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            break
        buf += data
    return buf


def _dump(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def guest_main(argv):
    p = argparse.ArgumentParser(prog="bench_link.py --guest")
    p.add_argument("mode", choices=("download", "upload", "probe"))
    p.add_argument("--host", default="10.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0)
    p.add_argument("--gap", type=float, default=0.25)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.mode == "download":
        guest_download(a.host, a.port, a.bytes, a.seconds, a.out)
    elif a.mode == "upload":
        guest_upload(a.host, a.port, a.bytes, a.seconds, a.out)
    else:
        guest_probe(a.host, a.port, a.seconds, a.gap, a.out)
    return 0


# ======================================================================= host side

def cpu_seconds(pid):
    """utime + stime of process ``pid`` in seconds (/proc/<pid>/stat fields 14 and 15)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))


class Services(object):
    """Sink, source and echo servers on free loopback ports; each connection is recorded in ``self.log``."""

    def __init__(self, cpu_pid=None):
        self.cpu_pid = cpu_pid
        self.log = []
        self._lock = threading.Lock()
        self._socks = []
        self._stop = threading.Event()
        self._block = os.urandom(1 << 20)
        self.ports = {}
        for name, handler in (("sink", self._sink), ("source", self._source), ("echo", self._echo)):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", 0))
            ls.listen(8)
            ls.settimeout(0.2)
            self._socks.append(ls)
            self.ports[name] = ls.getsockname()[1]
            threading.Thread(target=self._accept, args=(ls, handler), name=name, daemon=True).start()

    def wait_for(self, kind, timeout=10.0):
        """The records of finished ``kind`` connections, waiting a little for the first one to finish."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found = [r for r in self.log if r.get("kind") == kind]
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def close(self):
        self._stop.set()
        for s in self._socks:
            s.close()

    def _cpu(self):
        if self.cpu_pid is None:
            return None
        try:
            return cpu_seconds(self.cpu_pid)
        except (IOError, OSError):
            return None

    def _accept(self, ls, handler):
        while not self._stop.is_set():
            try:
                conn, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._run, args=(handler, conn), daemon=True).start()

    def _run(self, handler, conn):
        rec = {"cpu0": self._cpu(), "t0": time.monotonic()}
        try:
            handler(conn, rec)
        except OSError as exc:
            rec["error"] = str(exc)
        finally:
            rec["end"] = time.monotonic()
            rec["cpu1"] = self._cpu()
            conn.close()
            with self._lock:
                self.log.append(rec)

    def _sink(self, conn, rec):
        rec["kind"] = "sink"
        state, add = _sampler()
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                add(len(data), time.monotonic())
        finally:
            # pyslirp resets the socket when the client does: what arrived until then counts.
            rec.update(bytes=state["total"], first=state["first"], samples=state["samples"])
        try:
            conn.sendall(struct.pack("!Q", state["total"]))
        except OSError:
            pass

    def _source(self, conn, rec):
        rec["kind"] = "source"
        line = b""
        while not line.endswith(b"\n"):
            data = conn.recv(64)
            if not data:
                return
            line += data
        nbytes = int(line)
        block = memoryview(self._block)
        sent = 0
        try:
            while nbytes == 0 or sent < nbytes:
                off = sent % len(block)
                n = len(block) - off
                if nbytes:
                    n = min(n, nbytes - sent)
                sent += conn.send(block[off:off + n])
        except OSError:
            pass
        rec["bytes"] = sent
        if nbytes:
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(65536):     # the client closes when it has everything
                pass

    def _echo(self, conn, rec):
        rec["kind"] = "echo"
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)


def rate_between(samples, t_from, t_to):
    """Bytes per second of a cumulative [(t, total)] series between two times (linear interpolation)."""
    def at(t):
        prev = (samples[0][0], 0) if samples else (t, 0)
        for s in samples:
            if s[0] >= t:
                if s[0] == prev[0]:
                    return s[1]
                return prev[1] + (s[1] - prev[1]) * (t - prev[0]) / (s[0] - prev[0])
            prev = s
        return prev[1]
    if not samples or t_to <= t_from:
        return 0.0
    return (at(t_to) - at(t_from)) / (t_to - t_from)


def steady_rate(rec, warmup, seconds):
    """Receiver goodput over the steady state, [first byte + warmup, first byte + seconds - 1], between arrivals.

    Measured from the first arrival sample in that span to the last one (bytes that arrived after the first,
    over the time between them), not interpolated to the span's ends: on a slow line data arrives a segment at
    a time (1.5 s apart at 9600 bit/s), the transfer stops ``seconds`` after its start (the first byte came
    a segment's line time later), and interpolating up to ``first + seconds - 1`` counted the tail after the
    last arrival, and the segment cut off by the end, as a line standing idle: 4-14% of 16 s at 9600.
    """
    first = rec.get("first")
    if first is None:
        return 0.0
    t_from, t_to = first + warmup, first + seconds - 1.0
    arrivals = []
    for t, total in rec["samples"]:
        if not arrivals or total > arrivals[-1][1]:
            arrivals.append((t, total))
    inside = [a for a in arrivals if t_from <= a[0] <= t_to]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return rate_between(rec["samples"], t_from, t_to)
    (t0, b0), (t1, b1) = inside[0], inside[-1]
    return (b1 - b0) / (t1 - t0)


def probe_message(n):
    """The ``n``-th 64-byte request: seeded random bytes, which no compressor on the link (Deflate) can shrink."""
    return random.Random(n).getrandbits(8 * PROBE_SIZE).to_bytes(PROBE_SIZE, "little")


def rtt_breakdown(relay, probe, warmup):
    """Where each exchange's time went, from the pacing relay's timeline (medians in ms; frame sizes in bytes).

    The request and the response are followed as whole HDLC frames (flag to flag, found around the 64 bytes):
    guest_queue: the request waiting in the guest (behind its own upload) plus the guest's own processing, up
    to the request frame's first byte going onto the line and from the response frame's last byte coming off
    it; request_line / response_line: from a frame's first byte going onto the line to its last coming off
    it (its bytes at the line rate, plus the UART FIFO's delivery); pyslirp: from the request frame's last
    byte reaching pyslirp's line to the response frame's first byte leaving it onto the line, i.e. pyslirp's
    processing, the echo service and everything queued toward the line ahead of the response.
    """
    parts = {"guest_queue": [], "request_line": [], "pyslirp": [], "response_line": [],
             "request_frame": [], "response_frame": []}
    spans = []                      # (request on the line, response off it) of each exchange looked at
    probe_bytes = {"from_guest": 0, "to_guest": 0}
    up_from = down_from = 0
    sys.path.insert(0, ROOT)
    from pyslirp.wire.hdlc import escape
    up, down = bytes(relay.from_guest), bytes(relay.to_guest)
    for n, (t, rtt) in enumerate(probe["rtts"]):
        if rtt is None:
            break
        # On the line the message is HDLC-escaped (ACCM 0 both ways, pppd's default: 0x7d and 0x7e only).
        msg = escape(probe_message(n), 0)
        i = up.find(msg, up_from)
        j = down.find(msg, down_from)
        if i < 0 or j < 0:
            continue        # not in the clear on the line (the first response of a session goes deflated)
        up_from, down_from = i + len(msg), j + len(msg)
        if t < warmup:
            continue
        # The frames around the message: from the flag before it (or the byte after that flag when the flag
        # closed the previous frame and was sent long before) to the flag after it.
        i0, i1 = up.rfind(b"\x7e", 0, i), up.find(b"\x7e", i + len(msg))
        j0, j1 = down.rfind(b"\x7e", 0, j), down.find(b"\x7e", j + len(msg))
        if min(i0, i1, j0, j1) < 0:
            continue
        a, b = relay.times_of("from_guest", i0), relay.times_of("from_guest", i1)
        c, d = relay.times_of("to_guest", j0), relay.times_of("to_guest", j1)
        if None in (a, b, c, d):
            continue
        # A shared flag (the one that ended the previous frame) may have gone much earlier.
        if b[0] - a[0] > 2.0 * (i1 - i0 + 1) / relay.rate:
            a = relay.times_of("from_guest", i0 + 1)
        if d[0] - c[0] > 2.0 * (j1 - j0 + 1) / relay.rate:
            c = relay.times_of("to_guest", j0 + 1)
        req_on, req_off, resp_on, resp_off = a[0], b[1], c[0], d[1]
        parts["request_line"].append(req_off - req_on)
        parts["pyslirp"].append(resp_on - req_off)
        parts["response_line"].append(resp_off - resp_on)
        parts["guest_queue"].append(rtt - (resp_off - req_on))
        parts["request_frame"].append((i1 - i0 + 1) / 1000.0)
        parts["response_frame"].append((j1 - j0 + 1) / 1000.0)
        spans.append((req_on, resp_off))
        probe_bytes["from_guest"] += i1 - i0 + 1
        probe_bytes["to_guest"] += j1 - j0 + 1
    out = dict((k, 1000 * percentile(v, 0.5)) for k, v in parts.items() if v)
    if len(spans) >= 2:
        out["line"] = line_budget(relay, spans[0][0], spans[-1][1], probe_bytes)
    return out


def line_budget(relay, t_from, t_to, probe_bytes):
    """How each direction of the line was spent between ``t_from`` and ``t_to`` (the relay's clock).

    For "from_guest" and "to_guest": ``busy``, the fraction of the span the line was carrying bytes (every byte
    the relay put on it, at the line rate), and ``echo``, the fraction the 64-byte exchanges' own frames took
    (``probe_bytes``, counted by ``rtt_breakdown`` over the same exchanges).  What is busy but neither echo nor
    payload is headers, framing and ACKs.
    """
    span = t_to - t_from
    out = {}
    for name, d in (("from_guest", relay.up), ("to_guest", relay.down)):
        carried = sum(n for taken, _, _, n in d.timeline if t_from <= taken <= t_to)
        out[name] = {"busy": carried / (relay.rate * span), "echo": probe_bytes[name] / (relay.rate * span)}
    return out


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


LINE_LABELS = {
    "pty": "--pty (pyslirp's own pty)",
    "device": "device path on a pty (the relay's)",
    "stdio": "--stdio on pipes",
    "stdio-pty": "--stdio on a pty",
    "socket": "socket:// (a TCP connection, as to a terminal server)",
}


class Bench(object):
    def __init__(self, args):
        use_e2e()
        from e2e import uml
        self.uml = uml
        self.args = args
        import tempfile
        self.basedir = tempfile.mkdtemp(prefix="pyslirp-bench-")
        self.results = {"baud": args.baud, "line_rate": args.baud / 10.0, "settings": args.set}

    def config(self, services):
        cfg = {"services": {
            "5001": {"host": "127.0.0.1", "port": services.ports["sink"], "name": "sink"},
            "5002": {"host": "127.0.0.1", "port": services.ports["source"], "name": "source"},
            "5003": {"host": "127.0.0.1", "port": services.ports["echo"], "name": "echo"},
        }, "serial": {"baudrate": self.args.baud}}
        return parse_set(self.args.set, cfg)

    def guest_cmd(self, mode, port, out, **kw):
        cmd = '$PYTHON %s --guest %s --port %d --out "$RESULTS/%s"' % (os.path.abspath(__file__), mode, port, out)
        for k, v in kw.items():
            cmd += " --%s %s" % (k, v)
        return cmd

    def session(self, name, body, relay_factory=None, timeout=120, line="pty"):
        """One pyslirp on ``line`` + one guest running ``body`` between pppd up and down.

        Returns (guest result, services, guest)."""
        uml = self.uml
        lab = uml.Lab(os.path.join(self.basedir, name))
        os.makedirs(lab.basedir, exist_ok=True)
        services = Services()
        try:
            slirp = lab.start_pyslirp(self.config(services), debug=self.args.debug, pcap=self.args.pcap, line=line)
            services.cpu_pid = slirp.proc.pid
            script = ppp_session_script(body)
            kw = {}
            if relay_factory is not None:
                kw["relay_factory"] = relay_factory
            guest = lab.boot_guest(script, slirp=slirp, timeout=timeout, name="guest", **kw)
            res = guest.wait()
            res.check_ran()
            slirp.stop()
            if self.args.keep and hasattr(guest.relay, "down"):
                with open(os.path.join(guest.rundir, "relay-timeline.json"), "w") as f:
                    json.dump({"to_guest": guest.relay.down.timeline, "from_guest": guest.relay.up.timeline}, f)
            return res, services, guest
        except Exception:
            sys.stderr.write(lab.diagnostics() + "\n")
            raise
        finally:
            services.close()
            lab.close()

    def load(self, res, name):
        return guest_json(res, name)

    def unpaced(self):
        n = int(self.args.mbytes * 1e6)
        body = "\n".join([
            self.guest_cmd("download", 5002, "dl.json", bytes=n),
            self.guest_cmd("upload", 5001, "ul.json", bytes=n),
        ])
        res, services, _ = self.session("unpaced", body, timeout=60 + 4 * self.args.mbytes)
        dl, ul = self.load(res, "dl.json"), self.load(res, "ul.json")
        out = {}
        for key, rec, kind in (("download", dl, "source"), ("upload", ul, "sink")):
            svc = services.wait_for(kind)
            if rec["bytes"] < n or not svc:
                raise RuntimeError("%s incomplete: %r" % (key, rec))
            mbps = rec["bytes"] / (rec["end"] - rec["t0"]) / 1e6
            cpu = None
            if svc[0]["cpu0"] is not None and svc[0]["cpu1"] is not None:
                cpu = (svc[0]["cpu1"] - svc[0]["cpu0"]) / (n / 1e6)
            out[key] = {"MB_per_s": mbps, "cpu_s_per_MB": cpu}
        self.results["unpaced"] = out
        return out

    def paced(self):
        out = {}
        self.results["paced"] = out
        for line in self.args.lines:
            try:
                out[line] = self.paced_line(line)
            except Exception as exc:       # one line failing must not lose the others' figures
                sys.stderr.write("%s: %s: %s\n" % (line, type(exc).__name__, exc))
                out[line] = {"error": "%s: %s" % (type(exc).__name__, exc)}
        return out

    def paced_line(self, line):
        from e2e.pacing import PacedRelay
        a = self.args
        factory = PacedRelay.factory(a.baud)
        rate = a.baud / 10.0
        out = {}
        if "idle" in a.phases:
            # 64-byte exchanges on an otherwise idle line.
            body = self.guest_cmd("probe", 5003, "probe.json", seconds=a.idle_seconds, gap=a.probe_gap)
            res, services, guest = self.session("%s-idle" % line, body, relay_factory=factory,
                                                timeout=60 + a.idle_seconds, line=line)
            probe = self.load(res, "probe.json")
            rtts = [r for t, r in probe["rtts"] if r is not None and t >= 1.0]
            out["idle_rtt_ms"] = rtt_summary(rtts)
            out["idle_rtt_ms"]["breakdown"] = rtt_breakdown(guest.relay, probe, 1.0)
        # One-way, each direction in its own session.
        for key, mode, port in (("download", "download", 5002), ("upload", "upload", 5001)):
            if key not in a.phases:
                continue
            body = self.guest_cmd(mode, port, "bulk.json", seconds=a.seconds)
            res, services, guest = self.session("%s-%s" % (line, key), body, relay_factory=factory,
                                                timeout=60 + a.seconds, line=line)
            if key == "download":
                got = steady_rate(self.load(res, "bulk.json"), a.warmup, a.seconds)
            else:
                sink = services.wait_for("sink")
                got = steady_rate(sink[0], a.warmup, a.seconds) if sink else 0.0
            out[key] = {"goodput": got, "fraction": got / rate}
        if "two-way" not in a.phases:
            return out
        # Two-way with latency probes.
        s = a.two_way_seconds
        # (A bare "wait" would wait for pppd too: wait for these three only.)
        body = "\n".join([
            self.guest_cmd("download", 5002, "dl.json", seconds=s) + " & p1=$!",
            self.guest_cmd("upload", 5001, "ul.json", seconds=s) + " & p2=$!",
            self.guest_cmd("probe", 5003, "probe.json", seconds=s, gap=a.probe_gap) + " & p3=$!",
            "wait $p1 $p2 $p3",
        ])
        res, services, guest = self.session("%s-two-way" % line, body, relay_factory=factory, timeout=60 + s,
                                            line=line)
        dl = steady_rate(self.load(res, "dl.json"), a.warmup, s)
        sink = services.wait_for("sink")
        ul = steady_rate(sink[0], a.warmup, s) if sink else 0.0
        probe = self.load(res, "probe.json")
        rtts = [r for t, r in probe["rtts"] if r is not None and t >= a.warmup]
        out["two_way"] = {
            "download": {"goodput": dl, "fraction": dl / rate},
            "upload": {"goodput": ul, "fraction": ul / rate},
            "rtt_ms": rtt_summary(rtts),
            "probe_errors": sum(1 for _, r in probe["rtts"] if r is None),
            "rtt_breakdown_ms": rtt_breakdown(guest.relay, probe, a.warmup),
        }
        return out

    def report(self):
        r = self.results
        lines = ["pyslirp link benchmark: Linux pppd in a UML guest <-> pyslirp%s" % (
            " (settings: %s)" % ", ".join(r["settings"]) if r["settings"] else "")]
        if "unpaced" in r:
            u = r["unpaced"]
            lines.append("unpaced, --pty:  download %.2f MB/s, upload %.2f MB/s" % (
                u["download"]["MB_per_s"], u["upload"]["MB_per_s"]))
            if u["download"]["cpu_s_per_MB"] is not None:
                lines.append("          pyslirp CPU: %.2f s/MB downloading, %.2f s/MB uploading" % (
                    u["download"]["cpu_s_per_MB"], u["upload"]["cpu_s_per_MB"]))
        if "paced" not in r:
            return "\n".join(lines)
        lines.append("%d bit/s 8N1 (line rate %d bytes/s each way):" % (r["baud"], r["line_rate"]))
        for line, p in r["paced"].items():
            lines.append("  %s:" % LINE_LABELS.get(line, line))
            if "error" in p:
                lines.append("    failed: %s" % p["error"].splitlines()[0])
                continue
            if "idle_rtt_ms" in p:
                rt = p["idle_rtt_ms"]
                lines.append("    idle 64-byte RTT: median %.1f ms (p10 %.1f, p90 %.1f, max %.1f; n=%d)" % (
                    rt["median"], rt["p10"], rt["p90"], rt["max"], rt["n"]))
                b = rt.get("breakdown")
                if b:
                    lines.append("      medians: in the guest %.1f ms, request on the line %.1f (%d-byte frame), "
                                 "pyslirp %.1f, response on the line %.1f (%d-byte frame)" % (
                                     b.get("guest_queue", 0), b.get("request_line", 0), b.get("request_frame", 0),
                                     b.get("pyslirp", 0), b.get("response_line", 0), b.get("response_frame", 0)))
            for key in ("download", "upload"):
                if key in p:
                    lines.append("    one-way %-8s goodput %.0f B/s (%.1f%% of the line)" % (
                        key, p[key]["goodput"], 100 * p[key]["fraction"]))
            if "two_way" not in p:
                continue
            t = p["two_way"]
            lines.append("    two-way goodput:  download %.0f B/s (%.1f%%), upload %.0f B/s (%.1f%%)" % (
                t["download"]["goodput"], 100 * t["download"]["fraction"],
                t["upload"]["goodput"], 100 * t["upload"]["fraction"]))
            rt = t["rtt_ms"]
            lines.append("    64-byte RTT during two-way bulk: median %.0f ms (p10 %.0f, p90 %.0f, max %.0f; n=%d)"
                         % (rt["median"], rt["p10"], rt["p90"], rt["max"], rt["n"]))
            b = t.get("rtt_breakdown_ms")
            if b:
                lines.append("      medians: in the guest %.0f ms, request on the line %.0f, pyslirp and its queue "
                             "%.0f, response on the line %.0f" % (b.get("guest_queue", 0), b.get("request_line", 0),
                                                                   b.get("pyslirp", 0), b.get("response_line", 0)))
                u = b.get("line")
                if u:
                    lines.append("      line busy %.1f%% down, %.1f%% up; the exchanges' own frames %.1f%% down, "
                                 "%.1f%% up" % (100 * u["to_guest"]["busy"], 100 * u["from_guest"]["busy"],
                                                100 * u["to_guest"]["echo"], 100 * u["from_guest"]["echo"]))
        return "\n".join(lines)


def rtt_summary(rtts):
    """Median, p10, p90 and max of RTTs in seconds, as ms."""
    return {"n": len(rtts), "median": 1000 * percentile(rtts, 0.5), "p10": 1000 * percentile(rtts, 0.1),
            "p90": 1000 * percentile(rtts, 0.9), "max": 1000 * max(rtts) if rtts else float("nan")}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--guest":
        return guest_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--seconds", type=float, default=20.0, help="each one-way paced transfer")
    p.add_argument("--two-way-seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=3.0, help="seconds left out at the start of each transfer")
    p.add_argument("--probe-gap", type=float, default=0.25, help="seconds between two 64-byte exchanges")
    p.add_argument("--mbytes", type=float, default=8.0, help="MB per unpaced transfer")
    p.add_argument("--only", choices=("unpaced", "paced"))
    p.add_argument("--lines", default="pty,device,stdio",
                   help="kinds of line for the paced phases (comma-separated: pty, device, stdio, stdio-pty, socket)")
    p.add_argument("--phases", default="idle,download,upload,two-way",
                   help="paced phases to run (comma-separated: idle, download, upload, two-way)")
    p.add_argument("--idle-seconds", type=float, default=10.0, help="64-byte exchanges on an idle line")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="pyslirp configuration override, e.g. tcp.mss=536 (repeatable)")
    p.add_argument("--debug", action="store_true", help="run pyslirp with -d (slower: debug logging)")
    p.add_argument("--pcap", action="store_true", help="let pyslirp capture its PPP frames (see --keep)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    a = p.parse_args(argv)
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    a.lines = [x.strip() for x in a.lines.split(",") if x.strip()]
    for line in a.lines:
        if line not in LINE_LABELS:
            p.error("unknown line type %r (known: %s)" % (line, ", ".join(LINE_LABELS)))
    reason = uml_unavailable()
    if reason:
        sys.stderr.write("cannot run: %s\n" % reason)
        return 2
    bench = Bench(a)
    try:
        if a.only != "paced":
            bench.unpaced()
        if a.only != "unpaced":
            bench.paced()
    finally:
        if a.keep:
            sys.stderr.write("run directories kept in %s\n" % bench.basedir)
        else:
            import shutil
            shutil.rmtree(bench.basedir, ignore_errors=True)
    print(bench.report())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(bench.results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
