"""Guest-side network checks for end-to-end tests: ``$PYTHON guest_net.py PLAN.json`` inside the UML guest.

Theory of operation
-------------------
The plan (written by the test, read by the guest through the shared file system) is a list of steps, each a dict
with a ``name`` and an ``op``; they run in order and each one's result is stored under its name in the results
file, ``RESULTS/NAME`` (JSON, rewritten after every step, so a step that hangs still leaves the earlier ones
behind).  ``RESULTS`` is the guest's run directory, the second argument (marks live there too)::

    $PYTHON guest_net.py PLAN.json "$RESULTS"
    PLAN.json: {"results": "net.json", "steps": [{"name": "up", "op": "echo", "host": ..., "port": ...}, ...]}

Operations (``timeout`` in seconds everywhere):

* ``echo`` host port size seed [half_close]: one TCP connection; sends ``payload(seed, size)`` while reading back
  what comes; ``{"result": "ok" | error, "sent", "sent_sha256", "received", "sha256", "seconds", "local": [ip,
  port]}``.  With ``half_close`` (the default) the sending side is shut down after the payload and the echo read
  to its end; without, the reader stops after ``size`` bytes and closes (for relays that end both directions at
  the first end of file, as microsocks and tinyproxy do).
* ``download`` host port: reads the connection to its end: ``{"result", "received", "sha256", "seconds"}``.
* ``connect`` host port: how a connect ends, and how fast: ``{"result": "connected" | "refused" |
  "host_unreachable" | "net_unreachable" | "timeout" | other errno name, "seconds", "then"}``; after a connect that
  succeeds, ``then`` is what the next read gives within 3 s: ``"eof"``, ``"reset"``, ``"data"`` or ``"open"``.
* ``udp`` host port sizes seed: a connected UDP socket; each size sends one datagram and waits for it back:
  ``{"results": [{"size", "result": "ok" | "mismatch" | "refused" | "host_unreachable" | "timeout", "seconds"}]}``.
* ``hold`` host port mark: connects, echoes a few bytes, writes the guest mark ``mark`` and waits for the host's
  mark of the same name before closing: the host looks at its sockets meanwhile.
* ``mark`` mark / ``wait`` mark: a guest mark; waiting for a host mark (``uml.Guest.mark``).

Error names come from the errno: ECONNREFUSED is ``refused``, EHOSTUNREACH (what Linux reports for ICMP
administratively prohibited as for host unreachable) is ``host_unreachable``.
"""

import errno
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time

NAMES = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "host_unreachable",
         errno.ENETUNREACH: "net_unreachable", errno.ECONNRESET: "reset", errno.ETIMEDOUT: "timeout"}


def payload(seed, size):
    return random.Random(seed).getrandbits(size * 8).to_bytes(size, "little") if size else b""


def error_name(exc):
    if isinstance(exc, socket.timeout):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno in NAMES:
        return NAMES[exc.errno]
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return repr(exc)


