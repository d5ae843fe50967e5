"""``pyslirp.py client`` end to end: against pyslirp itself and against the original SLiRP 1.0.17.

Each test starts the client with ``--exec`` (the peer runs on a pseudo-terminal, as under pppd's ``pty``),
local services on 127.0.0.1 (a payload source, the system's sshd), and checks what a local user sees
through ``-L`` and ``-D``: a download that arrives intact (sha256), an ssh session, refusals shown as a
reset or the SOCKS reply the issue names, and the exit codes.  No User-Mode Linux is booted here; the
real pppd as the server is in test_e2e_client_pppd.py.
"""

import hashlib
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from e2e import services
from e2e.fixtures import require_program, unavailable
from pyslirp.testing.load import concurrent_echo, proc_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "pyslirp.py")
SSH_OPTIONS = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o",
               "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               "-o", "ConnectTimeout=20"]
SIZE = 2 * 1024 * 1024


class Client(object):
    """``pyslirp.py client`` as a subprocess, its log in a file."""

    def __init__(self, tmp_path, *args):
        self.log_path = str(tmp_path / "client.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, SCRIPT, "client"] + list(args), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def wait_up(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "link up: we are" in self.log():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def stop(self, timeout=20):
        """SIGTERM: the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


def download(port, timeout=120):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        return services.read_to_eof(s)


def socks_connect(port, host, hport, timeout=60):
    """A SOCKS5 CONNECT through -D: (REP, socket or None)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", hport))
    reply = b""
    while len(reply) < 10:
        data = s.recv(10 - len(reply))
        if not data:
            break
        reply += data
    assert len(reply) == 10 and reply[0] == 5, reply
    if reply[1] != 0:
        s.close()
        return reply[1], None
    return 0, s


def ssh_hello(sshd, port):
    res = subprocess.run(["ssh"] + SSH_OPTIONS + ["-i", sshd.client_key, "-p", str(port),
                                                  "%s@127.0.0.1" % sshd.user, "echo hello; uname -n"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90)
    return res.returncode, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")


def need_sshd():
    reason = services.Sshd.available()
    if reason:
        unavailable(reason)


def test_against_pyslirp(tmp_path):
    need_sshd()
    ports = [services.free_port() for _ in range(5)]
    with services.Sshd(str(tmp_path / "sshd")) as sshd, services.ServiceSet() as svc:
        sshd.start()
        source = svc.add(services.PayloadSource(7, SIZE))
        server = "%s %s --stdio -q --baudrate 4000000 --service 80=127.0.0.1:%d --service 22=127.0.0.1:%d" % (
            shlex.quote(sys.executable), shlex.quote(SCRIPT), source.port, sshd.port)
        client = Client(tmp_path, "--exec", server, "-L", "%d:10.0.0.1:80" % ports[0],
                        "-L", "%d:10.0.0.1:22" % ports[1], "-L", "%d:10.0.0.1:81" % ports[2],
                        "-D", str(ports[3]))
        try:
            assert client.wait_up(), client.log()
            assert "we are 10.0.0.2, the server 10.0.0.1" in client.log()
            data = download(ports[0])
            assert len(data) == SIZE and hashlib.sha256(data).hexdigest() == source.sha256
            rc, out, err = ssh_hello(sshd, ports[1])
            assert rc == 0 and out == "hello\n%s\n" % socket.gethostname(), (rc, out, err, sshd.log())
            # Nothing serves port 81 on the gateway: its RST closes the local connection at once (on a busy
            # machine the reset can come before connect() has even returned).
            with pytest.raises(ConnectionResetError):
                with socket.create_connection(("127.0.0.1", ports[2]), timeout=30) as s:
                    s.sendall(b"x")
                    services.read_to_eof(s)
            # The SOCKS server: a download, then refusals as replies.
            rep, s = socks_connect(ports[3], "10.0.0.1", 80)
            assert rep == 0
            with s:
                data = services.read_to_eof(s)
            assert hashlib.sha256(data).hexdigest() == source.sha256
            assert socks_connect(ports[3], "10.0.0.1", 81)[0] == 5          # RST: connection refused
            assert socks_connect(ports[3], "192.0.2.1", 80)[0] == 2         # prohibited by the server's policy
        finally:
            status = client.stop()
        assert status == 0, client.log()
        assert "Traceback" not in client.log()


def test_against_slirp(tmp_path):
    """SLiRP 1.0.17 (Debian's slirp): an independent PPP and TCP; its 10.0.2.2 is the host's loopback."""
    slirp = require_program("slirp-fullbolt", "slirp")
    need_sshd()
    ports = [services.free_port() for _ in range(3)]
    with services.Sshd(str(tmp_path / "sshd")) as sshd, services.ServiceSet() as svc:
        sshd.start()
        source = svc.add(services.PayloadSource(11, SIZE))
        client = Client(tmp_path, "--exec", "%s ppp" % slirp, "--remote-ip", "10.0.2.2",
                        "-L", "%d:10.0.2.2:%d" % (ports[0], source.port),
                        "-L", "%d:10.0.2.2:%d" % (ports[1], sshd.port),
                        "-L", "%d:10.0.2.2:%d" % (ports[2], services.closed_port()))
        try:
            assert client.wait_up(), client.log()
            assert "the server 10.0.2.2" in client.log()
            data = download(ports[0])
            assert len(data) == SIZE and hashlib.sha256(data).hexdigest() == source.sha256
            rc, out, err = ssh_hello(sshd, ports[1])
            assert rc == 0 and out == "hello\n%s\n" % socket.gethostname(), (rc, out, err, sshd.log())
            # SLiRP's connect to a closed port fails: it resets our SYN, or accepts and then closes.  The reset
            # of the local connection can come before connect() has even returned (a busy machine).
            try:
                with socket.create_connection(("127.0.0.1", ports[2]), timeout=30) as s:
                    assert services.read_to_eof(s) == b""
            except ConnectionResetError:
                pass
        finally:
            status = client.stop()
        assert status == 0, client.log()
        assert "Traceback" not in client.log()


def _threads(pid):
    return proc_status(pid, "Threads")


def _child(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        children = [int(x) for x in f.read().split()]
    assert len(children) == 1, children
    return children[0]


def _settles(predicate, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_a_hundred_connections_at_once_against_pyslirp(tmp_path):
    """100 local connections through -L, all open at the same time end to end, each echoing its own payload
    intact; afterwards both processes are back to their idle thread counts (nothing leaked)."""
    n = 100
    port = services.free_port()
    with services.EchoServer(backlog=n) as echo:
        conf = tmp_path / "server.toml"
        conf.write_text('[serial]\nbaudrate = 4000000\n[services.7]\nhost = "127.0.0.1"\nport = %d\n'
                        '[limits]\nmax_connections = %d\nmax_per_service = %d\n'
                        'new_connections_per_second = %d\nburst = %d\n' % (echo.port, n, n, n, n))
        server = "exec %s %s --stdio -q -c %s" % (shlex.quote(sys.executable), shlex.quote(SCRIPT),
                                                  shlex.quote(str(conf)))
        client = Client(tmp_path, "--exec", server, "-L", "%d:10.0.0.1:7" % port)
        try:
            assert client.wait_up(), client.log()
            assert concurrent_echo(1, ("127.0.0.1", port), payload_size=64).ok      # the server's spare thread
            pids = (client.proc.pid, _child(client.proc.pid))
            time.sleep(1)
            idle = [_threads(pid) for pid in pids]
            report = concurrent_echo(n, ("127.0.0.1", port), payload_size=2000, timeout=240, seed=3)
            assert report.ok and report.echoed == n, (report, client.log()[-3000:])
            assert echo.max_open >= n and echo.accepted == n + 1
            assert echo.bytes_echoed == 64 + n * 2000
            assert _settles(lambda: all(_threads(pid) <= count for pid, count in zip(pids, idle))), (
                idle, [_threads(pid) for pid in pids])
        finally:
            status = client.stop()
        assert status == 0, client.log()
        assert "Traceback" not in client.log()


def test_exit_codes(tmp_path):
    gone = Client(tmp_path, "--exec", "exec true")
    assert gone.proc.wait(30) == 1
    gone.close()
    assert "the command exited" in gone.log() or "line" in gone.log()
    silent = Client(tmp_path, "--exec", "exec sleep 60", "--link-timeout", "2")
    assert silent.proc.wait(30) == 3
    silent.close()
    assert "no PPP link within 2 s" in silent.log()


@pytest.mark.parametrize("method", ["pap", "chap"])
def test_authentication_against_pyslirp(tmp_path, method):
    """Right credentials: the link comes up; a wrong password: exit 4 (the server refused us)."""
    conf = tmp_path / "server.toml"
    conf.write_text('[ppp]\nrequire_auth = "%s"\nsecrets = { alice = "correct horse" }\n' % method)
    server = "%s %s --stdio -q -c %s" % (shlex.quote(sys.executable), shlex.quote(SCRIPT), shlex.quote(str(conf)))
    good = tmp_path / "good"
    good.write_text("correct horse\n")
    bad = tmp_path / "bad"
    bad.write_text("wrong\n")
    ok = Client(tmp_path, "--exec", server, "--user", "alice", "--password-file", str(good))
    try:
        assert ok.wait_up(), ok.log()
        assert "authenticated to the server (%s) as 'alice'" % method.upper() in ok.log()
    finally:
        assert ok.stop() == 0, ok.log()
    refused = Client(tmp_path, "--exec", server, "--user", "alice", "--password-file", str(bad))
    try:
        assert refused.proc.wait(60) == 4, refused.log()
    finally:
        refused.close()
    assert "authentication failed" in refused.log() and "wrong" not in refused.log()


def socks_connect_name(port, name, hport, timeout=60):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    raw = name.encode("ascii")
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(raw)]) + raw + struct.pack("!H", hport))
    reply = s.recv(10)
    if reply[1:2] != b"\x00":
        s.close()
        return reply[1], None
    return 0, s


def test_names_resolve_at_the_servers_dns(tmp_path):
    """-L and SOCKS host names are looked up over the link at the DNS server IPCP names (pyslirp's forwarder)."""
    require_program("dnsmasq", "dnsmasq-base")
    from e2e.dnsserver import Dnsmasq
    ports = [services.free_port() for _ in range(2)]
    with Dnsmasq(str(tmp_path), "--address=/files.test/10.0.0.1", "--local=/test/") as dns, \
            services.ServiceSet() as svc:
        source = svc.add(services.PayloadSource(3, 200000))
        conf = tmp_path / "server.toml"
        conf.write_text('[dns]\nforwarder = true\nupstream = ["127.0.0.1:%d"]\n' % dns.port)
        server = "%s %s --stdio -q --baudrate 4000000 -c %s --service 80=127.0.0.1:%d" % (
            shlex.quote(sys.executable), shlex.quote(SCRIPT), shlex.quote(str(conf)), source.port)
        client = Client(tmp_path, "--exec", server, "-L", "%d:files.test:80" % ports[0], "-D", str(ports[1]))
        try:
            assert client.wait_up(), client.log()
            assert "DNS 10.0.0.1" in client.log()
            data = download(ports[0])
            assert hashlib.sha256(data).hexdigest() == source.sha256
            rep, s = socks_connect_name(ports[1], "files.test", 80)
            assert rep == 0
            with s:
                assert hashlib.sha256(services.read_to_eof(s)).hexdigest() == source.sha256
            assert socks_connect_name(ports[1], "nowhere.test", 80)[0] == 4      # NXDOMAIN: host unreachable
        finally:
            status = client.stop()
        assert status == 0, client.log()
        assert "files.test" in dns.log()
