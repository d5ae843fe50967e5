"""The threaded runtime: service threads against real loopback servers, the stack loop with a
scripted core over pipes, line reopening, and `pyslirp.py --pty` as a real subprocess speaking LCP."""

import io
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pyslirp.net.flows import FlowKey, Route
from pyslirp.net.events import ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend, ServiceShutdown
from pyslirp.runtime import serialio
from pyslirp.runtime.endpoints import Endpoint, FdEndpoint, LineGone, OpenError, PtyEndpoint, make_symlink
from pyslirp.config import ProxyConfig
from pyslirp.runtime.services import ServiceManager
from pyslirp.runtime.stackloop import Runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "pyslirp.py")
# The interpreter that runs pyslirp.py (e.g. an old Python to check compatibility).
PYTHON = os.environ.get("PYSLIRP_TEST_PYTHON", sys.executable)


# -- loopback servers the tests start (always on 127.0.0.1, port chosen by the kernel) ----------

class Server(object):
    """Accepts one connection and runs ``handler(conn)`` in a thread."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.result = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                self.result.put(self.handler(conn))
            except Exception as exc:
                self.result.put(exc)

    def close(self):
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def servers():
    made = []

    def make(handler):
        server = Server(handler)
        made.append(server)
        return server
    yield make
    for server in made:
        server.close()


def echo(conn):
    total = 0
    while True:
        data = conn.recv(65536)
        if not data:
            return total
        total += len(data)
        conn.sendall(data)


def recv_all(conn):
    chunks = []
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


class Inbox(object):
    def __init__(self):
        self.q = queue.Queue()

    def post(self, item):
        self.q.put(item)

    def get(self, kind=None, timeout=5.0):
        """The next item (of ``kind`` if given; others are skipped and returned in ``skipped``)."""
        deadline = time.monotonic() + timeout
        self.skipped = []
        while True:
            item = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if kind is None or item[0] == kind:
                return item
            self.skipped.append(item)

    def quiet(self, seconds=0.3):
        try:
            return self.q.get(timeout=seconds)
        except queue.Empty:
            return None


# -- service threads -----------------------------------------------------------------------

def connect_event(conn_id, host, port, name="", client_port=40000):
    flow = FlowKey(6, b"\x0a\x00\x00\x02", client_port, b"\x0a\x00\x00\x01", port)
    return ServiceConnect(conn_id, flow, Route("service", host, port, "direct", name))


def connected_service(servers, handler, conn_id, name=""):
    """Start a loopback server running ``handler``; connect service ``conn_id`` to it.

    Returns (server, inbox, manager)."""
    server = servers(handler)
    inbox = Inbox()
    manager = ServiceManager(inbox.post)
    manager.handle(connect_event(conn_id, "127.0.0.1", server.port, name))
    assert inbox.get() == ("svc_connected", conn_id, 0, ())
    return server, inbox, manager


def test_service_connection_moves_bytes_both_ways_within_credit(servers):
    server, inbox, manager = connected_service(servers, echo, 1, "echo")
    manager.handle(ServiceSend(1, b"hello "))
    manager.handle(ServiceSend(1, b"world"))
    written = 0
    while written < 11:
        kind, cid, n = inbox.get("svc_written")
        written += n
    assert written == 11
    assert inbox.quiet() is None            # echoed bytes wait: no credit granted yet
    manager.handle(ServiceReadCredit(1, 4))
    assert inbox.get() == ("svc_data", 1, b"hell")
    assert inbox.quiet() is None            # credit used up
    manager.handle(ServiceReadCredit(1, 100))
    got = b""
    while len(got) < 7:
        got += inbox.get("svc_data")[2]
    assert got == b"o world"
    manager.handle(ServiceShutdown(1))      # client FIN: the echo server sees EOF and closes
    assert inbox.get("svc_eof") == ("svc_eof", 1)
    assert inbox.get("svc_done") == ("svc_done", 1)
    manager.forget(1)
    assert len(manager) == 0
    assert server.result.get(timeout=5) == 11


def test_service_read_credit_is_backpressure(servers):
    payload = os.urandom(300000)

    def source(conn):
        conn.sendall(payload)
        return "sent"
    server, inbox, manager = connected_service(servers, source, 7)
    manager.handle(ServiceReadCredit(7, 1000))
    got = b""
    while len(got) < 1000:
        got += inbox.get("svc_data")[2]
    assert len(got) == 1000
    assert inbox.quiet() is None
    received = got
    while len(received) < len(payload):
        manager.handle(ServiceReadCredit(7, 50000))
        chunk = b""
        while len(chunk) < min(50000, len(payload) - len(received)):
            item = inbox.get("svc_data")
            chunk += item[2]
        assert len(chunk) <= 50000
        received += chunk
    assert received == payload
    manager.handle(ServiceReadCredit(7, 10))
    assert inbox.get("svc_eof") == ("svc_eof", 7)
    manager.handle(ServiceShutdown(7))
    assert inbox.get("svc_done") == ("svc_done", 7)


def test_service_through_a_proxy_delivers_the_tunnel_bytes_that_came_with_the_answer_within_credit(servers):
    """An HTTP CONNECT proxy that sends its 200 and the destination's first bytes in one write."""
    requests = []

    def proxy(conn):
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        requests.append(head)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-early-banner\r\n")
        return echo(conn)
    server = servers(proxy)
    inbox = Inbox()
    settings = ProxyConfig(type="http", host="127.0.0.1", port=server.port, username="u", password="p")
    manager = ServiceManager(inbox.post, proxy=settings)
    flow = FlowKey(6, b"\x0a\x00\x00\x02", 40000, b"\xc6\x12\x00\x02", 22)
    manager.handle(ServiceConnect(8, flow, Route("nat", "198.18.0.2", 22, "http", "nat")))
    assert inbox.get() == ("svc_connected", 8, 0, ())
    assert requests[0].startswith(b"CONNECT 198.18.0.2:22 HTTP/1.1\r\n")
    assert inbox.quiet() is None                     # no credit yet: the early bytes wait
    manager.handle(ServiceReadCredit(8, 5))
    assert inbox.get() == ("svc_data", 8, b"SSH-2")
    manager.handle(ServiceReadCredit(8, 100))
    assert inbox.get() == ("svc_data", 8, b".0-early-banner\r\n")
    manager.handle(ServiceSend(8, b"after"))
    assert inbox.get("svc_data") == ("svc_data", 8, b"after")    # then the tunnel carries data both ways
    manager.close_all()


