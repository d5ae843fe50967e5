"""Shared helpers for the TCP tests, and tests of the helpers themselves.

* :class:`Conn` drives one TcpConnection the way smoltcp's tests do: the test
  plays the client with explicit segments at explicit times
  (``h.send(ACK, payload=..., at=100)``) and checks what comes out
  (``h.recv(at=rto - 1) == []``).  Every segment the connection emits is
  round-tripped through ``emit``/``parse`` and checked against the MSS.
* :class:`Peer` is a small test-only active-open TCP (go-back-N sender with
  fixed-backoff RTO and fast retransmit, reassembling receiver that SACKs),
  and :func:`run_link` runs it against a TcpConnection over a seeded link that
  drops, duplicates, reorders and corrupts packets.
"""

import random

from pyslirp.net.tcp.conn import TcpConfig, TcpConnection, TcpState
from pyslirp.net.tcp.events import CLOSED, ESTABLISHED
from pyslirp.net.tcp.seq import seq_add, seq_gt, seq_le, seq_lt, seq_sub
from pyslirp.wire.errors import ParseError
from pyslirp.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpRepr

LOCAL = bytes([10, 0, 0, 1])
REMOTE = bytes([10, 0, 0, 2])
CPORT = 40000
SPORT = 22
CLIENT_ISS = 1000
OUR_ISS = 5000
MSS_LIMIT = 1460

__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "TcpRepr", "TcpConfig", "TcpState", "Conn", "Peer",
           "run_link", "LOCAL", "REMOTE", "CPORT", "SPORT", "CLIENT_ISS", "OUR_ISS", "MSS_LIMIT",
           "seq_add", "seq_sub", "wire_roundtrip", "data_segs", "pattern"]


def pattern(n, seed=0):
    """n deterministic pseudo-random bytes."""
    return random.Random(seed).getrandbits(8 * n).to_bytes(n, "big") if n else b""


def wire_roundtrip(seg, src=LOCAL, dst=REMOTE):
    raw = seg.emit(src, dst)
    back = TcpRepr.parse(raw, src, dst)
    assert back == seg, (str(back), str(seg))
    return back


def data_segs(segs):
    return [s for s in segs if s.payload]


class Conn(object):
    """One TcpConnection with the test as the client."""

    def __init__(self, config=None, iss=OUR_ISS, client_iss=CLIENT_ISS, mss=1460, wscale=None,
                 sack=False, ts=None, window=65535, mss_limit=MSS_LIMIT, establish=True, at=0):
        self.config = config or TcpConfig()
        self.now = at
        self.client_iss = client_iss
        self.iss = iss
        self.ts = ts                    # the client's TSval clock, or None for no timestamps
        syn = TcpRepr(CPORT, SPORT, client_iss, 0, SYN, window, mss=mss, wscale=wscale,
                      sack_permitted=sack, timestamp=(ts, 0) if ts is not None else None)
        self.syn = syn
        self.conn = TcpConnection(syn, LOCAL, REMOTE, self.config, iss, at, mss_limit)
        self.cseq = seq_add(client_iss, 1)      # client's next sequence number
        self.cack = seq_add(iss, 1)             # what the client acknowledges
        self.wscale = wscale or 0
        self.window = window
        self.our_ts = 0                         # last TSval we saw from the connection
        self.received = bytearray()
        self.synack = None
        if establish:
            self.conn.accept(at)
            out = self.recv(at=at)
            assert len(out) == 1 and out[0].flags == SYN | ACK, out
            self.synack = out[0]
            self.send(ACK, at=at)
            assert self.conn.state is TcpState.ESTABLISHED
            assert self.conn.take_events() == [ESTABLISHED]

    # -- time ---------------------------------------------------------------
    def advance(self, at):
        """Move the clock to ``at``, running every timer that falls due on the way."""
        while True:
            t = self.conn.get_timer()
            if t is None or t > at:
                break
            self.now = max(self.now, t)
            self.conn.handle_timer(self.now)
        self.now = max(self.now, at)

    # -- client -> connection -----------------------------------------------
    def seg(self, flags, seq=None, ack=None, payload=b"", window=None, ts=True, **kw):
        if seq is None:
            seq = self.cseq
        if ack is None:
            ack = self.cack if flags & ACK else 0
        if window is None:
            window = self.window >> self.wscale
        timestamp = kw.pop("timestamp", None)
        if timestamp is None and ts and self.ts is not None:
            timestamp = (self.ts + self.now, self.our_ts)
        return TcpRepr(CPORT, SPORT, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, window,
                       timestamp=timestamp, payload=payload, **kw)

    def send(self, flags=ACK, at=None, advance_seq=True, **kw):
        if at is not None:
            self.advance(at)
        s = self.seg(flags, **kw)
        raw = s.emit(REMOTE, LOCAL)
        s = TcpRepr.parse(raw, REMOTE, LOCAL)
        self.conn.receive(s, self.now)
        if advance_seq and kw.get("seq") is None:
            self.cseq = seq_add(self.cseq, len(s.payload) + (1 if flags & FIN else 0))
        return s

    # -- connection -> client -----------------------------------------------
    def recv(self, at=None, budget=-1):
        if at is not None:
            self.advance(at)
        out = self.conn.take_segments(budget, self.now)
        for s in out:
            wire_roundtrip(s)
            if s.payload:
                opts = len(s.options_bytes())
                assert len(s.payload) + opts <= self.conn.send_mss, (str(s), opts)
            if s.timestamp is not None:
                self.our_ts = s.timestamp[0]
        return out

    def ack_all(self, out, at=None):
        """Acknowledge everything in ``out`` (and remember the payload)."""
        for s in out:
            if s.payload and seq_add(s.seq, 0) == self.cack:
                self.received += s.payload
                self.cack = seq_add(self.cack, len(s.payload))
            if s.flags & FIN and seq_add(s.seq, len(s.payload)) == self.cack:
                self.cack = seq_add(self.cack, 1)
        return self.send(ACK, at=at)


