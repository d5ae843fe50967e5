"""Guest-side clients for the flood tests and bench/bench_flood.py: an echo session held open, probes, a burst.

Runs inside the UML guest with the host's Python (``$PYTHON floodclients.py MODE ...``), standard library only, and
writes one JSON object to ``--out``.  The server is an echo service behind pyslirp.

* ``held``: one connection held open for the whole run; every ``--interval`` seconds it sends a short line and
  times the echo (``rtts``: [wall-clock time, rtt or null on error]), until the file ``--until`` exists.
* ``probe``: ``--count`` new connections one after the other (``--gap`` seconds apart), each: connect, send a
  line, read the echo, close, within ``--timeout`` seconds; one record per connection (ok, error, times).
* ``burst``: ``--count`` connections opened at the same moment (non-blocking), each then echoing one line; one
  outcome per connection: ``ok``, ``refused`` (reset or refused: the limits said no), ``timeout`` or ``error``.
"""

import argparse
import errno
import json
import os
import selectors
import socket
import sys
import time


def _echo_once(sock, line, deadline):
    sock.sendall(line)
    got = b""
    while len(got) < len(line):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("echo timed out")
        sock.settimeout(left)
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed before the echo")
        got += data
    if got != line:
        raise ValueError("wrong echo %r" % got[:40])


def held(a):
    t0 = time.monotonic()
    out = {"rtts": [], "errors": [], "connected": False}
    try:
        sock = socket.create_connection((a.host, a.port), timeout=30)
    except OSError as exc:
        out["errors"].append("connect: %r" % exc)
        return out
    out["connected"] = True
    out["connect_s"] = time.monotonic() - t0
    i = 0
    while not os.path.exists(a.until) and time.monotonic() - t0 < a.max_seconds:
        i += 1
        line = b"held %08d\n" % i
        start = time.monotonic()
        wall = time.time()
        try:
            _echo_once(sock, line, start + a.timeout)
            out["rtts"].append([wall, time.monotonic() - start])
        except (OSError, ValueError) as exc:
            out["rtts"].append([wall, None])
            out["errors"].append("%.1f: %r" % (start - t0, exc))
            break
        time.sleep(a.interval)
    sock.close()
    return out


def probe(a):
    out = {"probes": []}
    for i in range(a.count):
        t0 = time.monotonic()
        rec = {"ok": False}
        try:
            sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
            rec["connect_s"] = time.monotonic() - t0
            try:
                _echo_once(sock, b"probe %d\n" % i, t0 + a.timeout)
            finally:
                sock.close()
            rec["ok"] = True
        except (OSError, ValueError) as exc:
            rec["error"] = repr(exc)
        rec["total_s"] = time.monotonic() - t0
        out["probes"].append(rec)
        time.sleep(a.gap)
    out["ok"] = sum(1 for r in out["probes"] if r["ok"])
    return out


def burst(a):
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    outcomes = {}
    errors = {}
    state = {}
    for i in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        rc = s.connect_ex((a.host, a.port))
        if rc not in (0, errno.EINPROGRESS):
            outcomes[i] = "refused" if rc == errno.ECONNREFUSED else "error"
            s.close()
            continue
        state[s] = [i, "connect", b"burst %05d\n" % i, b""]
        sel.register(s, selectors.EVENT_WRITE)
    while state and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
            s = key.fileobj
            i, phase, line, got = state[s]
            result = None
            try:
                if phase == "connect":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    s.send(line)
                    state[s][1] = "echo"
                    sel.modify(s, selectors.EVENT_READ)
                else:
                    data = s.recv(4096)
                    if not data:
                        raise ConnectionResetError(errno.ECONNRESET, "closed before the echo")
                    got += data
                    state[s][3] = got
                    if len(got) >= len(line):
                        result = "ok" if got == line else "error"
                        if got != line:
                            errors["wrong echo"] = errors.get("wrong echo", 0) + 1
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE):
                    result = "refused"
                else:
                    result = "error"
                    name = "%s in %s" % (errno.errorcode.get(exc.errno, repr(exc)), phase)
                    errors[name] = errors.get(name, 0) + 1
            if result is not None:
                outcomes[i] = result
                sel.unregister(s)
                s.close()
                del state[s]
    for s, (i, _, _, _) in list(state.items()):
        outcomes[i] = "timeout"
        s.close()
    counts = {}
    for result in outcomes.values():
        counts[result] = counts.get(result, 0) + 1
    return {"count": a.count, "outcomes": counts, "errors": errors, "seconds": time.monotonic() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("held", "probe", "burst"))
    p.add_argument("--host", default="10.0.0.1")
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--gap", type=float, default=0.5)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--until", default="")
    p.add_argument("--max-seconds", type=float, default=600.0)
    a = p.parse_args(argv)
    result = {"held": held, "probe": probe, "burst": burst}[a.mode](a)
    with open(a.out + ".tmp", "w") as f:
        json.dump(result, f)
    os.rename(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
