"""TcpConnection: handshake, every close path, RST/SYN validation (RFC 5961), acceptability, options.

Segment values at explicit times, smoltcp style: the test plays the client.
"""

import dataclasses
import logging

import pytest

from test_tcp_harness import (ACK, CLIENT_ISS, FIN, OUR_ISS, PSH, RST, SYN, Conn, TcpConfig,
                              TcpRepr, TcpState, seq_add)
from pyslirp.net.tcp.seq import seq_le
from pyslirp.net.tcp.conn import rst_for
from pyslirp.net.tcp.events import (CLOSED, ESTABLISHED, PEER_FIN, READABLE, RESET, TIMED_OUT, WRITABLE,
                                    Closed, Readable)

C1 = CLIENT_ISS + 1
S1 = OUR_ISS + 1


# ------------------------------------------------------------------------------ handshake

def test_nothing_is_sent_until_accept():
    h = Conn(establish=False)
    assert h.recv(at=0) == []
    assert h.conn.get_timer() is None
    h.conn.receive(h.syn, 500)                 # the client's retransmitted SYN: still waiting
    assert h.recv(at=500) == []
    assert h.conn.state is TcpState.SYN_RECEIVED
    h.conn.accept(600)
    out = h.recv(at=600)
    assert len(out) == 1
    synack = out[0]
    assert synack.flags == SYN | ACK and synack.seq == OUR_ISS and synack.ack == C1
    assert synack.mss == 1460 and synack.wscale is None and not synack.sack_permitted
    assert synack.timestamp is None and synack.window == 65535
    h.send(ACK, at=650)
    assert h.conn.state is TcpState.ESTABLISHED
    assert h.conn.take_events() == [ESTABLISHED]


def test_refuse_sends_rst_ack_for_the_syn():
    h = Conn(establish=False)
    h.conn.refuse(100)
    out = h.recv(at=100)
    assert [(s.flags, s.seq, s.ack) for s in out] == [(RST | ACK, 0, C1)]
    assert h.conn.state is TcpState.CLOSED
    assert h.conn.take_events() == [CLOSED]
    assert h.recv(at=200) == [] and h.conn.get_timer() is None


def test_synack_options_answer_only_what_the_syn_offered():
    h = Conn(wscale=7, sack=True, ts=100, establish=False, config=TcpConfig(rcvbuf=200000))
    h.conn.accept(5)
    synack = h.recv(at=5)[0]
    assert synack.wscale == 2                  # 200000 >> 2 fits in 16 bits
    assert synack.sack_permitted
    assert synack.timestamp[1] == 100          # TSecr echoes the SYN's TSval
    assert synack.window == 65535              # never scaled in a SYN (RFC 7323 2.2)


def test_options_can_be_switched_off():
    cfg = TcpConfig(window_scaling=False, sack=False, timestamps=False)
    h = Conn(wscale=7, sack=True, ts=100, establish=False, config=cfg)
    h.conn.accept(0)
    synack = h.recv(at=0)[0]
    assert synack.wscale is None and not synack.sack_permitted and synack.timestamp is None


def test_our_mss_is_the_config_capped_by_the_link():
    for mss, limit, expected in ((1000, 1460, 1000), (0, 1200, 1200), (9000, 1460, 1460)):
        h = Conn(config=TcpConfig(mss=mss), mss_limit=limit, establish=False)
        h.conn.accept(0)
        assert h.recv(at=0)[0].mss == expected


def test_synack_retransmission_backoff_and_give_up():
    h = Conn(establish=False, config=TcpConfig(syn_retries=2))
    h.conn.accept(0)
    assert len(h.recv(at=0)) == 1
    assert h.recv(at=999) == []
    out = h.recv(at=1000)
    assert [s.flags for s in out] == [SYN | ACK] and h.conn.retransmits == 1
    assert h.recv(at=2999) == []
    assert [s.flags for s in h.recv(at=3000)] == [SYN | ACK]
    assert h.recv(at=6999) == []
    out = h.recv(at=7000)
    assert [(s.flags, s.seq) for s in out] == [(RST | ACK, S1)]
    assert h.conn.take_events() == [TIMED_OUT, CLOSED]
    assert h.conn.state is TcpState.CLOSED


