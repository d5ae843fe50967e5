"""Service health: the circuit breakers (net/health.py), fallback targets in the policy and the stack, at explicit
times; Connector.open_any on real loopback sockets."""

import logging
import os
import socket
import time
from types import SimpleNamespace

import pytest

from pyslirp.net import health as H
from pyslirp.net import refusal
from pyslirp.net.events import BreakerChange, FlowLog, ServiceConnect
from pyslirp.net.flows import CAUSE_SERVICE, FlowKey, Policy, Route, Service
from pyslirp.net.health import CLOSED, HALF_OPEN, OPEN, Health, Target
from pyslirp.runtime.connectors import ConnectFailed, Connector
from pyslirp.wire import tcp

from test_stack import Client, make_stack, of_type

A = Target("127.0.0.1", 22, "direct")
B = Target("127.0.0.1", 2222, "direct")


def flow(n):
    return FlowKey(6, b"\x0a\x00\x00\x02", 40000 + n, b"\x0a\x00\x00\x01", 22)


# -- the breaker -----------------------------------------------------------------------------------------------

def test_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count():
    h = Health(failures=3, cooldown=10000)
    for i in range(2):
        assert h.usable(A, flow(i), 0)
        h.failed(A, flow(i), "refused", 0)
    h.succeeded(A, flow(9), 1)            # two failures, then a success: the count starts again
    for i in range(2):
        h.failed(A, flow(i), "refused", 2)
    assert h.state(A) == CLOSED and h.usable(A, flow(5), 2)
    h.failed(A, flow(2), "refused", 3)
    assert h.state(A) == OPEN
    assert not h.usable(A, flow(6), 3) and not h.usable(A, flow(6), 10002)    # cooldown runs to 3 + 10000
    assert h.retry_in(A, 5003) == 5000
    assert h.skipped == 2
    assert h.states() == {"127.0.0.1:22": OPEN}
    assert h.usable(B, flow(6), 4)        # other targets are not affected
    h.track([A, B])
    assert h.states() == {"127.0.0.1:22": OPEN, "127.0.0.1:2222": CLOSED}
    h.track([B])
    assert h.states() == {"127.0.0.1:2222": CLOSED}


def test_one_trial_after_the_cooldown_decides():
    h = Health(failures=1, cooldown=1000)
    h.failed(A, flow(0), "refused", 0)
    assert h.state(A) == OPEN
    assert h.usable(A, flow(1), 1000)     # the trial
    assert h.state(A) == HALF_OPEN
    assert not h.usable(A, flow(2), 1001)  # while the trial is in flight, others skip the target
    h.failed(A, flow(1), "timeout", 1500)
    assert h.state(A) == OPEN and h.retry_in(A, 1500) == 1000
    assert not h.usable(A, flow(3), 2499)
    assert h.usable(A, flow(3), 2500)
    h.succeeded(A, flow(3), 2600)
    assert h.state(A) == CLOSED and h.usable(A, flow(4), 2600) and h.usable(A, flow(5), 2600)
    changes = h.take_changes()
    assert [c.state for c in changes] == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]
    assert changes[0] == BreakerChange("127.0.0.1:22", OPEN, 1, "refused")
    assert changes[-1] == BreakerChange("127.0.0.1:22", CLOSED, 0, "")
    assert h.take_changes() == []
    assert h.transitions == {CLOSED: 1, OPEN: 2, HALF_OPEN: 2}


def test_an_unused_trial_goes_to_the_next_flow():
    h = Health(failures=1, cooldown=1000)
    h.failed(A, flow(0), "refused", 0)
    assert h.usable(A, flow(1), 1000)
    h.release(A, flow(2))                 # not the trial holder: nothing happens
    assert h.state(A) == HALF_OPEN
    h.release(A, flow(1))
    assert h.state(A) == OPEN
    assert h.usable(A, flow(2), 1001)     # the next flow is the trial at once
    assert h.state(A) == HALF_OPEN


def test_a_trial_that_never_reports_is_given_up_after_a_cooldown():
    h = Health(failures=1, cooldown=1000)
    h.failed(A, flow(0), "refused", 0)
    assert h.usable(A, flow(1), 1000)     # flow 1 is the trial, and is never heard of again
    assert not h.usable(A, flow(2), 1999)
    assert h.usable(A, flow(2), 2000)
    h.succeeded(A, flow(2), 2001)
    assert h.state(A) == CLOSED


