"""TcpConnection.connect: the active open (RFC 9293 3.10.7.3 SYN-SENT), segment values at explicit times.

The test plays the server: it answers the SYN (or does not) and checks what the connection sends.
"""

from pyslirp.net.tcp.conn import TcpConfig, TcpConnection, TcpState
from pyslirp.net.tcp.events import CLOSED, ESTABLISHED, RESET, TIMED_OUT, UNREACHABLE
from pyslirp.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpRepr

LOCAL = bytes([10, 0, 0, 2])
REMOTE = bytes([10, 0, 0, 1])
LPORT = 40000
RPORT = 80
ISS = 7000
PEER_ISS = 90000


def wire(seg, src=LOCAL, dst=REMOTE):
    back = TcpRepr.parse(seg.emit(src, dst), src, dst)
    assert back == seg
    return back


def out(conn, now, budget=-1):
    return [wire(s) for s in conn.take_segments(budget, now)]


def new(config=None, mss_limit=1460, now=0):
    return TcpConnection.connect(LOCAL, LPORT, REMOTE, RPORT, config or TcpConfig(), ISS, now, mss_limit)


def peer(flags, seq=PEER_ISS, ack=ISS + 1, window=30000, **kw):
    return TcpRepr(RPORT, LPORT, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, window, **kw)


def test_the_syn_offers_what_the_config_enables():
    conn = new(TcpConfig(rcvbuf=200000))
    assert conn.state is TcpState.SYN_SENT and conn.active and conn.pending_output
    syn = out(conn, 0)
    assert len(syn) == 1
    s = syn[0]
    assert s.flags == SYN and s.seq == ISS and s.ack == 0
    assert s.mss == 1460 and s.wscale == 2 and s.sack_permitted and s.timestamp[1] == 0
    assert s.window == 65535                       # never scaled in a SYN
    assert out(conn, 1) == [] and not conn.pending_output
    bare = new(TcpConfig(window_scaling=False, sack=False, timestamps=False), mss_limit=1000)
    s = out(bare, 0)[0]
    assert s.wscale is None and not s.sack_permitted and s.timestamp is None and s.mss == 1000


def test_syn_retransmission_doubles_the_rto_then_times_out():
    conn = new(TcpConfig(syn_retries=3))
    assert len(out(conn, 0)) == 1
    times = []
    now = 0
    while conn.state is TcpState.SYN_SENT:
        t = conn.get_timer()
        assert out(conn, t - 1) == []              # nothing before the deadline
        now = t
        conn.handle_timer(now)
        segs = out(conn, now)
        if conn.state is TcpState.SYN_SENT:
            assert [(s.flags, s.seq) for s in segs] == [(SYN, ISS)]
        else:
            assert segs == []                      # giving up in SYN-SENT sends no RST
        times.append(now)
    # RFC 6298 2.1 and 5.5: 1 s, then doubled on every expiry.
    assert times == [1000, 3000, 7000, 15000]
    assert conn.take_events() == [TIMED_OUT, CLOSED]
    assert conn.close_reason == "timeout" and conn.retransmits == 3


def test_syn_ack_establishes_and_settles_the_options():
    conn = new(TcpConfig(rcvbuf=200000))
    out(conn, 0)
    conn.receive(peer(SYN | ACK, mss=1200, wscale=3, sack_permitted=True, timestamp=(555, 0), window=20000),
                 100)
    assert conn.state is TcpState.ESTABLISHED
    assert conn.take_events() == [ESTABLISHED]
    ack = out(conn, 100)
    assert [(s.flags, s.seq, s.ack) for s in ack] == [(ACK, ISS + 1, PEER_ISS + 1)]
    assert ack[0].timestamp[1] == 555
    assert conn.ws_ok and conn.sack_ok and conn.ts_ok and conn.send_mss == 1200
    assert conn.srtt == 100                        # the SYN was timed
    assert conn.get_timer() is None
    # The SYN-ACK's window is not scaled; later windows are (by 3).
    assert conn.snd_wnd == 20000
    conn.receive(peer(ACK, seq=PEER_ISS + 1, window=4000, timestamp=(556, 0)), 110)
    assert conn.snd_wnd == 32000


def test_window_scaling_needs_both_syns():
    conn = new(TcpConfig(rcvbuf=200000))
    out(conn, 0)
    conn.receive(peer(SYN | ACK, mss=1460, window=50000), 10)
    assert not conn.ws_ok and not conn.sack_ok and not conn.ts_ok
    ack = out(conn, 10)[0]
    assert ack.window == 65535 and ack.timestamp is None   # unscaled, capped to 16 bits


def test_data_and_fin_queued_while_connecting_go_after_the_handshake():
    conn = new(TcpConfig(timestamps=False, sack=False, window_scaling=False))
    assert conn.send(b"hello", 0) == 5
    conn.shutdown(0)
    syn = out(conn, 0)
    assert [s.flags for s in syn] == [SYN]         # no data on our SYN
    conn.receive(peer(SYN | ACK, mss=1460), 50)
    assert conn.state is TcpState.FIN_WAIT_1
    segs = out(conn, 50)
    assert [(s.flags & (SYN | FIN | ACK), s.seq, s.payload) for s in segs] == [(ACK | FIN, ISS + 1, b"hello")]
    conn.receive(peer(ACK | FIN, seq=PEER_ISS + 1, ack=ISS + 7), 60)
    assert conn.state is TcpState.TIME_WAIT


def test_rst_with_an_acceptable_ack_is_a_refusal():
    conn = new()
    out(conn, 0)
    conn.receive(peer(RST | ACK, seq=0, ack=ISS + 1, window=0), 30)
    assert conn.state is TcpState.CLOSED and conn.close_reason == "reset"
    assert conn.take_events() == [RESET, CLOSED]
    assert out(conn, 30) == [] and conn.get_timer() is None


