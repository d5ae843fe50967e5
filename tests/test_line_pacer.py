"""Pacing where the backlog cannot be seen: ``LinePacer``, the writer and line manager around it.

Deterministic: the pacer is sans-IO (integer milliseconds passed in) and the lines are simulated.  The simulated
line here is one whose OS queue pyslirp cannot see (the slave of someone else's pty: TIOCOUTQ reads 0), which is
what a ``DrainMeter`` misreads as an infinitely fast line.
"""

import os
import threading
import time

import pytest

from test_latency import Inbox, ScriptedEndpoint
from test_runtime import ScriptedCore, pipe_endpoint, start
from pyslirp.runtime.endpoints import Endpoint, PtyEndpoint
from pyslirp.runtime.serialio import DrainMeter, LinePacer, SerialWriter
from pyslirp.runtime.stackloop import Runtime

RATE = 11520                    # bytes/s: 115200 bit/s 8N1
FRAME = 1500


class HiddenLine(object):
    """An OS queue drained at ``rate`` bytes/s (time in ms) that the writer cannot see (it reads 0)."""

    def __init__(self, rate=RATE):
        self.rate = rate
        self.queue = 0.0
        self.now = 0
        self.sent = 0
        self.peak = 0

    def write(self, n):
        self.queue += n
        self.peak = max(self.peak, self.queue)

    def advance(self, ms=1):
        took = min(self.queue, self.rate * ms / 1000.0)
        self.queue -= took
        self.sent += took
        self.now += ms


def drive(pacer, line, ms, rtt_base=None, frame=FRAME):
    """The stack thread's loop on ``line``: hand over a bulk frame whenever the budget is positive.

    With ``rtt_base`` (ms), every 100 ms the pacer hears a round trip: the base plus the time the real queue
    takes to drain (what a TCP segment sent now would measure).
    """
    for _ in range(ms):
        budget = pacer.target() - pacer.backlog(line.now)
        if budget > 0:                  # one frame may exceed the budget (allow_one_over)
            line.write(frame)
            pacer.wrote(frame, line.now)
        line.advance(1)
        if rtt_base is not None and line.now % 100 == 0:
            pacer.set_delay_signal(line.now, rtt_base + int(1000 * line.queue / line.rate))


# -- the virtual line -------------------------------------------------------------------------------------------

def test_rate_and_bound_come_from_the_configured_speed():
    pacer = LinePacer(RATE, min_target=128, max_target=65536, delay=10)
    assert pacer.rate == RATE and pacer.target() == 128     # 10 ms at 115200 is 115 bytes: the minimum
    assert LinePacer(400000, min_target=128, delay=10).target() == 4000
    assert LinePacer(10 ** 8, max_target=5000).target() == 5000


@pytest.mark.parametrize("baudrate", [9600, 19200, 115200])
def test_on_a_slow_line_the_bound_holds_little_line_time_measured_or_paced(baudrate):
    # What waits toward the line delays the pure ACKs of the client's upload.  At 9600 bit/s a floor of
    # 128 bytes is 133 ms: with the client's two-segment window the ACK came back after its uplink had run
    # dry.  The runtime's floor holds at most 30 ms of line time; at 115200 the 128 bytes stay (11 ms).
    runtime = Runtime(None, None, endpoint=ScriptedEndpoint(), core=ScriptedCore(), baudrate=baudrate)
    rate = baudrate / 10.0
    for bound in (runtime._new_meter().target(), runtime._new_pacer().target()):
        assert bound == (128 if baudrate == 115200 else int(rate * 0.030))
        assert bound / rate <= 0.030


def test_the_floor_in_bytes_holds_at_most_its_line_time():
    assert DrainMeter(initial=960, min_target=128, delay=0.01, min_time=0.03).target() == 28
    assert DrainMeter(initial=960, min_target=128, delay=0.01).target() == 128         # no min_time: bytes
    assert LinePacer(960, min_target=128, delay=10, min_time=30).target() == 28
    assert LinePacer(RATE, min_target=128, delay=10, min_time=30).target() == 128
    assert LinePacer(400000, min_target=128, delay=10, min_time=30).target() == 4000   # delay above the floor


def test_the_virtual_queue_drains_at_the_rate_and_saves_nothing_while_idle():
    pacer = LinePacer(RATE)
    pacer.wrote(1152, 0)                # 100 ms of line time
    assert [pacer.queued(t) for t in (0, 50, 99, 100, 500)] == [1152, 576, 12, 0, 0]
    pacer.wrote(1152, 50)               # behind the half still queued
    assert pacer.queued(50) == 1728 and pacer.queued(200) == 0
    pacer.wrote(576, 1000)              # after idling: from now, no credit for the idle time
    assert pacer.queued(1000) == 576 and pacer.queued(1050) == 0
    assert pacer.bytes == 1152 + 1152 + 576


