"""TcpConnection data path: retransmission, recovery, SACK, windows, timestamps, ACK policy, Nagle.

Segment values at explicit times; the test plays the client.  Unless said otherwise the handshake
completes at t=0 with an RTT sample of 0, so the RTO is the 200 ms minimum.
"""

import random

from hypothesis import given, settings, strategies as st

from test_tcp_harness import (ACK, CLIENT_ISS, FIN, OUR_ISS, PSH, RST, Conn, TcpConfig, TcpState,
                              data_segs, pattern, seq_add, seq_sub)
from pyslirp.net.tcp.events import CLOSED, TIMED_OUT, WRITABLE

C1 = CLIENT_ISS + 1
S1 = OUR_ISS + 1
MSS = 1460


def sizes(segs):
    return [len(s.payload) for s in segs]


# ------------------------------------------------------------------------------ send buffer / sizing

def test_send_buffer_is_bounded_and_writable_when_acked():
    h = Conn(config=TcpConfig(sndbuf=3000))
    assert h.conn.send_space == 3000
    assert h.conn.send(b"a" * 2000, h.now) == 2000
    assert h.conn.send(b"b" * 2000, h.now) == 1000
    assert h.conn.send_space == 0 and h.conn.send(b"c", h.now) == 0
    out = h.recv(at=10)
    assert sizes(out) == [MSS, MSS]                # the 80-byte tail waits (Nagle)
    h.ack_all(out, at=20)
    assert h.conn.take_events() == [WRITABLE]
    assert h.conn.send_space == 2 * MSS
    out = h.recv(at=20)
    assert sizes(out) == [80] and out[0].flags & PSH


def test_segments_sized_to_mss_minus_timestamps_and_initial_window():
    h = Conn(ts=100)
    h.conn.send(pattern(5000), h.now)
    out = h.recv(at=10)
    assert sizes(out) == [1448, 1448, 1448]        # IW = 3 * SMSS (RFC 5681 3.1), SMSS = 1460 - 12
    assert [s.flags & PSH for s in out] == [0, 0, 0]
    h.ack_all(out, at=20)
    out = h.recv(at=20)
    assert sizes(out) == [5000 - 3 * 1448] and out[0].flags & PSH
    assert bytes(h.received) + out[0].payload == pattern(5000)


def test_client_without_mss_option_gets_536():
    h = Conn(mss=None)
    h.conn.send(b"x" * 2000, h.now)
    assert set(sizes(h.recv(at=10))) <= {536, 2000 - 3 * 536} and h.conn.send_mss == 536


# ------------------------------------------------------------------------------ retransmission

def test_retransmission_timing_backoff_and_give_up():
    h = Conn(config=TcpConfig(max_retries=3))
    assert h.conn.rto == 200
    h.conn.send(b"hello", h.now)
    first = h.recv(at=10)
    assert sizes(first) == [5]
    assert h.recv(at=209) == []
    times = []
    for t in (210, 610, 1410):
        assert h.recv(at=t - 1) == []
        out = h.recv(at=t)
        assert [(s.seq, s.payload) for s in out] == [(S1, b"hello")]
        times.append(t)
    assert h.conn.retransmits == 3 and h.conn.rto_count == 3
    assert h.recv(at=3009) == []
    out = h.recv(at=3010)
    assert [(s.flags, s.seq) for s in out] == [(RST | ACK, S1 + 5)]
    assert h.conn.take_events() == [TIMED_OUT, CLOSED]
    assert h.conn.state is TcpState.CLOSED


def test_rto_is_capped_at_max():
    h = Conn(config=TcpConfig(max_rto_ms=1000, max_retries=10))
    h.conn.send(b"x", h.now)
    h.recv(at=0)
    t = 0
    gaps = []
    for _ in range(5):
        nxt = h.conn.get_timer()
        gaps.append(nxt - t)
        t = nxt
        assert len(h.recv(at=t)) == 1
    assert gaps == [200, 400, 800, 1000, 1000]


