"""SACK-driven loss recovery on a path that never reorders (``conn.dup_thresh`` 1, set by the stack on a slow line):
every hole goes at once, a lone SACK is a loss, a lost retransmission starts a new round, and the head's
retransmission restarts the timer.  Segment values at explicit times; the test plays the client."""

from test_tcp_harness import ACK, Conn, TcpConfig, pattern, seq_add
from test_latency import RATE, Client, make_stack, parse
from pyslirp.net import stack as stack_mod
from pyslirp.net.tcp.conn import DUP_THRESH
from pyslirp.wire import tcp

MSS = 1460


def _grow(h, rounds, t):
    for _ in range(rounds):
        for s in h.recv(at=t):
            t += 1
            h.send(ACK, ack=seq_add(s.seq, len(s.payload)), at=t)
    return t


def _flight(n_rounds=2):
    """A SACK connection with a cwnd of 12 segments and 12 segments in flight: (harness, segments, time)."""
    h = Conn(sack=True, config=TcpConfig(sndbuf=200000))
    h.conn.dup_thresh = 1
    h.conn.send(pattern(150000), h.now)
    t = _grow(h, n_rounds, 10)
    out = [s for s in h.recv(at=t) if s.payload]
    assert len(out) == 12
    return h, out, t


def blocks(segs, *ranges):
    """SACK blocks covering segments [a, b) of ``segs`` for each (a, b)."""
    return tuple((segs[a].seq, seq_add(segs[b - 1].seq, MSS)) for a, b in ranges)


def test_every_hole_below_the_highest_sack_is_retransmitted_at_once():
    h, segs, t = _flight()
    # 0, 2 and 4 are lost; the first duplicate ACK already tells of all three holes.
    h.send(ACK, ack=segs[0].seq, sack_blocks=blocks(segs, (5, 12), (3, 4), (1, 2)), at=t + 5)
    out = h.recv(at=t + 5)
    assert [s.seq for s in out[:3]] == [segs[0].seq, segs[2].seq, segs[4].seq]
    assert h.conn.in_recovery and h.conn.fast_retransmits == 1 and h.conn.retransmits == 3
    # RFC 6675: pipe = 12 in flight - 9 SACKed (+ the 3 retransmissions) stays within ssthresh (6 segments).
    new = [s for s in out[3:] if s.payload]
    assert len(new) == 6 - 3 and new[0].seq == seq_add(segs[11].seq, MSS)
    # Nothing is sent twice while the holes are in flight.
    h.send(ACK, ack=segs[0].seq, sack_blocks=blocks(segs, (5, 12), (3, 4), (1, 2)), at=t + 6)
    assert [s for s in h.recv(at=t + 6) if s.payload and s.seq in (segs[0].seq, segs[2].seq, segs[4].seq)] == []
    # The retransmissions arrive: the ACK moves past every hole and recovery ends.
    h.send(ACK, ack=seq_add(new[-1].seq, MSS), at=t + 50)
    assert not h.conn.in_recovery


def test_without_the_serial_line_rule_three_duplicates_are_needed_as_before():
    h, segs, t = _flight()
    h.conn.dup_thresh = DUP_THRESH
    h.send(ACK, ack=segs[0].seq, sack_blocks=blocks(segs, (1, 2)), at=t + 5)
    assert all(s.seq != segs[0].seq for s in h.recv(at=t + 5))
    assert h.conn.fast_retransmits == 0


def test_the_heads_retransmission_restarts_the_timer():
    h, segs, t = _flight()
    armed = h.conn.get_timer()
    later = armed - 5                                  # the original timer is nearly out
    h.send(ACK, ack=segs[0].seq, sack_blocks=blocks(segs, (1, 12)), at=later)
    out = h.recv(at=later)
    assert out[0].seq == segs[0].seq
    assert h.conn.get_timer() == later + h.conn.rto
    h.advance(armed + 1)
    assert h.conn.rto_count == 0


def test_an_ack_that_moves_una_but_shows_a_hole_starts_recovery():
    h, segs, t = _flight()
    # Segment 0 arrived, 1 did not, 2.. did: a new cumulative ACK, not a duplicate, with a SACK block.
    h.send(ACK, ack=segs[1].seq, sack_blocks=blocks(segs, (2, 12)), at=t + 5)
    out = h.recv(at=t + 5)
    assert out and out[0].seq == segs[1].seq and h.conn.fast_retransmits == 1


def test_a_lost_retransmission_starts_a_new_round_without_waiting_for_the_timer():
    h, segs, t = _flight()
    h.send(ACK, ack=segs[0].seq, sack_blocks=blocks(segs, (1, 12)), at=t + 5)
    out = h.recv(at=t + 5)
    assert out[0].seq == segs[0].seq
    new = [s for s in out[1:] if s.payload]
    assert new                                          # data first sent after the retransmission
    # The retransmission is lost too; the segment after it arrives (no reordering: the retransmission is gone).
    top = seq_add(new[0].seq, len(new[0].payload))
    h.send(ACK, ack=segs[0].seq, sack_blocks=((segs[1].seq, top),), at=t + 200)
    out = h.recv(at=t + 200)
    assert out and out[0].seq == segs[0].seq
    assert h.conn.lost_retransmits == 1 and h.conn.rto_count == 0