class Peer(object):
    """A minimal active-open TCP for the lossy-link tests (test-only).

    Sender: go-back-N on a doubling RTO, fast retransmit of the head on three duplicate ACKs,
    one-byte zero-window probes, FIN after the data.  Receiver: holds out-of-order data, ACKs
    every segment that carries data, a FIN or an old sequence number, with SACK blocks.
    """

    RTO = 400
    MAX_RTO = 3200

    def __init__(self, data, iss, mss=1460, rcvwnd=20000, wscale=None, sack=True, ts=True,
                 close_after=True, read_rate=None):
        self.data = data
        self.read_rate = read_rate      # bytes the client application takes per 100 ms (None: all)
        self.unread = 0
        self.read_at = None
        self.iss = iss
        self.mss = mss
        self.rcvwnd = rcvwnd
        self.wscale = wscale
        self.sack = sack
        self.ts = ts
        self.close_after = close_after
        self.state = "SYN_SENT"
        self.snd_una = iss
        self.snd_nxt = iss
        self.snd_max = iss
        self.snd_wnd = 0
        self.their_ws = 0
        self.peer_mss = 536
        self.rcv_nxt = 0
        self.received = bytearray()
        self.ooo = {}
        self.fin_received = False
        self.fin_acked = False
        self.ts_recent = 0
        self.rto_at = None
        self.rto = self.RTO
        self.dupacks = 0
        self.out = []
        self.sack_ok = False
        self.ts_ok = False
        self.probe_at = None
        self.resets = 0

    @property
    def data_end(self):
        return seq_add(self.iss, 1 + len(self.data))

    def _mk(self, flags, seq, payload=b"", now=0, **kw):
        ts = None
        if self.ts_ok or (flags & SYN and self.ts):
            ts = (now & 0xFFFFFFFF, self.ts_recent)
        if flags & SYN:
            window = min(self.rcvwnd, 0xFFFF)
        else:
            window = min(max(0, self.rcvwnd - self.unread) >> (self.wscale or 0), 0xFFFF)
        blocks = ()
        if self.sack_ok and self.ooo and not flags & SYN:
            blocks = tuple(self._sack_blocks()[:3])
        ack = self.rcv_nxt if flags & ACK else 0
        return TcpRepr(CPORT, SPORT, seq & 0xFFFFFFFF, ack, flags, window,
                       timestamp=ts, sack_blocks=blocks, payload=payload, **kw)

    def _sack_blocks(self):
        ranges = []
        for s in sorted(self.ooo, key=lambda x: seq_sub(x, self.rcv_nxt)):
            e = seq_add(s, len(self.ooo[s]))
            if ranges and seq_le(s, ranges[-1][1]):
                if seq_gt(e, ranges[-1][1]):
                    ranges[-1][1] = e
            else:
                ranges.append([s, e])
        return [tuple(r) for r in ranges]

    def start(self, now):
        self.out.append(self._mk(SYN, self.iss, now=now, mss=self.mss, wscale=self.wscale,
                                 sack_permitted=self.sack))
        self.snd_nxt = self.snd_max = seq_add(self.iss, 1)
        self.rto_at = now + self.rto

    def timer(self):
        t = [x for x in (self.rto_at, self.probe_at, self.read_at) if x is not None]
        return min(t) if t else None

    def on_timer(self, now):
        if self.read_at is not None and now >= self.read_at:
            before = self.rcvwnd - self.unread
            self.unread -= min(self.unread, self.read_rate)
            self.read_at = now + 100 if self.unread else None
            if before < self.mss <= self.rcvwnd - self.unread:
                self._ack(now)                         # window update
        if self.rto_at is not None and now >= self.rto_at:
            self.rto_at = None
            self.rto = min(self.rto * 2, self.MAX_RTO)
            if self.state == "SYN_SENT":
                self.start(now)
                return
            if seq_lt(self.snd_una, self.snd_max):
                self.snd_nxt = self.snd_una            # go back N
                self.rto_at = now + self.rto
        if self.probe_at is not None and now >= self.probe_at:
            self.probe_at = None
            if self.snd_wnd == 0 and seq_lt(self.snd_una, self.data_end):
                off = seq_sub(self.snd_una, self.iss) - 1
                self.out.append(self._mk(ACK, self.snd_una, self.data[off:off + 1], now))
                self.probe_at = now + 500
        self.pump(now)

    def _ack(self, now):
        self.out.append(self._mk(ACK, self.snd_max, now=now))

    def receive(self, s, now):
        if s.flags & RST:
            self.resets += 1
            return
        if self.state == "SYN_SENT":
            if s.flags & SYN and s.flags & ACK and s.ack == seq_add(self.iss, 1):
                self.rcv_nxt = seq_add(s.seq, 1)
                self.snd_una = s.ack
                self.snd_wnd = s.window
                if self.wscale is None or s.wscale is None:
                    self.wscale = None
                    self.their_ws = 0
                else:
                    self.their_ws = s.wscale
                self.sack_ok = self.sack and s.sack_permitted
                self.ts_ok = self.ts and s.timestamp is not None
                if self.ts_ok:
                    self.ts_recent = s.timestamp[0]
                self.peer_mss = s.mss or 536
                self.state = "ESTABLISHED"
                self.rto_at = None
                self.rto = self.RTO
                self._ack(now)
                self.pump(now)
            return
        if s.flags & SYN:
            self._ack(now)                              # our ACK of the SYN-ACK was lost
            return
        if self.ts_ok and s.timestamp is not None and seq_le(s.seq, self.rcv_nxt):
            self.ts_recent = s.timestamp[0]
        if s.flags & ACK:
            if seq_gt(s.ack, self.snd_una) and seq_le(s.ack, self.snd_max):
                self.snd_una = s.ack
                self.dupacks = 0
                self.rto = self.RTO
                self.rto_at = now + self.rto if seq_lt(self.snd_una, self.snd_max) else None
                if seq_lt(self.snd_nxt, self.snd_una):
                    self.snd_nxt = self.snd_una
                if self.close_after and self.snd_una == seq_add(self.data_end, 1):
                    self.fin_acked = True
            elif s.ack == self.snd_una and not s.payload and seq_lt(self.snd_una, self.snd_max):
                self.dupacks += 1
                if self.dupacks == 3:
                    self._retransmit_head(now)
            self.snd_wnd = s.window << self.their_ws
            if self.snd_wnd == 0 and self.probe_at is None:
                self.probe_at = now + 500
        seq = s.seq
        payload = s.payload
        fin = bool(s.flags & FIN)
        answer = bool(payload or fin or seq_lt(seq, self.rcv_nxt))
        off = seq_sub(self.rcv_nxt, seq)
        if off > 0:
            if off > len(payload):
                payload, fin = b"", False
            else:
                payload = payload[off:]
            seq = self.rcv_nxt
        if payload and self.read_rate is not None:
            # Never take more than the window offered: right edge = RCV.NXT + (buffer - unread).
            room = seq_sub(seq_add(self.rcv_nxt, max(0, self.rcvwnd - self.unread)), seq)
            if len(payload) > room:
                payload, fin = payload[:max(0, room)], False
        if payload and seq == self.rcv_nxt:
            before = len(self.received)
            self.received += payload
            self.rcv_nxt = seq_add(self.rcv_nxt, len(payload))
            while True:
                for k in list(self.ooo):
                    if seq_le(seq_add(k, len(self.ooo[k])), self.rcv_nxt):
                        del self.ooo[k]
                    elif seq_le(k, self.rcv_nxt):
                        chunk = self.ooo.pop(k)[seq_sub(self.rcv_nxt, k):]
                        self.received += chunk
                        self.rcv_nxt = seq_add(self.rcv_nxt, len(chunk))
                        break
                else:
                    break
            if self.read_rate is not None:
                self.unread += len(self.received) - before
                if self.read_at is None:
                    self.read_at = now + 100
        elif payload and seq_gt(seq, self.rcv_nxt):
            self.ooo[seq] = payload
            fin = False
        if fin and seq_add(seq, len(payload)) == self.rcv_nxt and not self.fin_received:
            self.fin_received = True
            self.rcv_nxt = seq_add(self.rcv_nxt, 1)
        if answer:
            self._ack(now)
        self.pump(now)

    def _retransmit_head(self, now):
        off = seq_sub(self.snd_una, self.iss) - 1
        chunk = self.data[off:off + self.mss_out()]
        if chunk:
            self.out.append(self._mk(ACK, self.snd_una, chunk, now))
        elif self.snd_una == self.data_end and self.close_after:
            self.out.append(self._mk(ACK | FIN, self.snd_una, b"", now))

    def mss_out(self):
        return min(self.peer_mss, 1460) - (12 if self.ts_ok else 0)

    def pump(self, now):
        if self.state == "SYN_SENT":
            return
        edge = seq_add(self.snd_una, self.snd_wnd)
        while seq_lt(self.snd_nxt, self.data_end) and seq_lt(self.snd_nxt, edge):
            off = seq_sub(self.snd_nxt, self.iss) - 1
            n = min(self.mss_out(), seq_sub(edge, self.snd_nxt), seq_sub(self.data_end, self.snd_nxt))
            self.out.append(self._mk(ACK | PSH, self.snd_nxt, self.data[off:off + n], now))
            self.snd_nxt = seq_add(self.snd_nxt, n)
            if seq_gt(self.snd_nxt, self.snd_max):
                self.snd_max = self.snd_nxt
            if self.rto_at is None:
                self.rto_at = now + self.rto
        if self.close_after and self.snd_nxt == self.data_end:
            self.out.append(self._mk(ACK | FIN, self.data_end, b"", now))
            self.snd_nxt = seq_add(self.data_end, 1)
            if seq_gt(self.snd_nxt, self.snd_max):
                self.snd_max = self.snd_nxt
            self.state = "FIN_SENT"
            if self.rto_at is None:
                self.rto_at = now + self.rto

    def take(self):
        out = self.out
        self.out = []
        return out


