"""The blocking connectors (pyslirp/runtime/connectors.py): direct, and through real proxies on loopback.

The first half needs nothing but Python: an echo server, closed ports, a listener whose accept queue is full (a
connect to it hangs: a loopback "black hole"), and scripted proxies written here (silent, closing, answering with
tunnel data in the same write).  The second half starts the real programs (tests/e2e/proxies.py): dante with no
authentication and with username/password against a system user the test creates, microsocks with and without
authentication, ``ssh -D`` to a throwaway sshd, tinyproxy with Basic authentication.  Each shows data intact both
ways through the proxy to an echo server, a refused destination as a fast ConnectFailed, a wrong password as a
refusal, and that the connection really went through the proxy (its log, or the program holding the socket the
echo server saw as its peer).  Every address is 127.0.0.1.
"""

import hashlib
import os
import re
import socket
import struct
import threading
import time
from types import SimpleNamespace

import pytest

from e2e import proxies, services
from pyslirp.net import refusal
from pyslirp.runtime import connectors
from pyslirp.runtime.connectors import ConnectFailed, Connector, open_connection

FAST = 3.0          # seconds: a refused destination must be reported within this


class PeerEcho(services.EchoServer):
    """An echo server that remembers the peer address of each connection."""

    def __init__(self, **kw):
        services.EchoServer.__init__(self, **kw)
        self.peers = []

    def handle(self, conn):
        with self.lock:
            self.peers.append(conn.getpeername())
        services.EchoServer.handle(self, conn)


@pytest.fixture
def echo():
    with PeerEcho() as server:
        yield server


def proxy_of(server, username="", password=""):
    return SimpleNamespace(host=services.LOOPBACK, port=server.port, username=username, password=password)


def echo_both_ways(sock, leftover=b"", size=1 << 20, seed=7):
    """Send ``size`` seeded bytes through ``sock`` while reading them back; the sha256 of both, asserted equal."""
    data = services.payload(seed, size)
    sock.settimeout(30)
    errors = []

    def writer():
        try:
            sock.sendall(data)
        except OSError as exc:
            errors.append(exc)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    got = bytearray(leftover)
    while len(got) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    t.join(30)
    assert not errors
    assert len(got) == size and hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    return got


def expect_failure(fn, *args, **kw):
    start = time.monotonic()
    with pytest.raises(ConnectFailed) as info:
        fn(*args, **kw)
    return info.value, time.monotonic() - start