def test_backlog_is_the_virtual_queue_or_the_visible_part_if_larger():
    pacer = LinePacer(RATE)
    pacer.wrote(1000, 0)
    assert pacer.backlog(0, seen=0) == 1000
    assert pacer.backlog(0, seen=3000) == 3000      # a pipe whose reader is slower than the line


def test_a_paced_line_keeps_the_hidden_queue_at_the_bound_and_the_line_busy():
    pacer = LinePacer(RATE, min_target=128, delay=10)
    line = HiddenLine(RATE)
    drive(pacer, line, 10000)
    assert line.peak <= pacer.target() + FRAME          # what a keystroke can wait behind: the bound + a frame
    assert line.sent >= 0.99 * RATE * 10               # and the line never idled
    # The bug this fixes: measuring a queue that always reads 0 makes the line look fast and fills it.
    meter = DrainMeter(initial=RATE, min_target=128, max_target=65536, delay=0.010)
    line = HiddenLine(RATE)
    for _ in range(10000):
        meter.observe(line.now / 1000.0, 0)
        if meter.target() > 0:
            line.write(meter.target())
            meter.wrote(meter.target(), line.now / 1000.0)
        line.advance(1)
    assert line.peak > 50 * FRAME


# -- the delay signal -------------------------------------------------------------------------------------------