def connect(host, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def op_echo(step):
    data = payload(step.get("seed", 1), step["size"])
    out = {"sent": len(data), "sent_sha256": hashlib.sha256(data).hexdigest(), "received": 0}
    t = time.monotonic()
    h = hashlib.sha256()
    try:
        s = connect(step["host"], step["port"], step.get("timeout", 30))
    except OSError as exc:
        out.update(result=error_name(exc), seconds=time.monotonic() - t)
        return out
    out["local"] = list(s.getsockname())
    errors = []

    half_close = step.get("half_close", True)

    def writer():
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError as exc:
            errors.append("send: " + error_name(exc))

    w = threading.Thread(target=writer)
    w.start()
    try:
        while half_close or out["received"] < len(data):
            got = s.recv(65536)
            if not got:
                break
            h.update(got)
            out["received"] += len(got)
    except OSError as exc:
        errors.append("recv: " + error_name(exc))
    w.join()
    s.close()
    out.update(result="; ".join(errors) or "ok", sha256=h.hexdigest(), seconds=time.monotonic() - t)
    return out


def op_download(step):
    out = {"received": 0}
    t = time.monotonic()
    h = hashlib.sha256()
    try:
        s = connect(step["host"], step["port"], step.get("timeout", 30))
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    break
                h.update(got)
                out["received"] += len(got)
        finally:
            s.close()
        out["result"] = "ok"
    except OSError as exc:
        out["result"] = error_name(exc)
    out.update(sha256=h.hexdigest(), seconds=time.monotonic() - t)
    return out


def op_connect(step):
    t = time.monotonic()
    try:
        s = connect(step["host"], step["port"], step.get("timeout", 10))
    except OSError as exc:
        return {"result": error_name(exc), "seconds": time.monotonic() - t}
    out = {"result": "connected", "seconds": time.monotonic() - t}
    s.settimeout(3)
    try:
        got = s.recv(100)
        out["then"] = "data" if got else "eof"
    except socket.timeout:
        out["then"] = "open"
    except OSError as exc:
        out["then"] = error_name(exc)
    out["then_seconds"] = time.monotonic() - t
    s.close()
    return out


def op_udp(step):
    results = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(step.get("timeout", 5))
    try:
        s.connect((step["host"], step["port"]))
        for i, size in enumerate(step["sizes"]):
            data = payload(step.get("seed", 1) + i, size)
            t = time.monotonic()
            try:
                s.send(data)
                got = s.recv(65535)
                result = "ok" if got == data else "mismatch (%d bytes back)" % len(got)
            except OSError as exc:
                result = error_name(exc)
            results.append({"size": size, "result": result, "seconds": time.monotonic() - t})
    finally:
        s.close()
    return {"results": results}


def guest_mark(rundir, name):
    open(os.path.join(rundir, "guest-%s.mark" % name), "w").close()


def wait_host(rundir, name, timeout):
    path = os.path.join(rundir, "host-%s.mark" % name)
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def op_hold(step, rundir):
    try:
        s = connect(step["host"], step["port"], step.get("timeout", 20))
    except OSError as exc:
        guest_mark(rundir, step["mark"])
        return {"result": error_name(exc)}
    out = {"local": list(s.getsockname())}
    try:
        s.sendall(b"hold")
        got = b""
        while len(got) < 4:
            more = s.recv(4 - len(got))
            if not more:
                break
            got += more
        out["echoed"] = got.decode("latin-1")
    except OSError as exc:
        out["echoed"] = error_name(exc)
    guest_mark(rundir, step["mark"])
    out["host_checked"] = wait_host(rundir, step["mark"], step.get("wait", 30))
    s.close()
    out["result"] = "ok" if out["echoed"] == "hold" else "echo failed: %s" % out["echoed"]
    return out


def main(plan_path, rundir):
    with open(plan_path) as f:
        plan = json.load(f)
    results_path = os.path.join(rundir, plan["results"])
    results = {}
    for step in plan["steps"]:
        op = step["op"]
        t = time.monotonic()
        try:
            if op == "echo":
                res = op_echo(step)
            elif op == "download":
                res = op_download(step)
            elif op == "connect":
                res = op_connect(step)
            elif op == "udp":
                res = op_udp(step)
            elif op == "hold":
                res = op_hold(step, rundir)
            elif op == "mark":
                guest_mark(rundir, step["mark"])
                res = {"result": "ok"}
            elif op == "wait":
                res = {"result": "ok" if wait_host(rundir, step["mark"], step.get("timeout", 30)) else "timeout"}
            else:
                res = {"result": "unknown op %r" % op}
        except Exception as exc:        # a broken step must not hide the others
            res = {"result": "exception: %r" % exc}
        res.setdefault("step_seconds", time.monotonic() - t)
        results[step["name"]] = res
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
        os.rename(results_path + ".tmp", results_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
