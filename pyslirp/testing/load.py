"""A load test: many concurrent request/response flows through a PPP link, with throughput, latency, errors, memory.

Theory of operation
-------------------
``load_test(connections, duration, target)`` opens ``connections`` TCP connections to ``target`` (an echo
service: what it gets, it sends back) and keeps every one busy for ``duration`` seconds: each sends a
``message_size``-byte message (numbered, so a reply from the wrong flow or a stale one is caught), waits for the
same bytes back, and sends the next one at once.  One thread per connection; the connections are opened
``ramp`` seconds apart at most so the link is not asked for all the handshakes in the same millisecond.

Where the flows cross pyslirp depends on the caller: run it inside the machine that has the PPP client (a pppd
guest: ``python3 -m pyslirp.testing.load 10.0.0.1:7 ...`` prints a JSON report; the file runs on its own, it
imports only the standard library), or give ``connect`` a function that opens a connection over the link another
way (through ``pyslirp.py client``'s SOCKS server, say).  ``pid`` names the pyslirp process whose peak resident
memory (``VmHWM`` of /proc/PID/status) goes into the report, when it runs on this machine; otherwise read it with
:func:`peak_rss_kb` where it runs.

The report (:class:`LoadReport`) counts what went wrong by kind instead of stopping at the first error: connect
failures, resets, timeouts, wrong bytes, early EOFs.

``concurrent_echo(connections, target)`` asks a different question: can ``connections`` connections be open
*at the same time*, each echoing its own payload intact?  It runs in one thread with non-blocking sockets (a
thousand of them cost the caller no threads): every connection is opened at once, sends its payload
(:func:`echo_payload`, different for each) as soon as it is connected, reads it back and compares, and stays
open until every other one has finished too, so that at the end all of them are open together end to end; then
all close.  :class:`EchoReport` counts the intact echoes and the failures by kind.
"""

import argparse
import errno
import json
import math
import os
import random
import selectors
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

HEADER = 12             # connection number (4 bytes) and message number (8 bytes), big endian


@dataclass(frozen=True)
class LoadReport:
    connections: int                # asked for
    connected: int                  # that were opened
    duration: float                 # seconds the exchanges ran
    exchanges: int                  # messages answered correctly
    bytes_sent: int
    bytes_received: int
    throughput: float               # payload bytes per second, both directions together
    latency_ms: dict = field(default_factory=dict)      # p50, p90, p99, max of the round trips
    errors: dict = field(default_factory=dict)          # kind -> count
    peak_rss_kb: int = 0            # VmHWM of ``pid``; 0 if unknown

    def as_dict(self):
        return asdict(self)

    def __str__(self):
        lat = self.latency_ms
        return ("%d/%d connections, %.1f s: %d exchanges, %.0f B/s, latency p50 %.1f p90 %.1f p99 %.1f max %.1f ms, "
                "errors %s, peak RSS %s" % (
                    self.connected, self.connections, self.duration, self.exchanges, self.throughput,
                    lat.get("p50", 0), lat.get("p90", 0), lat.get("p99", 0), lat.get("max", 0),
                    self.errors or "none", ("%d kB" % self.peak_rss_kb) if self.peak_rss_kb else "unknown"))


