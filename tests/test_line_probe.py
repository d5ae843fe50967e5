"""A line cut the keepalive does not notice: the Core probes the silent line under a backed-off flow and, when
the line carries again, the flow retransmits at once instead of after its backed-off timer (core.py, "A silent
line under a stalled flow").  A probe answered at once (the line is fine, the client's TCP is silent) changes
nothing: the backoff stays, as RFC 6298 5.5 wants."""

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


def test_a_promptly_answered_probe_keeps_the_backoff():
    s = Script(default_core())                  # the client's pppd answers echoes; its TCP never answers
    s.establish()
    s.service_send(bytes(100), at=100)
    s.expect(ACK | PSH, by=110, seq=1, length=100)
    times = [t for t, seg in s.drain(20000) if seg.payload]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) >= 3 and all(b == 2 * a for a, b in zip(gaps, gaps[1:])), times
    assert s.core.probes == 1