def test_a_late_failure_of_an_older_flow_extends_the_cooldown():
    h = Health(failures=2, cooldown=1000)
    h.failed(A, flow(0), "refused", 0)
    h.failed(A, flow(1), "refused", 10)
    h.failed(A, flow(2), "timeout", 800)  # admitted before the breaker opened, failed later
    assert h.retry_in(A, 800) == 1000


def test_zero_failures_turns_breakers_off():
    h = Health(failures=0, cooldown=1000)
    for i in range(20):
        h.failed(A, flow(i), "refused", i)
    assert h.state(A) == CLOSED and h.usable(A, flow(99), 20)
    h = Health(failures=1, cooldown=1000)
    h.failed(A, flow(0), "refused", 0)
    assert h.state(A) == OPEN
    h.configure(0, 1000)                  # a reload that turns them off closes every breaker
    assert h.state(A) == CLOSED and h.usable(A, flow(1), 1)


def test_breaker_changes_are_logged(caplog):
    h = Health(failures=2, cooldown=30000)
    with caplog.at_level(logging.INFO, logger="pyslirp.net.health"):
        h.failed(A, flow(0), "direct: connection refused", 0)
        h.failed(A, flow(1), "direct: connection refused", 0)
        h.usable(A, flow(2), 30000)
        h.succeeded(A, flow(2), 30001)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages[0][0] == logging.WARNING
    assert "127.0.0.1:22" in messages[0][1] and "2 failed connects in a row" in messages[0][1]
    assert "direct: connection refused" in messages[0][1] and "30 s" in messages[0][1]
    assert messages[-1][0] == logging.INFO and "up again" in messages[-1][1]


def test_target_labels():
    assert Target("::1", 22, "direct").label == "[::1]:22"
    assert Target("db.example", 5432, "socks5").label == "db.example:5432 via socks5"


def test_the_change_queue_is_bounded():
    h = Health(failures=1, cooldown=1)
    for i in range(H.MAX_CHANGES * 2):
        h.failed(A, flow(0), "x", 2 * i)
        h.usable(A, flow(0), 2 * i + 1)
    assert len(h.take_changes()) == H.MAX_CHANGES
    assert h.transitions[OPEN] == H.MAX_CHANGES * 2


# -- the policy ---------------------------------------------------------------------------------------------------

SSH2 = Service(22, "127.0.0.1", 22, "SSH", fallback=(("127.0.0.1", 2222), ("backup", 22)))


def policy(**kw):
    from pyslirp.net.stack import StackConfig
    kw.setdefault("services", (SSH2,))
    return Policy(StackConfig(**kw))


def test_route_carries_every_target_in_order():
    route = policy().decide(flow(0), 0)
    assert route.targets == (("127.0.0.1", 22), ("127.0.0.1", 2222), ("backup", 22))
    assert route.describe() == "SSH 127.0.0.1:22 (fallback 127.0.0.1:2222, backup:22)"
    assert route.connected_to(1) == Route("service", "127.0.0.1", 2222, "direct", "SSH")
    assert route.connected_to(1).label == route.label == "SSH"


def test_open_breakers_are_left_out_of_the_route_and_a_service_with_none_left_is_refused():
    p = policy(breaker_failures=2, breaker_cooldown=30)
    for i in range(2):
        route = p.decide(flow(i), 0)
        p.connect_result(flow(i), route, 1, ((0, "direct: connection refused"),), 0)
    assert p.breakers == {"127.0.0.1:22": OPEN, "127.0.0.1:2222": CLOSED, "backup:22": CLOSED}
    route = p.decide(flow(2), 1)
    assert route.targets == (("127.0.0.1", 2222), ("backup", 22))    # the primary is skipped
    p.connect_result(flow(2), route, None, ((0, "refused"), (1, "unreachable")), 2)
    route = p.decide(flow(3), 3)
    p.connect_result(flow(3), route, None, ((0, "refused"), (1, "unreachable")), 3)
    refused = p.decide(flow(4), 4)
    assert not refused.admitted and refused.cause == CAUSE_SERVICE and refused.outcome == refusal.RESET
    assert refused.reason.startswith("SSH is down (127.0.0.1:22 retried in 30 s;")
    assert p.tcp_active == 4 and p.per_label == {"SSH": 4}     # refused flows take no slot