def test_rto_is_three_seconds_after_a_lost_synack():
    # RFC 6298 5.7 (no timestamps, so no RTT sample from the handshake).
    h = Conn(establish=False)
    h.conn.accept(0)
    h.recv(at=0)
    h.recv(at=1000)                            # SYN-ACK retransmitted
    h.send(ACK, at=1100)
    assert h.conn.state is TcpState.ESTABLISHED and h.conn.srtt is None
    h.conn.send(b"x" * 10, h.now)
    assert len(h.recv(at=1200)) == 1
    assert h.recv(at=4199) == []
    assert [s.payload for s in h.recv(at=4200)] == [b"x" * 10]


def test_handshake_rtt_sample_without_timestamps():
    h = Conn(establish=False)
    h.conn.accept(0)
    h.recv(at=0)
    h.send(ACK, at=80)
    # RFC 6298 2.2: SRTT = 80, RTTVAR = 40, RTO = SRTT + 4 * RTTVAR = 240.
    assert h.conn.srtt == 80 and h.conn.rto == 240


def test_duplicate_syn_after_accept_resends_synack():
    h = Conn(establish=False)
    h.conn.accept(0)
    h.recv(at=0)
    h.conn.receive(h.syn, 300)
    out = h.recv(at=300)
    assert [(s.flags, s.seq, s.ack) for s in out] == [(SYN | ACK, OUR_ISS, C1)]


def test_unacceptable_ack_in_syn_received_gets_a_reset():
    h = Conn(establish=False)
    h.conn.accept(0)
    h.recv(at=0)
    h.send(ACK, ack=OUR_ISS + 77, at=10)
    assert [(s.flags, s.seq) for s in h.recv(at=10)] == [(RST, OUR_ISS + 77)]
    assert h.conn.state is TcpState.SYN_RECEIVED


def test_reset_answers_to_bad_acks_are_bounded():
    h = Conn(establish=False, config=TcpConfig(challenge_ack_limit=100))
    h.conn.accept(0)
    h.recv(at=0)
    for i in range(50):
        h.send(ACK, ack=OUR_ISS + 100 + i, at=10)
    out = h.recv(at=10)
    assert 1 <= len(out) <= 8 and all(s.flags == RST for s in out)
    assert h.conn.counters["bad_ack_syn_received"] == 50


def test_data_on_the_handshake_ack():
    h = Conn(establish=False)
    h.conn.accept(0)
    h.recv(at=0)
    h.send(ACK | PSH, payload=b"hello", at=20)
    assert h.conn.take_events() == [ESTABLISHED, READABLE]
    assert h.conn.read() == b"hello"


def test_events_are_frozen_values_and_readable_is_coalesced():
    h = Conn()
    h.send(ACK | PSH, payload=b"one", at=10)
    h.send(ACK | PSH, payload=b"two", at=20)
    events = h.conn.take_events()
    assert events == [READABLE] and events == [Readable()] and isinstance(events[0], Readable)
    assert h.conn.read() == b"onetwo"
    h.send(ACK | PSH, payload=b"three", at=30)      # a new call: readable again
    assert h.conn.take_events() == [READABLE]
    assert READABLE != CLOSED and not isinstance(CLOSED, Readable) and CLOSED == Closed()
    with pytest.raises(dataclasses.FrozenInstanceError):
        READABLE.extra = 1


def test_rst_while_pending_closes():
    h = Conn(establish=False)
    h.send(RST, seq=C1, at=10)
    assert h.conn.take_events() == [RESET, CLOSED]
    assert h.conn.state is TcpState.CLOSED


