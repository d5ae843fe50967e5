"""Latency under load: the output scheduling policy, without timing assertions.

* ``DrainMeter``: the drain rate comes from the OS queue (a simulated line here), never from the baud rate;
  the bound on what waits toward the line follows it.
* The stack thread's budget is that bound minus what is already queued (our writer and the OS).
* ``IPStack.take_packets``: a keystroke behind 100 KB of bulk is on the line within one frame; the segments
  of one connection never change order, whatever the budgets.
* Fitting a slow line: the MSS announced, our segment size, the receive window and the ACK rate, with and
  without interactive traffic; the TcpConnection knobs behind them.
* The writer: strictly in order, "room" once the line has drained.

The slow line is simulated (bytes leave the OS queue at a fixed rate per millisecond of a fake clock), so
every test is deterministic.
"""

import os
import random
import threading
import time

import pytest

from test_tcp_harness import ACK, Conn, TcpConfig, pattern
from pyslirp.net.events import ServiceConnect
from pyslirp.net import stack as stack_mod
from pyslirp.net.stack import IPStack, StackConfig
from pyslirp.runtime.endpoints import Endpoint, FdEndpoint, PtyEndpoint
from pyslirp.runtime.serialio import DrainMeter, SerialWriter
from pyslirp.runtime.stackloop import Runtime
from pyslirp.wire import tcp
from pyslirp.wire.ipv4 import PROTO_TCP, Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import TcpRepr

LOCAL = ip_bytes("10.0.0.1")
REMOTE = ip_bytes("10.0.0.2")
RATE = 11520                    # bytes/s: 115200 bit/s, 8N1


# -- a simulated line -------------------------------------------------------------------------------------------

class Line(object):
    """An OS output queue drained at ``rate`` bytes/s; time in ms.  Remembers what crossed it, in order."""

    def __init__(self, rate=RATE):
        self.rate = rate
        self.queue = []             # [(tag, bytes left)], head on the line
        self.sent = []              # tags of whole frames that left, in order
        self._credit = 0.0
        self.now = 0

    @property
    def backlog(self):
        return sum(n for _, n in self.queue)

    def write(self, tag, n):
        self.queue.append((tag, n))

    def advance(self, ms):
        self._credit += self.rate * ms / 1000.0
        self.now += ms
        while self.queue and self._credit >= 1:
            tag, n = self.queue[0]
            take = min(n, int(self._credit))
            self._credit -= take
            if take == n:
                self.queue.pop(0)
                self.sent.append(tag)
            else:
                self.queue[0] = (tag, n - take)
        if not self.queue:
            self._credit = 0.0      # an idle line saves nothing up


# -- DrainMeter -------------------------------------------------------------------------------------------------

