"""Flood resistance in the stack's SYN path (fake clock): the rate limit, the half-open bound, SYN cookies.

The client side is played by hand: real clients complete their handshakes (and send data), flood SYNs never do.
What is judged: the stack's state stays bounded, uncompleted handshakes never become a ServiceConnect, real clients
still get in, established connections keep working, and cookie SYN-ACKs stay within their share of the line.
"""

import random

import pytest

from pyslirp.net import flows as F
from pyslirp.net.events import FlowLog, ServiceConnect, ServiceReadCredit, ServiceSend, ServiceShutdown
from pyslirp.net.flows import Service
from pyslirp.net.stack import IPStack, StackConfig
from pyslirp.net.tcp.conn import TcpConfig, TcpState, window_shift
from pyslirp.net.tcp.syncookie import TICK_MS, ts_decode
from pyslirp.wire import tcp
from pyslirp.wire.ipv4 import PROTO_TCP, Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import TcpRepr

LOCAL = ip_bytes("10.0.0.1")
REMOTE = ip_bytes("10.0.0.2")
SPOOFED = ip_bytes("192.0.2.99")
SSH = Service(22, "127.0.0.1", 22, "SSH")


def make_stack(**kw):
    kw.setdefault("services", (SSH,))
    kw.setdefault("max_connections", 256)
    kw.setdefault("max_per_service", 256)
    return IPStack(StackConfig(**kw), random.Random(11))


def syn_packet(port, isn=1000, src=REMOTE, **options):
    seg = TcpRepr(port, 22, isn, 0, tcp.SYN, 65535, **options)
    return Ipv4Repr(src, LOCAL, PROTO_TCP, seg.emit(src, LOCAL)).emit()


class Wire(object):
    """Everything the stack sends, parsed and sorted by the client port it is for."""

    def __init__(self, stack):
        self.stack = stack
        self.by_port = {}
        self.total = 0

    def pump(self):
        for _, packet in self.stack.take_packets(-1):
            ip = Ipv4Repr.parse(packet)
            assert ip.dst == REMOTE and ip.protocol == PROTO_TCP
            seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
            self.by_port.setdefault(seg.dst_port, []).append(seg)
            self.total += 1

    def take(self, port):
        self.pump()
        return self.by_port.pop(port, [])

    def synacks(self):
        self.pump()
        return sum(1 for segs in self.by_port.values() for s in segs if s.flags == tcp.SYN | tcp.ACK)


class Client(object):
    """One real client: sends its SYN, answers the SYN-ACK, exchanges data."""

    def __init__(self, stack, wire, port, isn=5000, **syn_options):
        self.stack = stack
        self.wire = wire
        self.port = port
        self.seq = isn
        self.ack = 0
        self.syn_options = dict(mss=1460)
        self.syn_options.update(syn_options)
        self.ts = None
        self.data = bytearray()

    def send(self, flags, payload=b"", now=0, **kw):
        if self.ts is not None and "timestamp" not in kw:
            kw["timestamp"] = (now + 7, self.ts)
        seg = TcpRepr(self.port, 22, self.seq, self.ack, flags, 65535, payload=payload, **kw)
        self.stack.receive_packet(Ipv4Repr(REMOTE, LOCAL, PROTO_TCP, seg.emit(REMOTE, LOCAL)).emit(), now)
        self.seq = (self.seq + seg.seg_len) & 0xFFFFFFFF
        return seg

    def syn(self, now=0):
        seq = self.seq
        self.send(tcp.SYN, now=now, **self.syn_options)
        self.seq = seq + 1
        self.isn = seq

    def receive(self):
        segs = self.wire.take(self.port)
        for s in segs:
            if s.flags & tcp.SYN:
                self.ack = (s.seq + 1) & 0xFFFFFFFF
                if s.timestamp is not None:
                    self.ts = s.timestamp[0]
            elif s.seg_len and s.seq == self.ack:
                self.ack = (self.ack + s.seg_len) & 0xFFFFFFFF
                self.data += s.payload
        return segs

    def handshake(self, now=0, payload=b""):
        """SYN, SYN-ACK, ACK; returns the SYN-ACK (None if there was none)."""
        self.syn(now)
        synack = [s for s in self.receive() if s.flags == tcp.SYN | tcp.ACK]
        if not synack:
            return None
        self.send(tcp.ACK | (tcp.PSH if payload else 0), payload, now=now)
        return synack[0]


