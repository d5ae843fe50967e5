"""The metrics server on real loopback sockets, and the stack loop that feeds it.

A stand-in stack thread answers the server's ``("metrics",)`` requests by publishing snapshots of a real Core,
as the stack loop does; the last tests run the real Runtime over pipes with its metrics server and scrape it
(the real ``promtool check metrics`` judges the live scrape), and check SIGUSR1's log line.
"""

import json
import logging
import os
import queue
import random
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from pyslirp import metrics
from pyslirp.core import Core
from pyslirp.net.stack import StackConfig
from pyslirp.ppp.link import LinkConfig
from pyslirp.runtime import metrics_server as ms
from pyslirp.runtime.metrics_server import MetricsServer, SnapshotBox
from pyslirp.runtime.stackloop import Runtime

from test_metrics import assert_json_equals_text, parse_text, promtool_check
from test_runtime import pipe_endpoint, read_until, start


class StackThread(object):
    """Answers ("metrics",) like the stack loop: a new snapshot when the box's is stale; counts the builds."""

    def __init__(self, delay=0.0):
        self.inbox = queue.Queue()
        self.core = Core(LinkConfig(), StackConfig(), random.Random(1))
        self.box = SnapshotBox(self.inbox.put)
        self.builds = 0
        self.delay = delay
        self.answer = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self.inbox.get()
            if item is None:
                return
            time.sleep(self.delay)
            now = ms.monotonic_ms()
            if self.answer and item == ("metrics",) and self.box.stale(now):
                self.builds += 1
                self.box.publish(metrics.collect(self.core, now, serial_in=self.builds))

    def stop(self):
        self.inbox.put(None)
        self._thread.join(2)


@pytest.fixture
def served():
    stack = StackThread()
    server = MetricsServer(("127.0.0.1", 0), stack.box)
    server.start()
    try:
        yield stack, server
    finally:
        server.stop()
        stack.stop()


def url(server, path):
    return "http://%s:%d%s" % (server.address[0], server.address[1], path)


