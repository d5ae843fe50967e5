"""TcpConnection across a link outage: suspend() and resume() (net/tcp/conn.py, "Link outages").

Segment values at explicit times; the test plays the client.  The handshake completes at t=0 with an RTT
sample of 0, so the RTO is the 200 ms minimum.
"""

from test_tcp_harness import (ACK, CLIENT_ISS, FIN, OUR_ISS, RST, Conn, TcpConfig, TcpState, data_segs,
                              pattern, seq_add)
from pyslirp.net.tcp.congestion import initial_window
from pyslirp.net.tcp.events import CLOSED, RESET, TIMED_OUT, WRITABLE

C1 = CLIENT_ISS + 1
S1 = OUR_ISS + 1
MSS = 1460


def test_a_suspended_connection_sends_nothing_and_never_gives_up():
    h = Conn(config=TcpConfig(max_retries=3))
    h.conn.send(b"hello", h.now)
    assert [s.payload for s in h.recv(at=10)] == [b"hello"]
    assert h.conn.get_timer() == 210
    h.conn.suspend(50)
    assert h.conn.suspended
    assert h.conn.get_timer() is None               # no retransmission, no give-up
    assert h.recv(at=10 * 60 * 1000) == []         # ten minutes: nothing, and still established
    assert h.conn.state is TcpState.ESTABLISHED and h.conn.take_events() == []
    assert h.conn.retransmits == 0 and h.conn.rto_count == 0
    assert not h.conn.pending_output


def test_resume_resends_what_was_in_flight_at_once_without_backoff():
    h = Conn(config=TcpConfig(max_retries=3))
    data = pattern(2 * MSS)
    h.conn.send(data, h.now)
    out = h.recv(at=10)
    assert [len(s.payload) for s in out] == [MSS, MSS]
    # Two RTOs before the loss was noticed: the RTO has backed off to 800 ms.
    assert len(h.recv(at=210)) == 1 and len(h.recv(at=610)) == 1
    assert h.conn.rto == 800
    h.conn.suspend(700)
    t = 700 + 90 * 1000
    h.conn.resume(t)
    assert not h.conn.suspended and h.conn.rto == 200
    out = h.recv(at=t)
    assert out and out[0].seq == S1 and out[0].payload == data[:MSS]   # go-back-N from SND.UNA, now
    # The restart window (RFC 5681 4.1): cwnd is back at the initial window, ssthresh untouched.
    assert h.conn.cwnd <= initial_window(MSS)
    # The give-up count starts over: max_retries (3) more expiries, at 200, 400, 800 ms, before an RST.
    assert h.conn.get_timer() == t + 200
    for gap in (200, 400, 800):
        t += gap
        assert h.recv(at=t - 1) == []
        assert [s.seq for s in h.recv(at=t)] == [S1]
    out = h.recv(at=t + 1600)
    assert [s.flags for s in out] == [RST | ACK]
    assert h.conn.take_events() == [TIMED_OUT, CLOSED]


def test_the_client_acks_after_resume_and_the_transfer_completes_intact():
    h = Conn()
    data = pattern(20000, seed=3)
    h.conn.send(data[:10000], h.now)
    first = h.recv(at=10)
    h.ack_all(first[:1], at=20)                     # one segment arrived before the line went
    h.conn.take_events()
    h.conn.suspend(30)
    assert h.conn.send(data[10000:], 40) == 10000   # the service still queues within send_space
    h.conn.resume(60000)
    t = 60000
    while len(h.received) < len(data):
        out = data_segs(h.recv(at=t))
        assert out, "stalled at %d of %d bytes" % (len(h.received), len(data))
        h.ack_all(out, at=t + 5)
        t += 10
    assert bytes(h.received) == data


def test_resume_with_nothing_in_flight_probes_and_a_forgetful_client_resets():
    h = Conn()
    h.conn.suspend(100)
    h.conn.resume(5000)
    probe, = h.recv(at=5000)
    assert probe.flags == ACK and probe.seq == seq_add(S1, -1) and not probe.payload and probe.ack == C1
    # A client that rebooted knows nothing of the connection and answers with a reset at our ACK field.
    h.send(RST, seq=C1, ack=0, at=5010)
    assert h.conn.take_events() == [RESET, CLOSED]


def test_the_client_answering_the_probe_keeps_the_connection():
    h = Conn()
    h.conn.suspend(100)
    h.conn.resume(5000)
    h.recv(at=5000)
    h.send(ACK, at=5010)
    assert h.conn.state is TcpState.ESTABLISHED
    h.conn.send(b"after", h.now)
    assert [s.payload for s in h.recv(at=5020)] == [b"after"]