def test_karn_no_sample_from_retransmitted_segment():
    h = Conn()
    h.conn.send(b"abc", h.now)
    h.recv(at=10)
    h.recv(at=210)                                 # retransmission
    assert h.conn.rto == 400
    h.send(ACK, ack=S1 + 3, at=300)                # ambiguous: which copy does it acknowledge?
    assert h.conn.srtt == 0 and h.conn.rto == 400  # no sample, backed-off RTO kept (RFC 6298 5.7 note)
    h.conn.send(b"def", h.now)
    h.recv(at=400)
    h.send(ACK, ack=S1 + 6, at=480)                # a fresh segment: sampled, backoff collapses
    assert h.conn.srtt == 10 and h.conn.rto == 200


def test_ack_restarts_timer_and_stops_it_when_all_acked():
    h = Conn(config=TcpConfig(nagle=False))
    h.conn.send(b"a" * 10, h.now)
    h.recv(at=0)
    h.conn.send(b"b" * 10, h.now)
    h.recv(at=50)
    assert h.conn.get_timer() == 200
    h.send(ACK, ack=S1 + 10, at=100)              # new data acked: restart (RFC 6298 5.3)
    assert h.conn.get_timer() == 100 + h.conn.rto
    h.send(ACK, ack=S1 + 20, at=120)
    assert h.conn.get_timer() is None              # 5.2


def _grow_cwnd(h, rounds, t):
    """Send and ACK segment by segment so that slow start opens the window."""
    for _ in range(rounds):
        out = h.recv(at=t)
        for s in out:
            t += 1
            h.send(ACK, ack=seq_add(s.seq, len(s.payload)), at=t)
    return t


def test_fast_retransmit_and_newreno_partial_ack():
    h = Conn(config=TcpConfig(sndbuf=200000))
    h.conn.send(pattern(100000), h.now)
    t = _grow_cwnd(h, 2, 10)
    assert h.conn.cwnd == 12 * MSS
    out = h.recv(at=t)
    assert len(out) == 12
    seg = {i: s for i, s in enumerate(out)}
    base = seg[0].seq
    # seg 0 and seg 5 are lost; 1..4 arrive: four duplicate ACKs.
    extra = []
    for i in (1, 2):
        h.send(ACK, ack=base, at=t + i)
        extra += h.recv(at=t + i)                  # limited transmit (RFC 3042): one new segment each
    assert len(data_segs(extra)) == 2 and h.conn.fast_retransmits == 0
    h.send(ACK, ack=base, at=t + 3)
    out = h.recv(at=t + 3)
    assert [(s.seq, s.payload) for s in out] == [(base, seg[0].payload)]   # fast retransmit
    assert h.conn.in_recovery and h.conn.fast_retransmits == 1
    flight = 14 * MSS
    assert h.conn.ssthresh == flight // 2 and h.conn.cwnd == flight // 2 + 3 * MSS
    h.send(ACK, ack=base, at=t + 4)                # fourth duplicate: inflation
    assert h.conn.cwnd == flight // 2 + 4 * MSS
    # The retransmission arrives: partial ACK up to the second hole.  Segment 0 was the one being
    # timed, but it was retransmitted: Karn's algorithm forbids a sample from this ACK.
    srtt = h.conn.srtt
    h.send(ACK, ack=seg[5].seq, at=t + 20)
    assert h.conn.srtt == srtt
    out = h.recv(at=t + 20)
    assert (out[0].seq, out[0].payload) == (seg[5].seq, seg[5].payload)
    assert h.conn.in_recovery and h.conn.retransmits == 2
    # Full ACK of everything sent before recovery: leave fast recovery.
    recover = h.conn.snd_max
    h.send(ACK, ack=recover, at=t + 40)
    assert not h.conn.in_recovery
    assert h.conn.cwnd <= h.conn.ssthresh


def test_three_dupacks_below_recover_do_not_retransmit_again():
    # RFC 6582 section 4: after an RTO, duplicate ACKs for the go-back retransmissions are ignored.
    h = Conn(config=TcpConfig(sndbuf=100000))
    h.conn.send(pattern(20000), h.now)
    t = _grow_cwnd(h, 1, 10)
    out = h.recv(at=t)
    base = out[0].seq
    t = h.conn.get_timer()
    h.recv(at=t)                                   # RTO
    assert h.conn.rto_count == 1
    for i in range(3):
        h.send(ACK, ack=base, at=t + 1 + i)
    h.recv(at=t + 5)
    assert h.conn.fast_retransmits == 0


