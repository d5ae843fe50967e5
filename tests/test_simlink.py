"""The IP stack and its TCP over a seeded, hostile simulated link, with a fake clock.

Between the IPStack and a small test-only TCP client (active open, go-back-N with out-of-order buffering on
receive) sits a link that loses, duplicates, reorders (random delay) and corrupts packets.  A simulated service
behind the stack follows the runtime's protocol (connect, credit, send, written, eof).  Every byte must arrive
intact in both directions, the connection must close cleanly on both sides, and corrupted packets must all be
caught by the checksums.
"""

import heapq
import random

import pytest

from pyslirp.net.events import (FlowLog, ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend,
                                ServiceShutdown)
from pyslirp.net.stack import IPStack, StackConfig
from pyslirp.wire import tcp
from pyslirp.wire.errors import ParseError
from pyslirp.wire.ipv4 import PROTO_TCP, Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import TcpRepr

LOCAL = ip_bytes("10.0.0.1")
REMOTE = ip_bytes("10.0.0.2")
MASK = 0xFFFFFFFF
IP_PARSE_ERRORS = {"too_short", "bad_version", "bad_ihl", "truncated", "bad_length", "bad_checksum", "bad_fragment"}
TCP_NOT_PARSE_ERRORS = {"tcp_no_connection", "tcp_syn_while_pending", "tcp_oversize_out"}


def seq_lt(a, b):
    return ((a - b) & MASK) > 0x80000000


def seq_le(a, b):
    return a == b or seq_lt(a, b)


class Link(object):
    """One direction of the wire: delay with jitter (reordering), loss, duplication, corruption."""

    def __init__(self, rng, loss=0.0, dup=0.0, corrupt=0.0, delay=20, jitter=0):
        self.rng = rng
        self.loss, self.dup, self.corrupt = loss, dup, corrupt
        self.delay, self.jitter = delay, jitter
        self.queue = []
        self.seq = 0
        self.sent = self.lost = self.duplicated = self.corrupted = 0

    def put(self, packet, now):
        self.sent += 1
        if self.rng.random() < self.loss:
            self.lost += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            data = packet
            if self.rng.random() < self.corrupt:
                self.corrupted += 1
                b = bytearray(data)
                b[self.rng.randrange(len(b))] ^= self.rng.randrange(1, 256)
                data = bytes(b)
            when = now + self.delay + self.rng.randrange(self.jitter + 1)
            self.seq += 1
            heapq.heappush(self.queue, (when, self.seq, data))

    def due(self, now):
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(heapq.heappop(self.queue)[2])
        return out

    def next_time(self):
        return self.queue[0][0] if self.queue else None