def test_service_connect_refused_is_reported():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                            # nothing listens there now
    inbox = Inbox()
    manager = ServiceManager(inbox.post)
    threads = threading.active_count()
    manager.handle(connect_event(3, "127.0.0.1", port, client_port=1))
    # A loopback connect is refused at once: the stack thread's own look finds it, and no thread is started.
    assert inbox.get() == ("svc_failed", 3, "direct: connection refused", "reset",
                           ((0, "direct: connection refused"),))
    assert len(manager) == 0 and threading.active_count() == threads
    assert inbox.quiet() is None


class RecordingStarter(object):
    """A SpareThread stand-in: runs each job on a plain thread and records what the inbox held when the job
    asked for the next spare."""

    def __init__(self, inbox):
        self.inbox = inbox
        self.replenished = []

    def start(self, job):
        threading.Thread(target=job, daemon=True).start()

    def replenish(self):
        self.replenished.append(list(self.inbox.q.queue))


def test_the_next_spare_thread_is_started_after_the_connect_is_reported(servers):
    # A thread start must not delay the report the SYN-ACK waits for: the job reports first, and asks for
    # the next spare once, whether its connect succeeded or failed.
    from pyslirp.runtime.services import ServiceConnection
    server = servers(echo)
    inbox = Inbox()
    starter = RecordingStarter(inbox)
    conn = ServiceConnection(7, Route("service", "127.0.0.1", server.port, "direct"), inbox.post)
    conn.start(starter)
    assert inbox.get() == ("svc_connected", 7, 0, ())
    conn.abort("test over")
    assert inbox.get("svc_done") == ("svc_done", 7)
    assert starter.replenished == [[("svc_connected", 7, 0, ())]]

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                            # nothing listens there now
    inbox = Inbox()
    starter = RecordingStarter(inbox)
    conn = ServiceConnection(8, Route("service", "127.0.0.1", port, "direct"), inbox.post)
    conn.start(starter)
    assert inbox.get("svc_done") == ("svc_done", 8)
    assert len(starter.replenished) == 1
    assert [item[:2] for item in starter.replenished[0]] == [("svc_failed", 8)]


class HeldStarter(object):
    """Runs the job only when released: what the stack thread hands over meanwhile finds the thread busy."""

    def __init__(self):
        self.job = None

    def start(self, job):
        self.job = job

    def release(self):
        threading.Thread(target=self.job, daemon=True).start()

    def replenish(self):
        pass


def test_hand_offs_to_a_busy_service_thread_write_no_wake_up_byte_and_are_not_lost(servers):
    from pyslirp.runtime.services import ServiceConnection
    server = servers(echo)
    inbox = Inbox()
    starter = HeldStarter()
    conn = ServiceConnection(9, Route("service", "127.0.0.1", server.port, "direct"), inbox.post)
    writes = []
    real_wake = conn._wakeup.wake
    conn._wakeup.wake = lambda: (writes.append(1), real_wake())
    conn.start(starter)
    conn.add_credit(100)                    # the thread has not even connected yet
    conn.send(b"ping")
    assert writes == []
    starter.release()
    assert inbox.get("svc_connected")[:2] == ("svc_connected", 9)
    got = b""
    while len(got) < 4:
        got += inbox.get("svc_data")[2]
    assert got == b"ping"
    # Now the thread waits in poll: a hand-off must wake it.
    time.sleep(0.2)
    conn.send(b"pong")
    got = b""
    while len(got) < 4:
        got += inbox.get("svc_data")[2]
    assert got == b"pong" and len(writes) >= 1
    conn.shutdown()
    assert inbox.get("svc_eof") == ("svc_eof", 9)
    assert inbox.get("svc_done") == ("svc_done", 9)


def test_service_close_aborts_the_socket(servers):
    server, inbox, manager = connected_service(servers, recv_all, 4)
    manager.handle(ServiceSend(4, b"partial"))
    inbox.get("svc_written")
    manager.handle(ServiceClose(4, "reset by client"))
    assert inbox.get("svc_done") == ("svc_done", 4)
    result = server.result.get(timeout=5)
    # SO_LINGER 0: the server sees a reset (or, racing it, EOF after the bytes).
    assert isinstance(result, ConnectionResetError) or result == b"partial"