def test_client_sack_blocks_avoid_retransmissions():
    def scenario(sack):
        h = Conn(sack=sack)
        h.conn.send(b"w" * MSS, h.now)
        h.ack_all(h.recv(at=10), at=20)            # cwnd 4 segments
        h.conn.send(pattern(4 * MSS), h.now)
        out = h.recv(at=30)
        assert len(out) == 4
        s0, s1, s2, s3 = out
        # The client has s1 and s3 but not s0 and s2.
        blocks1 = ((s1.seq, seq_add(s1.seq, MSS)),)
        blocks2 = ((s3.seq, seq_add(s3.seq, MSS)),) + blocks1
        h.send(ACK, ack=s0.seq, at=40, **({"sack_blocks": blocks1} if sack else {}))
        h.send(ACK, ack=s0.seq, at=41, **({"sack_blocks": blocks2} if sack else {}))
        t = h.conn.get_timer()
        out = h.recv(at=t)
        assert [s.seq for s in out] == [s0.seq]    # RTO: the head, cwnd = 1 SMSS
        h.send(ACK, ack=s2.seq, at=t + 10,
               **({"sack_blocks": ((s3.seq, seq_add(s3.seq, MSS)),)} if sack else {}))
        return [s.seq for s in h.recv(at=t + 10)], (s2.seq, s3.seq)

    sent, (s2, s3) = scenario(sack=True)
    assert sent == [s2]                            # s3 is SACKed: not sent again
    sent, (s2, s3) = scenario(sack=False)
    assert sent == [s2, s3]


def test_sack_reneging_is_detected():
    h = Conn(sack=True)
    h.conn.send(b"w" * MSS, h.now)
    h.ack_all(h.recv(at=10), at=20)
    h.conn.send(pattern(3 * MSS), h.now)
    s0, s1, s2 = h.recv(at=30)
    h.send(ACK, ack=s0.seq, sack_blocks=((s1.seq, s2.seq),), at=40)
    # The cumulative ACK then stops exactly where the SACKed block began: the client dropped it.
    h.send(ACK, ack=s1.seq, at=50)
    assert h.conn.counters["sack_reneged"] == 1


# ------------------------------------------------------------------------------ receive side

def test_we_send_sack_blocks_for_out_of_order_data():
    h = Conn(sack=True)
    h.send(ACK | PSH, seq=C1 + 100, payload=b"b" * 50, at=10, advance_seq=False)
    out = h.recv(at=10)                            # immediate ACK for out-of-order data
    assert [(s.ack, s.sack_blocks) for s in out] == [(C1, ((C1 + 100, C1 + 150),))]
    h.send(ACK | PSH, seq=C1 + 300, payload=b"d" * 50, at=20, advance_seq=False)
    out = h.recv(at=20)
    assert out[0].sack_blocks == ((C1 + 300, C1 + 350), (C1 + 100, C1 + 150))   # most recent first
    h.send(ACK | PSH, seq=C1, payload=b"a" * 100, at=30, advance_seq=False)
    out = h.recv(at=30)                            # gap filled: immediate ACK
    assert [(s.ack, s.sack_blocks) for s in out] == [(C1 + 150, ((C1 + 300, C1 + 350),))]
    h.send(ACK | PSH, seq=C1 + 150, payload=b"c" * 150, at=40, advance_seq=False)
    out = h.recv(at=40)
    assert [(s.ack, s.sack_blocks) for s in out] == [(C1 + 350, ())]
    assert h.conn.read() == b"a" * 100 + b"b" * 50 + b"c" * 150 + b"d" * 50
    assert h.conn.ooo_segments == 2


def test_sack_block_count_limited_by_option_space():
    for ts, expected in ((None, 4), (100, 3)):
        h = Conn(sack=True, ts=ts)
        for i in range(6):
            h.send(ACK | PSH, seq=C1 + 100 * (i + 1), payload=b"x", at=10 + i, advance_seq=False)
        out = h.recv(at=20)
        assert len(out[-1].sack_blocks) == expected


def test_no_sack_blocks_without_sack_permitted():
    h = Conn(sack=False)
    h.send(ACK | PSH, seq=C1 + 100, payload=b"x" * 10, at=10, advance_seq=False)
    assert h.recv(at=10)[0].sack_blocks == ()