def of_type(events, cls):
    return [e for e in events if isinstance(e, cls)]


def fill_half_open(stack, n, now=0):
    """n stateful SYNs whose services never answer: the half-open table is full."""
    for i in range(n):
        stack.receive_packet(syn_packet(30000 + i), now)
    connects = of_type(stack.take_events(), ServiceConnect)
    assert len(connects) == n and stack.half_open == n
    return connects


def flood(stack, count, start=0, first_port=10000, step_ms=0, now=0, wire=None):
    """``count`` SYNs from the client's address, incrementing source ports (hping3 -S -s BASE --flood).

    With ``wire``, the line takes what the stack sends every 50 SYNs.
    """
    t = now
    for i in range(count):
        stack.receive_packet(syn_packet(first_port + (start + i) % 20000, isn=(start + i) * 7919), int(t))
        t += step_ms
        if wire is not None and i % 50 == 49:
            wire.pump()
    return int(t)


# -- the cookie path -------------------------------------------------------------------------------------------

def test_a_full_half_open_table_turns_syns_into_cookies_without_state():
    stack = make_stack(max_half_open=4)
    wire = Wire(stack)
    fill_half_open(stack, 4)
    assert wire.synacks() == 0                       # stateful SYNs wait for their service
    flood(stack, 5000, step_ms=1, wire=wire)
    assert of_type(stack.take_events(), ServiceConnect) == []
    assert stack.connections_active == 4 and len(stack._by_id) == 4 and stack.half_open == 4
    assert stack.syncookies_sent + stack.syncookies_limited == 5000
    assert stack.syncookies_sent == wire.synacks()
    assert stack.flows_refused == {}                 # a cookie is not a refusal


def test_cookie_syn_ack_values_and_the_completed_handshake():
    stack = make_stack(max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40000, isn=77777)
    client.syn(100)
    (synack,) = client.receive()
    assert synack.flags == tcp.SYN | tcp.ACK and synack.ack == 77778
    assert synack.mss == 1460 and synack.wscale is None and not synack.sack_permitted and synack.timestamp is None
    assert synack.window == 65535
    # No state, and no ServiceConnect; one FlowLog says which limit turned the cookies on (an audit record).
    (on,) = stack.take_events()
    assert (on.kind, on.route.limit, on.cause, on.flow.client_port) == ("syn_cookies", "max_half_open", "limit", 40000)
    assert stack.connections_active == 1
    # The client's ACK brings its first bytes; they wait until the service socket is there.
    client.send(tcp.ACK | tcp.PSH, b"hello", now=150)
    events = stack.take_events()
    (connect,) = of_type(events, ServiceConnect)
    assert connect.route == F.Route("service", "127.0.0.1", 22, "direct", "SSH")
    assert of_type(events, ServiceSend) == [] and of_type(events, FlowLog) == []
    rec = stack._by_id[connect.conn_id]
    assert rec.conn.state is TcpState.ESTABLISHED and rec.conn.iss == synack.seq
    assert stack.half_open == 2 and stack.syncookies_accepted == 1
    stack.handle_timer(400)                          # the delayed ACK for the held bytes
    acks = client.receive()
    assert acks and acks[-1].ack == client.seq
    stack.service_connected(connect.conn_id, 500)
    events = stack.take_events()
    assert [e.data for e in of_type(events, ServiceSend)] == [b"hello"]
    assert of_type(events, ServiceReadCredit)[0].nbytes > 0
    assert [e.text for e in of_type(events, FlowLog)] == ["opened 10.0.0.2:40000 -> SSH 127.0.0.1:22"]
    assert stack.half_open == 1
    stack.service_data(connect.conn_id, b"SSH-2.0-test\r\n", 510)
    (data,) = client.receive()
    assert data.seq == (synack.seq + 1) & 0xFFFFFFFF and data.payload == b"SSH-2.0-test\r\n"
    assert bytes(client.data) == b"SSH-2.0-test\r\n"