def test_service_peer_reset_is_an_error(servers):
    def resetter(conn):
        conn.recv(10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        return "reset"
    server, inbox, manager = connected_service(servers, resetter, 5)
    manager.handle(ServiceReadCredit(5, 1000))
    manager.handle(ServiceSend(5, b"x"))
    assert server.result.get(timeout=5) == "reset"
    kind = inbox.get("svc_error")
    assert kind[:2] == ("svc_error", 5) and "reset" in kind[2]
    assert inbox.get("svc_done") == ("svc_done", 5)


def test_held_hand_offs_wait_for_release_and_keep_their_order(servers):
    # The runtime holds the hand-offs of a loop turn that no client waits for while it takes the line's
    # output: the start of a thread for a connection connected at once, a shutdown, a close.
    server = servers(echo)
    inbox = Inbox()
    manager = ServiceManager(inbox.post)
    threads = threading.active_count()
    manager.hold()
    manager.handle(connect_event(6, "127.0.0.1", server.port))
    assert inbox.get() == ("svc_connected", 6, 0, ())       # decided at once: the answer is not held
    assert manager.handle(ServiceReadCredit(6, 100))
    assert manager.handle(ServiceSend(6, b"first "))
    assert manager.handle(ServiceShutdown(6))               # after the data, in order
    assert inbox.quiet() is None and threading.active_count() == threads
    manager.release()
    got = b""
    while len(got) < 6:
        got += inbox.get("svc_data")[2]
    assert got == b"first "
    assert inbox.get("svc_eof") == ("svc_eof", 6)           # the shutdown came after the data
    assert inbox.get("svc_done") == ("svc_done", 6)
    manager.forget(6)

    server = servers(echo)
    manager.handle(connect_event(7, "127.0.0.1", server.port))
    assert inbox.get() == ("svc_connected", 7, 0, ())
    manager.handle(ServiceReadCredit(7, 100))
    manager.handle(ServiceSend(7, b"x"))
    assert inbox.get("svc_data") == ("svc_data", 7, b"x")   # the thread runs: data is never held
    manager.hold()
    manager.handle(ServiceSend(7, b"y"))
    assert inbox.get("svc_data") == ("svc_data", 7, b"y")
    manager.handle(ServiceShutdown(7))
    assert inbox.quiet() is None                            # the shutdown waits for release
    manager.release()
    assert inbox.get("svc_eof") == ("svc_eof", 7)
    assert inbox.get("svc_done") == ("svc_done", 7)
    manager.close_all()


def test_events_for_unknown_connections_are_ignored():
    manager = ServiceManager(Inbox().post)
    assert manager.handle(ServiceSend(99, b"x"))
    assert manager.handle(ServiceClose(99, "x"))
    assert not manager.handle("something else")


# -- the stack loop with a scripted core, over pipes -------------------------------------------

class ScriptedCore(object):
    """Echoes every serial byte back as one frame; close() dies after ``die_after`` calls."""

    wants_room = True       # output always waits for room: every "room" report flushes

    def __init__(self):
        self.calls = []
        self.out = []
        self.budgets = []
        self.is_dead = False
        self.timer = None

    def lower_up(self, now):
        self.calls.append("lower_up")
        self.out.append((True, b"HELLO"))

    def lower_down(self, now):
        self.calls.append("lower_down")

    def receive_serial(self, data, now):
        self.out.append((False, data.upper()))

    def close(self, now):
        self.calls.append("close")
        self.out.append((True, b"BYE"))
        self.is_dead = True

    def get_timer(self):
        return self.timer

    def handle_timer(self, now):
        if self.timer is not None and now >= self.timer:
            self.timer = None
            self.out.append((True, b"TICK"))

    def take_serial_output(self, budget, now=None, allow_one_over=False):
        self.budgets.append(budget)
        out, self.out = self.out, []
        return out

    def set_line_rate(self, rate):
        self.calls.append(("rate", rate))

    def take_delay_signal(self):
        return None

    def take_events(self):
        return []


def pipe_endpoint():
    """An FdEndpoint the test talks to through two pipes: (endpoint, to_runtime, from_runtime)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    return FdEndpoint(r1, w2, "pipes"), w1, r2


def read_until(fd, needle, timeout=5.0):
    got = b""
    deadline = time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        assert left > 0, got
        if select.select([fd], [], [], left)[0]:
            data = os.read(fd, 4096)
            if not data:
                break
            got += data
    return got


def start(runtime):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", runtime.run()), daemon=True)
    thread.start()
    return thread, result


def test_stack_loop_moves_bytes_and_stops_cleanly():
    endpoint, to_rt, from_rt = pipe_endpoint()
    core = ScriptedCore()
    runtime = Runtime(None, None, endpoint=endpoint, core=core, line_budget=5000)
    thread, result = start(runtime)
    try:
        assert read_until(from_rt, b"HELLO") == b"HELLO"
        os.write(to_rt, b"abc")
        assert read_until(from_rt, b"ABC") == b"ABC"
        core.timer = 0                      # a due timer is run by the loop
        os.write(to_rt, b"x")
        assert b"TICK" in read_until(from_rt, b"TICK")
        assert max(core.budgets) <= 5000 and min(core.budgets) >= 0
        runtime.request_stop()
        assert b"BYE" in read_until(from_rt, b"BYE")
        thread.join(5)
        assert result == {"code": 0}
        assert core.calls == ["lower_up", "close"]
        assert runtime.line_queued == 0
    finally:
        runtime.request_stop()
        thread.join(5)
        for fd in (to_rt, from_rt):
            os.close(fd)


class BuggyCore(ScriptedCore):
    """Raises on every serial chunk containing b"!": a bug in protocol code."""

    def receive_serial(self, data, now):
        if b"!" in data:
            raise RuntimeError("bug triggered by %r" % data)
        ScriptedCore.receive_serial(self, data, now)


def test_stack_loop_survives_protocol_bugs_and_rate_limits_their_log(caplog):
    endpoint, to_rt, from_rt = pipe_endpoint()
    core = BuggyCore()
    runtime = Runtime(None, None, endpoint=endpoint, core=core)
    thread, result = start(runtime)
    try:
        assert read_until(from_rt, b"HELLO") == b"HELLO"
        with caplog.at_level(logging.ERROR, logger="pyslirp.runtime"):
            for i in range(9):
                os.write(to_rt, b"!")
                deadline = time.monotonic() + 5
                while runtime.counters()["runtime.internal_errors"] < i + 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
            os.write(to_rt, b"ok")
            assert read_until(from_rt, b"OK") == b"OK"          # the daemon still serves
        logged = [r for r in caplog.records if "internal error" in r.getMessage()]
        # 9 errors: logged at the 1st, 2nd, 4th and 8th, each with its traceback.
        assert [r.getMessage() for r in logged] == [
            "internal error (continuing; %d so far)" % n for n in (1, 2, 4, 8)]
        assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in logged)
        runtime.request_stop()
        thread.join(5)
        assert result == {"code": 0}
    finally:
        runtime.request_stop()
        thread.join(5)
        for fd in (to_rt, from_rt):
            os.close(fd)


def test_stack_loop_budget_counts_bytes_not_yet_written():
    endpoint, to_rt, from_rt = pipe_endpoint()
    core = ScriptedCore()
    runtime = Runtime(None, None, endpoint=endpoint, core=core, line_budget=100000)
    thread, result = start(runtime)
    try:
        read_until(from_rt, b"HELLO")
        # Nobody reads the output pipe now: the writer blocks once the pipe (64 KiB) is full,
        # so the budget offered to the core must shrink by what is queued.
        big = b"y" * 16384
        for _ in range(12):
            os.write(to_rt, big)
        time.sleep(1.0)
        os.write(to_rt, b"z")
        time.sleep(0.5)
        assert core.budgets[-1] < 100000 - 16384
        assert runtime.line_queued > 0
        got = read_until(from_rt, b"Z", timeout=10)
        assert got.count(b"Y") == 12 * 16384
        runtime.request_stop()
        thread.join(5)
        assert result == {"code": 0}
    finally:
        runtime.request_stop()
        thread.join(5)
        os.close(to_rt)
        os.close(from_rt)


class ConnectingCore(ScriptedCore):
    """Emits the ServiceConnects it is given; logs the service reports and each output taken, in order, and
    answers a connect with a SYN-ACK frame."""

    def __init__(self):
        ScriptedCore.__init__(self)
        self.events = []
        self.log = []

    def take_events(self):
        events, self.events = self.events, []
        return events

    def service_connected(self, conn_id, now, target=0, failures=()):
        self.log.append(("connected", conn_id, target, failures, threading.current_thread().name))
        self.out.append((True, b"SYN-ACK %d" % conn_id))
        self.events.append(ServiceReadCredit(conn_id, 100))

    def service_failed(self, conn_id, reason, now, outcome="reset", failures=()):
        self.log.append(("failed", conn_id, reason, outcome, threading.current_thread().name))

    def take_serial_output(self, budget, now=None, allow_one_over=False):
        out = ScriptedCore.take_serial_output(self, budget, now, allow_one_over)
        self.log.append(("output", [frame for _, frame in out]))
        return out


def test_a_connect_decided_at_once_is_answered_in_the_same_loop_turn(servers):
    # A loopback service: the stack thread connects, and the SYN-ACK leaves with the flush of the turn that
    # brought the SYN's ServiceConnect, with no service thread and no further turn in between.
    server = servers(echo)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    core = ConnectingCore()
    runtime = Runtime(None, None, core=core)
    try:
        core.events = [connect_event(1, "127.0.0.1", server.port), connect_event(2, "127.0.0.1", port)]
        runtime._step(None, 1000)
        me = threading.current_thread().name
        assert core.log == [("connected", 1, 0, (), me),
                            ("failed", 2, "direct: connection refused", "reset", me),
                            ("output", [b"SYN-ACK 1"])]
        assert runtime.inbox.empty()
        assert len(runtime.services) == 1                 # the refused one needs no thread
        runtime.services.handle(ServiceSend(1, b"ping"))
        kind = runtime.inbox.get(timeout=5)
        assert kind == ("svc_written", 1, 4)              # the connection's thread serves the socket
        got = b""
        while len(got) < 4:
            item = runtime.inbox.get(timeout=5)
            if item[0] == "svc_data":
                got += item[2]                              # within the credit the SYN-ACK's turn granted
        assert got == b"ping"
    finally:
        runtime.services.close_all()


def test_the_client_runtime_runs_the_stack_loops_turn():
    # The client role's loop is the same Runtime around another manager (its forwards): a turn must run.
    from pyslirp.runtime.client import ClientRuntime
    core = ScriptedCore()
    core.link_config = core.stack_config = None
    core.is_up = False
    runtime = ClientRuntime(core)
    core.out.append((True, b"X"))
    runtime._step(None, 0)
    assert core.budgets == [0] and core.out == []


def test_stdio_like_end_of_file_ends_the_runtime_with_0():
    endpoint, to_rt, from_rt = pipe_endpoint()
    core = ScriptedCore()
    runtime = Runtime(None, None, endpoint=endpoint, core=core)
    thread, result = start(runtime)
    read_until(from_rt, b"HELLO")
    os.close(to_rt)                         # the client hung up
    thread.join(5)
    os.close(from_rt)
    assert result == {"code": 0}
    assert core.calls == ["lower_up", "lower_down"]


class ReopenableEndpoint(FdEndpoint):
    reopenable = True


def test_line_is_reopened_with_backoff(monkeypatch):
    monkeypatch.setattr(serialio, "BACKOFF_START", 0.05)
    attempts = []
    lines = []

    def opener():
        attempts.append(time.monotonic())
        if len(attempts) in (1, 3):
            raise OpenError("cannot open /dev/ttyTEST: no such device")
        endpoint, to_rt, from_rt = pipe_endpoint()
        endpoint.__class__ = ReopenableEndpoint
        lines.append((to_rt, from_rt))
        return endpoint

    core = ScriptedCore()
    runtime = Runtime(None, None, opener=opener, core=core)
    thread, result = start(runtime)
    try:
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:
            time.sleep(0.01)
        to_rt, from_rt = lines[0]
        read_until(from_rt, b"HELLO")
        os.close(to_rt)                     # "USB unplugged"
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        to_rt2, from_rt2 = lines[1]
        read_until(from_rt2, b"HELLO")      # a new session on the reopened line
        assert core.calls == ["lower_up", "lower_down", "lower_up"]
        assert len(attempts) == 4
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        assert gaps[0] >= 0.04 and gaps[2] >= 0.09     # 0.05 s, then doubled
        runtime.request_stop()
        thread.join(5)
        assert result == {"code": 0}
    finally:
        runtime.request_stop()
        thread.join(5)


def test_permission_denied_at_startup_is_fatal():
    def opener():
        raise OpenError("cannot open /dev/ttyS0: permission denied", startup_fatal=True)
    runtime = Runtime(None, None, opener=opener, core=ScriptedCore())
    thread, result = start(runtime)
    thread.join(5)
    assert result == {"code": 1}


class SlowEndpoint(Endpoint):
    """Records writes; the first write blocks until released."""

    def __init__(self):
        self.writes = []
        self.release = threading.Event()

    def write(self, data):
        if not self.writes:
            self.writes.append(data)
            self.release.wait(5)
        else:
            self.writes.append(data)


def test_writer_keeps_the_order_given_and_coalesces():
    # Priority is decided by the stack thread when the line has room; the writer must never reorder
    # (an "urgent" frame jumping ahead of queued bulk reorders one TCP connection's segments).
    inbox = Inbox()
    endpoint = SlowEndpoint()
    writer = serialio.SerialWriter(endpoint, inbox.post, lambda reason: None, coalesce=10, limit=40)
    writer.start()
    writer.put(False, b"first")
    deadline = time.monotonic() + 5
    while not endpoint.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    for frame in (b"b1---", b"b2---", b"b3---"):
        assert writer.put(False, frame)
    assert writer.put(True, b"U1")
    assert writer.put(True, b"U2")
    assert not writer.put(False, b"x" * 30)        # over the limit: dropped and counted
    assert writer.dropped == 1
    endpoint.release.set()
    deadline = time.monotonic() + 5
    while writer.bytes_written < 5 + 15 + 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    writer.stop()
    writer.join(5)
    # In the order given, coalesced up to 10 bytes per write.
    assert endpoint.writes == [b"first", b"b1---b2---", b"b3---U1U2"]
    assert writer.queued == 0


def test_writer_put_all_queues_in_order_under_the_limit():
    inbox = Inbox()
    endpoint = SlowEndpoint()
    writer = serialio.SerialWriter(endpoint, inbox.post, lambda reason: None, coalesce=10, limit=40)
    writer.start()
    assert writer.put_all([b"first"]) == 5
    deadline = time.monotonic() + 5
    while not endpoint.writes and time.monotonic() < deadline:
        time.sleep(0.01)
    # 15 + 4 bytes fit under the limit of 40 with "first" in flight; the 30-byte frame does not.
    assert writer.put_all([b"b1---", b"b2---", b"x" * 30, b"b3---", b"U1U2"]) == 19
    assert writer.dropped == 1
    assert writer.put_all([]) == 0
    endpoint.release.set()
    deadline = time.monotonic() + 5
    while writer.bytes_written < 5 + 19 and time.monotonic() < deadline:
        time.sleep(0.001)
    writer.stop()
    writer.join(5)
    assert endpoint.writes == [b"first", b"b1---b2---", b"b3---U1U2"]
    assert writer.put_all([b"late"]) == 0 and writer.dropped == 2     # stopped: dropped


def test_fd_endpoint_read_reports_end_of_file():
    endpoint, to_rt, from_rt = pipe_endpoint()
    os.write(to_rt, b"data")
    assert endpoint.read(100) == b"data"
    os.close(to_rt)
    with pytest.raises(LineGone):
        endpoint.read(100)
    endpoint.close()
    os.close(from_rt)


def test_pty_endpoint_survives_the_client_closing(tmp_path):
    link = str(tmp_path / "ttyPPP")
    endpoint = PtyEndpoint(link=link)
    try:
        assert os.readlink(link) == endpoint.path
        for round_ in range(2):             # two clients, one after the other
            client = os.open(link, os.O_RDWR | os.O_NOCTTY)
            os.write(client, b"ping%d" % round_)
            assert endpoint.read(100) == b"ping%d" % round_
            endpoint.write(b"pong")
            assert os.read(client, 100) == b"pong"
            os.close(client)
            assert endpoint.read(100) == b""        # no EIO, no hangup: just nothing to read
    finally:
        endpoint.close()
    assert not os.path.lexists(link)


def test_pty_endpoint_writes_at_once_and_waits_only_when_the_pty_is_full(monkeypatch):
    from pyslirp.runtime import endpoints
    selects = []
    real_select = endpoints.select.select

    def counting_select(*args):
        selects.append(args[1])
        return real_select(*args)

    monkeypatch.setattr(endpoints.select, "select", counting_select)
    endpoint = PtyEndpoint()
    try:
        client = os.open(endpoint.path, os.O_RDWR | os.O_NOCTTY)
        endpoint.write(b"pong")
        assert os.read(client, 100) == b"pong"
        assert not any(selects)                     # room in the pty: one write, no select() for it
        data = os.urandom(1 << 20)                  # far more than the pty holds: the write must wait
        writer = threading.Thread(target=endpoint.write, args=(data,))
        writer.start()
        got = bytearray()
        while len(got) < len(data):
            got += os.read(client, 65536)
        writer.join(5)
        assert bytes(got) == data and any(selects)
        os.close(client)
    finally:
        endpoint.close()


def test_make_symlink_replaces_only_symlinks(tmp_path):
    link = str(tmp_path / "l")
    os.symlink("/nonexistent", link)
    make_symlink("/dev/null", link)
    assert os.readlink(link) == "/dev/null"
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):
        make_symlink("/dev/null", str(tmp_path / "f"))


# -- pyslirp.py as a real subprocess, spoken to with LCP ---------------------------------------

class PPPClient(object):
    """A scripted PPP peer over a file descriptor pair (LCP only)."""

    MAGIC = b"\x12\x34\x56\x78"

    def __init__(self, rfd, wfd):
        from pyslirp.wire.hdlc import Deframer
        self.rfd, self.wfd = rfd, wfd
        self.deframer = Deframer()
        self.pending = []
        self.raw = b""

    def send_cp(self, proto, code, ident, data=b""):
        from pyslirp.wire.hdlc import encode_frame
        from pyslirp.wire.ppp import build_cp, build_frame
        os.write(self.wfd, encode_frame(build_frame(proto, build_cp(code, ident, data))))

    def send_lcp_request(self, ident):
        from pyslirp.wire.ppp import CONFIGURE_REQUEST, PROTO_LCP, build_options
        self.send_cp(PROTO_LCP, CONFIGURE_REQUEST, ident,
                     build_options([(2, b"\0\0\0\0"), (5, self.MAGIC)]))     # ACCM 0, magic
        return build_options([(2, b"\0\0\0\0"), (5, self.MAGIC)])

    def expect(self, proto, code, timeout=10.0):
        """The next control packet (code, ident, data) of ``proto`` with ``code``; others are skipped."""
        from pyslirp.wire.ppp import parse_cp, parse_frame
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                p, info = parse_frame(self.pending.pop(0))
                if p == proto:
                    got = parse_cp(info)
                    if got[0] == code:
                        return got
            left = deadline - time.monotonic()
            assert left > 0, "no packet %#x/%d; raw bytes seen: %r" % (proto, code, self.raw[-200:])
            if select.select([self.rfd], [], [], left)[0]:
                data = os.read(self.rfd, 4096)
                assert data, "end of file"
                self.raw += data
                self.pending.extend(self.deframer.feed(data))


def _read_pty_line(proc, timeout=15):
    assert select.select([proc.stdout], [], [], timeout)[0], "no pty line"
    line = proc.stdout.readline().decode()
    assert line.startswith("pty: /dev/pts/"), line
    return line[5:].strip()


def _config(tmp_path, extra=""):
    path = tmp_path / "pyslirp.toml"
    path.write_text("[ppp]\nlcp_echo_interval = 0\nrestart_interval = 1\n" + extra)
    return str(path)


def _negotiate_lcp(client, ident):
    from pyslirp.wire.ppp import CONFIGURE_ACK, CONFIGURE_REQUEST, PROTO_LCP
    ours = client.send_lcp_request(ident)
    code, got_ident, data = client.expect(PROTO_LCP, CONFIGURE_ACK)
    assert (got_ident, data) == (ident, ours)
    code, their_ident, their_opts = client.expect(PROTO_LCP, CONFIGURE_REQUEST)
    client.send_cp(PROTO_LCP, CONFIGURE_ACK, their_ident, their_opts)


def test_pty_mode_speaks_lcp_and_terminates_on_sigterm(tmp_path):
    from pyslirp.wire.ppp import PROTO_LCP, TERMINATE_ACK, TERMINATE_REQUEST
    from pyslirp.wire.pcap import read_records
    link = str(tmp_path / "ttyPPP")
    pcap = str(tmp_path / "cap.pcap")
    proc = subprocess.Popen([PYTHON, SCRIPT, "--pty", "--pty-link", link, "-c", _config(tmp_path),
                             "--pcap", pcap, "-d"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        path = _read_pty_line(proc)
        assert os.readlink(link) == path
        fd = os.open(link, os.O_RDWR | os.O_NOCTTY)
        client = PPPClient(fd, fd)
        _negotiate_lcp(client, 1)
        # The client goes away and a new one opens the same pty: pyslirp is still there.
        os.close(fd)
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        client = PPPClient(fd, fd)
        _negotiate_lcp(client, 7)
        proc.send_signal(signal.SIGTERM)
        code, ident, _ = client.expect(PROTO_LCP, TERMINATE_REQUEST)
        client.send_cp(PROTO_LCP, TERMINATE_ACK, ident)
        started = time.monotonic()
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        os.close(fd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "Traceback" not in err
    assert not os.path.lexists(link)
    with open(pcap, "rb") as f:
        linktype, records = read_records(f.read())
    directions = set(r[1] for r in records)
    assert linktype == 204 and directions == {"in", "out"}
    protocols = set((r[1], r[2][:4]) for r in records)
    lcp, ipcp, ccp = b"\xff\x03\xc0\x21", b"\xff\x03\x80\x21", b"\xff\x03\x80\xfd"
    assert ("in", lcp) in protocols and ("out", lcp) in protocols
    # our IPCP and CCP requests, once LCP opened
    assert protocols <= {("in", lcp), ("out", lcp), ("out", ipcp), ("out", ccp)}


def test_stdio_mode_keeps_stdout_for_ppp_only(tmp_path):
    from pyslirp.wire.ppp import CONFIGURE_ACK, PROTO_LCP
    proc = subprocess.Popen([PYTHON, SCRIPT, "--stdio", "-d", "-c", _config(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = PPPClient(proc.stdout.fileno(), proc.stdin.fileno())
        ours = client.send_lcp_request(3)
        code, ident, data = client.expect(PROTO_LCP, CONFIGURE_ACK)
        assert (ident, data) == (3, ours)
        proc.stdin.close()                  # the client hung up: a clean end
        assert proc.wait(timeout=10) == 0
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    # Everything on stdout is PPP: flags delimit frames, no log text.
    assert (client.raw + rest).startswith(b"\x7e")
    assert b"pyslirp" not in client.raw + rest
    assert "serial line open: stdio" in err and "Traceback" not in err


def test_pyserial_url_line_is_reopened_after_disconnect(monkeypatch):
    pytest.importorskip("serial")
    from pyslirp.runtime.endpoints import PySerialEndpoint
    monkeypatch.setattr(serialio, "BACKOFF_START", 0.05)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)
    listener.settimeout(10)
    url = "socket://127.0.0.1:%d" % listener.getsockname()[1]
    core = ScriptedCore()
    runtime = Runtime(None, None, opener=lambda: PySerialEndpoint(url), core=core)
    thread, result = start(runtime)
    try:
        for round_ in range(2):
            conn, _ = listener.accept()
            conn.settimeout(10)
            got = b""
            while b"HELLO" not in got:
                got += conn.recv(100)
            conn.sendall(b"round%d" % round_)
            while b"ROUND%d" % round_ not in got:
                got += conn.recv(100)
            conn.close()                    # the "device" goes away; pyslirp reconnects
        assert core.calls[:3] == ["lower_up", "lower_down", "lower_up"]
        runtime.request_stop()
        thread.join(5)
        assert result == {"code": 0}
    finally:
        runtime.request_stop()
        thread.join(5)
        listener.close()


def test_a_socket_url_is_read_in_whole_chunks():
    # socket:// counts "something waiting" as 1: a read takes everything that has arrived, not 1 or 2 bytes.
    pytest.importorskip("serial")
    from pyslirp.runtime.endpoints import PySerialEndpoint
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    endpoint = PySerialEndpoint("socket://127.0.0.1:%d" % listener.getsockname()[1])
    conn, _ = listener.accept()
    try:
        assert not endpoint.backlog_visible
        # Frames go out as written: no Nagle on the connection to the terminal server.
        sock = socket.socket(fileno=os.dup(endpoint.ser.fileno()))
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            sock.close()
        payload = bytes(range(256)) * 4
        conn.sendall(payload)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ready, _, _ = select.select([endpoint.ser.fileno()], [], [], 0)
            time.sleep(0.05)            # everything sent has arrived
            if ready:
                break
        got = endpoint.read(16384)
        assert got == payload
        assert endpoint.read(300) == b""                    # nothing more: back after the poll interval
        conn.sendall(b"abc")
        assert endpoint.read(2) + endpoint.read(2) == b"abc"
    finally:
        conn.close()
        endpoint.close()
        listener.close()


def test_bad_pyserial_setting_is_fatal_with_exit_2():
    pytest.importorskip("serial")
    from pyslirp.runtime.endpoints import PySerialEndpoint
    runtime = Runtime(None, None, opener=lambda: PySerialEndpoint("nosuchproto://x"), core=ScriptedCore())
    thread, result = start(runtime)
    thread.join(5)
    assert result == {"code": 2}


# -- logging and counters ------------------------------------------------------------------

def test_log_file_is_reopened_after_external_rotation(tmp_path):
    from pyslirp import logsetup
    path = tmp_path / "pyslirp.log"
    logger = logsetup.setup("info", str(path), 1 << 20, 2, stream=io.StringIO())
    try:
        logging.getLogger("pyslirp.test").info("before rotation")
        os.rename(str(path), str(tmp_path / "pyslirp.log.1"))
        logsetup.reopen()
        logging.getLogger("pyslirp.test").info("after rotation")
        logging.getLogger("pyslirp.test").debug("not at info level")
        for handler in logger.handlers:
            handler.flush()
        assert "before rotation" in (tmp_path / "pyslirp.log.1").read_text()
        text = path.read_text()
        assert "after rotation" in text and "before rotation" not in text and "not at info" not in text
        assert text.count("\n") == 1 and " INFO pyslirp.test: after rotation" in text
    finally:
        logsetup.teardown()


def test_log_file_rotates_at_max_size(tmp_path):
    from pyslirp import logsetup
    path = tmp_path / "pyslirp.log"
    logsetup.setup("info", str(path), 2000, 2, stream=io.StringIO())
    try:
        for i in range(200):
            logging.getLogger("pyslirp.test").info("line %03d of some length to fill the file", i)
        sizes = sorted(p.name for p in tmp_path.iterdir())
        assert sizes == ["pyslirp.log", "pyslirp.log.1", "pyslirp.log.2"]
        assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
        assert "line 199" in path.read_text()
    finally:
        logsetup.teardown()


def test_stats_line_is_logged_periodically(caplog):
    from pyslirp.net.stack import StackConfig
    from pyslirp.ppp.link import LinkConfig
    endpoint, to_rt, from_rt = pipe_endpoint()
    runtime = Runtime(LinkConfig(), StackConfig(), endpoint=endpoint, stats_interval=1, stop_timeout=100)
    with caplog.at_level(logging.INFO, logger="pyslirp"):
        thread, result = start(runtime)
        try:
            read_until(from_rt, b"\x7e\xff")              # our first LCP Configure-Request
            os.write(to_rt, b"abc")
            time.sleep(1.3)
        finally:
            runtime.request_stop()
            thread.join(5)
            os.close(to_rt)
            os.close(from_rt)
    stats = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stats: ")]
    assert len(stats) == 1
    assert "serial_bytes_total{direction=in}=3" in stats[0] and "serial_line_open=1" in stats[0]
    assert "link_up=" not in stats[0]               # zero figures are left out


class FakeSerialModule(object):
    """Stands in for pyserial: records how ports are opened, or fails with a given errno."""

    EIGHTBITS, PARITY_NONE, STOPBITS_ONE = 8, "N", 1

    class SerialException(IOError):
        pass

    def __init__(self, errno_=None):
        self.errno_ = errno_
        self.opened = []

    def _open(self, how, port, kwargs):
        if self.errno_ is not None:
            raise self.SerialException(self.errno_, "could not open port %s: [Errno %d] ..." % (port, self.errno_))
        self.opened.append((how, port, kwargs))
        return object()

    def Serial(self, port, **kwargs):
        return self._open("Serial", port, kwargs)

    def serial_for_url(self, url, **kwargs):
        return self._open("url", url, kwargs)


@pytest.mark.parametrize("flow, rtscts, xonxoff", [("none", False, False), ("hardware", True, False),
                                                   ("software", False, True)])
def test_pyserial_port_settings(monkeypatch, flow, rtscts, xonxoff):
    from pyslirp import compat
    from pyslirp.runtime.endpoints import PySerialEndpoint
    fake = FakeSerialModule()
    monkeypatch.setattr(compat, "serial_module", lambda: fake)
    PySerialEndpoint("/dev/ttyUSB0", 57600, flow)
    PySerialEndpoint("rfc2217://127.0.0.1:7000", 9600, flow)
    (how1, port1, kw1), (how2, port2, kw2) = fake.opened
    assert (how1, port1, how2, port2) == ("Serial", "/dev/ttyUSB0", "url", "rfc2217://127.0.0.1:7000")
    assert kw1.pop("exclusive") is True     # a device is locked against a second user
    assert kw1 == dict(baudrate=57600, bytesize=8, parity="N", stopbits=1, rtscts=rtscts, xonxoff=xonxoff,
                       timeout=kw1["timeout"], write_timeout=None)
    assert kw2["baudrate"] == 9600 and "exclusive" not in kw2


def test_pyserial_open_errors_are_classified(monkeypatch):
    import errno
    from pyslirp import compat
    from pyslirp.runtime.endpoints import PySerialEndpoint
    monkeypatch.setattr(compat, "serial_module", lambda: FakeSerialModule(errno.EACCES))
    with pytest.raises(OpenError) as info:
        PySerialEndpoint("/dev/ttyS0")
    assert info.value.startup_fatal and not info.value.permanent
    assert "permission denied" in str(info.value) and "dialout" in str(info.value)
    monkeypatch.setattr(compat, "serial_module", lambda: FakeSerialModule(errno.ENOENT))
    with pytest.raises(OpenError) as info:
        PySerialEndpoint("/dev/ttyUSB9")
    assert not info.value.startup_fatal and not info.value.permanent      # retried: may be plugged in later
    assert str(info.value) == "cannot open /dev/ttyUSB9: no such device (not plugged in yet?)"


# -- everything together in one process: runtime + real Core + service thread + echo server ----

def test_client_tcp_connection_reaches_a_loopback_service_through_the_runtime(servers):
    from pyslirp import config as config_mod
    from pyslirp.wire import hdlc, ppp as wppp
    from pyslirp.wire.ipv4 import Ipv4Repr, ip_bytes
    from pyslirp.wire.tcp import ACK, FIN, PSH, SYN, TcpRepr
    server = servers(echo)
    cfg = config_mod.load(None, settings={"ppp.lcp_echo_interval": 0},
                          services=["22=127.0.0.1:%d" % server.port])
    endpoint, to_rt, from_rt = pipe_endpoint()
    runtime = Runtime(config_mod.link_config(cfg), config_mod.stack_config(cfg), endpoint=endpoint)
    thread, result = start(runtime)
    us, peer = ip_bytes("10.0.0.1"), ip_bytes("10.0.0.2")
    deframer = hdlc.Deframer(accm=0)
    frames = []

    def send(proto, info):
        os.write(to_rt, hdlc.encode_frame(wppp.build_frame(proto, info)))

    def wait(match, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            for i, (proto, info) in enumerate(frames):
                found = match(proto, info)
                if found is not None:
                    del frames[i]
                    return found
            left = deadline - time.monotonic()
            assert left > 0, frames
            if select.select([from_rt], [], [], left)[0]:
                for frame in deframer.feed(os.read(from_rt, 65536)):
                    frames.append(wppp.parse_frame(frame))

    def cp(proto, code):
        def match(p, info):
            if p == proto:
                parsed = wppp.parse_cp(info)
                if parsed[0] == code:
                    return parsed
        return match

    def tcp(p, info):
        if p == wppp.PROTO_IP:
            ip = Ipv4Repr.parse(info)
            return TcpRepr.parse(ip.payload, us, peer)

    def send_tcp(seg):
        send(wppp.PROTO_IP, Ipv4Repr(peer, us, 6, seg.emit(peer, us)).emit())

    try:
        _, ident, data = wait(cp(wppp.PROTO_LCP, wppp.CONFIGURE_REQUEST))
        send(wppp.PROTO_LCP, wppp.build_cp(wppp.CONFIGURE_ACK, ident, data))
        send(wppp.PROTO_LCP, wppp.build_cp(wppp.CONFIGURE_REQUEST, 1, wppp.build_options(
            [(2, b"\0\0\0\0"), (5, b"\1\2\3\4")])))
        wait(cp(wppp.PROTO_LCP, wppp.CONFIGURE_ACK))
        send(wppp.PROTO_IPCP, wppp.build_cp(wppp.CONFIGURE_REQUEST, 1, wppp.build_options([(3, peer)])))
        wait(cp(wppp.PROTO_IPCP, wppp.CONFIGURE_ACK))
        _, ident, data = wait(cp(wppp.PROTO_IPCP, wppp.CONFIGURE_REQUEST))
        send(wppp.PROTO_IPCP, wppp.build_cp(wppp.CONFIGURE_ACK, ident, data))

        send_tcp(TcpRepr(41000, 22, 100, 0, SYN, 65535, mss=1400))
        synack = wait(tcp)
        assert synack.flags == SYN | ACK and synack.ack == 101
        message = os.urandom(3000)
        seq, ack = 101, synack.seq + 1
        send_tcp(TcpRepr(41000, 22, seq, ack, ACK, 65535))
        for off in range(0, len(message), 1000):
            send_tcp(TcpRepr(41000, 22, seq + off, ack, ACK | PSH, 65535, payload=message[off:off + 1000]))
        seq += len(message)
        echoed = b""
        while len(echoed) < len(message):
            seg = wait(tcp)
            if seg.payload and seg.seq == ack:
                echoed += seg.payload
                ack += len(seg.payload)
                send_tcp(TcpRepr(41000, 22, seq, ack, ACK, 65535))
        assert echoed == message
        send_tcp(TcpRepr(41000, 22, seq, ack, FIN | ACK, 65535))     # the echo server sees EOF and closes
        fin = wait(lambda p, info: (lambda s: s if s is not None and s.flags & FIN else None)(tcp(p, info)))
        assert fin.seq == ack
        send_tcp(TcpRepr(41000, 22, seq + 1, ack + 1, ACK, 65535))
        assert server.result.get(timeout=5) == len(message)
        deadline = time.monotonic() + 5
        while len(runtime.services) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(runtime.services) == 0      # the service thread finished by itself
        runtime.request_stop()
        _, ident, _ = wait(cp(wppp.PROTO_LCP, wppp.TERMINATE_REQUEST))
        send(wppp.PROTO_LCP, wppp.build_cp(wppp.TERMINATE_ACK, ident))
        thread.join(5)
        assert result == {"code": 0}
    finally:
        runtime.request_stop()
        thread.join(5)
        os.close(to_rt)
        os.close(from_rt)