def test_data_from_the_client_after_resume_is_delivered():
    h = Conn()
    h.conn.suspend(100)
    h.conn.resume(5000)
    h.recv(at=5000)
    h.send(ACK, payload=b"typed while down", at=5010)   # the client's own retransmission
    assert h.conn.read() == b"typed while down"


def test_time_wait_still_runs_out_while_suspended():
    h = Conn(config=TcpConfig(msl_ms=1000))
    h.conn.shutdown(h.now)
    fin, = h.recv(at=10)
    h.ack_all([fin], at=20)
    h.send(FIN | ACK, at=30)
    assert h.conn.state is TcpState.TIME_WAIT
    h.conn.suspend(40)
    assert h.conn.get_timer() == 30 + 2000
    h.advance(2030)
    assert h.conn.state is TcpState.CLOSED and CLOSED in h.conn.take_events()


def test_other_timers_pause_and_keepalive_restarts_from_the_resumption():
    h = Conn(config=TcpConfig(keepalive=10, keepalive_probes=1))
    assert h.conn.get_timer() == 10000
    h.conn.suspend(5000)
    h.advance(60000)
    assert h.conn.state is TcpState.ESTABLISHED and h.conn.keepalives_sent == 0
    h.conn.resume(60000)
    h.recv(at=60000)                                # the resumption's probe
    assert h.conn.get_timer() == 70000


def test_a_synack_lost_with_the_link_is_sent_again_on_resume():
    h = Conn(establish=False)
    h.conn.accept(0)
    assert len(h.recv(at=0)) == 1
    h.conn.suspend(100)
    assert h.recv(at=50000) == []
    h.conn.resume(50000)
    out = h.recv(at=50000)
    assert [s.flags & (0x02 | ACK) for s in out] == [0x02 | ACK] and out[0].seq == OUR_ISS


def test_a_pending_connection_sends_nothing_before_accept_even_after_resume():
    h = Conn(establish=False)
    h.conn.suspend(10)
    h.conn.accept(20)                               # the service connected while the link was down
    assert h.recv(at=30) == []
    h.conn.resume(40)
    out = h.recv(at=40)
    assert len(out) == 1 and out[0].seq == OUR_ISS   # the SYN-ACK, only now


def test_resume_never_sends_segments_larger_than_the_new_link_carries():
    h = Conn()
    data = pattern(4000, seed=9)
    h.conn.send(data, h.now)
    h.recv(at=10)
    h.conn.suspend(20)
    h.conn.resume(3000, mss_limit=536)
    assert h.conn.send_mss == 536
    t = 3000
    while len(h.received) < len(data):
        out = data_segs(h.recv(at=t))
        assert out and all(len(s.payload) <= 536 for s in out)
        h.ack_all(out, at=t + 1)
        t += 10
    assert bytes(h.received) == data


def test_a_zero_window_client_is_probed_on_resume():
    h = Conn()
    h.conn.send(pattern(2000), h.now)
    out = h.recv(at=10)
    h.ack_all(out[:1], at=20)
    h.send(ACK, window=0, at=30)                    # its window closed with data in flight
    h.conn.suspend(40)
    h.conn.resume(9000)
    out = h.recv(at=9000)
    assert any(s.seq == seq_add(h.cack, -1) and not s.payload for s in out)


def test_suspend_and_resume_are_idempotent_and_ignore_closed_connections():
    h = Conn()
    h.conn.resume(10)                               # not suspended: nothing happens
    assert h.recv(at=10) == []
    h.conn.suspend(20)
    h.conn.suspend(30)
    h.conn.abort(40)                                # its RST could never arrive: not even queued
    assert h.conn.take_events() == [CLOSED]
    h.conn.resume(50)
    assert h.recv(at=50) == [] and h.conn.counters["suspended"] == 1


def test_the_send_buffer_stays_bounded_while_suspended():
    h = Conn(config=TcpConfig(sndbuf=8192))
    h.conn.suspend(0)
    taken = sum(h.conn.send(b"z" * 4096, 10 + i) for i in range(10))
    assert taken == 8192 and h.conn.send_space == 0
    assert WRITABLE not in h.conn.take_events()


def test_resume_restarts_the_congestion_window_but_keeps_ssthresh():
    h = Conn()
    data = pattern(60000, seed=5)
    h.conn.send(data, h.now)
    t = 10
    for _ in range(3):                              # three rounds of slow start
        h.ack_all(data_segs(h.recv(at=t)), at=t + 5)
        t += 10
    h.recv(at=t)
    grown, ssthresh = h.conn.cwnd, h.conn.ssthresh
    assert grown > initial_window(MSS)
    h.conn.suspend(t)
    h.conn.resume(t + 30000)
    assert h.conn.cwnd == initial_window(MSS) and h.conn.ssthresh == ssthresh