def test_reordering_and_duplication_deliver_in_order_once():
    data = pattern(20000, 7)
    h = Conn(sack=True)
    rng = random.Random(3)
    chunks = []
    off = 0
    while off < len(data):
        n = rng.randrange(1, 1400)
        chunks.append((off, data[off:off + n]))
        off += n
    sends = chunks + rng.sample(chunks, len(chunks) // 3)   # duplicates
    rng.shuffle(sends)
    got = bytearray()
    for i, (off, chunk) in enumerate(sends):
        h.send(ACK | PSH, seq=C1 + off, payload=chunk, at=i, advance_seq=False)
        got += h.conn.read()
        h.conn.consumed(len(got), i)
        h.recv(at=i)
    assert bytes(got) == data
    assert h.conn.bytes_in == len(data)


def test_data_beyond_the_window_is_trimmed():
    h = Conn(config=TcpConfig(rcvbuf=4000))
    h.send(ACK | PSH, payload=pattern(3000, 1), at=10)
    h.send(ACK | PSH, payload=pattern(2000, 2), at=20, advance_seq=False)
    assert h.conn.read() == pattern(3000, 1) + pattern(2000, 2)[:1000]
    assert h.conn.rcv_wnd == 0


# ------------------------------------------------------------------------------ windows

def test_zero_window_probes_with_backoff_then_window_opens():
    h = Conn()
    h.window = 0
    h.send(ACK, at=0)
    h.conn.send(b"p" * 100, h.now)
    assert h.recv(at=10) == []
    assert h.conn.get_timer() == 210
    assert h.recv(at=209) == []
    probes = []
    for t in (210, 610, 1410):
        out = h.recv(at=t)
        assert [(s.seq, len(s.payload), s.flags) for s in out] == [(S1 - 1, 0, ACK)]
        probes.append(t)
        h.send(ACK, at=t + 5)                      # the client answers: still zero
    assert h.conn.window_probes == 3
    assert h.conn.get_timer() == 1410 + 1600
    h.window = 65535
    h.send(ACK, at=2000)                           # window update
    out = h.recv(at=2000)
    assert [s.payload for s in out] == [b"p" * 100]


def test_unanswered_zero_window_probes_give_up():
    h = Conn(config=TcpConfig(max_retries=2))
    h.window = 0
    h.send(ACK, at=0)
    h.conn.send(b"p", h.now)
    h.recv(at=0)
    for t in (200, 600):
        assert len(h.recv(at=t)) == 1
    out = h.recv(at=1400)
    assert [s.flags for s in out] == [RST | ACK]
    assert h.conn.take_events() == [TIMED_OUT, CLOSED]


def test_sender_sws_holds_small_window_until_override():
    h = Conn()
    h.conn.send(b"x" * MSS, h.now)
    h.ack_all(h.recv(at=0), at=1)
    h.window = 100                                 # far below half the largest window seen
    h.send(ACK, at=2)
    h.conn.send(b"y" * 1000, h.now)
    assert h.recv(at=3) == []
    t = h.conn.get_timer()
    out = h.recv(at=t)                             # override timeout: send what fits
    assert sizes(out) == [100]


def test_window_update_after_consumed_and_receiver_sws():
    h = Conn(config=TcpConfig(rcvbuf=4000))
    for n in (1460, 1460, 1080):
        h.send(ACK | PSH, payload=b"z" * n, at=10)
    out = h.recv(at=300)
    assert out and out[-1].window == 0 and out[-1].ack == C1 + 4000
    assert h.conn.read() == b"z" * 4000
    assert h.recv(at=310) == []                    # read but not consumed: still zero
    h.conn.consumed(100, 320)
    assert h.recv(at=320) == []                    # 100 bytes: silly window, no update
    h.conn.consumed(1900, 330)
    out = h.recv(at=330)
    assert [(s.flags, s.window) for s in out] == [(ACK, 2000)]
    h.conn.consumed(2000, 340)
    out = h.recv(at=340)
    assert [s.window for s in out] == [4000]
    assert h.conn.window_updates == 2


@settings(derandomize=True, deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.integers(1, 3000), st.booleans(), st.integers(0, 5000)), max_size=40),
       st.sampled_from([None, 3]), st.integers(20000, 300000))