def test_state_changes_are_logged(caplog):
    with caplog.at_level(logging.DEBUG, logger="pyslirp.net.tcp"):
        Conn()
    assert any("SYN_RECEIVED => ESTABLISHED" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ close paths

def test_active_close_through_time_wait():
    h = Conn(config=TcpConfig(msl_ms=1000))
    assert h.conn.send(b"bye", h.now) == 3
    h.conn.shutdown(10)
    assert h.conn.state is TcpState.FIN_WAIT_1
    out = h.recv(at=10)
    assert [(s.flags, s.seq, s.payload) for s in out] == [(ACK | PSH | FIN, S1, b"bye")]
    assert h.conn.send(b"late", h.now) == 0 and h.conn.send_space == 0
    h.ack_all(out, at=20)
    assert h.conn.state is TcpState.FIN_WAIT_2
    h.send(ACK | FIN, at=30)
    assert h.conn.state is TcpState.TIME_WAIT
    assert h.conn.take_events() == [PEER_FIN]
    out = h.recv(at=30)
    assert [(s.flags, s.seq, s.ack) for s in out] == [(ACK, S1 + 4, C1 + 1)]
    assert h.conn.get_timer() == 30 + 2000
    # A retransmitted FIN is acknowledged again and restarts the 2 MSL timer.
    h.send(ACK | FIN, seq=C1, at=1000, advance_seq=False)
    assert [(s.flags, s.ack) for s in h.recv(at=1000)] == [(ACK, C1 + 1)]
    assert h.conn.get_timer() == 3000
    h.advance(2999)
    assert h.conn.state is TcpState.TIME_WAIT
    h.advance(3000)
    assert h.conn.state is TcpState.CLOSED
    assert h.conn.take_events() == [CLOSED]


def test_passive_close_peer_fin_waits_for_read():
    h = Conn()
    h.send(ACK | PSH, payload=b"data", at=10)
    h.send(ACK | FIN, at=20)
    assert h.conn.state is TcpState.CLOSE_WAIT
    assert h.conn.take_events() == [READABLE]
    out = h.recv(at=20)                        # the FIN is acknowledged at once
    assert [(s.flags, s.ack) for s in out] == [(ACK, C1 + 5)]
    assert h.conn.read() == b"data"
    assert h.conn.take_events() == [PEER_FIN]
    # Half-close: we keep sending in CLOSE_WAIT.
    assert h.conn.send(b"reply", h.now) == 5
    out = h.recv(at=30)
    assert [s.payload for s in out] == [b"reply"]
    h.ack_all(out, at=40)
    h.conn.shutdown(50)
    assert h.conn.state is TcpState.LAST_ACK
    out = h.recv(at=50)
    assert [(s.flags, s.seq) for s in out] == [(ACK | FIN, S1 + 5)]
    h.ack_all(out, at=60)
    assert h.conn.state is TcpState.CLOSED
    assert h.conn.take_events() == [WRITABLE, CLOSED]


def test_fin_in_last_ack_is_retransmitted():
    h = Conn()
    h.send(ACK | FIN, at=0)
    h.conn.shutdown(10)
    out = h.recv(at=10)
    assert [s.flags for s in out] == [ACK | FIN]     # our ACK of their FIN rides on our FIN
    rto = h.conn.rto
    assert h.recv(at=10 + rto - 1) == []
    assert [s.flags for s in h.recv(at=10 + rto)] == [ACK | FIN]


def test_simultaneous_close():
    h = Conn()
    h.conn.shutdown(10)
    out = h.recv(at=10)
    assert [s.flags for s in out] == [ACK | FIN]
    h.send(ACK | FIN, ack=S1, at=15)                 # crosses our FIN: does not acknowledge it
    assert h.conn.state is TcpState.CLOSING
    assert [(s.flags, s.ack) for s in h.recv(at=15)] == [(ACK, C1 + 1)]
    h.send(ACK, ack=S1 + 1, at=20)
    assert h.conn.state is TcpState.TIME_WAIT


def test_fin_wait_1_fin_and_ack_together_goes_to_time_wait():
    h = Conn()
    h.conn.shutdown(10)
    h.recv(at=10)
    h.send(ACK | FIN, ack=S1 + 1, at=20)
    assert h.conn.state is TcpState.TIME_WAIT


def test_half_close_client_keeps_sending_after_our_fin():
    h = Conn()
    h.conn.shutdown(10)
    h.ack_all(h.recv(at=10), at=20)
    assert h.conn.state is TcpState.FIN_WAIT_2
    h.send(ACK | PSH, payload=b"still talking", at=30)
    assert h.conn.read() == b"still talking"
    h.send(ACK | FIN, at=40)
    assert h.conn.state is TcpState.TIME_WAIT


def test_shutdown_before_handshake_completes_sends_fin_after_it():
    h = Conn(establish=False)
    h.conn.accept(0)
    h.recv(at=0)
    h.conn.send(b"early", h.now)
    h.conn.shutdown(5)
    assert h.conn.state is TcpState.SYN_RECEIVED
    h.send(ACK, at=10)
    assert h.conn.state is TcpState.FIN_WAIT_1
    out = h.recv(at=10)
    assert [(s.flags, s.payload) for s in out] == [(ACK | PSH | FIN, b"early")]


def test_abort_sends_rst():
    h = Conn()
    h.conn.send(b"x" * 100, h.now)
    h.recv(at=10)
    h.conn.abort(20)
    out = h.recv(at=20)
    assert [(s.flags, s.seq, s.ack) for s in out] == [(RST | ACK, S1 + 100, C1)]
    assert h.conn.state is TcpState.CLOSED
    assert h.conn.take_events() == [CLOSED]
    assert h.conn.get_timer() is None and h.recv(at=5000) == []


def test_abort_while_pending_answers_the_syn():
    h = Conn(establish=False)
    h.conn.abort(5)
    assert [(s.flags, s.seq, s.ack) for s in h.recv(at=5)] == [(RST | ACK, 0, C1)]


# ------------------------------------------------------------------------------ RST / SYN (RFC 5961)

def test_rst_exact_sequence_resets():
    h = Conn()
    h.send(RST, at=10)
    assert h.conn.take_events() == [RESET, CLOSED]
    assert h.conn.state is TcpState.CLOSED
    assert h.recv(at=10) == []


def test_rst_in_window_gets_challenge_ack():
    h = Conn()
    h.send(RST, seq=C1 + 100, at=10)
    assert h.conn.state is TcpState.ESTABLISHED
    assert [(s.flags, s.seq, s.ack) for s in h.recv(at=10)] == [(ACK, S1, C1)]
    assert h.conn.challenge_acks == 1 and h.conn.take_events() == []


def test_rst_outside_window_is_dropped():
    h = Conn()
    h.send(RST, seq=C1 + 70000, at=10)
    h.send(RST, seq=C1 - 1, at=11)
    assert h.recv(at=11) == [] and h.conn.state is TcpState.ESTABLISHED
    assert h.conn.counters["rst_out_of_window"] == 2


def test_challenge_acks_are_rate_limited():
    # A token bucket of challenge_ack_limit per second with a burst of as many (RFC 5961 section 7).
    h = Conn(config=TcpConfig(challenge_ack_limit=3))
    acks = 0
    for i in range(6):
        h.send(RST, seq=C1 + 10 + i, at=100)
        acks += len(h.recv(at=100))
    assert acks == 3 and h.conn.challenge_acks == 3
    assert h.conn.counters["challenge_ack_limited"] == 3
    h.send(RST, seq=C1 + 40, at=433)               # 333 ms at 3/s: 0.999 of a token
    assert h.recv(at=433) == []
    h.send(RST, seq=C1 + 41, at=434)               # one token
    assert [(s.flags, s.ack) for s in h.recv(at=434)] == [(ACK, C1)]
    h.send(RST, seq=C1 + 42, at=434)
    assert h.recv(at=434) == []
    acks = 0
    for i in range(5):                             # a quiet minute refills only the burst
        h.send(RST, seq=C1 + 50 + i, at=60000)
        acks += len(h.recv(at=60000))
    assert acks == 3 and h.conn.challenge_acks == 7
    assert h.conn.state is TcpState.ESTABLISHED


def test_syn_in_established_gets_challenge_ack():
    h = Conn()
    h.send(SYN, seq=C1 + 5, at=10)
    assert [(s.flags, s.ack) for s in h.recv(at=10)] == [(ACK, C1)]
    assert h.conn.state is TcpState.ESTABLISHED and h.conn.challenge_acks == 1


def test_rst_in_time_wait_closes_without_reset_event():
    h = Conn()
    h.conn.shutdown(0)
    h.ack_all(h.recv(at=0), at=5)
    h.send(ACK | FIN, at=10)
    h.conn.take_events()
    assert h.conn.state is TcpState.TIME_WAIT
    h.send(RST, at=20)
    assert h.conn.take_events() == [CLOSED]


def test_syn_may_reuse_time_wait():
    h = Conn()
    h.conn.shutdown(0)
    h.ack_all(h.recv(at=0), at=5)
    h.send(ACK | FIN, at=10)
    newer = TcpRepr(h.syn.src_port, h.syn.dst_port, C1 + 100000, 0, SYN, 65535)
    older = TcpRepr(h.syn.src_port, h.syn.dst_port, CLIENT_ISS, 0, SYN, 65535)
    assert h.conn.syn_may_reuse(newer) and not h.conn.syn_may_reuse(older)


# ------------------------------------------------------------------------------ acceptability

def test_old_duplicate_segment_is_acknowledged_not_delivered():
    h = Conn()
    h.send(ACK | PSH, payload=b"12345", at=10)
    assert h.conn.read() == b"12345"
    h.send(ACK | PSH, seq=C1, payload=b"12345", at=20)
    assert h.conn.read() == b""
    assert [(s.flags, s.ack) for s in h.recv(at=20)] == [(ACK, C1 + 5)]


def test_partially_old_segment_delivers_only_the_new_part():
    h = Conn()
    h.send(ACK | PSH, payload=b"abc", at=10)
    h.send(ACK | PSH, seq=C1 + 1, payload=b"bcdef", at=20, advance_seq=False)
    assert h.conn.read() == b"abcdef"


def test_segment_beyond_the_window_is_acknowledged_and_dropped():
    h = Conn()
    h.send(ACK | PSH, seq=C1 + 70000, payload=b"far", at=10)
    assert h.conn.read() == b"" and h.conn.ooo_segments == 0
    assert [(s.flags, s.ack) for s in h.recv(at=10)] == [(ACK, C1)]


def test_ack_of_unsent_data_is_answered_and_dropped():
    h = Conn()
    h.send(ACK | PSH, ack=S1 + 1000, payload=b"zz", at=10)
    assert h.conn.read() == b""
    assert [(s.flags, s.seq, s.ack) for s in h.recv(at=10)] == [(ACK, S1, C1)]
    assert h.conn.counters["ack_unsent"] == 1


def test_too_old_ack_gets_challenge_ack():
    # RFC 5961 5.2: SEG.ACK below SND.UNA - MAX.SND.WND.
    h = Conn()
    h.send(ACK | PSH, ack=seq_add(S1, -70000), payload=b"zz", at=10)
    assert h.conn.read() == b""
    assert len(h.recv(at=10)) == 1 and h.conn.challenge_acks == 1


def test_segment_without_ack_is_dropped():
    h = Conn()
    h.send(PSH, payload=b"noack", at=10)
    assert h.conn.read() == b"" and h.conn.counters["no_ack"] == 1


# ------------------------------------------------------------------------------ rst_for

def test_rst_for_segments_to_no_connection():
    syn = TcpRepr(40000, 22, 1000, 0, SYN, 100)
    r = rst_for(syn)
    assert (r.src_port, r.dst_port, r.seq, r.ack, r.flags) == (22, 40000, 0, 1001, RST | ACK)
    data_fin = TcpRepr(40000, 22, 1000, 0, PSH | FIN, 100, payload=b"abc")
    assert rst_for(data_fin).ack == 1004
    acked = TcpRepr(40000, 22, 1000, 777, ACK, 100, payload=b"abc")
    r = rst_for(acked)
    assert (r.seq, r.ack, r.flags) == (777, 0, RST)
    assert rst_for(TcpRepr(40000, 22, 1000, 777, RST | ACK, 0)) is None
    wrap = TcpRepr(40000, 22, 0xFFFFFFFF, 0, SYN, 100)
    assert rst_for(wrap).ack == 0


# ------------------------------------------------------------------------------ keepalive

def test_keepalive_probes_and_gives_up():
    h = Conn(config=TcpConfig(keepalive=5, keepalive_probes=2))
    h.recv(at=0)
    assert h.conn.get_timer() == 5000
    assert h.recv(at=4999) == []
    out = h.recv(at=5000)
    assert [(s.flags, s.seq, len(s.payload)) for s in out] == [(ACK, OUR_ISS, 0)]
    h.send(ACK, at=5100)                       # answered: the idle clock restarts
    assert h.recv(at=10099) == []
    assert len(h.recv(at=10100)) == 1
    assert len(h.recv(at=15100)) == 1
    assert h.conn.keepalives_sent == 3
    out = h.recv(at=20100)
    assert [s.flags for s in out] == [RST | ACK]
    assert h.conn.take_events() == [TIMED_OUT, CLOSED]


def test_keepalive_off_by_default():
    h = Conn()
    assert h.conn.get_timer() is None


def test_an_echo_exchange_leaves_the_window_field_unchanged():
    # Keystrokes and their echoes: the service takes each request at once and answers it.  The window field
    # stays the same on every answer, so VJ compression keeps its 3-byte header (RFC 1144 3.2.3).
    for wscale in (None, 7):
        h = Conn(config=TcpConfig(timestamps=False), wscale=wscale)
        fields = []
        for i in range(20):
            h.send(ACK | PSH, payload=b"k" * 64, at=100 * i)
            data = h.conn.read()
            h.conn.consumed(len(data), h.now)
            h.conn.send(data, h.now)
            out = h.recv()
            (echo,) = [s for s in out if s.payload]
            assert echo.payload == data and echo.ack == h.cseq
            fields.append(echo.window)
            h.ack_all(out)
        assert len(set(fields)) == 1, (wscale, fields)
    # Data the service has not taken still closes the window.
    h = Conn(config=TcpConfig(timestamps=False, rcvbuf=4096))
    for i in range(3):
        h.send(ACK | PSH, payload=b"k" * 64, at=1000 * i)
        h.conn.read()
        out = h.recv(at=1000 * i + 500)         # the delayed ACK
        assert out and out[-1].window == 4096 - 64 * (i + 1), out


def test_a_lowered_window_limit_closes_the_window_against_bulk_only():
    # The stack lowers rcv_limit when interactive traffic starts sharing a slow line.  Echoed keystrokes keep
    # the window field they had (VJ's 3-byte header, RFC 1144 3.2.3); the first bulk segment starts closing
    # the window toward the limit, by holding the right edge (RFC 9293 3.8.6.2.2: it never moves left).
    h = Conn(config=TcpConfig(timestamps=False, rcvbuf=8192))
    fields = []
    for i in range(10):
        if i == 3:
            h.conn.rcv_limit = 1024
        h.send(ACK | PSH, payload=b"k" * 64, at=100 * i)
        data = h.conn.read()
        h.conn.consumed(len(data), h.now)
        h.conn.send(data, h.now)
        out = h.recv()
        (echo,) = [s for s in out if s.payload]
        fields.append(echo.window)
        h.ack_all(out)
    assert len(set(fields)) == 1 and fields[0] > 4096, fields
    edge = seq_add(h.cseq, fields[0])
    windows = []
    for i in range(8):
        h.send(ACK, payload=b"b" * 512, at=2000 + 10 * i)
        h.conn.consumed(len(h.conn.read()), h.now)
        for s in h.recv(at=2000 + 10 * i + 5):
            windows.append(s.window)
            assert seq_le(seq_add(s.ack, s.window), edge)    # the right edge never moves on
    for s in h.recv(at=3000):
        windows.append(s.window)
    assert windows and windows[-1] == fields[0] - 512 * 8, windows
    assert windows == sorted(windows, reverse=True)
