"""An outside host for end-to-end tests: a network namespace behind a veth pair, with test servers in it.

Theory of operation
-------------------
pyslirp's outbound side turns the client's flows to outside addresses into ordinary connections, datagrams and
pings of this host.  The tests must never reach a real network, so the "outside" is a network namespace that the
test creates itself (as root), joined to this host by a veth pair in the RFC 2544 benchmarking range::

    this host  HOST_IP 198.18.0.1/30  <-- veth -->  198.18.0.2/30 OUTSIDE_IP  (namespace, ``lo`` up)

Its servers (``outside_servers.py``, run with this host's Python through ``ip netns exec``) listen on OUTSIDE_IP
only, on fixed ports (the namespace is private, so nothing else can hold them): a TCP echo server (ECHO_PORT), a
TCP download server (DOWNLOAD_PORT: ``services.payload(DOWNLOAD_SEED, DOWNLOAD_SIZE)``), a UDP echo server
(UDP_ECHO_PORT), and two more TCP echo servers that an allow-list test expects never to be reached (DENIED_PORT,
OUTSIDE_RANGE_PORT).  CLOSED_PORT has nobody listening, TCP or UDP.  Each connection and datagram is a line in the
event log (``events()``), with the peer address the server saw.

Names are unique per run (namespace ``pyslirp-<pid>-<hex>``, veth ``psh<hex>`` / ``psn<hex>``).  ``stop()`` kills
the servers (their own process group), deletes the veth (which removes its peer) and the namespace, whatever
happened before; the ``outside`` fixture always calls it.  Where the namespace cannot be made (no ``ip``, not
root, no netns support) the test is skipped, or fails under CI (``fixtures.unavailable``).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from e2e import services
from e2e.fixtures import require_program, unavailable

HOST_IP = "198.18.0.1"
OUTSIDE_IP = "198.18.0.2"
UNUSED_IP = "198.18.0.3"        # inside the /30, nobody's (its broadcast address)
PREFIX = 30
NETWORK = "198.18.0.0/30"

ECHO_PORT = 7007
DOWNLOAD_PORT = 7008
UDP_ECHO_PORT = 7009
CLOSED_PORT = 7010
DENIED_PORT = 7011
OUTSIDE_RANGE_PORT = 7100
DOWNLOAD_SEED = 42
DOWNLOAD_SIZE = 2 << 20

SERVERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "outside_servers.py")


class OutsideHost(services._Service):
    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        tag = os.urandom(3).hex()
        self.name = "pyslirp-%d-%s" % (os.getpid(), tag)
        self.host_if = "psh" + tag
        self.ns_if = "psn" + tag
        self.events_path = os.path.join(directory, "outside-events.jsonl")
        self.ready_path = os.path.join(directory, "outside.ready")
        self.out_path = os.path.join(directory, "outside-servers.out")
        self.proc = None
        self._made_ns = False
        self._made_link = False
        self._ip = None

    def _run(self, *argv):
        res = subprocess.run([self._ip] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=20)
        if res.returncode != 0:
            raise OSError("ip %s: %s" % (" ".join(argv), res.stdout.strip()))
        return res.stdout

    def start(self):
        self._ip = require_program("ip", "iproute2")
        if os.geteuid() != 0:
            unavailable("creating a network namespace needs root")
        try:
            self._run("netns", "add", self.name)
            self._made_ns = True
            self._run("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            self._made_link = True
            self._run("link", "set", self.ns_if, "netns", self.name)
            self._run("addr", "add", "%s/%d" % (HOST_IP, PREFIX), "dev", self.host_if)
            self._run("link", "set", self.host_if, "up")
            self._run("-n", self.name, "addr", "add", "%s/%d" % (OUTSIDE_IP, PREFIX), "dev", self.ns_if)
            self._run("-n", self.name, "link", "set", self.ns_if, "up")
            self._run("-n", self.name, "link", "set", "lo", "up")
        except OSError as exc:
            self.stop()
            unavailable("cannot create the outside network namespace: %s" % exc)
        try:
            self._start_servers()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_servers(self, timeout=15.0):
        plan = {"address": OUTSIDE_IP, "events": self.events_path, "ready": self.ready_path,
                "tcp_echo": [ECHO_PORT, DENIED_PORT, OUTSIDE_RANGE_PORT],
                "tcp_download": {str(DOWNLOAD_PORT): [DOWNLOAD_SEED, DOWNLOAD_SIZE]},
                "udp_echo": [UDP_ECHO_PORT]}
        plan_path = os.path.join(self.directory, "outside-plan.json")
        with open(plan_path, "w") as f:
            json.dump(plan, f)
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen([self._ip, "netns", "exec", self.name, sys.executable, SERVERS, plan_path],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, close_fds=True)
        end = time.monotonic() + timeout
        while not os.path.exists(self.ready_path):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError("the outside servers did not start:\n%s" % _read(self.out_path))
            time.sleep(0.05)

    def events(self, kind=None, port=None):
        """The servers' event log: a list of dicts, optionally only one ``event`` kind and server ``port``."""
        out = []
        for line in _read(self.events_path).splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if (kind is None or ev.get("event") == kind) and (port is None or ev.get("port") == port):
                out.append(ev)
        return out

    def wait_events(self, kind, port, count, timeout=10.0):
        """The events of ``kind`` on ``port`` once there are ``count`` of them (or whatever there is after timeout)."""
        end = time.monotonic() + timeout
        while True:
            got = self.events(kind, port)
            if len(got) >= count or time.monotonic() > end:
                return got
            time.sleep(0.05)

    def diagnostics(self):
        return "--- outside servers ---\n%s\n--- outside events ---\n%s" % (_read(self.out_path),
                                                                          _read(self.events_path))

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            services._signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self._made_link:
            self._made_link = False
            # Deleting one end deletes its peer, wherever that is.
            subprocess.run([self._ip, "link", "del", self.host_if], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=20)
        if self._made_ns:
            self._made_ns = False
            subprocess.run([self._ip, "netns", "del", self.name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=20)


def _read(path):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()
    except (IOError, OSError):
        return ""


@pytest.fixture
def outside(tmp_path):
    """A started ``OutsideHost`` in the test's directory, always torn down."""
    host = OutsideHost(str(tmp_path / "outside"))
    try:
        host.start()
        yield host
    finally:
        host.stop()
        print(host.diagnostics())
