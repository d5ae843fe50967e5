"""A line cut the keepalive does not notice: the Core probes the silent line under a backed-off flow and, when
the line carries again, the flow retransmits at once instead of after its backed-off timer (core.py, "A silent
line under a stalled flow").  A probe answered at once shows the line carries: the flow's losses are its noise,
so the backoff is undone and the next few timeouts keep the estimate's RTO (conn.py, "A noisy line"); after them,
and for a client whose TCP never answers, RFC 6298 5.5's doubling and the give-up as before."""

from pyslirp.core import PROBE_MS
from pyslirp.testing.compliance import ACK, PSH, Script, default_core


def cut_mid_transfer(restore_at):
    s = Script(default_core())
    s.establish()
    s.service_send(bytes(100), at=100)
    s.expect(ACK | PSH, by=110, seq=1, length=100)
    s.peer.answer_echoes = False                # the line is cut: nothing comes back
    lost = s.drain(restore_at)
    retransmissions = [t for t, seg in lost if seg.payload]
    s.peer.answer_echoes = True                 # restored
    return s, retransmissions


def test_a_restored_line_gets_the_retransmission_within_a_probe_interval():
    s, before = cut_mid_transfer(10000)
    # Backed off during the cut: 200, 400, 800, 1600, 3200 ms ... so the next timer is far off.
    gaps = [b - a for a, b in zip(before, before[1:])]
    assert len(before) >= 4 and all(b > a for a, b in zip(gaps, gaps[1:])), before
    assert s.core.probes >= 3                   # the silent line was probed about once a second
    seg = s.expect(ACK | PSH, by=10000 + PROBE_MS + 50, seq=1, length=100, what="retransmission")
    assert seg is not None and s.last_time() - 10000 <= PROBE_MS + 50
    # The client acknowledges: the flow goes on with a fresh timer.
    s.inject(ACK, at=s.last_time() + 10, ack=101)
    assert not s.core.stack.stalled()


def test_without_the_probe_reply_the_backoff_would_have_waited_much_longer():
    s, before = cut_mid_transfer(10000)
    rto = s.core.stack.get_timer()
    assert rto is not None and rto - s.t0 > 10000 + PROBE_MS + 50   # what the probe saves


def _never_acknowledged(until):
    """The client's pppd answers echoes, its TCP never answers: the data segment's transmission times."""
    s = Script(default_core())
    s.establish()
    s.service_send(bytes(100), at=100)
    s.expect(ACK | PSH, by=110, seq=1, length=100)
    return s, [t for t, seg in s.drain(until) if seg.payload]


def test_a_promptly_answered_probe_makes_the_next_timeouts_linear():
    from pyslirp.net.tcp.conn import TcpConfig
    linear = TcpConfig().linear_timeouts
    s, times = _never_acknowledged(60000)
    gaps = [b - a for a, b in zip(times, times[1:])]
    rto = gaps[1]
    # The first timeout doubled the timer; the answered probe undid that (conn.py "A noisy line"): the next
    # ``linear`` expiries keep the estimate's RTO ...
    assert gaps[1:1 + linear] == [rto] * linear, times
    # ... then the timer backs off again as RFC 6298 5.5 says; the flow stayed stalled, the line known to carry:
    # no second probe.
    after = gaps[1 + linear:]
    assert len(after) >= 4 and all(b == 2 * a for a, b in zip(after, after[1:])) and after[0] == 2 * rto, times
    assert s.core.probes == 1


def test_the_linear_timeouts_do_not_count_towards_the_give_up():
    from pyslirp.net.tcp.conn import TcpConfig
    cfg = TcpConfig()
    s, times = _never_acknowledged(30 * 60 * 1000)
    # Without the linear ones the segment goes max_retries times, then the RST; they come on top.
    assert len(times) == cfg.max_retries + cfg.linear_timeouts, times
    assert not s.core.stack.stalled() and not s.core.stack._conns


def test_an_acknowledgement_ends_the_episode_and_the_next_loss_starts_afresh():
    s = Script(default_core())
    s.establish()
    s.service_send(bytes(100), at=100)
    s.expect(ACK | PSH, by=110, seq=1, length=100)
    first = [t for t, seg in s.drain(1500) if seg.payload]
    assert len(first) >= 4                      # retransmitted at the estimate's RTO after the answered probe
    # Still a stalled flow for the Core (each timeout tells the link, whose VJ and Deflate resynchronise).
    assert s.core.stack.stalled()
    s.inject(ACK, at=1500, ack=101)
    conn = next(iter(s.core.stack._conns.values())).conn
    assert not conn.backed_off
    s.service_send(bytes(100), at=3100)
    s.expect(ACK | PSH, by=3110, seq=101, length=100)
    times = [t for t, seg in s.drain(4500) if seg.payload]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Karn's rule would have kept a backoff: there is none to keep, and on this line (it answered the probe a
    # moment ago) the next loss keeps the estimate's RTO from its first expiry on.
    rto = first[2] - first[1]
    assert times and times[0] - 3100 == rto, (first, times)
    assert gaps and set(gaps) == {rto}, times


def _data_times(h, start, until):
    """Transmission times of data segments while the harness runs to ``until``, one timer at a time."""
    times = []
    while True:
        t = h.conn.get_timer()
        if t is None or t > until:
            break
        h.advance(t)
        times += [h.now for s in h.recv(at=h.now) if s.payload]
    return times


def test_the_line_stays_noisy_for_a_while_then_the_doubling_is_back():
    from test_tcp_harness import ACK, Conn, TcpConfig
    from pyslirp.net.tcp.conn import NOISY_LINE_MS
    h = Conn(config=TcpConfig())
    h.conn.send(bytes(100), h.now)
    sent = [s for s in h.recv(at=h.now) if s.payload]
    t0 = h.now
    first = _data_times(h, t0, t0 + 300)        # one expiry: doubled
    assert len(first) == 1 and h.conn.backed_off
    assert h.conn.line_answers(h.now)           # the Core's probe was answered
    h.send(ACK, ack=seq_end(sent[0]), at=h.now + 50)
    assert not h.conn.backed_off
    rto = h.conn._rtt.rto
    # A second loss 5 s later, inside NOISY_LINE_MS: its very first expiry keeps the RTO, Karn's kept doubling
    # was dropped with the ACK.
    h.advance(h.now + 5000)
    h.conn.send(bytes(100), h.now)
    again = [s for s in h.recv(at=h.now) if s.payload]
    t1 = h.now
    times = _data_times(h, t1, t1 + 3 * rto + 1)
    assert [b - a for a, b in zip([t1] + times, times)] == [rto] * 3, (t1, times, rto)
    h.send(ACK, ack=seq_end(again[0]), at=h.now + 10)
    # After NOISY_LINE_MS the line is not known to be noisy any more: RFC 6298's doubling again.
    h.advance(t0 + NOISY_LINE_MS + 1)
    h.conn.send(bytes(100), h.now)
    h.recv(at=h.now)
    t2 = h.now
    times = _data_times(h, t2, t2 + 10 * rto)
    gaps = [b - a for a, b in zip([t2] + times, times)]
    assert len(gaps) >= 3 and all(b == 2 * a for a, b in zip(gaps, gaps[1:])), (t2, times)


def seq_end(seg):
    return (seg.seq + len(seg.payload)) & 0xFFFFFFFF