def test_a_refusal_by_the_limits_takes_no_trial():
    p = policy(breaker_failures=1, breaker_cooldown=1, max_per_service=1,
               services=(Service(22, "127.0.0.1", 22, "SSH"),))
    first = p.decide(flow(0), 0)
    p.connect_result(flow(0), first, None, ((0, "refused"),), 0)
    assert p.breakers == {"127.0.0.1:22": OPEN}
    assert p.decide(flow(1), 5000).cause == "limit"      # flow 0 still holds the only slot
    assert p.breakers == {"127.0.0.1:22": OPEN}          # the trial was not given away
    p.release(flow(0), first)
    trial = p.decide(flow(2), 5001)
    assert trial.admitted and p.breakers == {"127.0.0.1:22": HALF_OPEN}


def test_targets_not_tried_give_their_trial_back():
    p = policy(breaker_failures=1, breaker_cooldown=1)
    route = p.decide(flow(0), 0)
    p.connect_result(flow(0), route, None, ((0, "x"), (1, "x"), (2, "x")), 0)
    assert set(p.breakers.values()) == {OPEN}
    route = p.decide(flow(1), 1000)           # every target's cooldown is over: flow 1 holds three trials
    assert set(p.breakers.values()) == {HALF_OPEN}
    p.connect_result(flow(1), route, 0, (), 1001)    # the first answered: the other two were never tried
    assert p.breakers == {"127.0.0.1:22": CLOSED, "127.0.0.1:2222": OPEN, "backup:22": OPEN}
    route = p.decide(flow(2), 1002)
    assert route.targets == SSH2.targets
    p.abandoned(flow(2), route)               # the client went before the connect ended
    assert p.breakers == {"127.0.0.1:22": CLOSED, "127.0.0.1:2222": OPEN, "backup:22": OPEN}


def test_breakers_are_per_way_of_reaching_a_target():
    p = policy(proxy_via="socks5", breaker_failures=1,
               services=(Service(22, "db", 22, "A"), Service(23, "db", 22, "B", via="proxy")))
    route = p.decide(flow(0), 0)
    p.connect_result(flow(0), route, None, ((0, "refused"),), 0)
    assert p.breakers == {"db:22": OPEN, "db:22 via socks5": CLOSED}
    other = FlowKey(6, b"\x0a\x00\x00\x02", 1, b"\x0a\x00\x00\x01", 23)
    assert p.decide(other, 1).admitted


def test_a_new_policy_carries_counts_and_breakers_over():
    p = policy(breaker_failures=1)
    route = p.decide(flow(0), 0)
    p.connect_result(flow(0), route, 1, ((0, "refused"),), 0)
    from pyslirp.net.stack import StackConfig
    q = Policy(StackConfig(services=(SSH2, Service(80, "127.0.0.1", 8080, "web")), breaker_failures=3,
                           breaker_cooldown=5), previous=p)
    assert q.tcp_active == 1 and q.per_label == {"SSH": 1}
    assert q.breakers == {"127.0.0.1:22": OPEN, "127.0.0.1:2222": CLOSED, "backup:22": CLOSED,
                          "127.0.0.1:8080": CLOSED}
    assert (q.health.failures, q.health.cooldown) == (3, 5000)
    q.release(flow(0), route)
    assert q.tcp_active == 0 and q.per_label == {}
    r = Policy(StackConfig(services=(Service(80, "127.0.0.1", 8080, "web"),)), previous=q)
    assert r.breakers == {"127.0.0.1:8080": CLOSED}     # targets no longer configured are forgotten
    r.connect_result(flow(0), route, None, ((0, "late"),), 10)   # a result for a target removed meanwhile
    assert r.breakers == {"127.0.0.1:8080": CLOSED}


# -- the stack ------------------------------------------------------------------------------------------------------

