"""A real DNS server for tests: dnsmasq on 127.0.0.1, on a free port, answering from fixed records only.

``Dnsmasq(directory, *options)`` starts ``dnsmasq`` in the foreground with no configuration file, no
resolv.conf, no /etc/hosts and no upstream, listening on 127.0.0.1 only (UDP and TCP on the same port), with its
query log in ``directory`` (``listen`` picks another loopback address, such as systemd-resolved's
127.0.0.53).  It runs with ``--keep-in-foreground``, not ``--no-daemon``: the latter (debug mode)
serves TCP connections in the main process, so one open TCP connection would stall every UDP query.  Its TCP
children exit with it.  The records come from the options; two presets:

* ``RECORDS``: www.example.test (and anything under example.test) A 198.18.0.7 with TTL 60, alias.test CNAME to
  it, big.test TXT of three 250-byte strings (too large for 512-byte UDP: truncated without EDNS), and
  NXDOMAIN for every other name under .test (``--local=/test/``: answered locally, never forwarded);
* ``AUTH_ZONE``: authoritative for zone.test (h.zone.test A 198.18.0.9), so that negative answers carry the
  zone's SOA (TTL and MINIMUM 900), as RFC 2308 negative caching needs.

It is a context manager and has ``stop()``; ``log()`` returns what it logged.  Where dnsmasq is not installed
the caller is expected to skip (or, under CI, fail) before starting it: see ``fixtures.require_program``.
"""

import os
import socket
import subprocess
import time

from e2e.services import LOOPBACK, free_port

DNSMASQ = "dnsmasq"
ADDRESS = "198.18.0.7"
AUTH_ADDRESS = "198.18.0.9"
TTL = 60
AUTH_TTL = 900

RECORDS = (
    "--local-ttl=%d" % TTL,
    "--address=/example.test/%s" % ADDRESS,
    "--cname=alias.test,www.example.test",
    "--txt-record=big.test,%s,%s,%s" % ("x" * 250, "y" * 250, "z" * 250),
    "--local=/test/",
)
AUTH_ZONE = (
    "--auth-server=ns.zone.test,lo",
    "--auth-zone=zone.test",
    "--auth-soa=2024010101,hostmaster.zone.test",
    "--auth-ttl=%d" % AUTH_TTL,
    "--host-record=h.zone.test,%s" % AUTH_ADDRESS,
)


def _wait_listening(address, proc, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            socket.create_connection(address, timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Dnsmasq(object):
    def __init__(self, directory, *options, program=DNSMASQ, listen=LOOPBACK):
        self.port = free_port()
        self.address = (listen, self.port)
        self.log_path = os.path.join(directory, "dnsmasq-%s-%d.log" % (listen, self.port))
        argv = [program, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--listen-address=%s" % listen, "--bind-interfaces", "--port=%d" % self.port,
                "--pid-file", "--log-queries", "--log-facility=%s" % self.log_path] + list(options)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        if not _wait_listening(self.address, self.proc):
            err = self._stop_and_read_stderr()
            raise RuntimeError("dnsmasq did not start on %s:%d: %s" % (listen, self.port, err.strip()))

    def _stop_and_read_stderr(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return (err or b"").decode("utf-8", "replace")

    def stop(self):
        if self.proc.returncode is None:
            self._stop_and_read_stderr()

    def log(self):
        try:
            with open(self.log_path, "r", encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