def test_no_standing_queue_keeps_the_configured_rate_and_never_exceeds_it():
    pacer = LinePacer(RATE)
    for t in range(0, 20000, 100):
        pacer.set_delay_signal(t, 150 + (t // 100) % 7)    # jitter, no trend
    assert pacer.rate == RATE and pacer.queue_delay <= 6


def test_a_standing_queue_slows_the_pace_at_most_once_per_adjust_interval_and_not_below_the_floor():
    pacer = LinePacer(RATE)
    pacer.set_delay_signal(0, 100)                      # the base
    for _ in range(LinePacer.CURRENT_SAMPLES):
        pacer.set_delay_signal(10, 100 + 2 * LinePacer.DELAY_TARGET)
    assert pacer.rate == RATE                           # adjusted at t=0 already: not again before ADJUST_MS
    pacer.set_delay_signal(LinePacer.ADJUST_MS, 100 + 2 * LinePacer.DELAY_TARGET)
    assert pacer.queue_delay == 2 * LinePacer.DELAY_TARGET
    assert pacer.rate == pytest.approx(RATE * (1 - LinePacer.DECREASE_GAIN))
    for i in range(2, 60):
        pacer.set_delay_signal(i * LinePacer.ADJUST_MS, 5000)
    assert pacer.rate == pytest.approx(RATE * LinePacer.FLOOR)


def test_the_pace_climbs_back_when_the_queue_is_gone():
    pacer = LinePacer(RATE)
    pacer.set_delay_signal(0, 100)
    for i in range(1, 10):
        pacer.set_delay_signal(i * LinePacer.ADJUST_MS, 1000)
    slow = pacer.rate
    assert slow < RATE * 0.5
    rates = []
    for i in range(10, 300):
        pacer.set_delay_signal(i * LinePacer.ADJUST_MS, 100)
        rates.append(pacer.rate)
    steps = [b / a for a, b in zip([slow] + rates, rates)]
    assert max(steps) <= 1 + LinePacer.INCREASE_GAIN + 1e-9                   # gently
    assert rates == sorted(rates) and rates[-1] == RATE                         # up to the ceiling, not past it


def test_the_base_delay_forgets_minima_older_than_its_history():
    pacer = LinePacer(RATE)
    pacer.set_delay_signal(0, 50)                       # a minimum in the first minute
    minute = LinePacer.BUCKET_MS
    for m in range(1, LinePacer.BASE_BUCKETS):
        pacer.set_delay_signal(m * minute, 300)
    assert pacer.queue_delay == 250                     # still measured against 50 ms
    pacer.set_delay_signal(LinePacer.BASE_BUCKETS * minute, 300)
    assert pacer.queue_delay == 0                       # the first minute has left the history


def test_a_line_slower_than_configured_is_found_by_the_round_trips():
    # Configured 115200, the line really runs at 57600: without the delay signal the hidden queue grows without
    # bound; with it, the pace settles near the real rate and the queue near the target delay.
    pacer = LinePacer(RATE)
    line = HiddenLine(RATE // 2)
    drive(pacer, line, 60000)
    assert line.queue > 100000
    pacer = LinePacer(RATE)
    line = HiddenLine(RATE // 2)
    drive(pacer, line, 60000, rtt_base=120)
    sent_before = line.sent
    peak_before = line.peak
    line.peak = 0
    drive(pacer, line, 30000, rtt_base=120)
    # In ms of line time, steady state: the target twice over at worst, and the frame just handed over.
    assert line.peak * 1000.0 / line.rate < 2 * LinePacer.DELAY_TARGET + FRAME * 1000.0 / line.rate
    assert peak_before * 1000.0 / line.rate < 1500      # the start included (unpaced: 17 s after 60 s)
    assert line.sent - sent_before >= 0.85 * line.rate * 30                     # and the line stays busy
    assert pacer.rate < 0.8 * RATE


# -- the writer and the line manager ------------------------------------------------------------------------------

class FakeClock(object):
    def __init__(self):
        self.t = 100.0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            return self.t

    def advance(self, seconds):
        with self.lock:
            self.t += seconds


def test_writer_on_a_hidden_line_posts_room_when_the_virtual_line_has_drained():
    endpoint = ScriptedEndpoint()               # out_waiting() is 0: nothing to see
    inbox = Inbox()
    clock = FakeClock()
    pacer = LinePacer(RATE, min_target=128, delay=10)
    writer = SerialWriter(endpoint, inbox.post, lambda reason: None, clock=clock, pacer=pacer)
    writer.start()
    try:
        writer.put_all([b"a" * 1152], want_room=True)      # 100 ms of line time
        deadline = time.monotonic() + 5
        while writer.bytes_written < 1152 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert writer.backlog() == 1152 and writer.rate == RATE and writer.target() == 128
        assert inbox.wait_for("room", timeout=0.3) is None     # the virtual line is still busy
        clock.advance(0.050)
        assert 500 <= writer.backlog() <= 600
        assert inbox.wait_for("room", timeout=0.3) is None
        clock.advance(0.045)                    # 58 bytes left: below the bound
        assert inbox.wait_for("room") is not None
        writer.set_delay_signal(100)
        assert pacer.queue_delay == 0
    finally:
        writer.stop()
        writer.join(5)


class HiddenEndpoint(Endpoint):
    backlog_visible = False


def runtime_writer(endpoint, baudrate):
    runtime = Runtime(None, None, endpoint=endpoint, core=ScriptedCore(), baudrate=baudrate)
    thread, result = start(runtime)
    deadline = time.monotonic() + 5
    while runtime.writer is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return runtime, thread


@pytest.mark.parametrize("kind", ["pipes", "pty"])
def test_the_line_manager_paces_exactly_the_lines_whose_backlog_cannot_be_seen(kind):
    fds = ()
    if kind == "pipes":
        endpoint, to_rt, from_rt = pipe_endpoint()       # a pipe: what its reader holds is out of sight
        fds = (to_rt, from_rt)
    else:
        endpoint = PtyEndpoint()                         # our own pty: FIONREAD on its slave
    runtime, thread = runtime_writer(endpoint, 115200)
    try:
        writer = runtime.writer
        if kind == "pipes":
            assert writer.pacer is not None and writer.rate == RATE and writer.target() == 128
            assert runtime.counters()["runtime.line_paced"] == 1
        else:
            assert writer.pacer is None and runtime.counters()["runtime.line_paced"] == 0
    finally:
        runtime.request_stop()
        thread.join(5)
        for fd in fds:
            os.close(fd)


def test_endpoint_backlog_visibility_is_a_property_of_the_endpoint():
    assert Endpoint.backlog_visible is False and HiddenEndpoint.backlog_visible is False
    pty = PtyEndpoint()
    try:
        assert pty.backlog_visible is True
    finally:
        pty.close()
    from pyslirp.runtime.endpoints import StdioEndpoint
    r, w = os.pipe()
    try:
        stdio = StdioEndpoint(r, w)
        assert stdio.backlog_visible is False           # a pipe to ssh or a relay: the backlog is theirs
        stdio.close()
    finally:
        os.close(r)
        os.close(w)
    master, slave = os.openpty()
    try:
        stdio = StdioEndpoint(slave, slave)
        assert stdio.backlog_visible is False           # a pty slave: TIOCOUTQ reads 0
        stdio.close()
    finally:
        os.close(master)
        os.close(slave)