def percentile(sorted_values, p):
    """The ``p``-th percentile (nearest rank) of an already sorted list; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, int(math.ceil(p / 100.0 * len(sorted_values))) - 1))
    return sorted_values[k]


def proc_status(pid, key):
    """The number on line ``key`` of /proc/PID/status (``VmHWM`` and ``VmRSS`` in kB, ``Threads``...), or 0 if
    it cannot be read."""
    prefix = key + ":"
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(prefix):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_rss_kb(pid):
    """Peak resident set size of process ``pid`` in kB (``VmHWM``), or 0 if it cannot be read."""
    return proc_status(pid, "VmHWM")


def _message(conn, n, size):
    head = conn.to_bytes(4, "big") + n.to_bytes(8, "big")
    body = (head * (size // HEADER + 1))[:max(size, HEADER)]
    return body


class _Flow(object):
    def __init__(self, index):
        self.index = index
        self.latencies = []
        self.sent = 0
        self.received = 0
        self.error = None
        self.connected = False


def _recv_exactly(sock, n):
    chunks = []
    got = 0
    while got < n:
        data = sock.recv(n - got)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _run_flow(flow, target, connect, size, start_at, stop_at, timeout):
    delay = start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    try:
        sock = connect(target, timeout)
    except socket.timeout:
        flow.error = "connect_timeout"
        return
    except ConnectionRefusedError:
        flow.error = "connect_refused"
        return
    except OSError as exc:
        flow.error = "connect_" + (type(exc).__name__)
        return
    flow.connected = True
    try:
        sock.settimeout(timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        n = 0
        while time.monotonic() < stop_at:
            msg = _message(flow.index, n, size)
            t = time.monotonic()
            sock.sendall(msg)
            flow.sent += len(msg)
            reply = _recv_exactly(sock, len(msg))
            flow.received += len(reply)
            if len(reply) < len(msg):
                flow.error = "eof"
                return
            if reply != msg:
                flow.error = "wrong_bytes"
                return
            flow.latencies.append((time.monotonic() - t) * 1000.0)
            n += 1
    except socket.timeout:
        flow.error = "timeout"
    except ConnectionResetError:
        flow.error = "reset"
    except OSError as exc:
        flow.error = type(exc).__name__
    finally:
        sock.close()


def _default_connect(target, timeout):
    return socket.create_connection(target, timeout=timeout)


def load_test(connections, duration, target, message_size=64, connect=None, pid=None, ramp=0.005,
              timeout=30.0):
    """Run ``connections`` echo flows against ``target`` (host, port) for ``duration`` seconds: a LoadReport.

    ``connect(target, timeout)`` opens one connection (default: ``socket.create_connection``); ``pid``: the
    process whose peak RSS to report; ``ramp``: seconds between two connection starts; ``timeout``: seconds a
    connect or a reply may take before the flow counts as timed out.
    """
    connect = connect or _default_connect
    flows = [_Flow(i) for i in range(connections)]
    t0 = time.monotonic()
    opened_by = t0 + ramp * connections
    stop_at = opened_by + duration
    threads = []
    for flow in flows:
        th = threading.Thread(target=_run_flow, name="load-%d" % flow.index,
                              args=(flow, target, connect, message_size, t0 + ramp * flow.index, stop_at,
                                    timeout), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(max(0.0, stop_at - time.monotonic()) + timeout + 5)
    elapsed = max(1e-6, min(time.monotonic(), stop_at) - t0)
    latencies = sorted(x for f in flows for x in f.latencies)
    errors = {}
    for f in flows:
        if f.error:
            errors[f.error] = errors.get(f.error, 0) + 1
    hung = sum(1 for th in threads if th.is_alive())
    if hung:
        errors["hung"] = hung
    sent = sum(f.sent for f in flows)
    received = sum(f.received for f in flows)
    lat = {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90), "p99": percentile(latencies, 99),
           "max": latencies[-1] if latencies else 0.0}
    return LoadReport(connections=connections, connected=sum(1 for f in flows if f.connected),
                      duration=round(elapsed, 3), exchanges=len(latencies), bytes_sent=sent,
                      bytes_received=received, throughput=(sent + received) / elapsed,
                      latency_ms={k: round(v, 2) for k, v in lat.items()}, errors=errors,
                      peak_rss_kb=peak_rss_kb(pid) if pid else 0)


@dataclass(frozen=True)
class EchoReport:
    connections: int                # asked for
    connected: int                  # whose connect succeeded
    echoed: int                     # whose payload came back intact
    seconds: float                  # from the first connect to the last echo (or the deadline)
    errors: dict = field(default_factory=dict)          # kind -> count
    finished_s: dict = field(default_factory=dict)      # p50, p90, p99, max of the seconds to each intact echo

    @property
    def ok(self):
        return self.echoed == self.connections and not self.errors

    def as_dict(self):
        return asdict(self)

    def __str__(self):
        fin = self.finished_s
        return "%d/%d echoed intact (%d connected) in %.2f s (p50 %.2f p90 %.2f p99 %.2f s), errors %s" % (
            self.echoed, self.connections, self.connected, self.seconds, fin.get("p50", 0), fin.get("p90", 0),
            fin.get("p99", 0), self.errors or "none")


def echo_payload(index, size, seed=0):
    """Connection ``index``'s payload: ``size`` bytes (at least 4), its number first, then seeded random bytes."""
    size = max(4, size)
    rest = random.Random(seed * 1000003 + index).getrandbits((size - 4) * 8).to_bytes(size - 4, "little")
    return index.to_bytes(4, "big") + rest


class _EchoConn(object):
    def __init__(self, index, sock, payload):
        self.index = index
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.received = []
        self.got = 0
        self.connected = False
        self.state = "connecting"       # -> "echoing" -> "done" (intact) or "failed"
        self.error = None
        self.done_at = None