def test_a_dead_service_is_refused_at_once_after_its_breaker_opens():
    stack = make_stack(services=(Service(22, "127.0.0.1", 22, "SSH"),), breaker_failures=3, breaker_cooldown=30)
    for i in range(3):
        client = Client(stack, port=41000 + i)
        client.syn(i)
        (connect,) = of_type(stack.take_events(), ServiceConnect)
        stack.service_failed(connect.conn_id, "direct: connection refused", 10 + i, refusal.RESET,
                             ((0, "direct: connection refused"),))
        assert [s.flags for s in client.receive()] == [tcp.RST | tcp.ACK]
    events = stack.take_events()
    assert of_type(events, BreakerChange) == [BreakerChange("127.0.0.1:22", OPEN, 3, "direct: connection refused")]
    client = Client(stack, port=41010)
    client.syn(100)
    assert of_type(stack.take_events(), ServiceConnect) == []        # no connect attempt at all
    (rst,) = client.receive()
    assert rst.flags == tcp.RST | tcp.ACK and rst.ack == 1001
    assert stack.flows_refused[CAUSE_SERVICE] == 4 and stack.connections_active == 0
    # After the cooldown one SYN is the trial; it connects and the service is back.
    client = Client(stack, port=41011)
    client.syn(30012)
    events = stack.take_events()
    (connect,) = of_type(events, ServiceConnect)
    assert [c.state for c in of_type(events, BreakerChange)] == [HALF_OPEN]
    other = Client(stack, port=41012)
    other.syn(30013)                       # during the trial: refused at once
    assert [s.flags for s in other.receive()] == [tcp.RST | tcp.ACK]
    stack.service_connected(connect.conn_id, 30020)
    assert [c.state for c in of_type(stack.take_events(), BreakerChange)] == [CLOSED]
    assert stack.policy.breakers == {"127.0.0.1:22": CLOSED}


def test_a_connection_to_a_fallback_keeps_that_target_as_its_route():
    stack = make_stack(services=(SSH2,))
    client = Client(stack)
    client.syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    assert connect.route.targets == SSH2.targets
    stack.service_connected(connect.conn_id, 5, 1, ((0, "direct: connection refused"),))
    client.receive()
    client.send(tcp.ACK, now=6)
    (log,) = of_type(stack.take_events(), FlowLog)
    assert log.kind == "opened" and log.text == "opened 10.0.0.2:40312 -> SSH 127.0.0.1:2222"
    assert (log.route.host, log.route.port, log.route.fallback) == ("127.0.0.1", 2222, ())
    assert stack.policy.health.breakers[A].failures == 1


def test_a_client_that_goes_during_a_trial_frees_it():
    stack = make_stack(services=(Service(22, "127.0.0.1", 22, "SSH"),), breaker_failures=1, breaker_cooldown=1)
    client = Client(stack)
    client.syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_failed(connect.conn_id, "x", 1, refusal.RESET, ((0, "x"),))
    client = Client(stack, port=40400)
    client.syn(2000)
    assert stack.policy.breakers == {"127.0.0.1:22": HALF_OPEN}
    stack.take_events()
    client.send(tcp.RST, now=2001)         # the client gives up while the trial connect runs
    assert stack.connections_active == 0
    assert stack.policy.breakers == {"127.0.0.1:22": OPEN}
    Client(stack, port=40401).syn(2002)
    assert len(of_type(stack.take_events(), ServiceConnect)) == 1   # the next SYN is the trial


def test_link_down_frees_trials():
    stack = make_stack(services=(Service(22, "127.0.0.1", 22, "SSH"),), breaker_failures=1, breaker_cooldown=1)
    Client(stack).syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_failed(connect.conn_id, "x", 1, refusal.RESET, ((0, "x"),))
    Client(stack, port=40400).syn(2000)
    stack.reset(2001)
    assert stack.policy.breakers == {"127.0.0.1:22": OPEN}


# -- Connector.open_any on loopback --------------------------------------------------------------------------------

def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def test_open_any_reaches_the_first_target_that_answers(listener):
    dead = closed_port()
    index, sock, leftover, failures = Connector(timeout=5).open_any(
        [("127.0.0.1", dead), ("127.0.0.1", listener.getsockname()[1])])
    try:
        assert index == 1 and leftover == b""
        assert [(i, e.reason, e.outcome) for i, e in failures] == [(0, "connection refused", refusal.RESET)]
        conn, _ = listener.accept()
        conn.close()
    finally:
        sock.close()