class SimClient(object):
    """A minimal active-open TCP: SYN, go-back-N sending with an RTO, cumulative ACKs, FIN."""

    MSS = 1000
    WINDOW = 32768
    RTO = 400

    def __init__(self, data, port=40312, isn=0xFFFFF000):
        self.port = port
        self.iss = isn
        self.data = data                 # to send
        self.received = bytearray()
        self.state = "CLOSED"
        self.snd_una = isn
        self.snd_nxt = isn
        self.peer_window = 0
        self.rcv_nxt = None
        self.ooo = {}                    # seq -> payload held beyond a gap
        self.fin_received = False
        self.out = []
        self.rto_at = None
        self.bad_packets = 0
        self.retransmits = 0
        self.late_segments = 0

    def _emit(self, flags, seq, payload=b"", mss=None):
        seg = TcpRepr(self.port, 22, seq & MASK, (self.rcv_nxt or 0) & MASK if flags & tcp.ACK else 0, flags,
                      self.WINDOW, mss=mss, payload=payload)
        self.out.append(Ipv4Repr(REMOTE, LOCAL, PROTO_TCP, seg.emit(REMOTE, LOCAL)).emit())

    def connect(self, now):
        self.state = "SYN_SENT"
        self._emit(tcp.SYN, self.iss, mss=self.MSS)
        self.snd_nxt = (self.iss + 1) & MASK
        self.rto_at = now + self.RTO

    @property
    def data_end(self):
        return (self.iss + 1 + len(self.data)) & MASK

    @property
    def fin_acked(self):
        return self.state != "SYN_SENT" and self.snd_una == (self.data_end + 1) & MASK

    def receive(self, packet, now):
        try:
            ip = Ipv4Repr.parse(packet)
            seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
        except ParseError:
            self.bad_packets += 1
            return
        assert ip.src == LOCAL and ip.dst == REMOTE and seg.dst_port == self.port
        if self.fin_acked and self.fin_received:
            # Our TIME-WAIT: late duplicates of ours may draw a RST from the closed connection (RFC 9293
            # 3.10.7.1); nothing is left to lose.
            self.late_segments += 1
            return
        assert not seg.flags & tcp.RST, "the stack reset the connection"
        if self.state == "SYN_SENT":
            if seg.flags & tcp.SYN and seg.flags & tcp.ACK and seg.ack == (self.iss + 1) & MASK:
                self.state = "ESTABLISHED"
                self.rcv_nxt = (seg.seq + 1) & MASK
                self.snd_una = seg.ack
                self.peer_window = seg.window
                self.rto_at = None
                self._emit(tcp.ACK, self.snd_nxt)
            return
        if seg.flags & tcp.SYN:                    # a retransmitted SYN-ACK: our ACK was lost
            self._emit(tcp.ACK, self.snd_nxt)
            return
        if seg.flags & tcp.ACK:
            if seq_lt(self.snd_una, seg.ack) and seq_le(seg.ack, self.snd_nxt):
                self.snd_una = seg.ack
                self.rto_at = now + self.RTO if self.snd_una != self.snd_nxt else None
            if seq_le(self.snd_una, seg.ack):
                self.peer_window = seg.window
        if seg.payload or seg.flags & tcp.FIN:
            if seg.payload and seg.seq != self.rcv_nxt:
                if seq_lt(self.rcv_nxt, seg.seq):
                    self.ooo[seg.seq] = seg.payload
            else:
                if seg.payload:
                    self.received += seg.payload
                    self.rcv_nxt = (self.rcv_nxt + len(seg.payload)) & MASK
                    while self.rcv_nxt in self.ooo:
                        piece = self.ooo.pop(self.rcv_nxt)
                        self.received += piece
                        self.rcv_nxt = (self.rcv_nxt + len(piece)) & MASK
                if seg.flags & tcp.FIN and (seg.seq + len(seg.payload)) & MASK == self.rcv_nxt \
                        and not self.fin_received:
                    self.fin_received = True
                    self.rcv_nxt = (self.rcv_nxt + 1) & MASK
            self._emit(tcp.ACK, self.snd_nxt)      # ACK every data segment (duplicates too)

    def poll(self, now):
        if self.state == "SYN_SENT":
            if now >= self.rto_at:
                self.retransmits += 1
                self._emit(tcp.SYN, self.iss, mss=self.MSS)
                self.rto_at = now + self.RTO
            return
        if self.rto_at is not None and now >= self.rto_at:
            self.retransmits += 1
            self.snd_nxt = self.snd_una               # go back N
            self.rto_at = None
        in_flight = (self.snd_nxt - self.snd_una) & MASK
        window = max(self.peer_window, self.MSS if self.snd_una == self.snd_nxt else 0)   # probe a zero window
        while True:
            offset = (self.snd_nxt - self.iss - 1) & MASK
            if offset < len(self.data):
                room = window - in_flight
                if room <= 0:
                    break
                n = min(self.MSS, room, len(self.data) - offset)
                self._emit(tcp.ACK | tcp.PSH, self.snd_nxt, self.data[offset:offset + n])
                self.snd_nxt = (self.snd_nxt + n) & MASK
                in_flight += n
            elif offset == len(self.data):
                self._emit(tcp.ACK | tcp.FIN, self.snd_nxt)
                self.snd_nxt = (self.snd_nxt + 1) & MASK
            else:
                break
            if self.rto_at is None:
                self.rto_at = now + self.RTO

    def take(self):
        out, self.out = self.out, []
        return out


