"""End to end through the real pppd (User-Mode Linux): reload on SIGHUP and service health.

* Reload: a service is added by editing pyslirp's file and sending SIGHUP while the guest holds a connection that
  keeps exchanging lines; the new service answers, the held connection never stops answering, and the link is not
  negotiated again (the LCP Configure-Requests on the serial line, both ways, and in pppd's log, are the same
  before and after).  A broken file then changes nothing.
* Health: a service whose target swallows SYNs (a loopback listener with a full accept queue) and that has a live
  fallback serves every connection, slowly (half the connect timeout) until the target's breaker opens, then at
  once; a service with no fallback is refused after the connect timeout until its breaker opens, then at once
  (a reset within a fraction of a second), and pyslirp makes no connection attempt for those.

The guest-side programs are Python scripts in the test's directory, run with ``$PYTHON``; each prints one JSON line.
"""

import os
import shlex
import signal
import socket
import time

import pytest

from e2e import services
from e2e.fixtures import lab  # noqa: F401  (pytest fixture)
from e2e.programs import await_mark, json_result, write_script
from e2e.uml import ppp_packets, toml_dumps

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LOCAL_IP = "10.0.0.1"
PROTO_LCP = 0xC021
CONFIGURE_REQUEST = 1





def wait_for(predicate, timeout):
    end = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < end:
        time.sleep(0.1)
        value = predicate()
    return value


def lcp_requests(stream):
    """LCP Configure-Requests in an async-HDLC byte stream."""
    return sum(1 for proto, info in ppp_packets(stream)
               if proto == PROTO_LCP and info[:1] == bytes([CONFIGURE_REQUEST]))


# ---------------------------------------------------------------------------------------------------------------
# reload

HELD = r"""
import json, os, socket, sys, time
ip, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {"pings": 0, "max_rtt": 0.0, "errors": []}
try:
    c = socket.create_connection((ip, port), timeout=20)
    c.settimeout(20)
    n = 0
    while not os.path.exists(stop):
        line = ("ping %d\n" % n).encode()
        t = time.monotonic()
        c.sendall(line)
        got = b""
        while len(got) < len(line):
            d = c.recv(4096)
            if not d:
                raise EOFError("closed after %d pings" % n)
            got += d
        if got != line:
            raise ValueError("echo %r for %r" % (got, line))
        out["max_rtt"] = max(out["max_rtt"], time.monotonic() - t)
        n += 1
        out["pings"] = n
        time.sleep(0.1)
    c.close()
except Exception as exc:
    out["errors"].append(repr(exc))
print(json.dumps(out))
"""