def test_window_right_edge_never_moves_left(ops, wscale, rcvbuf):
    h = Conn(wscale=wscale, config=TcpConfig(rcvbuf=rcvbuf))
    ws = h.conn.rcv_wscale
    edge = seq_add(h.synack.ack, h.synack.window)
    t = 0
    for n, read, consume in ops:
        t += 10
        room = seq_sub(h.conn.rcv_adv, h.cseq)
        h.send(ACK | PSH, payload=b"q" * max(1, min(n, room)), at=t)
        if read:
            h.conn.read()
        h.conn.consumed(consume, t)
        for s in h.recv(at=t + 300):
            new_edge = seq_add(s.ack, s.window << ws)
            assert seq_sub(new_edge, edge) >= 0, "right edge moved left"
            edge = new_edge
            # Bounded: at most rcvbuf (plus scaling round-up) beyond what the service consumed.
            assert seq_sub(new_edge, s.ack) <= rcvbuf + (1 << ws)


def test_window_scaling_applied_both_ways():
    h = Conn(wscale=2, window=2 * MSS, config=TcpConfig(rcvbuf=200000))
    assert h.synack.wscale == 2 and h.conn.rcv_wscale == 2
    # Theirs: field 730 << 2 = 2920 bytes, exactly two segments.
    h.conn.send(pattern(10000), h.now)
    out = h.recv(at=10)
    assert sizes(out) == [MSS, MSS]
    # Ours: the window field is bytes >> 2.
    h.send(ACK | PSH, payload=b"x" * 1000, at=20)
    out = h.recv(at=300)
    assert out[-1].window == (200000 - 1000) >> 2


def test_no_window_scaling_without_the_option():
    h = Conn(config=TcpConfig(rcvbuf=200000))
    assert h.synack.wscale is None and h.conn.rcv_wscale == 0
    h.send(ACK | PSH, payload=b"x" * 10, at=20)
    assert h.recv(at=300)[-1].window == 65535


# ------------------------------------------------------------------------------ timestamps

def test_timestamps_echoed_and_used_for_rtt():
    h = Conn(ts=100)
    assert h.conn.srtt == 0
    h.send(ACK | PSH, payload=b"hi", at=50)
    out = h.recv(at=250)                           # delayed ACK
    assert out[0].timestamp[1] == 100 + 50         # echoes the client's TSval
    h.conn.send(b"abc", h.now)
    out = h.recv(at=300)
    tsval = out[0].timestamp[0]
    h.recv(at=300 + h.conn.rto)                    # retransmitted: Karn would forbid a sample...
    h.send(ACK, ack=S1 + 3, at=560, timestamp=(1000, tsval))
    # ... but the echoed timestamp says which copy: RTT = 560 - 300 (RFC 7323 4.1).
    assert h.conn.srtt == 260 / 8


def test_paws_drops_old_timestamps():
    h = Conn(ts=100)
    h.send(ACK | PSH, payload=b"new", at=50)
    h.send(ACK | PSH, payload=b"old", at=60, timestamp=(10, 0))
    assert h.conn.read() == b"new"
    assert h.conn.counters["paws"] == 1
    assert h.recv(at=60)[0].ack == C1 + 3


# ------------------------------------------------------------------------------ sequence wrap