def run_meter(meter, line, ms, write_every=5):
    """The writer's loop on a simulated line: keep the OS queue at the meter's target, observe as it goes."""
    for _ in range(ms // write_every):
        meter.observe(line.now / 1000.0, line.backlog)
        room = meter.target() - line.backlog
        if room > 0:
            line.write("x", room)
            meter.wrote(room, line.now / 1000.0)
        line.advance(write_every)


def test_meter_measures_the_drain_not_the_baud_rate():
    # Configured for 115200 (11,520 bytes/s), but the device really runs at 3,000 bytes/s.
    meter = DrainMeter(initial=RATE, min_target=64, max_target=65536)
    line = Line(rate=3000)
    run_meter(meter, line, 3000)
    assert meter.samples > 10
    assert abs(meter.rate - 3000) < 150
    assert meter.target() == max(64, int(meter.rate * meter.delay))


def test_meter_follows_a_faster_line_up_from_a_slow_guess():
    # A pty or a USB CDC-ACM port ignores the baud rate: the queue is empty whenever we look.
    meter = DrainMeter(initial=RATE, min_target=128, max_target=65536, delay=0.01)
    line = Line(rate=5000000)
    run_meter(meter, line, 2000, write_every=1)
    assert meter.rate > 1000000
    assert meter.target() == int(min(65536, meter.rate * meter.delay)) > 10000


def test_meter_follows_a_slower_device_down():
    meter = DrainMeter(initial=None, min_target=64, max_target=65536)
    fast = Line(rate=100000)
    run_meter(meter, fast, 2000)
    assert meter.rate > 90000
    slow = Line(rate=RATE)
    slow.now = fast.now
    run_meter(meter, slow, 4000)
    assert abs(meter.rate - RATE) < RATE * 0.05


def test_meter_target_bounds_and_unknown_rate():
    assert DrainMeter(initial=None, max_target=5000).target() == 5000     # nothing known: own queue only
    assert DrainMeter(initial=1000, min_target=128, max_target=5000).target() == 128
    assert DrainMeter(initial=10 ** 8, min_target=128, max_target=5000).target() == 5000
    # An endpoint whose queue we cannot see: the rate at which it takes our writes is all we learn.
    m = DrainMeter(initial=None, min_target=128, max_target=5000)
    for t in range(100):
        m.observe(t / 10.0, 0)
        m.wrote(1000, t / 10.0)
    assert not m.measurable and m.samples == 0
    assert abs(m.rate - 10000) < 1 and m.target() == max(128, int(m.rate * m.delay))


class LaggingLine(Line):
    """A ``Line`` whose OS count shows a write only ``lag`` ms after it was made (a pty's flip buffer)."""

    def __init__(self, rate=RATE, lag=1):
        super().__init__(rate)
        self.lag = lag
        self._hidden = []           # [(visible at, nbytes)]

    @property
    def seen(self):
        return self.backlog - sum(n for at, n in self._hidden if at > self.now)

    def write(self, tag, n):
        super().write(tag, n)
        self._hidden.append((self.now + self.lag, n))


def test_meter_counts_a_write_the_os_does_not_show_yet():
    meter = DrainMeter(initial=RATE, min_target=128, max_target=65536, delay=0.01, lag=0.005)
    meter.observe(10.0, 116)
    meter.wrote(548, 10.0)
    # A look straight after the write still sees 116: what the write left waits all the same.
    assert meter.backlog(10.0, 116) == 116 + 548
    assert meter.backlog(10.002, 116) == int(116 + 548 - RATE * 0.002 + 0.999)
    assert meter.backlog(10.002, 700) == 700                # the OS shows more: that is the queue
    assert meter.backlog(10.0051, 116) == 116               # after ``lag`` the OS count is the queue again
    # Writes in a row add up.
    meter.wrote(548, 10.006)
    meter.wrote(548, 10.006)
    assert meter.backlog(10.006, 116) == 116 + 2 * 548


def test_budget_with_a_lagging_os_count_lets_one_frame_over_not_two():
    # The stack thread's rule: budget = target - backlog, one frame over allowed; it looks again at once after
    # each write (the writer's "room").  With the OS count lagging the writes, the raw count let a second
    # full frame go straight after the first, and the ACK behind them waited for both.
    frame = 548

    def run(meter_backlog):
        meter = DrainMeter(initial=RATE, min_target=128, max_target=65536, delay=0.01, lag=0.005)
        line = LaggingLine(RATE, lag=1)
        peak = 0
        for _ in range(2000):
            for _turn in range(2):          # a write, then the look its "room" brings, in the same moment
                t = line.now / 1000.0
                meter.observe(t, line.seen)
                seen = meter.backlog(t, line.seen) if meter_backlog else line.seen
                if meter.target() - seen > 0:
                    line.write("f", frame)
                    meter.wrote(frame, t)
                    peak = max(peak, line.backlog)
            line.advance(1)
        return peak

    assert run(meter_backlog=True) <= 128 + frame
    assert run(meter_backlog=False) > 128 + frame       # the failure this guards against


def test_meter_with_its_write_lag_still_finds_a_fast_line():
    # A pty read as fast as it fills, configured at 115200: the rate estimate starts at 11,520 bytes/s and
    # must still climb, although each write counts as queued (at that low rate) for ``lag`` after it.
    meter = DrainMeter(initial=RATE, min_target=128, max_target=65536, delay=0.01, lag=0.005)
    line = Line(rate=5000000)
    for _ in range(2000):
        t = line.now / 1000.0
        meter.observe(t, line.backlog)
        room = meter.target() - meter.backlog(t, line.backlog)
        if room > 0:
            n = room + 1500                 # one frame over, as the stack thread allows
            line.write("x", n)
            meter.wrote(n, t)
        line.advance(1)
    assert meter.rate > 1000000


# -- the stack thread's budget ----------------------------------------------------------------------------------

class FakeWriter(object):
    def __init__(self, target, backlog, rate=None):
        self._target = target
        self._backlog = backlog
        self.rate = rate
        self.frames = []
        self.queued = 0             # handed over, not yet written
        self.bytes_written = 0
        self.room_asked = []        # want_room of each put_all

    def target(self):
        return self._target

    def backlog(self):
        return self._backlog

    def put(self, urgent, frame):
        self.frames.append(frame)
        return True

    def put_all(self, frames, want_room=False):
        self.frames.extend(frames)
        self.room_asked.append(want_room)
        n = sum(len(f) for f in frames)
        self.queued += n
        return n


class BudgetCore(object):

    wants_room = True       # output always waits for room: every "room" report flushes
    def __init__(self):
        self.budgets = []
        self.rates = []

    def take_serial_output(self, budget, now=None, allow_one_over=False):
        assert allow_one_over                       # the runtime's bound must let one frame through
        self.budgets.append(budget)
        return [(False, b"f" * 10)] if budget > 0 else []

    def take_events(self):
        return []

    def set_line_rate(self, rate):
        self.rates.append(rate)

    def take_delay_signal(self):
        return None


def test_budget_is_the_bound_minus_our_queue_and_the_os_queue():
    core = BudgetCore()
    runtime = Runtime(None, None, core=core, endpoint=object(), line_budget=4096)
    runtime.writer = FakeWriter(target=1000, backlog=300, rate=11520.0)
    runtime.writer.queued = 200
    runtime._flush(0)
    assert core.budgets == [500]
    assert runtime.line_queued == 210               # the frame handed over counts until written
    assert runtime._reflush_at is None
    assert core.rates == [11520]                    # the Core hears the measured rate
    # The line drains more slowly than it fills: no bulk, and a look again soon.
    runtime.writer._backlog = 1500
    runtime._flush(100)
    assert core.budgets[-1] == 0 and runtime._reflush_at is not None
    # A small change of rate is not worth telling; a large one is.
    runtime.writer.rate = 12000.0
    runtime._flush(200)
    runtime.writer.rate = 3000.0
    runtime._flush(300)
    assert core.rates == [11520, 3000]


def _quiet_runtime():
    """A Runtime over a BudgetCore with no timer due and an idle FakeWriter: (core, runtime, writer)."""
    core = BudgetCore()
    core.get_timer = lambda: None
    core.handle_timer = lambda now: None
    runtime = Runtime(None, None, core=core, endpoint=object(), line_budget=4096)
    runtime.writer = writer = FakeWriter(target=1000, backlog=0, rate=11520.0)
    return core, runtime, writer


def test_a_turn_of_finished_service_threads_alone_does_not_flush():
    core, runtime, writer = _quiet_runtime()
    writer.queued = 300                                         # handed over, not yet written
    runtime._step(None, 0)
    assert core.budgets == [700] and writer.room_asked == [True]  # held back: "room" asked for
    runtime._step(("room", writer), 1)
    assert core.budgets == [700, 690]                           # "room" refills it
    runtime._step(("svc_done", 12), 2)                          # a service thread finished: no flush
    assert len(core.budgets) == 2
    core.get_timer = lambda: 3                                  # a timer due: the turn runs in full
    runtime._step(("svc_done", 13), 3)
    assert len(core.budgets) == 3
    core.get_timer = lambda: None
    runtime._step(("svc_done", 14), 4)
    runtime.inbox.put(("room", writer))                         # ... or something else came with it
    runtime._step(("svc_done", 15), 5)
    assert len(core.budgets) == 4


def test_the_writer_is_asked_for_room_only_while_output_waits_for_it():
    # Every write would otherwise wake the stack thread for a "room" that after a handshake or an echo
    # finds nothing to send.
    core, runtime, writer = _quiet_runtime()
    core.wants_room = False
    runtime._flush(0)
    assert writer.room_asked == [False] and len(writer.frames) == 1
    core.wants_room = True
    runtime._flush(1)
    assert writer.room_asked == [False, True]
    core.wants_room = False
    core.take_serial_output = lambda budget, now=None, allow_one_over=False: []
    runtime._flush(2)
    assert writer.room_asked == [False, True, False]            # nothing to hand over: the request taken back
    runtime._flush(3)
    assert writer.room_asked == [False, True, False]            # nothing to hand over, nothing to take back


def test_room_and_service_writes_that_give_the_core_nothing_to_send_do_not_flush():
    # After a handshake or an echo nothing waits for the line's room, and "room" follows every write; a
    # service's "written" report of two bytes makes no window update due.  Neither turn looks at the line.
    core, runtime, writer = _quiet_runtime()
    core.wants_room = False
    written = []

    def service_written(conn_id, nbytes, now):
        written.append(nbytes)
        return nbytes >= 1000                                   # a window update is due

    core.service_written = service_written
    runtime._step(None, 0)
    assert len(core.budgets) == 1
    runtime._step(("room", writer), 1)
    runtime._step(("svc_written", 7, 2), 2)
    assert len(core.budgets) == 1 and written == [2]            # reported to the Core, no flush
    runtime._step(("svc_written", 7, 4000), 3)
    assert len(core.budgets) == 2                               # the window update goes out
    core.wants_room = True                                      # output held back for want of room ...
    runtime._step(None, 4)
    runtime._step(("room", writer), 5)
    assert len(core.budgets) == 4                               # ... "room" refills the line
    runtime._step(("svc_written", 7, 2), 6)
    runtime.inbox.put(("svc_data", 7, b"xy"))                   # ... something else in the same turn
    core.service_data = lambda conn_id, data, now: None
    runtime._step(("room", writer), 7)
    assert len(core.budgets) == 5


def test_the_bound_starts_from_the_configured_speed():
    runtime = Runtime(None, None, core=BudgetCore(), endpoint=object(), line_budget=65536, baudrate=115200)
    meter = runtime._new_meter()
    assert meter.rate == RATE and meter.target() == 128
    assert Runtime(None, None, core=BudgetCore(), endpoint=object(), line_budget=65536,
                   baudrate=0)._new_meter().target() == 65536


# -- IPStack: scheduling at dequeue time -------------------------------------------------------------------------

class Client(object):
    """The client side of one connection (opened at once): acknowledges what it receives in order."""

    def __init__(self, stack, port, now=0, mss=1460, window=65535, ts=False):
        self.stack = stack
        self.port = port
        self.seq = 7000 + port
        self.ack = 0
        self.window = window
        self.data = bytearray()
        self.send(tcp.SYN, now=now, mss=mss, timestamp=(1, 0) if ts else None, wscale=7, sack_permitted=True)
        (connect,) = [e for e in stack.take_events() if isinstance(e, ServiceConnect)]
        self.conn_id = connect.conn_id
        stack.service_connected(connect.conn_id, now)
        (self.synack,) = [parse(p) for _, p in stack.take_packets(-1)]
        self.ack = (self.synack.seq + 1) & 0xFFFFFFFF
        self.send(tcp.ACK, now=now)
        stack.take_events()
        self.conn = stack._by_id[self.conn_id].conn

    def send(self, flags, payload=b"", now=0, **kw):
        seg = TcpRepr(self.port, 22, self.seq, self.ack, flags, self.window, payload=payload, **kw)
        self.stack.receive_packet(Ipv4Repr(REMOTE, LOCAL, PROTO_TCP, seg.emit(REMOTE, LOCAL)).emit(), now)
        self.seq = (self.seq + seg.seg_len) & 0xFFFFFFFF

    def deliver(self, seg, now, ack=True):
        """``seg`` reached the client; in-order payload is kept (and acknowledged if ``ack``)."""
        if seg.payload and seg.seq == self.ack:
            self.ack = (self.ack + len(seg.payload)) & 0xFFFFFFFF
            self.data += seg.payload
            if ack:
                self.send(tcp.ACK, now=now)


def parse(packet):
    ip = Ipv4Repr.parse(packet)
    return TcpRepr.parse(ip.payload, ip.src, ip.dst)


def make_stack(rate=None, **kw):
    stack = IPStack(StackConfig(**kw), random.Random(5))
    if rate is not None:
        stack.set_line_rate(rate)
    return stack


def test_keystroke_behind_100k_of_bulk_goes_within_one_frame():
    stack = make_stack()                         # no line rate known: full-size segments, the worst case
    line = Line()
    target = 128                                 # the runtime's bound on what waits toward the line
    bulk = Client(stack, 40001)
    keys = Client(stack, 40002)
    clients = {40001: bulk, 40002: keys}
    stack.service_data(bulk.conn_id, pattern(100000, 1), 0)
    keystroke_at = 1500
    ahead = None
    for now in range(1, 4000):
        line.advance(1)
        for seg in line.sent:
            clients[seg.dst_port].deliver(seg, now)
        line.sent = []
        if now == keystroke_at:
            stack.service_data(keys.conn_id, b"k", now)
        deadline = stack.get_timer()
        if deadline is not None and deadline <= now:
            stack.handle_timer(now)
        for urgent, packet in stack.take_packets(max(0, target - line.backlog), allow_one_over=True):
            seg = parse(packet)
            if seg.dst_port == 40002 and seg.payload:
                assert now == keystroke_at and ahead is None     # taken at once, whatever the budget
                ahead = line.backlog
            line.write(seg, len(packet))
        stack.take_events()
    assert ahead is not None, "the keystroke never went out"
    # Ahead of it on the line: at most the bound and one full frame, not the 100 KB.
    assert ahead <= target + stack.mtu
    assert keys.data == b"k"
    assert len(bulk.data) > 30000                # and the bulk kept the line busy meanwhile
    assert len(bulk.data) == 100000 or line.backlog > 0


def test_budget_zero_takes_control_and_small_segments_only_and_one_frame_may_exceed_a_small_budget():
    stack = make_stack()
    c = Client(stack, 40001)
    stack.service_data(c.conn_id, pattern(20000), 1)
    assert [p for _, p in stack.take_packets(0, allow_one_over=True) if len(parse(p).payload) > 64] == []
    assert [p for _, p in stack.take_packets(10) if len(parse(p).payload) > 64] == []   # the strict contract
    out = stack.take_packets(10, allow_one_over=True)   # smaller than one segment: exactly one goes
    assert [len(parse(p).payload) for _, p in out] == [1460]
    c.deliver(parse(out[0][1]), 2)                  # acknowledged: the congestion window is no limit here
    out = stack.take_packets(3 * 1500, allow_one_over=True)   # room for three: three, never more
    assert [len(parse(p).payload) for _, p in out] == [1460, 1460, 1460]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_segments_of_one_connection_are_never_reordered(seed):
    rng = random.Random(seed)
    # Without Nagle a small tail goes out in the same call as the bulk before it: the case to watch.
    stack = make_stack(rate=RATE if seed % 2 else None, tcp=TcpConfig(nagle=seed == 1))
    clients = dict((p, Client(stack, p, window=rng.choice((4096, 65535)))) for p in (40001, 40002, 40003))
    stream = []                                     # everything, in the order the line would carry it
    now = 0
    for step in range(400):
        now += rng.choice((1, 5, 20))
        for urgent, packet in stack.take_packets(rng.choice((-1, 0, 0, 1, 300, 1500, 5000)),
                                                 allow_one_over=rng.random() < 0.5):
            stream.append(parse(packet))
        for c in clients.values():
            if rng.random() < 0.3:
                size = rng.choice((1, 10, 64, 65, 500, 1470, 2930, 3000))
                stack.service_data(c.conn_id, pattern(size, step), now)
        # The client hears what went out so far (in order) and acknowledges it now and then.
        for seg in stream[len(stream) - 20:]:
            c = clients[seg.dst_port]
            c.deliver(seg, now, ack=rng.random() < 0.5)
        deadline = stack.get_timer()
        if deadline is not None and deadline <= now:
            stack.handle_timer(now)
        stack.take_events()
    for port in clients:
        # In the order of the line, no segment may start beyond every byte sent before it: that would be
        # later data overtaking earlier data.  (Retransmissions start below; they are fine.)
        high = None
        for seg in stream:
            if seg.dst_port != port or not seg.payload:
                continue
            if high is not None:
                assert (seg.seq - high) & 0x80000000 or seg.seq == high, \
                    "port %d: data at %d went out before the bytes from %d" % (port, seg.seq, high)
            end = (seg.seq + len(seg.payload)) & 0xFFFFFFFF
            if high is None or (end - high) & 0x80000000 == 0:
                high = end


# -- fitting a slow line -----------------------------------------------------------------------------------------

def test_slow_line_announces_a_small_mss_and_no_timestamps():
    c = Client(make_stack(rate=RATE), 40001, ts=True)
    assert c.synack.mss == int(RATE * stack_mod.MSS_TIME) - 40 == 536
    assert c.synack.timestamp is None
    assert c.conn.send_mss == 1460                  # our own segments may still be full-size
    # A fast line: the link's MSS and timestamps as configured.
    c = Client(make_stack(rate=2000000), 40001, ts=True)
    assert c.synack.mss == 1460 and c.synack.timestamp is not None
    # Unknown rate: as configured.
    c = Client(make_stack(), 40001, ts=True)
    assert c.synack.mss == 1460 and c.synack.timestamp is not None


def test_configured_mss_is_used_both_ways():
    c = Client(make_stack(rate=RATE, tcp=TcpConfig(mss=1000)), 40001)
    assert c.synack.mss == 1000 and c.conn.send_mss == 1000


def test_interactive_traffic_shrinks_bulk_segments_and_windows_until_it_stops():
    stack = make_stack(rate=RATE)
    bulk = Client(stack, 40001)
    keys = Client(stack, 40002)
    conn = bulk.conn
    mss = conn.our_mss
    # Bulk only: full segments, a window of about WINDOW_TIME of line time (whole segments), ACK every second.
    assert conn.segment_limit is None and conn.ack_every == 2
    assert conn.rcv_limit == mss * max(stack_mod.BULK_WINDOW_SEGMENTS, int(RATE * stack_mod.WINDOW_TIME) // mss)
    stack.service_data(bulk.conn_id, pattern(30000), 10)
    out = [parse(p) for _, p in stack.take_packets(3000, allow_one_over=True)]
    assert max(len(seg.payload) for seg in out) == 1460
    for seg in out:
        bulk.deliver(seg, 10)
    # One small segment is not yet interactive traffic (the request of a download, say) ...
    keys.send(tcp.ACK | tcp.PSH, b"ls\n", now=20)
    assert conn.segment_limit is None
    # ... a few are.
    keys.send(tcp.ACK | tcp.PSH, b"-l", now=40)
    keys.send(tcp.ACK | tcp.PSH, b"\n", now=60)
    assert conn.segment_limit == int(RATE * stack_mod.SEGMENT_TIME) - 40
    assert conn.rcv_limit == stack_mod.MIN_WINDOW_SEGMENTS * mss
    assert conn.ack_every == 1
    sizes = [len(parse(p).payload) for _, p in stack.take_packets(5000, allow_one_over=True)
             if parse(p).dst_port == 40001]
    assert sizes and max(sizes) <= conn.segment_limit
    # Quiet for INTERACTIVE_HOLD: back to bulk sizes at the next output.
    later = 60 + stack_mod.INTERACTIVE_HOLD + 1
    stack.handle_timer(later)
    stack._now = later
    stack.take_packets(0)
    assert conn.segment_limit is None and conn.ack_every == 2
    assert conn.rcv_limit == mss * max(stack_mod.BULK_WINDOW_SEGMENTS, int(RATE * stack_mod.WINDOW_TIME) // mss)


def test_a_new_connection_is_fitted_to_the_line_without_refitting_the_others(monkeypatch):
    # Per-connection work must not grow with the number of connections open: while the line's state is the
    # one the open connections were fitted to, a new one is fitted alone.
    stack = make_stack(rate=RATE, max_connections=200, max_per_service=200, max_half_open=200,
                       new_connections_per_second=10000, burst=10000)
    clients = [Client(stack, 41000 + i) for i in range(50)]
    fitted = []
    real = stack._rto_slack
    monkeypatch.setattr(stack, "_rto_slack", lambda conn, rate: (fitted.append(conn), real(conn, rate))[1])
    new = Client(stack, 42000)
    assert fitted == [new.conn]
    old = clients[0].conn
    assert (new.conn.rcv_limit, new.conn.segment_limit, new.conn.ack_every, new.conn.rto_slack) == \
        (old.rcv_limit, old.segment_limit, old.ack_every, old.rto_slack)
    # A change of the line's state still reaches every connection.
    del fitted[:]
    stack.set_line_rate(RATE * 2)
    assert len(fitted) == 51


def test_unknown_line_rate_leaves_connections_alone():
    stack = make_stack()
    c = Client(stack, 40001)
    conn = c.conn
    for i in range(5):
        c.send(tcp.ACK | tcp.PSH, b"k", now=i)
    assert conn.segment_limit is None and conn.rcv_limit is None and conn.ack_every == 2


# -- the TcpConnection knobs ------------------------------------------------------------------------------------

def test_segment_limit_cuts_new_segments_and_can_be_lifted():
    h = Conn()
    h.conn.send(pattern(20000), 0)
    h.conn.segment_limit = 500
    out = h.recv(at=1)
    assert out and all(len(s.payload) <= 500 for s in out)
    h.ack_all(out, at=10)
    h.conn.segment_limit = None
    out = [s for s in h.recv(at=11) if s.payload]
    assert out and max(len(s.payload) for s in out) == 1460


def test_rcv_limit_caps_the_window_and_never_retracts_it():
    h = Conn(config=TcpConfig(rcvbuf=65536))
    first = h.send(ACK, payload=pattern(100), at=1)
    out = h.recv(at=300)                            # delayed ACK
    assert out[-1].window >= 60000
    h.conn.rcv_limit = 2000
    h.send(ACK, payload=pattern(1000, 1), at=301)
    h.conn.read()
    h.conn.consumed(1100, 302)
    out = h.recv(at=600)
    edge = out[-1].ack + out[-1].window
    assert edge >= first.seq + 100 + 60000 - 1100     # the edge promised before stays where it was
    # Once the old promise is used up, the window offered is the limit, not the free buffer.
    h.send(ACK, payload=pattern(1400, 2), at=601)
    h.conn.read()
    h.conn.consumed(1400, 602)
    for i in range(70):
        h.send(ACK, payload=pattern(1000, 3 + i), at=603 + i)
        h.conn.read()
        h.conn.consumed(1000, 603 + i)
    out = h.recv(at=1000)
    assert out[-1].window <= 2000


def test_ack_every_one_acknowledges_each_full_segment():
    h = Conn()
    h.conn.ack_every = 1
    h.send(ACK, payload=pattern(1460), at=1)
    assert [s.ack for s in h.recv(at=2)] == [h.cseq]
    h.conn.ack_every = 2
    h.send(ACK, payload=pattern(1460, 1), at=3)
    assert h.recv(at=4) == []                       # the second one waits for a partner (or the timer)
    h.send(ACK, payload=pattern(1460, 2), at=5)
    assert [s.ack for s in h.recv(at=6)] == [h.cseq]


# -- the writer and the OS queue ---------------------------------------------------------------------------------

class ScriptedEndpoint(Endpoint):
    """Records writes; ``queued`` is what the "OS" still holds (set by the test)."""

    def __init__(self):
        self.writes = []
        self.queued = 0
        self.lock = threading.Lock()

    def write(self, data):
        with self.lock:
            self.writes.append(bytes(data))

    def out_waiting(self):
        return self.queued


def wait_until(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


class Inbox(object):
    def __init__(self):
        self.items = []
        self.cond = threading.Condition()

    def post(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait_for(self, kind, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(i[0] == kind for i in self.items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return [i for i in self.items if i[0] == kind]


def _started_writer():
    """A running SerialWriter on a ScriptedEndpoint with a 100-byte bound: (endpoint, inbox, writer)."""
    endpoint = ScriptedEndpoint()
    inbox = Inbox()
    writer = SerialWriter(endpoint, inbox.post, lambda reason: None,
                          meter=DrainMeter(initial=RATE, min_target=100, max_target=100))
    writer.start()
    return endpoint, inbox, writer


def test_writer_posts_room_once_the_os_queue_drains_below_the_bound():
    endpoint, inbox, writer = _started_writer()
    try:
        endpoint.queued = 600                       # the OS holds more than the bound
        writer.put(False, b"a" * 10)
        writer.put_all([b"b" * 5], want_room=True)
        assert wait_until(lambda: writer.queued == 0 and writer.bytes_written == 15)
        assert inbox.wait_for("room", timeout=0.2) is None      # not while the queue is above the bound
        endpoint.queued = 40
        assert inbox.wait_for("room") is not None
        assert b"".join(endpoint.writes) == b"a" * 10 + b"b" * 5  # in the order given
        assert writer.queued == 0
    finally:
        writer.stop()
        writer.join(5)


def test_writer_holds_room_while_its_write_is_not_in_the_os_count_yet():
    now = [100.0]
    endpoint = ScriptedEndpoint()
    endpoint.queued = 40                            # below the bound, and it stays so: the write is not shown
    inbox = Inbox()
    writer = SerialWriter(endpoint, inbox.post, lambda reason: None, clock=lambda: now[0],
                          meter=DrainMeter(initial=RATE, min_target=128, max_target=128, lag=0.005))
    writer.start()
    try:
        writer.put_all([b"a" * 548], want_room=True)
        assert wait_until(lambda: writer.bytes_written == 548)
        assert writer.backlog() == 40 + 548         # what the stack thread's budget sees
        assert inbox.wait_for("room", timeout=0.2) is None
        now[0] += 0.01                              # by now the OS count shows what waits
        assert inbox.wait_for("room") is not None
        assert writer.backlog() == 40
    finally:
        writer.stop()
        writer.join(5)


def test_writer_posts_nothing_for_its_writes_and_room_only_when_asked():
    endpoint, inbox, writer = _started_writer()
    try:
        writer.put_all([b"a" * 10, b"b" * 5])
        assert wait_until(lambda: writer.bytes_written == 15 and writer.queued == 0)
        writer.put_all([b"c" * 7], want_room=False)
        assert wait_until(lambda: writer.bytes_written == 22)
        assert inbox.wait_for("room", timeout=0.2) is None      # the line is below its bound: nobody asked
        assert inbox.items == []                                # and the writes posted nothing
        writer.put_all([], want_room=True)                      # asked with nothing to write: it looks at once
        assert len(inbox.wait_for("room")) == 1
        writer.put_all([b"d" * 3], want_room=True)
        assert wait_until(lambda: len(inbox.items) == 2)
        assert [i[0] for i in inbox.items] == ["room", "room"]
        assert b"".join(endpoint.writes) == b"a" * 10 + b"b" * 5 + b"c" * 7 + b"ddd"
    finally:
        writer.stop()
        writer.join(5)


def test_writer_looks_at_the_os_queue_after_a_write_only_for_a_room_asked_for():
    # Every look is a system call (FIONREAD); where nothing waits for the line, the one before each write
    # feeds the meter.
    endpoint = ScriptedEndpoint()
    looks = []
    endpoint.out_waiting = lambda: looks.append(1) or 0
    writer = SerialWriter(endpoint, lambda item: None, lambda reason: None,
                          meter=DrainMeter(initial=RATE, min_target=100, max_target=100))
    writer.start()
    try:
        for n in range(1, 4):
            writer.put_all([b"x"])
            assert wait_until(lambda: writer.bytes_written == n)
            time.sleep(0.01)
        assert len(looks) == 3
        writer.put_all([b"y"], want_room=True)
        assert wait_until(lambda: len(looks) == 5)          # before the write, and after it for the "room"
    finally:
        writer.stop()
        writer.join(5)


class TakingEndpoint(ScriptedEndpoint):
    """Also takes writes without waiting (``try_write``), up to ``room`` bytes (None: all)."""

    def __init__(self, room=None):
        ScriptedEndpoint.__init__(self)
        self.room = room
        self.direct = []

    def try_write(self, data):
        n = len(data) if self.room is None else min(self.room, len(data))
        if n:
            self.direct.append(bytes(data[:n]))
        return n


def test_frames_handed_to_an_idle_writer_go_to_the_line_on_the_callers_thread():
    # No thread hand-off while the line is idle: the writer thread is not even running here.
    endpoint = TakingEndpoint()
    writer = SerialWriter(endpoint, lambda item: None, lambda reason: None,
                          meter=DrainMeter(initial=RATE, min_target=100, max_target=100))
    assert writer.put_all([b"ab", b"cd"]) == 4
    assert endpoint.direct == [b"abcd"] and writer.queued == 0 and writer.bytes_written == 4
    assert writer.direct_writes == 1 and endpoint.writes == []


def test_what_the_line_does_not_take_at_once_follows_through_the_writer_in_order():
    endpoint = TakingEndpoint(room=3)
    writer = SerialWriter(endpoint, lambda item: None, lambda reason: None,
                          meter=DrainMeter(initial=RATE, min_target=100, max_target=100))
    writer.put_all([b"abcde"])
    assert endpoint.direct == [b"abc"] and writer.queued == 2
    writer.put_all([b"fg"])                         # not idle now: queued behind the rest, never ahead of it
    assert endpoint.direct == [b"abc"] and writer.queued == 4
    writer.start()
    try:
        assert wait_until(lambda: writer.queued == 0)
        assert b"".join(endpoint.direct + endpoint.writes) == b"abcdefg" and endpoint.writes == [b"defg"]
    finally:
        writer.stop()
        writer.join(5)


def test_a_paced_line_is_never_written_at_once():
    from pyslirp.runtime.serialio import LinePacer
    endpoint = TakingEndpoint()
    writer = SerialWriter(endpoint, lambda item: None, lambda reason: None, pacer=LinePacer(RATE))
    writer.put_all([b"ab"])
    assert endpoint.direct == [] and writer.queued == 2


def test_pty_endpoint_try_write_takes_what_fits_and_never_waits():
    endpoint = PtyEndpoint()
    try:
        assert endpoint.try_write(b"ping") == 4
        assert os.read(endpoint.slave_fd, 100) == b"ping"
        data = b"z" * (1 << 20)
        taken = endpoint.try_write(data)
        assert 0 < taken < len(data)                # the pty's buffer is full: the rest is not waited for
        assert endpoint.try_write(data) == 0
    finally:
        endpoint.close()


def test_writer_looks_again_when_the_unseen_write_stops_counting():
    # A fast pty measured up from 115200: 16 KB written at an estimate of 11,520 bytes/s is 1.4 s of line by
    # the estimate.  The writer must not sleep on that (it slept the 20 ms maximum after every write, and the
    # unpaced download fell from 2.1 to 0.8 MB/s): it looks again once the write is the OS count's to show.
    now = [50.0]
    meter = DrainMeter(initial=RATE, min_target=128, max_target=65536, lag=0.002)
    writer = SerialWriter(ScriptedEndpoint(), lambda item: None, lambda reason: None, clock=lambda: now[0],
                          meter=meter)
    assert writer._poll_after(16384) == writer.POLL_MAX          # nothing written yet: the drain's time
    meter.observe(50.0, 0)
    meter.wrote(16384, 50.0)
    assert writer._poll_after(16384) == pytest.approx(0.002)
    now[0] += 0.0015
    assert writer._poll_after(16384) == writer.POLL_MIN           # 0.5 ms left: the shortest sleep


def test_backlog_of_our_pty_is_what_the_client_has_not_read():
    endpoint = PtyEndpoint()
    try:
        probe = endpoint.out_waiting
        assert probe() == 0
        endpoint.write(b"z" * 1000)
        deadline = time.monotonic() + 5
        while probe() < 1000 and time.monotonic() < deadline:   # the kernel moves it to the slave's queue
            time.sleep(0.005)
        assert probe() == 1000
        os.read(endpoint.slave_fd, 300)                           # the client reads some
        assert probe() == 700
    finally:
        endpoint.close()


def test_backlog_of_a_pipe_is_its_unread_bytes():
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    endpoint = FdEndpoint(r1, w2, "pipes")
    try:
        probe = endpoint.out_waiting
        endpoint.write(b"y" * 500)
        assert probe() == 500
        os.read(r2, 200)
        assert probe() == 300
    finally:
        endpoint.close()
        for fd in (r1, w1, r2, w2):
            os.close(fd)


# -- the retransmission timeout on a slow line ------------------------------------------------------------------

def clean_line_transfer(rate, seconds, bound=128, delack=15, keys_until=0):
    """Bulk to the client over a clean line of ``rate`` bytes/s, fed as the runtime feeds it (``bound`` bytes
    queued at most, one frame may exceed it); the client acknowledges each segment ``delack`` ms after it
    arrived.  Until ``keys_until`` ms a second connection sends a keystroke every 200 ms (interactive traffic
    shares the line: bulk segments are cut small until INTERACTIVE_HOLD after the last one).  Returns the bulk
    connection and the bytes delivered."""
    import collections
    stack = make_stack(rate=rate)
    c = Client(stack, 40001)
    keys = Client(stack, 40002) if keys_until else None
    line = collections.deque()
    acks = collections.deque()
    busy = 0.0
    for now in range(1, seconds * 1000):
        t = stack.get_timer()
        if t is not None and t <= now:
            stack.handle_timer(now)
        if keys is not None and now < keys_until and now % 200 == 0:
            keys.send(tcp.ACK | tcp.PSH, b"k", now=now)
        if c.conn.send_space > 4096 and now % 50 == 0:
            stack.service_data(c.conn_id, b"d" * 2048, now)
        stack.take_events()
        budget = int(bound - max(0.0, (busy - now) * rate / 1000.0))
        for _, packet in stack.take_packets(budget if budget > 0 else 0, allow_one_over=True):
            busy = max(busy, now) + (len(packet) + 7) * 1000.0 / rate
            line.append((busy, parse(packet)))
        while line and line[0][0] <= now:
            seg = line.popleft()[1]
            if keys is not None and seg.dst_port == keys.port:
                keys.deliver(seg, now)
                continue
            before = len(c.data)
            c.deliver(seg, now, ack=False)
            if len(c.data) > before:
                acks.append(now + delack)
        while acks and acks[0] <= now:
            acks.popleft()
            c.send(tcp.ACK, now=now)
    return c.conn, len(c.data)


def test_segments_growing_after_interactive_traffic_are_not_sent_twice():
    # At 9600 bit/s keystrokes cut bulk segments to 256 bytes (0.3 s of line); INTERACTIVE_HOLD after the last
    # one they grow to 1460 (1.5 s).  The RTO's least variation term grows with them at once, not at the next
    # round-trip sample: the first large segments' round trips (one on the line, one queued behind it) would
    # otherwise outlast an RTO learnt on small ones, and each spurious retransmission costs 1.5 s of line.
    conn, delivered = clean_line_transfer(960, 20, keys_until=3000)
    assert conn.segment_limit is None and conn.send_mss == 1460
    assert conn.retransmits == 0
    assert delivered >= 0.8 * 960 * 18


def test_a_clean_9600_line_sends_nothing_twice():
    # 960 bytes/s: a 1500-byte frame holds the line for 1.6 s, and every round trip is about that.  The RTO's
    # variation term is at least the line time of a frame each way plus the minimum RTO, so neither the first
    # data segment (the estimate then comes from the small handshake) nor later ones time out.
    conn, delivered = clean_line_transfer(960, 12)
    assert conn.retransmits == 0
    assert conn.rto_slack == 200 + 1000 * ((1460 + 40) + (conn.our_mss + 40)) // 960
    assert delivered >= 0.8 * 960 * 11
    # At 115200 the slack is the same arithmetic, and a fast line has none.
    assert clean_line_transfer(11520, 3)[0].retransmits == 0
    fast = Client(make_stack(rate=2000000), 40001)
    assert fast.conn.rto_slack == 0


def test_echoed_keystrokes_keep_the_window_field_once_the_line_turns_interactive():
    # One connection on an idle 115200 line: after a few keystrokes the line counts as interactive and the
    # connection's receive window limit falls from the bulk window to two segments.  The echoes' window field
    # stays what it was (no bulk came to close it), so each answer's TCP/IP header compresses to VJ's 3 bytes
    # (RFC 1144 3.2.3): a changed window would add 5 bytes to every answer for some 66 exchanges.
    stack = make_stack(rate=RATE)
    c = Client(stack, 40001)
    windows = []
    now = 0
    for i in range(80):
        now += 250
        c.send(tcp.ACK | tcp.PSH, bytes([i]) * 64, now=now)
        sends = [e for e in stack.take_events() if hasattr(e, "data")]
        assert [len(e.data) for e in sends] == [64]
        stack.service_written(c.conn_id, 64, now)
        stack.service_data(c.conn_id, sends[0].data, now)
        out = [parse(p) for _, p in stack.take_packets(3000, allow_one_over=True)]
        answers = [seg for seg in out if seg.payload]
        assert len(answers) == 1 and answers[0].payload == sends[0].data
        assert len(out) == 1                    # no window update nor bare ACK of its own
        windows.append(answers[0].window)
        c.deliver(answers[0], now, ack=False)   # the next keystroke acknowledges it
    assert c.conn.rcv_limit == stack_mod.MIN_WINDOW_SEGMENTS * c.conn.our_mss     # interactive all along
    assert len(set(windows)) == 1, windows


def test_the_short_tails_of_an_upload_are_no_interactive_traffic():
    # Linux now and then sends a full-sized segment's worth as two (579 + 2 bytes of a 581-byte MSS): those 2-byte
    # segments of an upload must not turn the line interactive (a two-segment window for the upload itself).
    stack = make_stack(rate=RATE)
    up = Client(stack, 40001)
    conn = up.conn
    mss = conn.our_mss
    bulk_window = mss * max(stack_mod.BULK_WINDOW_SEGMENTS, int(RATE * stack_mod.WINDOW_TIME) // mss)
    t = 10
    for _ in range(4):                                  # (within the window: the service reads nothing here)
        up.send(tcp.ACK, pattern(mss - 2), now=t)
        up.send(tcp.ACK | tcp.PSH, pattern(2), now=t + 1)
        t += 50
    stack.take_packets(-1)
    assert conn.rcv_limit == bulk_window and conn.ack_every == 2
    # Keystrokes after the upload still are.
    for i in range(3):
        up.send(tcp.ACK | tcp.PSH, b"x", now=t + 100 * i)
    assert conn.rcv_limit == stack_mod.MIN_WINDOW_SEGMENTS * mss and conn.ack_every == 1