def concurrent_echo(connections, target, payload_size=1024, timeout=60.0, seed=0):
    """Open ``connections`` connections to ``target`` at once, echo one payload on each: an EchoReport.

    Every connection stays open until all have finished (intact, failed, or the ``timeout`` in seconds for the
    whole run passed), then all are closed.  The echo service must send back exactly what it gets.
    """
    sel = selectors.DefaultSelector()
    conns = []
    t0 = time.monotonic()
    deadline = t0 + timeout
    last = t0
    try:
        for i in range(connections):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            conn = _EchoConn(i, sock, echo_payload(i, payload_size, seed))
            conns.append(conn)
            code = sock.connect_ex(target)
            if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                _fail(conn, "connect_" + errno.errorcode.get(code, str(code)))
                continue
            sel.register(sock, selectors.EVENT_WRITE, conn)
        pending = sum(1 for c in conns if c.state in ("connecting", "echoing"))
        while pending and time.monotonic() < deadline:
            for key, mask in sel.select(min(1.0, max(0.0, deadline - time.monotonic()))):
                conn = key.data
                before = conn.state
                _step(sel, conn, mask)
                if conn.state != before and conn.state in ("done", "failed"):
                    pending -= 1
                    last = time.monotonic()
        if pending:
            last = time.monotonic()
        for conn in conns:
            if conn.state == "connecting":
                _fail(conn, "connect_timeout")
            elif conn.state == "echoing":
                _fail(conn, "timeout")
    finally:
        for conn in conns:
            conn.sock.close()
        sel.close()
    errors = {}
    for conn in conns:
        if conn.error:
            errors[conn.error] = errors.get(conn.error, 0) + 1
    finished = sorted(c.done_at - t0 for c in conns if c.done_at is not None)
    fin = {"p50": percentile(finished, 50), "p90": percentile(finished, 90), "p99": percentile(finished, 99),
           "max": finished[-1] if finished else 0.0}
    return EchoReport(connections=connections, connected=sum(1 for c in conns if c.connected),
                      echoed=len(finished), seconds=round(last - t0, 3), errors=errors,
                      finished_s={k: round(v, 3) for k, v in fin.items()})


def _fail(conn, kind):
    conn.state = "failed"
    conn.error = kind


def _step(sel, conn, mask):
    sock = conn.sock
    try:
        if conn.state == "connecting":
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                sel.unregister(sock)
                _fail(conn, "connect_" + errno.errorcode.get(code, str(code)))
                return
            conn.connected = True
            conn.state = "echoing"
            sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        if mask & selectors.EVENT_WRITE and conn.sent < len(conn.payload):
            conn.sent += sock.send(conn.payload[conn.sent:])
            if conn.sent == len(conn.payload):
                sel.modify(sock, selectors.EVENT_READ, conn)
        if mask & selectors.EVENT_READ:
            data = sock.recv(65536)
            if not data:
                sel.unregister(sock)
                _fail(conn, "eof")
                return
            conn.received.append(data)
            conn.got += len(data)
            if conn.got >= len(conn.payload):
                sel.unregister(sock)
                if b"".join(conn.received) == conn.payload:
                    conn.state = "done"     # stays open until the others are done too
                    conn.done_at = time.monotonic()
                else:
                    _fail(conn, "wrong_bytes")
    except (BlockingIOError, InterruptedError):
        pass
    except ConnectionResetError:
        sel.unregister(sock)
        _fail(conn, "reset")
    except OSError as exc:
        sel.unregister(sock)
        _fail(conn, type(exc).__name__)


def _target(text):
    host, _, port = text.rpartition(":")
    try:
        return (host or "127.0.0.1", int(port))
    except ValueError:
        raise argparse.ArgumentTypeError("the target is HOST:PORT")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python3 -m pyslirp.testing.load",
                                description="Concurrent echo flows against HOST:PORT; prints a JSON report.")
    p.add_argument("target", type=_target, help="HOST:PORT of an echo service (through the PPP link)")
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--duration", type=float, default=3.0, help="seconds")
    p.add_argument("--size", type=int, default=64, help="bytes per message (at least %d)" % HEADER)
    p.add_argument("--pid", type=int, default=0, help="a process on this machine whose peak RSS to report")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--out", help="write the JSON report here instead of standard output")
    a = p.parse_args(argv)
    if a.connections < 1 or a.duration <= 0:
        sys.stderr.write("load: --connections and --duration must be positive\n")
        return 2
    report = load_test(a.connections, a.duration, a.target, message_size=max(HEADER, a.size),
                       pid=a.pid or None, timeout=a.timeout)
    text = json.dumps(report.as_dict(), sort_keys=True)
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write(text + "\n")
        os.rename(a.out + ".tmp", a.out)
    else:
        print(text)
    sys.stderr.write("load: %s\n" % report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