def test_held_data_stays_within_the_window_until_the_service_connects():
    stack = make_stack(max_half_open=1, tcp=TcpConfig(rcvbuf=4096))
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40008)
    synack = client.handshake(0)
    assert synack.window == 4096
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    for i in range(5):
        client.send(tcp.ACK, bytes([65 + i]) * 1000, now=10 + i)
    stack.handle_timer(300)
    acks = client.receive()
    assert acks[-1].ack == (client.isn + 1 + 4096) & 0xFFFFFFFF and acks[-1].window == 0
    assert of_type(stack.take_events(), ServiceSend) == []
    stack.service_connected(connect.conn_id, 400)
    (send,) = of_type(stack.take_events(), ServiceSend)
    assert send.data == b"A" * 1000 + b"B" * 1000 + b"C" * 1000 + b"D" * 1000 + b"E" * 96
    stack.service_written(connect.conn_id, len(send.data), 410)
    (update,) = client.receive()
    assert update.window == 4096                     # the window opens once the service has the bytes


def test_timestamps_carry_window_scale_and_sack_through_the_cookie():
    stack = make_stack(max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40001, wscale=7, sack_permitted=True, timestamp=(123456, 0))
    client.syn(1000)
    (synack,) = client.receive()
    assert synack.wscale == window_shift(TcpConfig().rcvbuf) and synack.sack_permitted
    assert synack.timestamp[1] == 123456 and ts_decode(synack.timestamp[0]) == (7, True)
    client.send(tcp.ACK, now=1010)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    conn = stack._by_id[connect.conn_id].conn
    assert conn.ws_ok and conn.snd_wscale == 7 and conn.sack_ok and conn.ts_ok
    assert conn.snd_wnd == 65535 << 7
    stack.service_connected(connect.conn_id, 1020)
    stack.service_data(connect.conn_id, b"x", 1030)
    (seg,) = client.receive()
    # Our TSval never goes back behind the cookie's.
    assert seg.payload == b"x" and ((seg.timestamp[0] - synack.timestamp[0]) & 0xFFFFFFFF) < 1 << 31


def test_slow_line_cookies_offer_no_timestamps_so_no_window_scale_or_sack():
    stack = make_stack(max_half_open=1)
    stack.set_line_rate(11520)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40002, wscale=7, sack_permitted=True, timestamp=(5, 0))
    client.syn(0)
    (synack,) = client.receive()
    assert synack.timestamp is None and synack.wscale is None and not synack.sack_permitted
    assert synack.mss == 536 and synack.window < 65535        # sized to the line like any new connection
    client.ts = None
    client.send(tcp.ACK, now=10)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    conn = stack._by_id[connect.conn_id].conn
    assert not conn.ws_ok and not conn.sack_ok and not conn.ts_ok
    assert conn.rcv_wnd == synack.window                       # the edge the SYN-ACK advertised