def test_transfer_across_the_sequence_wrap_both_ways():
    h = Conn(iss=0xFFFFFF00, client_iss=0xFFFFFFA0, sack=True, ts=7)
    up = pattern(9000, 11)
    down = pattern(12000, 12)
    for i in range(0, len(up), 1000):
        h.send(ACK | PSH, payload=up[i:i + 1000], at=10 + i // 1000)
    got = h.conn.read()
    assert got == up and seq_sub(h.conn.rcv_nxt, 0) > 0 > seq_sub(0xFFFFFFA0, 0)
    h.conn.consumed(len(got), 30)
    h.conn.send(down, h.now)
    h.conn.shutdown(30)
    t = 30
    while h.conn.state is not TcpState.FIN_WAIT_2 and t < 5000:
        out = h.recv(at=t)
        if out:
            h.ack_all(out, at=t + 1)
        t += 10
    assert bytes(h.received) == down
    assert h.conn.snd_una == (0xFFFFFF00 + 1 + 12000 + 1) & 0xFFFFFFFF
    h.send(ACK | FIN, at=t)
    assert h.conn.state is TcpState.TIME_WAIT


# ------------------------------------------------------------------------------ ACK policy

def test_delayed_ack_timing():
    h = Conn()
    h.send(ACK | PSH, payload=b"x" * 100, at=10)
    assert h.recv(at=10) == []
    assert h.recv(at=209) == []
    assert [(s.flags, s.ack) for s in h.recv(at=210)] == [(ACK, C1 + 100)]


def test_ack_every_second_full_segment():
    h = Conn()
    h.send(ACK | PSH, payload=b"x" * MSS, at=10)
    assert h.recv(at=10) == []
    h.send(ACK | PSH, payload=b"x" * MSS, at=20)
    assert [s.ack for s in h.recv(at=20)] == [C1 + 2 * MSS]


def test_ack_piggybacks_on_data():
    h = Conn()
    h.send(ACK | PSH, payload=b"question", at=10)
    h.conn.send(b"answer", h.now)
    out = h.recv(at=20)
    assert [(s.payload, s.ack) for s in out] == [(b"answer", C1 + 8)]
    assert h.conn.get_timer() == 20 + h.conn.rto   # the delayed-ACK timer is gone


# ------------------------------------------------------------------------------ Nagle / budget

def test_nagle_holds_small_segment_while_data_unacked():
    h = Conn()
    h.conn.send(b"a" * 100, h.now)
    assert sizes(h.recv(at=10)) == [100]
    h.conn.send(b"b" * 100, h.now)
    assert h.recv(at=20) == []
    h.conn.send(b"c" * 100, h.now)
    h.send(ACK, ack=S1 + 100, at=50)
    out = h.recv(at=50)
    assert [s.payload for s in out] == [b"b" * 100 + b"c" * 100]


def test_nagle_off_sends_at_once_and_psh_marks_end_of_burst():
    h = Conn(config=TcpConfig(nagle=False))
    h.conn.send(b"a" * 100, h.now)
    h.recv(at=10)
    h.conn.send(b"b" * 100, h.now)
    assert sizes(h.recv(at=20)) == [100]
    h2 = Conn()
    h2.conn.send(b"x" * (2 * MSS), h2.now)
    out = h2.recv(at=10)
    assert [bool(s.flags & PSH) for s in out] == [False, True]


def test_budget_limits_payload_but_not_control_segments():
    h = Conn()
    h.conn.send(pattern(5000), h.now)
    out = h.recv(at=10, budget=2000)
    assert sizes(out) == [MSS]
    assert h.conn.pending_output
    # An ACK owed (out-of-order data arrived) goes out even with no budget at all.
    h.send(ACK | PSH, seq=C1 + 500, payload=b"o", at=20, advance_seq=False)
    out = h.recv(at=20, budget=0)
    assert [(len(s.payload), s.ack) for s in out] == [(0, C1)]
    out = h.recv(at=30)
    assert sizes(out) == [MSS, MSS]                # the rest of the initial window
    assert not h.conn.pending_output


def test_timers_run_from_the_time_the_caller_passes():
    h = Conn()
    h.advance(5000)
    assert h.conn.send(b"x" * 10, 5000) == 10 and h.conn.last_activity == 5000
    out = h.conn.take_segments(-1, 5000)
    assert sizes(out) == [10]
    assert h.conn.get_timer() == 5000 + h.conn.rto
    h.conn.handle_timer(5000 + h.conn.rto - 1)     # one millisecond early: nothing is due yet
    assert h.conn.take_segments(-1, 5000 + h.conn.rto - 1) == []
    assert sizes(h.recv(at=5000 + h.conn.rto)) == [10]


def test_fin_rides_on_the_last_segment_and_waits_for_the_data():
    h = Conn()
    h.conn.send(pattern(3000), h.now)
    h.conn.shutdown(5)
    out = h.recv(at=10, budget=2 * MSS)           # the tail does not fit the budget: no FIN yet
    assert sizes(out) == [MSS, MSS] and not any(s.flags & FIN for s in out)
    out = h.recv(at=11)                            # Nagle never holds the segment carrying our FIN
    assert sizes(out) == [80] and out[0].flags & FIN and out[0].flags & PSH
    assert out[0].seq == S1 + 2 * MSS