def test_rst_without_ack_or_with_a_wrong_ack_is_ignored():
    conn = new()
    out(conn, 0)
    conn.receive(peer(RST, seq=0, ack=0, window=0), 10)
    conn.receive(peer(RST | ACK, seq=0, ack=ISS + 5, window=0), 11)
    conn.receive(peer(RST | ACK, seq=0, ack=ISS, window=0), 12)
    assert conn.state is TcpState.SYN_SENT
    assert out(conn, 12) == []                     # never a RST for a RST
    assert conn.take_events() == []


def test_an_unacceptable_ack_gets_a_reset():
    conn = new()
    out(conn, 0)
    conn.receive(peer(SYN | ACK, ack=ISS + 100), 10)
    assert conn.state is TcpState.SYN_SENT
    assert [(s.flags, s.seq) for s in out(conn, 10)] == [(RST, ISS + 100)]
    conn.receive(peer(ACK, ack=ISS), 11)           # SEG.ACK =< ISS
    assert [(s.flags, s.seq) for s in out(conn, 11)] == [(RST, ISS)]
    conn.receive(peer(SYN | ACK, mss=1460), 20)    # the real answer still establishes
    assert conn.state is TcpState.ESTABLISHED


def test_a_segment_without_syn_or_rst_is_dropped():
    conn = new()
    out(conn, 0)
    conn.receive(peer(PSH, payload=b"x"), 5)
    assert conn.state is TcpState.SYN_SENT and conn.counters["syn_sent_no_syn"] == 1


def test_unreachable_ends_the_open_but_not_an_established_connection():
    conn = new()
    out(conn, 0)
    assert conn.unreachable(40)
    assert conn.state is TcpState.CLOSED and conn.close_reason == "unreachable"
    assert conn.take_events() == [UNREACHABLE, CLOSED]
    up = new()
    out(up, 0)
    up.receive(peer(SYN | ACK, mss=1460), 10)
    assert not up.unreachable(20)
    assert up.state is TcpState.ESTABLISHED


def test_abort_while_connecting_sends_nothing():
    conn = new()
    out(conn, 0)
    conn.abort(5)
    assert out(conn, 5) == [] and conn.state is TcpState.CLOSED
    assert conn.take_events() == [CLOSED]


def test_simultaneous_open():
    conn = new(TcpConfig(timestamps=False))
    out(conn, 0)
    conn.receive(peer(SYN, ack=0, mss=1460), 10)    # the peer's own SYN crossed ours
    assert conn.state is TcpState.SYN_RECEIVED
    segs = out(conn, 10)
    assert [(s.flags, s.seq, s.ack) for s in segs] == [(SYN | ACK, ISS, PEER_ISS + 1)]
    conn.receive(peer(SYN | ACK, ack=ISS + 1, mss=1460), 20)   # its SYN-ACK: a challenge ACK (RFC 5961 4.2)
    conn.receive(peer(ACK, seq=PEER_ISS + 1), 21)
    assert conn.state is TcpState.ESTABLISHED
    assert ESTABLISHED in conn.take_events()


def test_lost_syn_leaves_a_three_second_rto_after_the_handshake():
    conn = new(TcpConfig(timestamps=False))
    out(conn, 0)
    conn.handle_timer(conn.get_timer())
    out(conn, 1000)
    conn.receive(peer(SYN | ACK, mss=1460), 1100)
    assert conn.rto == 3000                        # RFC 6298 5.7


def test_an_active_and_a_passive_connection_exchange_data():
    """Both ends are TcpConnection: the client's connect() against the server's passive open."""
    cfg = TcpConfig()
    client = new(cfg)
    syn = out(client, 0)[0]
    server = TcpConnection(TcpRepr.parse(syn.emit(LOCAL, REMOTE), LOCAL, REMOTE), REMOTE, LOCAL, cfg,
                           PEER_ISS, 0, 1460)
    server.accept(0)
    up_data = bytes(range(256)) * 400
    down_data = bytes(reversed(range(256))) * 300
    got_server = bytearray()
    got_client = bytearray()
    sent_up = sent_down = 0
    now = 0
    for _ in range(2000):
        now += 5
        if client.state is TcpState.ESTABLISHED or client.state is TcpState.FIN_WAIT_1:
            sent_up += client.send(up_data[sent_up:], now)
            if sent_up == len(up_data):
                client.shutdown(now)
        if server.state in (TcpState.ESTABLISHED, TcpState.CLOSE_WAIT):
            sent_down += server.send(down_data[sent_down:], now)
            if sent_down == len(down_data):
                server.shutdown(now)
        for seg in out(client, now):
            server.receive(TcpRepr.parse(seg.emit(LOCAL, REMOTE), LOCAL, REMOTE), now)
        for seg in server.take_segments(-1, now):
            client.receive(TcpRepr.parse(seg.emit(REMOTE, LOCAL), REMOTE, LOCAL), now)
        data = server.read()
        got_server += data
        server.consumed(len(data), now)
        data = client.read()
        got_client += data
        client.consumed(len(data), now)
        for c in (client, server):
            t = c.get_timer()
            if t is not None and t <= now:
                c.handle_timer(now)
        if client.state is TcpState.TIME_WAIT and server.state in (TcpState.CLOSED, TcpState.TIME_WAIT):
            break
    assert bytes(got_server) == up_data and bytes(got_client) == down_data
    assert client.state is TcpState.TIME_WAIT           # both closed (simultaneously or not)
    assert server.state in (TcpState.CLOSED, TcpState.TIME_WAIT)
    assert client.sack_ok and client.ts_ok and client.ws_ok