def test_a_service_that_is_down_resets_the_completed_handshake():
    stack = make_stack(max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40003)
    synack = client.handshake(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_failed(connect.conn_id, "direct: connection refused", 50)
    (rst,) = client.receive()
    assert rst.flags & tcp.RST and rst.seq == (synack.seq + 1) & 0xFFFFFFFF
    events = stack.take_events()
    (log,) = of_type(events, FlowLog)
    assert log.text.startswith("refused 10.0.0.2:40003") and "connection refused" in log.text
    assert stack.flows_refused == {F.CAUSE_SERVICE: 1} and stack.connections_active == 1


def test_client_fin_before_the_service_connects_follows_its_data():
    stack = make_stack(max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40004)
    client.handshake(0, payload=b"GET / HTTP/1.0\r\n\r\n")
    client.send(tcp.ACK | tcp.FIN, now=5)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    assert of_type(stack.take_events(), ServiceShutdown) == []
    stack.service_connected(connect.conn_id, 20)
    events = [e for e in stack.take_events() if isinstance(e, (ServiceSend, ServiceShutdown))]
    assert [type(e) for e in events] == [ServiceSend, ServiceShutdown]
    assert events[0].data == b"GET / HTTP/1.0\r\n\r\n"


def test_a_data_segment_completes_the_handshake_when_the_ack_was_lost():
    stack = make_stack(max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40005)
    client.syn(0)
    client.receive()
    client.seq = client.isn + 1
    client.send(tcp.ACK | tcp.PSH, b"first", now=300)          # the pure ACK never arrived
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_connected(connect.conn_id, 310)
    assert [e.data for e in of_type(stack.take_events(), ServiceSend)] == [b"first"]


def test_forged_or_stale_cookies_get_a_reset_and_no_state():
    stack = make_stack(max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    client = Client(stack, wire, 40006)
    client.syn(0)
    (synack,) = client.receive()
    client.ack = (client.ack + 1) & 0xFFFFFFFF                  # not the cookie
    client.send(tcp.ACK, now=10)
    (rst,) = client.receive()
    assert rst.flags == tcp.RST and rst.seq == client.ack
    assert stack.syncookies_invalid == 1 and [e.kind for e in stack.take_events()] == ["syn_cookies"]
    # The right cookie, but long after: its secret is gone.
    client.ack = (synack.seq + 1) & 0xFFFFFFFF
    client.send(tcp.ACK, now=4 * TICK_MS)
    (rst,) = client.receive()
    assert rst.flags == tcp.RST and stack.take_events() == [] and stack.connections_active == 1


def test_stray_acks_are_not_checked_while_no_cookie_is_out():
    stack = make_stack()
    wire = Wire(stack)
    client = Client(stack, wire, 40007)
    client.ack = 12345
    client.send(tcp.ACK, now=0)
    assert [s.flags for s in client.receive()] == [tcp.RST]
    assert stack.syncookies_invalid == 0 and stack.counters["tcp_no_connection"] == 1


# -- rate, half-open, and the flood --------------------------------------------------------------------------------

def test_syns_beyond_the_rate_get_cookies_instead_of_a_refusal():
    stack = make_stack(new_connections_per_second=1, burst=3)
    wire = Wire(stack)
    for port in (40010, 40011, 40012):
        stack.receive_packet(syn_packet(port), 0)
    assert len(of_type(stack.take_events(), ServiceConnect)) == 3
    assert wire.synacks() == 0
    client = Client(stack, wire, 40013)
    assert client.handshake(1, payload=b"hello") is not None  # a cookie: no token now, no state
    # Completed, it needs a token: none yet.  Not refused (the client saw it open): its connect waits.
    events = stack.take_events()
    (on,) = of_type(events, FlowLog)
    assert (on.kind, on.route.limit, on.cause) == ("syn_cookies", "new_connections_per_second", "rate")
    assert of_type(events, ServiceConnect) == [] and stack.flows_refused == {}
    assert not [s for s in client.receive() if s.flags & tcp.RST]
    assert stack.connections_active == 4 and stack.token_waits == 1
    assert stack.get_timer() <= 1000                            # the bucket's next token
    stack.handle_timer(999)
    assert of_type(stack.take_events(), ServiceConnect) == []
    stack.handle_timer(1000)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    assert connect.flow.client_port == 40013
    stack.service_connected(connect.conn_id, 1010)
    assert [e.data for e in of_type(stack.take_events(), ServiceSend)] == [b"hello"]
    stack.service_data(connect.conn_id, b"hi", 1020)
    client.receive()
    assert bytes(client.data) == b"hi"


def test_the_bucket_counts_completed_handshakes_under_cookies():
    stack = make_stack(new_connections_per_second=20, burst=40, max_half_open=1)
    stack.set_line_rate(10 ** 7)                                # SYN-ACKs limited by nothing here
    wire = Wire(stack)
    fill_half_open(stack, 1)                                    # one token used
    clients = [Client(stack, wire, 41000 + i) for i in range(60)]
    for c in clients:
        assert c.handshake(10) is not None
    admitted = of_type(stack.take_events(), ServiceConnect)
    # 39 tokens now; the other 21 wait, in order, one token every 50 ms (never refused, never early).
    assert len(admitted) == 39 and stack.flows_refused == {} and stack.connections_active == 61
    assert [c.flow.client_port for c in admitted] == list(range(41000, 41039))
    order = []
    now = 10
    while now <= 2000:
        stack.handle_timer(now)
        got = of_type(stack.take_events(), ServiceConnect)
        assert len(got) <= 1 + (now - 10) // 50 - len(order)
        order += [c.flow.client_port for c in got]
        now += 10
    assert order == list(range(41039, 41060))
    assert stack.get_timer() is None or stack.get_timer() > 2000 or not stack._token_wait
    # A client that gives up while it waits costs nothing more: it is skipped.
    late = [Client(stack, wire, 42000 + i) for i in range(50)]
    for c in late:
        c.handshake(3100)                                       # two seconds later: the bucket is full again
    assert len(of_type(stack.take_events(), ServiceConnect)) == 40
    quitter = late[40]
    quitter.send(tcp.RST, now=3101)
    (gone,) = [e for e in stack.take_events() if isinstance(e, FlowLog)]
    assert (gone.kind, gone.cause, gone.flow.client_port) == ("refused", "rate", 42040)
    stack.handle_timer(3150)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    assert connect.flow.client_port == 42041


def test_a_flood_opens_no_service_connections_and_real_clients_get_in():
    stack = make_stack()                                        # the defaults: 20/s, burst 40, 32 half-open
    stack.set_line_rate(11520 * 4)                              # SYN-ACKs: 180/s (a quarter of 460800 bit/s)
    wire = Wire(stack)
    # A flood of 1000 SYNs a second for 30 s (never completed: the flooder ignores every SYN-ACK), and ten real
    # clients starting one a second, each retrying its SYN as Linux does (after 1, 2, 4, 8 s) until answered.
    # The SYN-ACK limit answers about a fifth of the SYNs; a SYN that comes back is answered first.
    order = random.Random(5)
    attempts = {}
    for i in range(10):
        t = 1000 + 1000 * i
        for gap in (0, 1000, 2000, 4000, 8000):
            t += gap + order.randrange(20)                      # timers are never in step with the flood
            attempts.setdefault(t, []).append(i)
    clients = [Client(stack, wire, 50000 + i, isn=i * 100000) for i in range(10)]
    done = {}
    connects = 0
    max_records = 0
    for step in range(30000):                                   # one flood SYN a millisecond
        now = step
        flood_first = order.random() < 0.5                      # in the same millisecond, either may come first
        if flood_first:
            stack.receive_packet(syn_packet(10000 + step, isn=step * 7919), now)
        for i in attempts.get(now, ()):
            c = clients[i]
            if i in done:
                continue
            c.seq = c.isn if hasattr(c, "isn") else c.seq
            if c.handshake(now) is not None:
                done[i] = now
        if not flood_first:
            stack.receive_packet(syn_packet(10000 + step, isn=step * 7919), now)
        connects += len(of_type(stack.take_events(), ServiceConnect))
        if step % 50 == 0:
            wire.pump()
            wire.by_port = dict((p, segs) for p, segs in wire.by_port.items() if p >= 50000)
        max_records = max(max_records, len(stack._by_id))
    assert len(done) == 10, sorted(done)
    assert stack._unanswered.recognised > 0                     # most got in when their SYN came back
    # The stateful SYNs before the cookies took over (at most the burst), then only the real clients.
    assert connects <= 40 + len(done)
    assert stack.syncookies_accepted == len(done)               # every real client came through a cookie
    assert max_records <= 32 + len(done) and len(stack._control) <= 256
    assert stack.syncookies_limited > 0


def test_syn_acks_stay_within_their_share_of_the_line():
    stack = make_stack(max_half_open=1)
    stack.set_line_rate(11520)                                  # 115200 bit/s
    wire = Wire(stack)
    fill_half_open(stack, 1)
    flood(stack, 3000, now=0, step_ms=1, wire=wire)             # three seconds of SYNs at 1000/s
    sent = wire.synacks()
    # A quarter of the line: 2880 bytes/s / 64 bytes = 45 SYN-ACKs a second, plus a burst of 4.
    assert 0 < sent <= 3 * 45 + 4 + 1
    assert stack.syncookies_limited == 3000 - sent


def test_established_connections_keep_working_through_a_flood():
    stack = make_stack()
    wire = Wire(stack)
    client = Client(stack, wire, 40020)
    client.syn(0)
    (connect,) = of_type(stack.take_events(), ServiceConnect)
    stack.service_connected(connect.conn_id, 0)
    client.receive()
    client.send(tcp.ACK, now=0)
    stack.take_events()
    now = 0
    for round_ in range(5):
        now = flood(stack, 2000, start=round_ * 2000, now=now, step_ms=0.25)
        client.send(tcp.ACK | tcp.PSH, b"ping %d" % round_, now=now)
        sends = of_type(stack.take_events(), ServiceSend)
        assert [e.data for e in sends if e.conn_id == connect.conn_id] == [b"ping %d" % round_]
        stack.service_data(connect.conn_id, b"pong %d" % round_, now)
        client.receive()
        assert bytes(client.data).endswith(b"pong %d" % round_)
        wire.by_port = {}
    assert stack._by_id[connect.conn_id].conn.state is TcpState.ESTABLISHED


def test_cookies_end_after_the_flood():
    stack = make_stack(max_half_open=2)
    wire = Wire(stack)
    connects = fill_half_open(stack, 2)
    now = flood(stack, 500, step_ms=1, wire=wire)
    assert stack.policy.cookies_on(now)
    for connect in connects:
        stack.service_connected(connect.conn_id, now)
    assert stack.half_open == 0
    stack.take_events()
    # The half-open table has room again, but SYNs keep coming faster than the rate: still cookies.
    now = flood(stack, 100, start=500, now=now, step_ms=10)
    assert of_type(stack.take_events(), ServiceConnect) == [] and stack.policy.cookies_on(now)
    # A quiet spell: new SYNs are admitted statefully again.
    now += F.COOKIE_HOLD + 1000
    assert not stack.policy.cookies_on(now)
    stack.receive_packet(syn_packet(45000), now)
    assert len(of_type(stack.take_events(), ServiceConnect)) == 1
    wire.pump()


def test_a_spoofed_flood_is_dropped_and_counted():
    stack = make_stack()
    wire = Wire(stack)
    for i in range(3000):
        src = bytes([192, 0, 2, i % 250 + 1]) if i % 2 else SPOOFED
        stack.receive_packet(syn_packet(10000 + i, src=src), i)
    wire.pump()
    assert wire.total == 0 and stack.take_events() == [] and len(stack._by_id) == 0
    assert stack.counters["ip_bad_src"] == 3000
    assert stack.syncookies_sent == 0


def test_under_cookies_the_limits_are_checked_when_the_handshake_completes():
    stack = make_stack(max_connections=2, max_per_service=2, max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)
    Client(stack, wire, 40030).handshake(0)
    assert len(of_type(stack.take_events(), ServiceConnect)) == 1
    third = Client(stack, wire, 40031)
    assert third.handshake(1) is not None            # no reset for a SYN while cookies are on
    (rst,) = third.receive()
    assert rst.flags == tcp.RST and stack.flows_refused == {F.CAUSE_LIMIT: 1}
    assert stack.half_open_evicted == 0              # nothing may go: one waits for its service, one is open


def test_a_completed_handshake_evicts_a_flow_whose_syn_ack_was_never_answered():
    stack = make_stack(max_connections=3, max_per_service=3, max_half_open=3)
    wire = Wire(stack)
    connects = fill_half_open(stack, 3)               # a flood's first SYNs, before the cookies took over
    for c in connects:
        stack.service_connected(c.conn_id, 10)       # their SYN-ACKs go out and are never answered
    wire.pump()
    real = Client(stack, wire, 40040)
    for i in range(60):                              # SYNs faster than the rate: cookies from now on
        stack.receive_packet(syn_packet(30100 + i), 20)
    assert real.handshake(30) is not None            # too early: an ACK may still be on its way to them
    (rst,) = real.receive()
    assert rst.flags == tcp.RST and stack.half_open_evicted == 0
    stack.handle_timer(1010)                         # their SYN-ACKs time out and go again: now they may go
    wire.pump()
    wire.by_port = {}
    stack.take_events()
    assert stack.policy.cookies_on(1010)
    refused = dict(stack.flows_refused)              # the SYNs before the cookies met the limits
    real = Client(stack, wire, 40040, isn=9000)
    assert real.handshake(1020) is not None
    events = stack.take_events()
    (connect,) = of_type(events, ServiceConnect)
    assert stack.half_open_evicted == 1
    (close,) = [e for e in events if type(e).__name__ == "ServiceClose"]
    assert close.conn_id == connects[0].conn_id and close.reason == "evicted"   # the oldest went
    assert [seg.flags & tcp.RST for seg in wire.take(30000)] == [tcp.RST]
    assert stack.flows_refused == refused and stack.connections_active == 3
    # Established connections are never evicted: once every slot holds one, a completed handshake is refused.
    stack.service_connected(connect.conn_id, 1030)
    real.receive()
    others = [Client(stack, wire, 40041 + i) for i in range(3)]
    for c in others:
        c.handshake(1040)
    # Two more evictions; the third finds only completed handshakes (two of them still waiting for their
    # service) and is refused.
    assert stack.half_open_evicted == 3 and len(of_type(stack.take_events(), ServiceConnect)) == 2
    assert stack.flows_refused[F.CAUSE_LIMIT] == refused[F.CAUSE_LIMIT] + 1
    late = Client(stack, wire, 40050)
    late.handshake(1050)
    (rst,) = late.receive()
    assert rst.flags == tcp.RST and stack.flows_refused[F.CAUSE_LIMIT] == refused[F.CAUSE_LIMIT] + 2


@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_handshakes_never_raise_and_stay_bounded(seed):
    rng = random.Random(seed)
    stack = make_stack(max_half_open=3)
    wire = Wire(stack)
    now = 0
    for _ in range(3000):
        now += rng.randrange(0, 50)
        port = rng.randrange(40000, 40064)
        flags = rng.choice((tcp.SYN, tcp.ACK, tcp.ACK | tcp.PSH, tcp.RST, tcp.FIN | tcp.ACK))
        seg = TcpRepr(port, 22, rng.getrandbits(32), rng.getrandbits(32), flags, rng.randrange(65536),
                      payload=b"x" * rng.randrange(3), timestamp=rng.choice((None, (rng.getrandbits(32),
                                                                                    rng.getrandbits(32)))))
        stack.receive_packet(Ipv4Repr(REMOTE, LOCAL, PROTO_TCP, seg.emit(REMOTE, LOCAL)).emit(), now)
        for e in of_type(stack.take_events(), ServiceConnect):
            if rng.random() < 0.5:
                stack.service_connected(e.conn_id, now)
            else:
                stack.service_failed(e.conn_id, "refused", now)
        stack.handle_timer(now)
        wire.pump()
        wire.by_port = {}
        assert 0 <= stack.half_open <= len(stack._by_id)
    assert len(stack._by_id) <= 64


def test_the_flood_figures_are_in_the_metrics():
    from pyslirp import metrics
    from pyslirp.core import Core
    from pyslirp.ppp.link import LinkConfig
    stack = make_stack(max_half_open=1)
    core = Core(LinkConfig(), stack.config, random.Random(1), stack=stack)
    wire = Wire(stack)
    assert metrics.collect(core, 0).value("pyslirp_syn_cookies_on") == 0
    fill_half_open(stack, 1)
    flood(stack, 500, step_ms=1, wire=wire)
    client = Client(stack, wire, 40060)
    client.handshake(600)
    forged = Client(stack, wire, 40061)
    forged.ack = 99
    forged.send(tcp.ACK, now=601)
    snap = metrics.collect(core, 601)
    assert snap.samples("pyslirp_syn_cookies_total") == {
        ("sent",): stack.syncookies_sent, ("limited",): stack.syncookies_limited, ("valid",): 1, ("invalid",): 1}
    assert stack.syncookies_sent > 0 and stack.syncookies_limited > 0
    assert snap.value("pyslirp_syn_cookies_on") == 1
    assert snap.value("pyslirp_tcp_half_open_evicted_total") == 0
    assert metrics.collect(core, 601 + F.COOKIE_HOLD).value("pyslirp_syn_cookies_on") == 0


def test_flows_waiting_for_a_token_are_dropped_with_the_link():
    stack = make_stack(new_connections_per_second=1, burst=1, max_half_open=1)
    wire = Wire(stack)
    fill_half_open(stack, 1)                                    # the only token
    for port in (40070, 40071):
        Client(stack, wire, port).handshake(5)
    assert stack.token_waits == 2 and stack.connections_active == 3
    stack.take_events()
    stack.reset(10)
    abandoned = [e for e in stack.take_events() if isinstance(e, FlowLog)]
    assert sorted(e.flow.client_port for e in abandoned if e.kind == "abandoned") == [30000, 40070, 40071]
    stack.handle_timer(5000)
    assert of_type(stack.take_events(), ServiceConnect) == [] and stack.get_timer() is None
    assert stack.connections_active == 0 and stack.half_open == 0


def test_many_connections_at_once_are_answered_when_their_syns_come_back_together():
    stack = make_stack()
    stack.set_line_rate(200000)                                 # SYN-ACKs: 781 a second, bursts of 78
    wire = Wire(stack)
    flood(stack, 100, wire=wire)                                # cookies are on
    wire.pump()
    wire.by_port = {}
    stack.take_events()
    clients = [Client(stack, wire, 50000 + i, isn=1000 + i * 100000) for i in range(300)]
    answered = set()
    for at in (100, 1100):                                      # the SYNs, and Linux's first retransmission
        for c in clients:
            if c.port not in answered:
                c.seq = getattr(c, "isn", c.seq)
                c.syn(at)
        wire.pump()
        for c in clients:
            if any(s.flags == tcp.SYN | tcp.ACK for s in wire.by_port.pop(c.port, [])):
                answered.add(c.port)
        if at == 100:
            assert len(answered) == 78                          # the line's burst; the rest are remembered
    # The retransmissions all come back within a few ms: their own budget holds a second's worth.
    assert len(answered) == 300 and stack._unanswered.recognised == 222 - 78    # 78: the line budget again