ONE = r"""
import json, socket, sys, time
ip, port, message = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
t = time.monotonic()
out = {}
try:
    c = socket.create_connection((ip, port), timeout=20)
    c.settimeout(20)
    c.sendall(message)
    got = b""
    while len(got) < len(message):
        d = c.recv(4096)
        if not d:
            break
        got += d
    c.close()
    out["echo"] = got.decode(errors="replace")
except Exception as exc:
    out["error"] = type(exc).__name__
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""


def test_sighup_adds_a_service_without_renegotiating_while_a_held_connection_answers(lab):
    with services.ServiceSet() as svc:
        first = svc.add(services.EchoServer())
        second = svc.add(services.EchoServer())
        base = {"services": {"22": {"host": "127.0.0.1", "port": first.port, "name": "first"}}}
        slirp = lab.start_pyslirp(base)
        held = write_script(lab, "held.py", HELD)
        one = write_script(lab, "one.py", ONE)
        guest = lab.boot_guest("""
            pppd_start pppd noauth
            wait_ppp_up 30 pppd || exit 1
            $PYTHON {held} {ip} 22 $RESULTS/stop-held >$RESULTS/held.out 2>&1 &
            HELD=$!
            sleep 1
            record before $PYTHON {one} {ip} 2222 before
            mark before
            wait_host_mark reloaded 60
            record added $PYTHON {one} {ip} 2222 added
            mark added
            wait_host_mark broken 60
            record after_broken $PYTHON {one} {ip} 2222 after-broken
            sleep 1
            touch $RESULTS/stop-held
            wait $HELD
            pppd_stop pppd 15
        """.format(held=shlex.quote(held), one=shlex.quote(one), ip=LOCAL_IP), slirp=slirp, timeout=200)
        await_mark(guest, "before")
        to_guest = lcp_requests(guest.relay.to_guest)
        from_guest = lcp_requests(guest.relay.from_guest)
        pppd_requests = guest_log_count(guest, "sent [LCP ConfReq")
        assert to_guest >= 1 and from_guest >= 1 and pppd_requests >= 1

        added = dict(base["services"], **{"2222": {"host": "127.0.0.1", "port": second.port, "name": "second"}})
        with open(slirp.config_path, "w") as f:
            f.write(toml_dumps({"services": added}))
        os.kill(slirp.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "configuration reloaded from %s: +services.2222" % slirp.config_path
                        in slirp.log(), 15), slirp.diagnostics()
        guest.mark("reloaded")
        await_mark(guest, "added")

        with open(slirp.config_path, "w") as f:
            f.write("[services.2222]\nport = 0\n")           # broken: refused, nothing changes
        os.kill(slirp.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "reload refused: services.2222.port" in slirp.log(), 15), slirp.diagnostics()
        guest.mark("broken")
        res = guest.wait().check_ran()
        accepted = (first.accepted, second.accepted)

    assert json_result(res, "before").get("error") == "ConnectionRefusedError"     # no such service yet
    assert json_result(res, "added").get("echo") == "added", res.read("added.out")
    assert json_result(res, "after_broken").get("echo") == "after-broken", res.read("after_broken.out")
    held_out = json_result(res, "held")
    assert held_out["errors"] == [] and held_out["pings"] >= 10, held_out
    assert held_out["max_rtt"] < 2.0, held_out
    assert accepted == (1, 2)           # the held connection on the first service, two on the added one
    # The link was negotiated once: no LCP Configure-Request either way after the first mark, one IPCP session.
    assert lcp_requests(res.serial("to_guest")) == to_guest, "pyslirp renegotiated LCP"
    assert lcp_requests(res.serial("from_guest")) == from_guest, "pppd renegotiated LCP"
    log = res.pppd_log()
    assert log.count("sent [LCP ConfReq") == pppd_requests and log.count("local  IP address") == 1, log
    assert "Traceback" not in slirp.log()
    assert slirp.stop() == 0, slirp.diagnostics()


def guest_log_count(guest, text):
    try:
        with open(guest.path("pppd.log"), errors="replace") as f:
            return f.read().count(text)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------------------------
# service health

class BlackHole(object):
    """A loopback port whose accept queue is full: the kernel drops further SYNs, so connects to it hang until
    they time out (nothing leaves the host)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((services.LOOPBACK, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            f.setblocking(False)
            f.connect_ex((services.LOOPBACK, self.port))
            self.fillers.append(f)
        time.sleep(0.2)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect((services.LOOPBACK, self.port))
            raise AssertionError("the black hole on port %d accepted a connection" % self.port)
        except socket.timeout:
            pass
        finally:
            probe.close()

    def stop(self):
        for f in self.fillers:
            f.close()
        self.sock.close()


TIMED = r"""
import json, socket, sys, time
ip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for i in range(count):
    t = time.monotonic()
    try:
        c = socket.create_connection((ip, port), timeout=30)
        c.settimeout(10)
        c.sendall(b"x%d" % i)
        got = c.recv(100)
        c.close()
        result = "echo" if got == b"x%d" % i else "bad %r" % got
    except ConnectionRefusedError:
        result = "refused"
    except Exception as exc:
        result = type(exc).__name__
    out.append([result, round(time.monotonic() - t, 3)])
print(json.dumps(out))
"""

CONNECT_TIMEOUT = 4
FAILURES = 2


def test_a_dead_target_with_a_fallback_serves_and_without_one_is_refused_fast_once_its_breaker_opens(lab):
    with services.ServiceSet() as svc:
        live = svc.add(services.EchoServer())
        hole_a = BlackHole()
        hole_b = BlackHole()
        try:
            slirp = lab.start_pyslirp({
                "proxy": {"connect_timeout": CONNECT_TIMEOUT},
                "health": {"breaker_failures": FAILURES, "breaker_cooldown": 120},
                "services": {
                    "22": {"host": "127.0.0.1", "port": hole_a.port, "name": "withfallback",
                           "fallback": ["127.0.0.1:%d" % live.port]},
                    "23": {"host": "127.0.0.1", "port": hole_b.port, "name": "dead"}}})
            timed = write_script(lab, "timed.py", TIMED)
            res = lab.run_guest("""
                pppd_start pppd noauth
                wait_ppp_up 30 pppd || exit 1
                record fallback $PYTHON {timed} {ip} 22 4
                record dead $PYTHON {timed} {ip} 23 4
                pppd_stop pppd 15
            """.format(timed=shlex.quote(timed), ip=LOCAL_IP), slirp=slirp, timeout=200)
            log = slirp.log()
        finally:
            hole_a.stop()
            hole_b.stop()
        served = live.accepted

    fallback = json_result(res, "fallback")
    dead = json_result(res, "dead")
    assert [r for r, _ in fallback] == ["echo"] * 4, fallback
    # Until the breaker opens each connection waits for its share of the timeout (half: two targets)...
    for _, seconds in fallback[:FAILURES]:
        assert CONNECT_TIMEOUT / 2.0 - 0.5 < seconds < CONNECT_TIMEOUT / 2.0 + 2.0, fallback
    # ... then the dead target is skipped: the fallback answers at once.
    for _, seconds in fallback[FAILURES:]:
        assert seconds < 1.0, fallback
    assert served == 4
    assert [r for r, _ in dead] == ["refused"] * 4, dead
    for _, seconds in dead[:FAILURES]:
        assert CONNECT_TIMEOUT - 0.5 < seconds < CONNECT_TIMEOUT + 2.0, dead
    for _, seconds in dead[FAILURES:]:
        assert seconds < 0.5, dead
    # Logged: each breaker opening once, and the refusals without a connect attempt.
    for port in (hole_a.port, hole_b.port):
        assert log.count("service target 127.0.0.1:%d: closed -> open" % port) == 1, log
    assert log.count("dead is down (127.0.0.1:%d retried in" % hole_b.port) == 2, log
    assert log.count("connecting to dead") == FAILURES, log
    assert "Traceback" not in log
    assert slirp.stop() == 0, slirp.diagnostics()