class Link(object):
    """A seeded unreliable link: loss, duplication, reordering (jitter) and corruption."""

    def __init__(self, rng, loss=0.0, dup=0.0, corrupt=0.0, delay=20, jitter=0):
        self.rng = rng
        self.loss = loss
        self.dup = dup
        self.corrupt = corrupt
        self.delay = delay
        self.jitter = jitter
        self.queue = []
        self.tie = 0
        self.corrupted = 0

    def put(self, now, direction, raw):
        rng = self.rng
        copies = 1
        if rng.random() < self.loss:
            copies = 0
        elif rng.random() < self.dup:
            copies = 2
        for _ in range(copies):
            data = raw
            if rng.random() < self.corrupt:
                b = bytearray(raw)
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
                data = bytes(b)
                self.corrupted += 1
            t = now + self.delay + (rng.randrange(self.jitter + 1) if self.jitter else 0)
            self.tie += 1
            self.queue.append((t, self.tie, direction, data))

    def next_time(self):
        return min(self.queue)[0] if self.queue else None

    def pop_due(self, now):
        due = sorted(x for x in self.queue if x[0] <= now)
        self.queue = [x for x in self.queue if x[0] > now]
        return due


def run_link(seed, up=b"", down=b"", loss=0.1, dup=0.05, corrupt=0.02, jitter=40, config=None,
             client_iss=None, our_iss=None, wscale=7, sack=True, ts=True, read_rate=None,
             max_time=600000, rcvwnd=20000, peer_mss=1460, mss_limit=MSS_LIMIT, peer_read_rate=None):
    """Run a whole connection over a lossy link.

    ``up``: bytes the client sends; ``down``: bytes the service sends.  ``read_rate``: bytes the
    service socket takes per 100 ms (None = instantly); ``peer_read_rate`` likewise for the
    client application (its window closes when it falls behind).  Returns (conn, peer, service_received).
    """
    rng = random.Random(seed)
    link = Link(rng, loss=loss, dup=dup, corrupt=corrupt, jitter=jitter)
    if client_iss is None:
        client_iss = rng.getrandbits(32)
    if our_iss is None:
        our_iss = rng.getrandbits(32)
    peer = Peer(up, client_iss, mss=peer_mss, rcvwnd=rcvwnd, wscale=wscale, sack=sack, ts=ts,
                read_rate=peer_read_rate)
    config = config or TcpConfig()
    now = 0
    peer.start(now)
    conn = None
    got = bytearray()
    unconsumed = 0
    to_send = memoryview(down)
    sent_down = 0
    shut = False
    closed = False
    events = []
    next_read = 0
    parse_errors = 0
    for _ in range(2000000):
        # Deliver segments from the peer.
        for s in peer.take():
            link.put(now, "up", s.emit(REMOTE, LOCAL))
        if conn is not None:
            # Service side: read, consume, send, shut down.
            for e in conn.take_events():
                events.append(e)
                if e == CLOSED:
                    closed = True
            data = conn.read()
            if data:
                got += data
                unconsumed += len(data)
            if unconsumed and (read_rate is None or now >= next_read):
                n = unconsumed if read_rate is None else min(unconsumed, read_rate)
                unconsumed -= n
                conn.consumed(n, now)
                next_read = now + 100
            if sent_down < len(down):
                n = conn.send(bytes(to_send[sent_down:sent_down + 4096]), now)
                sent_down += n
            if sent_down >= len(down) and not shut and ESTABLISHED in events:
                conn.shutdown(now)
                shut = True
            for s in conn.take_segments(-1, now):
                link.put(now, "down", s.emit(LOCAL, REMOTE))
        if closed and peer.fin_received and (peer.fin_acked or not peer.close_after) \
                and not link.queue:
            break
        # Next event time.
        times = [t for t in (link.next_time(), peer.timer(),
                             conn.get_timer() if conn is not None else None) if t is not None]
        if read_rate is not None and unconsumed:
            times.append(next_read)
        if not times:
            break
        now = max(now, min(times))
        if now > max_time:
            break
        for t, _, direction, raw in link.pop_due(now):
            if direction == "up":
                try:
                    s = TcpRepr.parse(raw, REMOTE, LOCAL)
                except ParseError:
                    parse_errors += 1
                    continue
                if conn is None:
                    if s.flags & SYN and not s.flags & ACK:
                        conn = TcpConnection(s, LOCAL, REMOTE, config, our_iss, now, mss_limit)
                        conn.accept(now)
                elif not closed:
                    conn.receive(s, now)
            else:
                try:
                    s = TcpRepr.parse(raw, LOCAL, REMOTE)
                except ParseError:
                    parse_errors += 1
                    continue
                peer.receive(s, now)
        if peer.timer() is not None and peer.timer() <= now:
            peer.on_timer(now)
        if conn is not None and not closed:
            t = conn.get_timer()
            if t is not None and t <= now:
                conn.handle_timer(now)
    return conn, peer, bytes(got), events, now, parse_errors


# ----------------------------------------------------------------------------- tests of the harness

def test_conn_helper_establishes_and_round_trips():
    h = Conn(sack=True, ts=100, wscale=2)
    assert h.synack.mss == 1460 and h.synack.sack_permitted and h.synack.timestamp is not None
    assert h.conn.state is TcpState.ESTABLISHED


def test_link_is_deterministic():
    a = Link(random.Random(5), loss=0.3, dup=0.3, corrupt=0.3, jitter=10)
    b = Link(random.Random(5), loss=0.3, dup=0.3, corrupt=0.3, jitter=10)
    for i in range(50):
        a.put(i, "up", bytes([i]) * 20)
        b.put(i, "up", bytes([i]) * 20)
    assert a.queue == b.queue
    assert 0 < len(a.queue) < 100


def test_clean_link_transfer_both_ways():
    up = pattern(30000, 1)
    down = pattern(45000, 2)
    conn, peer, got, events, now, _ = run_link(1, up, down, loss=0, dup=0, corrupt=0, jitter=0)
    assert got == up
    assert bytes(peer.received) == down
    assert events[0] == ESTABLISHED and events[-1] == CLOSED
    assert conn.retransmits == 0