class SimService(object):
    """The runtime's side of one connection, reduced to the stack's event protocol."""

    def __init__(self, stack, data, chunk=3000):
        self.stack = stack
        self.data = data
        self.chunk = chunk
        self.conn_id = None
        self.sent = 0
        self.credit = 0
        self.received = bytearray()
        self.shutdown = False
        self.eof_sent = False
        self.closed = None
        self.logs = []

    def handle(self, e, now):
        if isinstance(e, ServiceConnect):
            assert self.conn_id is None and (e.route.host, e.route.port) == ("127.0.0.1", 22)
            self.conn_id = e.conn_id
            self.stack.service_connected(e.conn_id, now)
        elif isinstance(e, ServiceReadCredit):
            self.credit += e.nbytes
        elif isinstance(e, ServiceSend):
            assert not self.shutdown
            self.received += e.data
            self.stack.service_written(e.conn_id, len(e.data), now)
        elif isinstance(e, ServiceShutdown):
            self.shutdown = True
        elif isinstance(e, ServiceClose):
            self.closed = e.reason
        elif isinstance(e, FlowLog):
            self.logs.append(e.text)

    def poll(self, now):
        if self.conn_id is None or self.closed:
            return
        while self.credit > 0 and self.sent < len(self.data):
            n = min(self.credit, self.chunk, len(self.data) - self.sent)
            self.stack.service_data(self.conn_id, self.data[self.sent:self.sent + n], now)
            self.sent += n
            self.credit -= n
        if self.sent == len(self.data) and not self.eof_sent:
            self.eof_sent = True
            self.stack.service_eof(self.conn_id, now)


class Services(object):
    """Routes the stack's service events to the SimService of each connection (found by client port)."""

    def __init__(self, by_port):
        self.by_port = by_port
        self.by_id = {}

    def dispatch(self, events, now):
        for e in events:
            if isinstance(e, ServiceConnect):
                self.by_id[e.conn_id] = self.by_port[e.flow.client_port]
            self.by_id[e.flow_id if isinstance(e, FlowLog) else e.conn_id].handle(e, now)

    def poll(self, now):
        for svc in self.by_port.values():
            svc.poll(now)


def run(seed, size, loss=0.0, dup=0.0, corrupt=0.0, jitter=0, budget_per_ms=None, limit_ms=600000,
        mtu=1500, check_budget=None, clients=1):
    rng = random.Random(seed)
    stack = IPStack(StackConfig(mtu=mtu), random.Random(seed + 1))
    to_stack = Link(random.Random(seed + 2), loss, dup, corrupt, delay=15, jitter=jitter)
    to_client = Link(random.Random(seed + 3), loss, dup, corrupt, delay=15, jitter=jitter)
    sims = []
    for i in range(clients):
        up = bytes(rng.getrandbits(8) for _ in range(size))
        down = bytes(rng.getrandbits(8) for _ in range(size))
        sims.append((SimClient(up, port=40312 + i, isn=rng.getrandbits(32)), SimService(stack, down)))
    by_port = dict((c.port, c) for c, _ in sims)
    services = Services(dict((c.port, svc) for c, svc in sims))
    now = 0
    tokens = 0
    for client, _ in sims:
        client.connect(now)
    step = 5
    down_done = None
    lost_signals = 0                # fast retransmits the stack reported (IPStack.take_lost_frame_signal)
    while now < limit_ms:
        for client, _ in sims:
            for packet in client.take():
                to_stack.put(packet, now)
        for packet in to_stack.due(now):
            stack.receive_packet(packet, now)
        lost_signals += stack.take_lost_frame_signal()
        t = stack.get_timer()
        if t is not None and t <= now:
            stack.handle_timer(now)
        services.dispatch(stack.take_events(), now)
        services.poll(now)
        services.dispatch(stack.take_events(), now)
        if budget_per_ms is None:
            out = stack.take_packets(-1)
        else:
            tokens = min(tokens + budget_per_ms * step, 4 * 1500)
            out = stack.take_packets(tokens)
            bulk = sum(len(p) for urgent, p in out if not urgent)
            if check_budget is not None:
                check_budget(bulk, tokens)
            tokens -= sum(len(p) for _, p in out)
        for _, packet in out:
            assert len(packet) <= mtu
            to_client.put(packet, now)
        services.dispatch(stack.take_events(), now)
        for packet in to_client.due(now):
            try:
                port = TcpRepr.parse(Ipv4Repr.parse(packet).payload, LOCAL, REMOTE, verify=False).dst_port
            except ParseError:
                port = None
            # A corrupted port number would misroute: the checksum of whichever client gets it catches it.
            by_port.get(port, sims[0][0]).receive(packet, now)
        for client, _ in sims:
            client.poll(now)
        if down_done is None and all(len(c.received) == len(svc.data) for c, svc in sims):
            down_done = now
        done = (all(c.fin_acked and c.fin_received and len(svc.received) == len(c.data) for c, svc in sims)
                and stack.connections_active == 0 and not to_stack.queue and not to_client.queue)
        if done:
            break
        now += step
    client, service = sims[0]
    return Result(stack=stack, sims=sims, client=client, service=service, to_stack=to_stack,
                  to_client=to_client, now=now, up=client.data, down=service.data, down_done=down_done,
                  lost_signals=lost_signals)