def test_open_any_with_every_target_down_names_them_all():
    ports = [closed_port(), closed_port()]
    with pytest.raises(ConnectFailed) as info:
        Connector(timeout=5).open_any([("127.0.0.1", p) for p in ports])
    assert [i for i, _ in info.value.failures] == [0, 1]
    assert info.value.outcome == refusal.RESET and info.value.reason == "connection refused"


def test_open_any_shares_the_timeout_so_a_silent_target_leaves_time_for_the_next(listener):
    # A listener with a full accept queue drops further SYNs: connects to it hang (on loopback, nothing leaves).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    fillers = []
    try:
        port = silent.getsockname()[1]
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        time.sleep(0.2)
        start = time.monotonic()
        index, sock, _, failures = Connector(timeout=2).open_any(
            [("127.0.0.1", port), ("127.0.0.1", listener.getsockname()[1])])
        elapsed = time.monotonic() - start
        sock.close()
        assert index == 1
        assert 0.8 < elapsed < 1.8, elapsed
        assert failures[0][1].reason == "connect timeout (1 s)"
    finally:
        for f in fillers:
            f.close()
        silent.close()


def test_cancel_ends_open_any_without_blaming_a_target():
    import threading
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    fillers = []
    try:
        port = silent.getsockname()[1]
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        time.sleep(0.2)
        connector = Connector(timeout=10)
        threading.Timer(0.3, connector.cancel).start()
        start = time.monotonic()
        with pytest.raises(ConnectFailed) as info:
            connector.open_any([("127.0.0.1", port), ("127.0.0.1", closed_port())])
        assert time.monotonic() - start < 2
        assert info.value.reason == "cancelled" and info.value.failures == []
    finally:
        for f in fillers:
            f.close()
        silent.close()


def test_open_any_through_a_proxy_tries_the_next_target_when_the_proxy_refuses_one():
    from test_connectors import ScriptedProxy, proxy_of

    def script(self, conn):
        request = b""
        while not request.endswith(b"\r\n\r\n"):
            request += conn.recv(1)
        self.received.append(request)
        if request.startswith(b"CONNECT primary:22 "):
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\nhello")

    with ScriptedProxy(script) as proxy:
        index, sock, leftover, failures = Connector("http", proxy_of(proxy), 5).open_any(
            [("primary", 22), ("backup", 2222)])
        sock.close()
    assert (index, leftover) == (1, b"hello")
    ((failed, exc),) = failures
    assert failed == 0 and exc.outcome == refusal.ADMIN_PROHIBITED and exc.code == 403
    assert exc.hop == "http 127.0.0.1:%d" % proxy.port
    assert [r.split(b" ")[1] for r in proxy.received] == [b"primary:22", b"backup:2222"]


# -- the breakers in the metrics and the audit log ---------------------------------------------------------------

def test_breakers_are_in_the_metrics_and_the_audit_log(tmp_path):
    import json
    import random
    from pyslirp import metrics
    from pyslirp.core import Core
    from pyslirp.ppp.link import LinkConfig
    from pyslirp.runtime.audit import AuditLog, EventLog
    stack = make_stack(services=(Service(22, "127.0.0.1", 22, "SSH"), Service(80, "127.0.0.1", 8080, "web")),
                       breaker_failures=1)
    Client(stack).syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_failed(connect.conn_id, "direct: connection refused", 1, refusal.RESET,
                         ((0, "direct: connection refused"),))
    Client(stack, port=40400).syn(2)                 # refused at once: the breaker is open
    core = Core(LinkConfig(), stack.config, random.Random(1), stack=stack)
    snap = metrics.collect(core, 3)
    text = metrics.render_text(snap)
    assert '# TYPE pyslirp_service_breaker_open gauge' in text
    assert 'pyslirp_service_breaker_open{target="127.0.0.1:22"} 1\n' in text
    assert 'pyslirp_service_breaker_open{target="127.0.0.1:8080"} 0\n' in text
    assert 'pyslirp_service_breaker_transitions_total{state="open"} 1\n' in text
    assert 'pyslirp_connections_refused_total{reason="service_down"} 2\n' in text
    changes = of_type(stack.take_events(), BreakerChange)
    path = str(tmp_path / "audit.jsonl")
    log = EventLog(AuditLog(path))
    for change in changes:
        log.breaker(change)
    log.audit.close()
    with open(path) as f:
        (record,) = [json.loads(line) for line in f]
    assert (record["event"], record["target"], record["state"], record["failures"], record["reason"]) == \
        ("breaker", "127.0.0.1:22", "open", 1, "direct: connection refused")