def test_a_slow_line_sets_the_serial_rule_and_a_loss_shortens_bulk_segments_for_a_while():
    stack = make_stack(rate=RATE)
    bulk = Client(stack, 40001)
    conn = bulk.conn
    assert conn.dup_thresh == 1 and conn.segment_limit is None
    stack.service_data(bulk.conn_id, pattern(60000), 10)
    out = [parse(p) for _, p in stack.take_packets(20000, allow_one_over=True)]
    out = [s for s in out if s.payload]
    assert len(out) >= 3 and max(len(s.payload) for s in out) == MSS
    bulk.deliver(out[0], 20)
    # Segment 1 is lost: the client's ACK SACKs segment 2.
    bulk.send(tcp.ACK, now=30, sack_blocks=((out[2].seq, (out[2].seq + len(out[2].payload)) & 0xFFFFFFFF),))
    assert conn.fast_retransmits == 1
    short = int(RATE * stack_mod.SEGMENT_TIME) - 40
    assert conn.segment_limit == short
    sizes = [len(parse(p).payload) for _, p in stack.take_packets(20000, allow_one_over=True)]
    assert sizes and max(sizes) <= short
    # Everything arrives; LOSSY_HOLD without another loss: full segments again.
    bulk.ack = conn.snd_max
    bulk.send(tcp.ACK, now=40)
    assert not conn.in_recovery
    later = 30 + stack_mod.LOSSY_HOLD + 1
    stack.handle_timer(later)
    stack._now = later
    stack.take_packets(0)
    assert conn.segment_limit is None


def test_a_fast_line_keeps_three_duplicates_and_full_segments():
    stack = make_stack(rate=stack_mod.SLOW_LINE)
    bulk = Client(stack, 40001)
    assert bulk.conn.dup_thresh == DUP_THRESH


def test_a_dsack_is_no_duplicate_ack_on_a_serial_line():
    # The client got a segment twice (a spurious retransmission of ours) and says so at once: an ACK at SND.UNA
    # whose first SACK block lies below it (RFC 2883 D-SACK).  Counted as the one duplicate ACK a serial line
    # needs, it resent the head of the flight, whose duplicate brought the next D-SACK: through the real pppd a
    # two-way transfer sent every other segment twice for its whole length, once the first spurious
    # retransmission had happened.  It retransmits nothing now.
    h, segs, t = _flight()
    assert h.conn.snd_una == segs[0].seq
    dup = (seq_add(segs[0].seq, -MSS), segs[0].seq)
    h.send(ACK, ack=segs[0].seq, sack_blocks=(dup,), at=t + 5)
    assert [s for s in h.recv(at=t + 5) if s.payload and s.seq == segs[0].seq] == []
    assert h.conn.fast_retransmits == 0 and not h.conn.in_recovery
    # A plain duplicate ACK still is a loss on such a path.
    h.send(ACK, ack=segs[0].seq, at=t + 7)
    assert [s.seq for s in h.recv(at=t + 7) if s.payload][:1] == [segs[0].seq]
    assert h.conn.fast_retransmits == 1


def _streaming(reack_ms):
    h = Conn(sack=True, mss=536)
    h.conn.reack_ms = reack_ms
    for i in range(4):
        h.send(ACK, payload=pattern(536, i), at=10 * i)
    acks = h.recv(at=40)
    assert acks and acks[-1].ack == h.cseq and not acks[-1].payload
    return h


def test_a_streaming_client_that_falls_silent_gets_our_latest_ack_again():
    # Its window all in flight, a client whose ACK was lost on the line waits for its retransmission timer;
    # the same ACK again after reack_ms of silence lets it go on (conn.py "Acknowledgements again").
    h = _streaming(150)
    assert h.recv(at=40 + 149) == []
    again = h.recv(at=40 + 150)
    assert [(s.ack, len(s.payload)) for s in again] == [(h.cseq, 0)] and h.conn.reacks == 1
    # Once: nothing more while the client stays silent.
    assert h.recv(at=2000) == [] and h.conn.reacks == 1


def test_no_ack_again_when_the_client_goes_on_or_without_reack_ms():
    h = _streaming(150)
    h.send(ACK, payload=pattern(536, 9), at=100)        # the client is not silent: the timer (190) stops
    assert h.recv(at=249) == [] and h.conn.reacks == 0   # (its delayed ACK is due at 300)
    off = _streaming(None)
    assert off.recv(at=5000) == [] and off.conn.reacks == 0


def test_a_slow_line_sets_reack_ms_from_the_clients_segments():
    stack = make_stack(rate=RATE)
    conn = Client(stack, 40001).conn
    assert conn.reack_ms == max(stack_mod.MIN_REACK_MS,
                                stack_mod.REACK_SEGMENTS * 1000 * (conn.our_mss + 40) // RATE)
    assert Client(make_stack(rate=stack_mod.SLOW_LINE), 40002).conn.reack_ms is None