def get(server, path, method="GET"):
    req = urllib.request.Request(url(server, path), method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def raw(server, data, timeout=5.0, shut=False):
    """Send ``data``, return everything the server answers until it closes."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_text_and_json_scrapes_carry_the_same_fresh_figures(served):
    stack, server = served
    status, headers, body = get(server, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert parse_text(text)["pyslirp_serial_bytes_total"]["samples"][
        ("pyslirp_serial_bytes_total", frozenset({("direction", "in")}))] == 1.0
    status, headers, body = get(server, "/metrics.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body.decode())
    assert doc["metrics"]["pyslirp_link_up"]["samples"] == [{"labels": {}, "value": 0}]
    assert_json_equals_text(stack.box.snapshot)
    assert promtool_check(text)[0] == 0


def test_scrapes_within_max_age_share_one_snapshot_and_later_ones_refresh(served):
    stack, server = served
    for _ in range(5):
        assert get(server, "/metrics")[0] == 200
    # Five scrapes in well under 250 ms: at most two builds (one if they all fell into the same window).
    assert 1 <= stack.builds <= 2
    before = stack.builds
    time.sleep(ms.MAX_AGE_MS / 1000.0 + 0.05)
    body = get(server, "/metrics.json")[2]
    assert stack.builds == before + 1
    value = json.loads(body.decode())["metrics"]["pyslirp_serial_bytes_total"]["samples"][0]["value"]
    assert value == stack.builds                     # the figures are the new snapshot's


def test_head_404_405_and_query_strings(served):
    stack, server = served
    status, headers, body = get(server, "/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 1000
    assert get(server, "/")[0] == 404 and get(server, "/metricsx")[0] == 404
    status, headers, _ = get(server, "/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert get(server, "/metrics?name[]=pyslirp_link_up")[0] == 200
    assert raw(server, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_request_size_is_bounded(served):
    stack, server = served
    answer = raw(server, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (ms.MAX_REQUEST + 10))
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_a_client_that_sends_half_a_request_is_timed_out_without_stalling_others():
    stack = StackThread()
    server = MetricsServer(("127.0.0.1", 0), stack.box, request_timeout=0.5)
    server.start()
    try:
        slow = socket.create_connection(server.address, timeout=5)
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")            # ... and nothing more
        t0 = time.monotonic()
        assert get(server, "/metrics")[0] == 200              # others are served meanwhile
        assert time.monotonic() - t0 < 0.4
        answer = b""
        while True:
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ") and 0.4 < time.monotonic() - t0 < 3
        slow.close()
    finally:
        server.stop()
        stack.stop()


def test_connections_beyond_max_clients_are_closed_at_once():
    stack = StackThread()
    server = MetricsServer(("127.0.0.1", 0), stack.box, request_timeout=5, max_clients=2)
    server.start()
    idle = []
    try:
        for _ in range(2):
            idle.append(socket.create_connection(server.address, timeout=5))
        time.sleep(0.2)
        extra = socket.create_connection(server.address, timeout=5)
        assert extra.recv(100) == b""                         # closed without an answer
        extra.close()
        assert server.rejected >= 1
    finally:
        for s in idle:
            s.close()
        server.stop()
        stack.stop()


def test_a_request_half_closed_after_asking_still_gets_its_answer(served):
    stack, server = served
    answer = raw(server, b"GET /metrics.json HTTP/1.0\r\n\r\n", shut=True)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body.decode())["metrics"]


def test_a_stack_thread_that_never_answers_gives_503_then_the_old_figures():
    stack = StackThread()
    stack.answer = False
    server = MetricsServer(("127.0.0.1", 0), stack.box)
    server.start()
    try:
        t0 = time.monotonic()
        assert get(server, "/metrics")[0] == 503
        assert ms.REFRESH_WAIT - 0.1 < time.monotonic() - t0 < ms.REFRESH_WAIT + 1
        # An old snapshot is served when no fresh one comes in time.
        stack.box.publish(metrics.collect(stack.core, ms.monotonic_ms() - 10000, serial_in=77))
        status, _, body = get(server, "/metrics")
        assert status == 200 and b'pyslirp_serial_bytes_total{direction="in"} 77\n' in body
    finally:
        server.stop()
        stack.stop()


def test_snapshot_box_asks_once_until_answered():
    posted = []
    clock = [1000]
    box = SnapshotBox(posted.append, max_age_ms=250, clock=lambda: clock[0])
    assert box.fresh() is None and box.stale(1000)
    box.request()
    box.request()
    assert posted == [("metrics",)]
    woken = []
    box.add_waiter(lambda: woken.append(1))
    snap = metrics.Snapshot(1000, {})
    box.publish(snap)
    assert woken == [1] and box.fresh() is snap and not box.stale(1250) and box.stale(1251)
    clock[0] = 1300
    assert box.fresh() is None
    box.request()
    assert posted == [("metrics",), ("metrics",)]


def test_non_loopback_addresses_are_refused_unless_allowed():
    box = SnapshotBox(lambda item: None)
    with pytest.raises(ValueError) as info:
        MetricsServer(("0.0.0.0", 0), box)
    assert "not a loopback address" in str(info.value)
    server = MetricsServer(("0.0.0.0", 0), box, allow_remote=True)
    server.stop()                       # never started: closes its socket
    server.run()                        # (run() returns at once when stopped; it closes the listener)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.address[1]), timeout=1).close()


def test_ipv6_loopback(tmp_path):
    stack = StackThread()
    try:
        server = MetricsServer(("::1", 0), stack.box)
    except OSError as exc:
        stack.stop()
        pytest.skip("no IPv6 loopback here: %s" % exc)
    server.start()
    try:
        status, _, body = get_from("http://[::1]:%d/metrics" % server.address[1])
        assert status == 200 and b"# TYPE pyslirp_link_up gauge" in body
    finally:
        server.stop()
        stack.stop()


def get_from(address):
    with urllib.request.urlopen(address, timeout=5) as resp:
        return resp.status, dict(resp.headers), resp.read()


def test_address_in_use_is_an_oserror_for_the_caller():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        with pytest.raises(OSError):
            MetricsServer(holder.getsockname(), SnapshotBox(lambda item: None))
    finally:
        holder.close()


# -- the real stack loop -------------------------------------------------------------------------------------

def test_the_runtime_serves_live_figures_and_logs_them_on_sigusr1(caplog):
    endpoint, to_rt, from_rt = pipe_endpoint()
    runtime = Runtime(LinkConfig(), StackConfig(), endpoint=endpoint, stop_timeout=100)
    runtime.metrics_server = MetricsServer(("127.0.0.1", 0), runtime.metrics_box)
    server = runtime.metrics_server
    with caplog.at_level(logging.INFO, logger="pyslirp"):
        thread, result = start(runtime)
        try:
            read_until(from_rt, b"\x7e\xff")             # the first LCP Configure-Request
            os.write(to_rt, b"\x7eAB\x7e")                    # a runt frame: 4 bytes
            deadline = time.monotonic() + 5
            while True:
                status, _, body = get(server, "/metrics")
                text = body.decode()
                if 'pyslirp_serial_bytes_total{direction="in"} 4\n' in text or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert status == 200
            families = parse_text(text)
            assert families["pyslirp_serial_bytes_total"]["samples"][
                ("pyslirp_serial_bytes_total", frozenset({("direction", "in")}))] == 4
            assert families["pyslirp_ppp_errors_total"]["samples"][
                ("pyslirp_ppp_errors_total", frozenset({("reason", "too_short")}))] == 1
            assert families["pyslirp_serial_line_open"]["samples"][("pyslirp_serial_line_open", frozenset())] == 1
            assert families["pyslirp_link_up"]["samples"][("pyslirp_link_up", frozenset())] == 0
            code, out = promtool_check(text)
            assert code == 0, out
            runtime.request_snapshot_log()
            deadline = time.monotonic() + 5
            while not any(r.getMessage().startswith("metrics: ") for r in caplog.records):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            runtime.request_stop()
            thread.join(5)
            os.close(to_rt)
            os.close(from_rt)
    assert result.get("code") == 0
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics: ")]
    assert "serial_bytes_total{direction=in}=4" in line and "link_up=0" in line    # zeros included
    assert "ppp_errors_total{reason=too_short}=1" in line and "\n" not in line
    # The server stopped with the loop: nothing listens on its port any more.
    with pytest.raises(OSError):
        socket.create_connection(server.address, timeout=1).close()