class BlackHole(object):
    """A loopback port whose accept queue is full: a new connect to it gets no answer at all."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((services.LOOPBACK, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection((services.LOOPBACK, self.port), timeout=2)

    def close(self):
        self.filler.close()
        self.sock.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


class ScriptedProxy(services._ThreadedServer):
    """A proxy that plays a script: ``script(conn)`` runs for each accepted connection."""

    def __init__(self, script):
        self.script = script
        self.received = []
        services._ThreadedServer.__init__(self, "scripted-proxy", io_timeout=10)

    def handle(self, conn):
        self.script(self, conn)

    def read_exact(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        self.received.append(data)
        return data


# -- direct ---------------------------------------------------------------------------------------------------------

def test_direct_connect_carries_data_both_ways(echo):
    sock, leftover = open_connection(services.LOOPBACK, echo.port)
    with sock:
        assert leftover == b"" and sock.getblocking() and sock.gettimeout() is None
        echo_both_ways(sock)


def test_direct_connect_by_name(echo):
    sock, _ = open_connection("localhost", echo.port, "direct", None, 5)
    with sock:
        assert sock.getpeername()[1] == echo.port
        echo_both_ways(sock, size=4096)


def test_direct_refused_is_a_fast_reset():
    port = services.closed_port()
    exc, took = expect_failure(open_connection, services.LOOPBACK, port)
    assert (exc.reason, exc.outcome, exc.hop, exc.code) == ("connection refused", refusal.RESET, "direct", None)
    assert str(exc) == "direct: connection refused"
    assert took < FAST


def test_direct_name_that_does_not_resolve_is_host_unreachable(monkeypatch):
    looked_up = []

    def no_such_name(host, *args):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    exc, took = expect_failure(open_connection, "no-such-host.invalid", 80)
    assert looked_up == ["no-such-host.invalid"]
    assert exc.outcome == refusal.HOST_UNREACHABLE and exc.hop == "direct"
    assert exc.reason == "host name 'no-such-host.invalid' does not resolve (Name or service not known)"


def test_direct_timeout(black_hole):
    exc, took = expect_failure(open_connection, services.LOOPBACK, black_hole.port, timeout=0.5)
    assert (exc.reason, exc.outcome, exc.hop) == ("connect timeout (0.5 s)", refusal.RESET, "direct")
    assert 0.45 <= took < 2.0


def test_errno_mapping():
    import errno
    assert connectors.errno_outcome(errno.ECONNREFUSED) == refusal.RESET
    assert connectors.errno_outcome(errno.ENETUNREACH) == refusal.NET_UNREACHABLE
    assert connectors.errno_outcome(errno.EHOSTUNREACH) == refusal.HOST_UNREACHABLE
    assert connectors.errno_outcome(errno.ETIMEDOUT) == refusal.RESET
    assert connectors.errno_outcome(errno.EACCES) == refusal.RESET
    assert connectors.errno_reason(errno.EHOSTUNREACH) == "no route to host"


def test_bad_arguments(echo):
    with pytest.raises(ValueError):
        Connector("socks4")
    with pytest.raises(ValueError):
        Connector("socks5", None)
    with pytest.raises(ValueError):
        Connector("direct", None, 0)
    connector = Connector("direct")
    sock, _ = connector.open(services.LOOPBACK, echo.port)
    sock.close()
    with pytest.raises(RuntimeError):
        connector.open(services.LOOPBACK, echo.port)


# -- cancel ---------------------------------------------------------------------------------------------------------

def _never_answer(self, conn):
    while conn.recv(4096):                      # reads the request, answers nothing, until the client gives up
        pass


def cancel_after(connector, delay):
    timer = threading.Timer(delay, connector.cancel)
    timer.start()
    return timer


def test_cancel_aborts_a_hanging_direct_connect(black_hole):
    connector = Connector("direct", None, 30)
    timer = cancel_after(connector, 0.3)
    exc, took = expect_failure(connector.open, services.LOOPBACK, black_hole.port)
    timer.join()
    assert (exc.reason, exc.outcome, exc.hop) == ("cancelled", refusal.RESET, "direct")
    assert 0.25 <= took < 1.5 and connector.cancelled


def test_cancel_reaches_a_connect_that_polls_the_callers_wakeup(black_hole, echo):
    # A service connection hands its own Wakeup to the Connector: the cancel must still end a hanging
    # connect, no socket pair of the Connector's own is made, and the caller's Wakeup stays open.
    from pyslirp.runtime.wakeup import Wakeup
    wakeup = Wakeup()
    made = []
    real_socketpair = socket.socketpair

    def counting_socketpair(*args):
        made.append(1)
        return real_socketpair(*args)

    try:
        socket.socketpair = counting_socketpair
        connector = Connector("direct", None, 30, wakeup=wakeup)
        timer = cancel_after(connector, 0.3)
        exc, took = expect_failure(connector.open, services.LOOPBACK, black_hole.port)
        timer.join()
        assert exc.reason == "cancelled" and 0.25 <= took < 1.5
        sock, _ = Connector("direct", None, 5, wakeup=wakeup).open(services.LOOPBACK, echo.port)
        with sock:
            echo_both_ways(sock, size=100)
    finally:
        socket.socketpair = real_socketpair
    assert made == []
    assert wakeup.fileno() != -1                # the caller's, still open
    wakeup.close()


def test_cancel_aborts_a_proxy_handshake():
    with ScriptedProxy(_never_answer) as silent:
        for via in ("socks5", "http"):
            connector = Connector(via, proxy_of(silent), 30)
            timer = cancel_after(connector, 0.3)
            exc, took = expect_failure(connector.open, services.LOOPBACK, 80)
            timer.join()
            assert exc.reason == "cancelled" and exc.hop == "%s 127.0.0.1:%d" % (via, silent.port)
            assert took < 1.5


def test_cancel_before_open_fails_at_once(echo):
    connector = Connector("direct")
    connector.cancel()
    exc, took = expect_failure(connector.open, services.LOOPBACK, echo.port)
    assert exc.reason == "cancelled" and took < 0.5


def test_cancel_after_open_leaves_the_socket_alone(echo):
    connector = Connector("direct")
    sock, _ = connector.open(services.LOOPBACK, echo.port)
    with sock:
        connector.cancel()
        echo_both_ways(sock, size=1000)


def test_cancel_aborts_a_slow_name_lookup(monkeypatch):
    release = threading.Event()

    def slow(*args):
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    connector = Connector("direct", None, 30)
    timer = cancel_after(connector, 0.2)
    try:
        exc, took = expect_failure(connector.open, "slow.example", 80)
    finally:
        release.set()
        timer.join()
    assert exc.reason == "cancelled" and took < 1.5


# -- scripted proxies: reachability, timeouts, leftover -------------------------------------------------------------

@pytest.mark.parametrize("via", ["socks5", "http"])
def test_unreachable_proxy_is_a_reset_that_names_the_proxy(via):
    port = services.closed_port()
    proxy = SimpleNamespace(host=services.LOOPBACK, port=port, username="", password="")
    exc, took = expect_failure(open_connection, services.LOOPBACK, 80, via, proxy)
    assert exc.outcome == refusal.RESET and exc.hop == "%s 127.0.0.1:%d" % (via, port)
    assert exc.reason == "the proxy could not be reached: connection refused"
    assert took < FAST


@pytest.mark.parametrize("via", ["socks5", "http"])
def test_proxy_that_accepts_and_never_answers_hits_the_timeout(via):
    with ScriptedProxy(_never_answer) as silent:
        exc, took = expect_failure(open_connection, services.LOOPBACK, 80, via, proxy_of(silent), 1.0)
    assert (exc.reason, exc.outcome) == ("the proxy did not answer within 1 s", refusal.RESET)
    assert 0.95 <= took < 2.5


def test_proxy_that_never_accepts_hits_the_timeout_as_unreachable(black_hole):
    proxy = SimpleNamespace(host=services.LOOPBACK, port=black_hole.port, username="", password="")
    exc, took = expect_failure(open_connection, services.LOOPBACK, 80, "socks5", proxy, 0.5)
    assert exc.reason == "the proxy could not be reached: connect timeout (0.5 s)"
    assert exc.outcome == refusal.RESET and 0.45 <= took < 2.0


def _close_without_answer(self, conn):
    conn.shutdown(socket.SHUT_WR)               # end of file to the client, which then gives up and closes
    while conn.recv(4096):
        pass


def test_proxy_that_closes_without_an_answer():
    with ScriptedProxy(_close_without_answer) as closing:
        exc, _ = expect_failure(open_connection, services.LOOPBACK, 80, "socks5", proxy_of(closing))
        assert exc.reason == "SOCKS5 protocol error: the proxy closed the connection before its method selection"
        exc, _ = expect_failure(open_connection, services.LOOPBACK, 80, "http", proxy_of(closing))
        assert exc.reason.startswith("HTTP proxy protocol error: the proxy closed the connection")


def _reset_after_greeting(self, conn):
    self.read_exact(conn, 3)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close() sends a reset


def test_proxy_that_resets_the_connection():
    with ScriptedProxy(_reset_after_greeting) as resetting:
        exc, took = expect_failure(open_connection, services.LOOPBACK, 80, "socks5", proxy_of(resetting))
    assert exc.reason == "the connection to the proxy failed: connection reset by peer"
    assert exc.outcome == refusal.RESET and took < FAST


def test_socks5_tunnel_bytes_in_the_same_write_as_the_reply_are_leftover():
    def script(self, conn):
        self.read_exact(conn, 3)                                    # 05 01 00
        conn.sendall(bytes.fromhex("0500"))
        self.read_exact(conn, 10)                                   # 05 01 00 01 7f000001 PORT
        conn.sendall(bytes.fromhex("05000001 7f000001 1234") + b"220 hello\r\n")
        conn.sendall(conn.recv(100).upper())

    with ScriptedProxy(script) as proxy:
        sock, leftover = open_connection(services.LOOPBACK, 25, "socks5", proxy_of(proxy))
        with sock:
            assert leftover == b"220 hello\r\n" and sock.getblocking()
            sock.sendall(b"ehlo")
            assert sock.recv(100) == b"EHLO"
        assert proxy.received == [bytes.fromhex("050100"), bytes.fromhex("05010001 7f000001 0019")]


def test_http_tunnel_bytes_after_the_header_are_leftover():
    def script(self, conn):
        request = b""
        while not request.endswith(b"\r\n\r\n"):
            request += conn.recv(1)
        self.received.append(request)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-Test\r\n")

    with ScriptedProxy(script) as proxy:
        sock, leftover = open_connection("example.org", 22, "http", proxy_of(proxy, "u", "p"))
        sock.close()
    assert leftover == b"SSH-2.0-Test\r\n"
    assert proxy.received == [b"CONNECT example.org:22 HTTP/1.1\r\nHost: example.org:22\r\n"
                              b"Proxy-Authorization: Basic dTpw\r\n\r\n"]


def test_a_target_the_protocol_cannot_carry_fails_before_the_proxy_is_contacted():
    with ScriptedProxy(lambda self, conn: None) as proxy:
        exc, _ = expect_failure(open_connection, "a" * 256, 80, "socks5", proxy_of(proxy))
        time.sleep(0.2)
        assert proxy.accepted == 0
    assert exc.reason == "SOCKS5: target host name is 256 bytes, at most 255 fit" and exc.outcome == refusal.RESET


# -- real proxies ---------------------------------------------------------------------------------------------------

def assert_fast_refusal(via, proxy, expect_code):
    port = services.closed_port()
    exc, took = expect_failure(open_connection, services.LOOPBACK, port, via, proxy, 10)
    assert exc.outcome == refusal.RESET and exc.code == expect_code
    assert exc.hop == "%s 127.0.0.1:%d" % (via, proxy.port)
    assert took < FAST, took
    return exc, port


def test_dante_no_auth(tmp_path, echo):
    with proxies.Danted(str(tmp_path / "dante")).start() as dante:
        proxy = proxy_of(dante)
        sock, leftover = open_connection(services.LOOPBACK, echo.port, "socks5", proxy)
        with sock:
            echo_both_ways(sock, leftover)
        # dante's log names the destination of the connection it relayed
        assert proxies.wait_for_log(dante, r"tcp/connect \]: .*127\.0\.0\.1\.%d\b" % echo.port), dante.log()
        exc, port = assert_fast_refusal("socks5", proxy, 5)
        assert exc.reason == "SOCKS5 reply 05: connection refused"
        assert proxies.wait_for_log(dante, r"127\.0\.0\.1\.%d .*Connection refused" % port), dante.log()


def test_dante_username_password(tmp_path, echo):
    user = "pyslirpt%s" % os.urandom(3).hex()
    password = "pw-%s" % os.urandom(6).hex()
    with proxies.SystemUser(user, password).start(), \
            proxies.Danted(str(tmp_path / "dante"), methods="username").start() as dante:
        sock, leftover = open_connection(services.LOOPBACK, echo.port, "socks5", proxy_of(dante, user, password))
        with sock:
            echo_both_ways(sock, leftover, size=256 << 10)
        # the log shows the authenticated user on the relayed connection
        assert proxies.wait_for_log(dante, r"tcp/connect \]: .*%s.*127\.0\.0\.1\.%d\b" % (user, echo.port)), \
            dante.log()
        exc, took = expect_failure(open_connection, services.LOOPBACK, echo.port, "socks5",
                                   proxy_of(dante, user, password + "x"))
        assert exc.reason.startswith("SOCKS5 authentication failed") and exc.outcome == refusal.RESET
        assert password not in exc.reason and took < FAST
        exc, _ = expect_failure(open_connection, services.LOOPBACK, echo.port, "socks5", proxy_of(dante))
        assert exc.reason == ("SOCKS5 authentication failed: the proxy accepts none of the offered methods "
                              "(no authentication)")
        assert_fast_refusal("socks5", proxy_of(dante, user, password), 5)
    assert len(echo.peers) == 1


def test_microsocks_no_auth(tmp_path, echo):
    with proxies.Microsocks(str(tmp_path / "ms")).start() as ms:
        sock, leftover = open_connection(services.LOOPBACK, echo.port, "socks5", proxy_of(ms))
        with sock:
            echo_both_ways(sock, leftover)
            # microsocks logs nothing: the echo server's peer socket is microsocks' own
            assert proxies.socket_owner(echo.peers[-1][1]) == "microsocks"
        exc, _ = assert_fast_refusal("socks5", proxy_of(ms), 5)
        assert exc.reason == "SOCKS5 reply 05: connection refused"


def test_microsocks_username_password(tmp_path, echo):
    with proxies.Microsocks(str(tmp_path / "ms"), "alice", "s3cret-pw").start() as ms:
        sock, leftover = open_connection("localhost", echo.port, "socks5", proxy_of(ms, "alice", "s3cret-pw"))
        with sock:
            echo_both_ways(sock, leftover, size=256 << 10)
            assert proxies.socket_owner(echo.peers[-1][1]) == "microsocks"
        exc, took = expect_failure(open_connection, services.LOOPBACK, echo.port, "socks5",
                                   proxy_of(ms, "alice", "wrong"))
        assert re.fullmatch(r"SOCKS5 authentication failed: the proxy rejected username 'alice' \(status 0x0[1-9a-f]\)",
                            exc.reason), exc.reason
        assert exc.outcome == refusal.RESET and took < FAST
        exc, _ = expect_failure(open_connection, services.LOOPBACK, echo.port, "socks5", proxy_of(ms))
        assert exc.reason.startswith("SOCKS5 authentication failed: the proxy accepts none")
        assert_fast_refusal("socks5", proxy_of(ms, "alice", "s3cret-pw"), 5)
    assert len(echo.peers) == 1


def test_ssh_dynamic_forward(tmp_path, echo):
    with proxies.SshDynamic(str(tmp_path / "ssh")).start() as ssh:
        # a username makes the client offer username/password too; ssh -D picks "no authentication"
        sock, leftover = open_connection(services.LOOPBACK, echo.port, "socks5", proxy_of(ssh, "ignored", "x"))
        with sock:
            echo_both_ways(sock, leftover)
            # the echo server's peer is the sshd process that ssh -D tunnels to
            assert proxies.socket_owner(echo.peers[-1][1]) == "sshd"
        # ssh -D queues its "succeeded" reply but writes it only once its server has connected; when that
        # fails it closes without a reply: a fast ConnectFailed, and ssh says why
        port = services.closed_port()
        exc, took = expect_failure(open_connection, services.LOOPBACK, port, "socks5", proxy_of(ssh))
        assert exc.reason == "SOCKS5 protocol error: the proxy closed the connection before its reply to CONNECT"
        assert exc.outcome == refusal.RESET and exc.hop == "socks5 127.0.0.1:%d" % ssh.port and took < FAST
        assert proxies.wait_for_output(ssh, r"open failed: connect failed: Connection refused"), ssh.output()
    assert len(echo.peers) == 1


def test_success_then_end_of_file_is_an_open_tunnel_that_ends():
    # A proxy that answers "succeeded" before it has connected cannot be told from a destination that accepts
    # and closes at once: open_connection succeeds and the tunnel ends (the client sees accept, then FIN).
    def script(self, conn):
        self.read_exact(conn, 3)
        conn.sendall(bytes.fromhex("0500"))
        self.read_exact(conn, 10)
        conn.sendall(bytes.fromhex("05000001 00000000 0000"))

    with ScriptedProxy(script) as proxy:
        sock, leftover = open_connection(services.LOOPBACK, services.closed_port(), "socks5", proxy_of(proxy))
        with sock:
            sock.settimeout(5)
            assert leftover == b"" and sock.recv(100) == b""


def test_tinyproxy_basic_auth(tmp_path, echo):
    closed = services.closed_port()
    with proxies.Tinyproxy(str(tmp_path / "tp"), "alice", "s3cret-pw", [echo.port, closed]).start() as tp:
        sock, leftover = open_connection(services.LOOPBACK, echo.port, "http", proxy_of(tp, "alice", "s3cret-pw"))
        with sock:
            echo_both_ways(sock, leftover)
        assert proxies.wait_for_log(tp, r"CONNECT 127\.0\.0\.1:%d HTTP/1\.1" % echo.port), tp.log()
        assert proxies.wait_for_log(tp, r"Established connection to host \"127\.0\.0\.1\"")
        # a refused destination (a closed port that ConnectPort allows): tinyproxy answers 500
        exc, took = expect_failure(open_connection, services.LOOPBACK, closed, "http",
                                   proxy_of(tp, "alice", "s3cret-pw"))
        assert (exc.reason, exc.outcome, exc.code) == ("HTTP proxy: HTTP/1.1 500 Unable to connect",
                                                       refusal.RESET, 500)
        assert exc.hop == "http 127.0.0.1:%d" % tp.port and took < FAST
        # no credentials: 407; wrong ones: tinyproxy answers 401
        exc, _ = expect_failure(open_connection, services.LOOPBACK, echo.port, "http", proxy_of(tp))
        assert (exc.reason, exc.outcome, exc.code) == ("HTTP proxy: HTTP/1.0 407 Proxy Authentication Required",
                                                       refusal.RESET, 407)
        exc, _ = expect_failure(open_connection, services.LOOPBACK, echo.port, "http", proxy_of(tp, "alice", "no"))
        assert exc.outcome == refusal.RESET and exc.code in (401, 407) and "s3cret" not in exc.reason
        # a port outside ConnectPort: 403, the proxy's policy
        other = services.closed_port()
        exc, _ = expect_failure(open_connection, services.LOOPBACK, other, "http",
                                proxy_of(tp, "alice", "s3cret-pw"))
        assert (exc.outcome, exc.code) == (refusal.ADMIN_PROHIBITED, 403)
        assert proxies.wait_for_log(tp, r"Refused CONNECT method on port %d" % other), tp.log()
    assert len(echo.peers) == 1