class Result(object):
    def __init__(self, **kw):
        self.__dict__.update(kw)


def check_delivery(r):
    for client, service in r.sims:
        assert bytes(service.received) == client.data
        assert bytes(client.received) == service.data
        assert service.shutdown and service.eof_sent
        assert service.closed is None                   # a clean close never aborts the service socket
        assert any(t.startswith("opened 10.0.0.2:%d " % client.port) for t in service.logs)
        closed = [t for t in service.logs if t.startswith("closed ")]
        assert len(closed) == 1 and closed[0].endswith("reason=fin")
        assert "in=%d out=%d" % (len(client.data), len(service.data)) in closed[0]
    assert r.stack.connections_active == 0


def test_clean_link_delivers_everything():
    r = run(1, 100000)
    check_delivery(r)
    assert r.client.retransmits == 0 and r.client.bad_packets == 0
    assert r.stack.counters == {}
    assert r.lost_signals == 0


@pytest.mark.parametrize("seed", [11, 12])
def test_hostile_link_delivers_every_byte_intact(seed):
    r = run(seed, 200 * 1024, loss=0.04, dup=0.03, corrupt=0.03, jitter=40)
    check_delivery(r)
    # The impairments really happened, and every corrupted packet was caught by a checksum.
    for link in (r.to_stack, r.to_client):
        assert link.lost > 0 and link.duplicated > 0 and link.corrupted > 0
    assert r.client.bad_packets == r.to_client.corrupted
    counters = r.stack.counters
    caught = sum(n for reason, n in counters.items()
                 if (reason.startswith("ip_") and reason[3:] in IP_PARSE_ERRORS)
                 or (reason.startswith("tcp_") and reason not in TCP_NOT_PARSE_ERRORS))
    assert caught == r.to_stack.corrupted
    assert counters.get("ip_bad_checksum", 0) > 0 and counters.get("tcp_bad_checksum", 0) > 0
    assert r.client.retransmits > 0
    # Our fast retransmits were reported: the link resynchronises its compressor before framing them.
    assert r.lost_signals > 0


def test_budget_limits_bulk_output():
    # A slow line: 20 bytes per ms (about a 200 kbit/s serial port); bulk never exceeds the budget given.
    seen = []

    def check(bulk, budget):
        seen.append(bulk)
        assert bulk <= max(budget, 0)

    r = run(5, 60000, budget_per_ms=20, check_budget=check)
    check_delivery(r)
    assert max(seen) > 1000                     # full segments did go out when the budget allowed
    # The line rate, not the TCP windows, set the pace: 60 KB (plus headers) down at 20 B/ms takes > 3 s,
    # while the unpaced transfer of the same data takes a fraction of that.
    assert r.down_done >= 60000 // 20
    assert run(5, 60000).down_done < 60000 // 20 // 2


def test_concurrent_connections_share_a_paced_lossy_line():
    seen = []

    def check(bulk, budget):
        seen.append(bulk)
        assert bulk <= max(budget, 0)

    r = run(21, 40000, loss=0.02, dup=0.01, corrupt=0.01, jitter=20, budget_per_ms=40, check_budget=check,
            clients=3)
    check_delivery(r)
    assert len(r.sims) == 3 and r.stack.connections_opened == 3
