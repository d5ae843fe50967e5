"""Fuzz the connection in every state with random segments, timer runs and service calls.

Invariants (whatever the input): no exception; every emitted segment is valid on the wire and fits
the MSS; data segments stay within [SND.UNA, SND.MAX]; the advertised right edge never moves left;
buffers stay bounded; Closed comes at most once and is the last event; a closed connection stays
silent.
"""

import random

import pytest
from hypothesis import given, settings, strategies as st

from test_tcp_harness import (ACK, FIN, PSH, RST, SYN, Conn, TcpConfig, TcpRepr, TcpState, seq_add,
                              seq_sub)
from pyslirp.net.tcp.events import CLOSED

FLAGS = [ACK, ACK | PSH, ACK | FIN, RST, RST | ACK, SYN, SYN | ACK, FIN, 0, ACK | FIN | PSH]


def _reach(state, rng):
    """A connection brought to ``state`` by a scripted client."""
    cfg = TcpConfig(rcvbuf=rng.choice([3000, 20000, 70000]), sndbuf=rng.choice([2000, 30000]),
                    keepalive=rng.choice([0, 3]), msl_ms=2000, max_retries=4)
    h = Conn(config=cfg, sack=rng.random() < 0.5, ts=rng.choice([None, 50]),
             wscale=rng.choice([None, 0, 5]), establish=state != "SYN_RECEIVED")
    if state == "SYN_RECEIVED":
        h.conn.accept(0)
        h.recv(at=0)
        return h
    h.conn.send(b"s" * 500, h.now)
    out = h.recv(at=1)
    if state in ("FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "TIME_WAIT"):
        h.conn.shutdown(2)
        out += h.recv(at=2)
        if state == "FIN_WAIT_2":
            h.ack_all(out, at=3)
        elif state == "CLOSING":
            h.send(ACK | FIN, at=3)
        elif state == "TIME_WAIT":
            h.ack_all(out, at=3)
            h.send(ACK | FIN, at=4)
    elif state in ("CLOSE_WAIT", "LAST_ACK"):
        h.send(ACK | FIN, at=3)
        if state == "LAST_ACK":
            h.conn.shutdown(4)
            h.recv(at=4)
    assert h.conn.state.value == state, (h.conn.state, state)
    return h


STATES = ["SYN_RECEIVED", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "TIME_WAIT",
          "CLOSE_WAIT", "LAST_ACK"]


def _random_segment(h, rng):
    conn = h.conn
    flags = rng.choice(FLAGS)
    seq = seq_add(conn.rcv_nxt, rng.choice([0, 0, 0, -1, 1, rng.randrange(-70000, 70000),
                                            conn.rcv_wnd, rng.randrange(0, max(1, conn.rcv_wnd + 1))]))
    ack = seq_add(conn.snd_una, rng.choice([0, 0, 1, -1, rng.randrange(-70000, 70000),
                                           seq_sub(conn.snd_max, conn.snd_una),
                                           rng.randrange(0, max(1, seq_sub(conn.snd_max, conn.snd_una) + 1))]))
    payload = b"p" * rng.choice([0, 0, 1, 100, 1460, 3000])
    kw = {}
    if rng.random() < 0.3:
        kw["sack_blocks"] = ((seq_add(conn.snd_una, rng.randrange(-5000, 5000)),
                              seq_add(conn.snd_una, rng.randrange(-5000, 5000))),)
    ts = None
    if h.ts is not None and rng.random() < 0.9:
        ts = (h.ts + h.now + rng.choice([0, 0, -100000, 5]), rng.getrandbits(32))
    return TcpRepr(40000, 22, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, rng.randrange(0, 0x10000),
                   timestamp=ts, payload=payload, **kw)


@pytest.mark.parametrize("state", STATES)
@settings(derandomize=True, deadline=None, max_examples=40)
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_random_input_keeps_invariants(state, seed):
    rng = random.Random(seed)
    h = _reach(state, rng)
    conn = h.conn
    cfg = conn.config
    ws = conn.rcv_wscale
    edge = conn.rcv_adv
    events = []
    for step in range(60):
        h.now += rng.choice([0, 1, 10, 150, 900])
        action = rng.random()
        if action < 0.55:
            conn.receive(_random_segment(h, rng), h.now)
        elif action < 0.65:
            conn.send(b"d" * rng.choice([1, 700, 5000]), h.now)
        elif action < 0.72:
            conn.consumed(len(conn.read()) + rng.randrange(0, 3000), h.now)
        elif action < 0.75:
            conn.shutdown(h.now)
        elif action < 0.76:
            conn.abort(h.now)
        else:
            t = conn.get_timer()
            if t is not None:
                h.now = max(h.now, t)
                conn.handle_timer(h.now)
        closed_before = CLOSED in events
        out = conn.take_segments(rng.choice([-1, -1, 0, 1000]), h.now)
        events += conn.take_events()
        if closed_before:
            assert out == [] and conn.get_timer() is None
        for s in out:
            back = TcpRepr.parse(s.emit(h.conn.local_ip, h.conn.remote_ip), h.conn.local_ip,
                                 h.conn.remote_ip)
            assert back == s
            assert len(s.payload) + len(s.options_bytes()) <= conn.send_mss
            if s.payload:
                assert seq_sub(s.seq, conn.snd_una) >= -len(s.payload)
                assert seq_sub(seq_add(s.seq, len(s.payload)), conn.snd_max) <= 0
            if not s.flags & RST and s.flags & ACK and not s.flags & SYN:
                new_edge = seq_add(s.ack, s.window << ws)
                assert seq_sub(new_edge, edge) >= 0
                edge = new_edge
        # Bounded memory: the receive side by the buffer (plus the window-scaling round-up).
        assert len(conn._tx) <= cfg.sndbuf
        assert len(conn._rx) + conn._rx_unconsumed + len(conn._ooo) <= cfg.rcvbuf + (1 << ws)
        assert len(conn._events) == 0
    if CLOSED in events:
        assert events.count(CLOSED) == 1 and events[-1] == CLOSED
        assert conn.state is TcpState.CLOSED