# -- Connector.open_at_once: a connect begun by a thread that must not wait ----------------------------------------

def silent_port(fillers):
    """A loopback listener whose accept queue (one place) is full, so its SYNs are dropped: (listener, port)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    port = silent.getsockname()[1]
    fillers.append(socket.create_connection(("127.0.0.1", port), timeout=2))
    return silent, port


def test_open_at_once_to_a_loopback_listener_is_connected_without_waiting(listener):
    connector = Connector(timeout=5)
    result = connector.open_at_once([("127.0.0.1", listener.getsockname()[1]), ("127.0.0.1", closed_port())])
    assert result is not None
    index, sock, leftover, failures = result
    try:
        assert (index, leftover, failures) == (0, b"", [])
        conn, _ = listener.accept()
        sock.sendall(b"hi")
        assert conn.recv(2) == b"hi"
        conn.close()
        with pytest.raises(RuntimeError):
            connector.open_any([("127.0.0.1", listener.getsockname()[1])])      # decided: nothing to carry on
    finally:
        sock.close()


def test_open_at_once_refused_with_no_fallback_fails_at_once():
    with pytest.raises(ConnectFailed) as info:
        Connector(timeout=5).open_at_once([("127.0.0.1", closed_port())])
    assert info.value.reason == "connection refused" and info.value.outcome == refusal.RESET
    assert [i for i, _ in info.value.failures] == [0]


def test_open_at_once_refused_leaves_the_fallbacks_to_open_any(listener):
    connector = Connector(timeout=5)
    targets = [("127.0.0.1", closed_port()), ("127.0.0.1", listener.getsockname()[1])]
    assert connector.open_at_once(targets) is None
    index, sock, _, failures = connector.open_any(targets)
    sock.close()
    assert index == 1 and [(i, e.reason) for i, e in failures] == [(0, "connection refused")]


def test_open_at_once_in_progress_is_carried_on_by_open_any_with_the_same_socket():
    fillers = []
    silent, port = silent_port(fillers)
    try:
        connector = Connector(timeout=10)
        assert connector.open_at_once([("127.0.0.1", port)]) is None      # the SYN was dropped: in progress
        conn = silent.accept()[0]                                           # room in the queue again
        conn.close()
        start = time.monotonic()
        index, sock, _, failures = connector.open_any([("127.0.0.1", port)])
        try:
            assert index == 0 and failures == []
            assert time.monotonic() - start < 5        # the SYN's retransmission (1 s) was answered
            # The connect begun at once is the one that completed: the queue holds it, and no second one.
            peers = []
            silent.setblocking(False)
            while True:
                try:
                    c, addr = silent.accept()
                except BlockingIOError:
                    break
                peers.append(addr)
                c.close()
            assert sock.getsockname() in peers
            assert len([p for p in peers if p == sock.getsockname()]) == 1
        finally:
            sock.close()
    finally:
        for f in fillers:
            f.close()
        silent.close()


def test_open_at_once_in_progress_then_cancelled_closes_its_socket():
    fillers = []
    silent, port = silent_port(fillers)
    try:
        connector = Connector(timeout=10)
        before = len(os.listdir("/proc/self/fd"))
        assert connector.open_at_once([("127.0.0.1", port)]) is None
        assert len(os.listdir("/proc/self/fd")) == before + 1              # the socket connecting
        connector.cancel()
        with pytest.raises(ConnectFailed) as info:
            connector.open_any([("127.0.0.1", port)])
        assert info.value.reason == "cancelled"
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        for f in fillers:
            f.close()
        silent.close()


def test_open_at_once_leaves_names_and_proxies_to_open_any():
    assert Connector(timeout=5).open_at_once([("localhost", closed_port())]) is None
    proxy = SimpleNamespace(host="127.0.0.1", port=closed_port(), username="", password="")
    assert Connector("socks5", proxy, 5).open_at_once([("127.0.0.1", closed_port())]) is None
