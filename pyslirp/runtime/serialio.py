"""The serial line's threads: reader, writer and the line manager that (re)opens it.

Theory of operation:

* :class:`SerialReader` blocks in ``endpoint.read`` and posts each raw chunk
  to the stack thread's inbox as ``("serial", reader, data)``.  The bytes in
  flight (posted, not yet fed to the Core) are bounded: the reader waits
  when ``max_inflight`` is reached until the stack thread calls
  :meth:`SerialReader.consumed`.
* :class:`SerialWriter` writes the framed PPP frames the stack thread hands
  it, strictly in that order (coalesced into writes of at most ``coalesce``
  bytes): which frame goes next is decided by the stack thread when the line
  has room, so nothing here can reorder the segments of a TCP connection.
  What it holds and has written are counters the stack thread reads
  (``queued``, ``bytes_written``): a write posts nothing.  Frames handed
  over while nothing is queued or being written go to the line at once from
  the stack thread, as far as the endpoint takes them without waiting
  (``Endpoint.try_write``; a measured line only), and the writer thread is
  woken only for what is left.  It also
  measures the line: ``endpoint.out_waiting()`` reads the OS output queue
  (TIOCOUTQ; for our pseudo-terminal FIONREAD on its slave, for a pipe
  FIONREAD) and :class:`DrainMeter` turns successive readings into the
  line's real drain rate and, from it, the bound on what may wait toward the
  line (about 10 ms of line time, see the stack loop).  Once the OS queue has
  drained below that bound it posts ``("room", writer)``, if the stack
  thread's last hand-over asked for it (output waits for the line's room):
  the stack thread then hands over the next frames.  The configured baud rate is only the
  first guess: a pty, a socket or a USB CDC-ACM port ignores it and is
  measured running at full speed.  Where the endpoint cannot show its
  backlog at all (``endpoint.backlog_visible`` is false: the slave of
  someone else's pty, standard output that is a pipe or a pty, a pyserial
  URL) there is nothing to measure, and :class:`LinePacer` models the line
  at the configured speed instead: the same bound, the same "room", but the
  queue is the virtual line's.
* :class:`LineManager` opens the endpoint, starts a reader and a writer on it
  and posts ``("line_up", line, endpoint, writer, reader)``; when either
  thread reports the line gone it posts ``("line_down", line, reason)``,
  stops both, closes the endpoint and, for a reopenable endpoint (a serial
  device: USB unplugged), tries again with a back-off of 1 s doubling to
  30 s, forever: the daemon does not exit.  A failure to open at start-up is
  retried the same way (a USB adapter may be plugged in later, like pppd's
  ``persist``), except a bad setting (exit 2) and permission denied (exit 1),
  which retrying cannot fix; those post ``("fatal", code, message)``.  A
  non-reopenable endpoint (standard input, our pseudo-terminal) that goes
  away posts ``("line_final", line, reason, exit_code)``: end of file on
  standard input is the client hanging up (0), an error on our own
  pseudo-terminal a runtime failure (1).
"""

import collections
import logging
import threading
import time

from pyslirp.runtime.endpoints import LineGone, OpenError

log = logging.getLogger("pyslirp.runtime")


BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 30.0     # a line up this long resets the back-off


class SerialReader(threading.Thread):
    def __init__(self, endpoint, post, on_gone, chunk=16384, max_inflight=262144):
        super().__init__(name="serial-reader", daemon=True)
        self.endpoint = endpoint
        self._post = post
        self._on_gone = on_gone
        self._chunk = chunk
        self._max = max_inflight
        self._inflight = 0
        self._cond = threading.Condition()
        self._halt = False
        self._waiting = False           # the reader waits for the stack thread to consume
        self.bytes_read = 0

    def consumed(self, nbytes):
        """The stack thread has fed ``nbytes`` of ours to the Core."""
        with self._cond:
            self._inflight -= nbytes
            if self._waiting:
                self._cond.notify()

    def stop(self):
        with self._cond:
            self._halt = True
            self._cond.notify()

    def run(self):
        try:
            while True:
                with self._cond:
                    while self._inflight >= self._max and not self._halt:
                        self._waiting = True
                        self._cond.wait(0.5)
                        self._waiting = False
                    if self._halt:
                        return
                data = self.endpoint.read(self._chunk)
                if self._halt:
                    return
                if data:
                    with self._cond:
                        self._inflight += len(data)
                    self.bytes_read += len(data)
                    self._post(("serial", self, data))
        except LineGone as exc:
            if not self._halt:
                self._on_gone("read: %s" % exc)
        except Exception as exc:        # a bug: report the line gone rather than die silently
            log.exception("serial reader failed")
            self._on_gone("reader failed: %s" % exc)


class DrainMeter(object):
    """The line's measured drain rate and, from it, how many bytes may wait toward the line.

    Sans-IO (times in seconds are passed in), used by the writer thread.  Every look at the OS output
    queue is an ``observe(now, backlog)``; every write a ``wrote(nbytes)``.  Over an interval of at least
    ``min_interval`` the line drained ``backlog_then + written - backlog_now`` bytes:

    * if the queue was still non-empty at the end, the line was busy all along and that is the drain
      rate itself: it goes into an exponentially weighted average (which can fall as well as rise:
      a slower device on the same port);
    * if the queue had run empty, the line is at least that fast: the estimate only rises.  (Where
      the OS queue cannot be seen at all, this is the rate the endpoint accepted our writes.)

    A pseudo-terminal, a socket or a USB CDC-ACM port ignores the baud rate and drains as fast as the
    other side reads; that is what gets measured, never the nominal speed.  The first estimate
    (``initial``, bytes/s) comes from the configured line speed, or is None (unknown) until measured.

    :meth:`target` is the queue bound the stack thread fills up to: ``rate * delay`` (about 10 ms of
    line time: enough to cover the threads' wake-up latency so that the line never idles, short
    enough that a keystroke queued behind it is not noticeably late), at least ``min_target`` bytes and
    at most ``max_target``.  ``min_target`` itself holds at most ``min_time`` seconds of line time (when
    given; see :func:`queue_bound`).  With no estimate and no measurement at all it is ``max_target``, which is
    what endpoints without an observable queue (a pipe to a fast reader) get: our own queue only.

    The OS count lags our writes.  On our pseudo-terminal a write lands in the tty layer's flip buffer and
    a kernel worker moves it into the slave's input queue, which is what FIONREAD counts, a moment later
    (usually microseconds; milliseconds on a busy machine).  A look in that moment sees the queue as it was
    before the write: the writer reported "room", the stack thread handed over the next full-size frame as
    well (its budget allows one frame over the bound), and a pure ACK queued after both waited a second
    frame's line time (at 115200 bit/s, 48 ms more for a 550-byte frame: longer than the client's
    two-segment window lasts, so its upload stalled).  Hence :meth:`backlog`: what a write left queued
    (the queue seen just before it, plus the write) draining at the measured rate, for at most
    ``lag`` seconds after the write (2 ms: the stack thread's turn after "room" takes a fraction of one), or
    the OS count if larger.  The bound on ``lag`` keeps a rate estimate that is still too low (a fast pty
    measured up from the configured baud rate) from holding the line back for longer than that after each
    write; the writer looks again when it ends (:meth:`unseen_for`).
    """

    ALPHA = 0.25

    def __init__(self, initial=None, min_target=128, max_target=65536, delay=0.010, min_interval=0.05,
                 lag=0.002, min_time=None):
        self.rate = float(initial) if initial else None
        self.min_target = min_target
        self.min_time = min_time
        self.max_target = max(min_target, max_target)
        self.delay = delay
        self.min_interval = min_interval
        self.lag = lag
        self.samples = 0                # busy-line samples taken
        self.measurable = False         # an OS queue was ever seen non-empty
        self._t = None
        self._backlog = 0
        self._written = 0
        self._seen = 0                  # the OS count at the last look
        self._wrote_at = None           # when the last write was made ...
        self._left = 0                  # ... and what it left queued toward the line

    def wrote(self, nbytes, now):
        """``nbytes`` went to the OS at ``now`` (seconds), after the look that saw the queue as it was."""
        self._written += nbytes
        self._left = self.backlog(now, self._seen) + nbytes
        self._wrote_at = now

    def backlog(self, now, seen):
        """What waits toward the line: the OS count ``seen`` or, in the moment after a write, if larger, what
        the write left queued (see the class docstring)."""
        if self._wrote_at is None:
            return seen
        age = now - self._wrote_at
        if age >= self.lag:
            return seen
        left = self._left - self.rate * age if self.rate else self._left
        return seen if seen >= left else int(left + 0.999)

    def unseen_for(self, now):
        """Seconds :meth:`backlog` still counts the last write whatever the OS shows (None: it does not)."""
        if self._wrote_at is None:
            return None
        left = self._wrote_at + self.lag - now
        return left if left > 0 else None

    def observe(self, now, backlog):
        self._seen = backlog
        if backlog > 0:
            self.measurable = True
        if self._t is None:
            self._t, self._backlog, self._written = now, backlog, 0
            return
        dt = now - self._t
        if dt < self.min_interval:
            return
        drained = self._backlog + self._written - backlog
        if drained > 0:
            sample = drained / dt
            if backlog > 0 and self._backlog > 0:
                self.samples += 1
                if self.rate is None:
                    self.rate = sample
                else:
                    self.rate += self.ALPHA * (sample - self.rate)
            elif self.rate is None or sample > self.rate:
                self.rate = sample
        self._t, self._backlog, self._written = now, backlog, 0

    def target(self):
        if self.rate is None:
            return self.max_target
        return queue_bound(self.rate, self.delay, self.min_target, self.max_target, self.min_time)


def queue_bound(rate, delay, min_target, max_target, min_time=None):
    """The bound on what may wait toward a line of ``rate`` bytes/s: ``delay`` seconds of line time, at least
    ``min_target`` bytes but never more than ``min_time`` seconds of line time for that floor, at most
    ``max_target``.

    The floor covers the threads' wake-up latency where ``delay`` is only a few bytes; on a slow line a floor
    in bytes is a long time.  Everything queued toward the line is time that a pure ACK of the client's upload
    waits (besides one frame of ours in transmission): at 9600 bit/s 128 bytes are 133 ms, and with the
    client's two-segment window (two 256-byte segments, 560 ms of line) the ACK loop -- its segment, our
    queue and a frame of ours, the ACK -- came back too late and the client's uplink idled 9% of the time.
    """
    floor = min_target
    if min_time is not None and rate * min_time < floor:
        floor = rate * min_time
    return int(min(max_target, max(floor, rate * delay)))


class LinePacer(object):
    """Output paced at the configured line speed, for an endpoint that cannot show its backlog.

    Sans-IO; ``now`` in integer milliseconds.  On the slave of someone else's pseudo-terminal (socat, QEMU),
    on standard output that is a pipe, a socket or a pty, and behind a pyserial URL, the OS output queue always
    looks empty: what waits is in a buffer that is not ours (the pty master's input queue, ssh, a terminal
    server).  A :class:`DrainMeter` would conclude the line is infinitely fast and up to that buffer's size
    (tens of kB: seconds at 115200 bit/s) would wait in front of every keystroke.  The configured baud rate is
    the user telling us the line's speed, so this models the line instead of measuring it: a virtual line that
    transmits ``rate`` bytes/s (baud / 10 for 8N1).  ``_busy`` is when it will have sent everything written so
    far; what is still queued toward the line is ``(_busy - now) * rate``, and :meth:`backlog` also takes the part
    of the OS queue that can be seen, if larger (a pipe's unread bytes: a reader slower than the line).  This
    is a token bucket of depth :meth:`target` that the stack thread fills, through the writer, with the same
    budget arithmetic as for a measured line: ``target - queued - backlog``.

    Where the real line is slower than configured, a queue still grows out of sight.  The round trips the TCP
    connections measure show it: :meth:`set_delay_signal` takes a round-trip figure (ms) whenever the stack has
    one.  As in LEDBAT (RFC 6817), the base delay is the smallest figure seen over the last ``BASE_BUCKETS``
    minutes, the current delay the smallest of the last ``CURRENT_SAMPLES``; their difference is the standing
    queue.  Above ``DELAY_TARGET`` ms the pace falls (by up to ``DECREASE_GAIN`` per ``ADJUST_MS``), below it
    climbs back (by up to ``INCREASE_GAIN``), never above the configured rate nor below ``FLOOR`` of it.
    """

    DELAY_TARGET = 200          # ms of standing queue tolerated (RFC 6817 allows at most 100 on the Internet;
                                # a serial round trip carries frames of the client's own upload besides)
    ADJUST_MS = 500             # at most one change of pace this often
    DECREASE_GAIN = 0.25        # the largest fall per change (queue delay of twice the target and more)
    INCREASE_GAIN = 0.05        # the largest rise per change (no queue at all)
    FLOOR = 1.0 / 16            # never slower than this fraction of the configured rate
    CURRENT_SAMPLES = 4         # RFC 6817 CURRENT_FILTER
    BASE_BUCKETS = 10           # RFC 6817 BASE_HISTORY: minutes
    BUCKET_MS = 60000

    def __init__(self, rate, min_target=128, max_target=65536, delay=10, min_time=None):
        self.ceiling = float(rate)
        self.rate = float(rate)         # bytes/s, what the line is paced at now
        self.min_target = min_target
        self.min_time = min_time        # ms: the most line time min_target may hold (see queue_bound)
        self.max_target = max(min_target, max_target)
        self.delay = delay              # ms of line time the bound holds
        self.bytes = 0                  # written in all
        self.queue_delay = None         # ms: the standing queue the round trips last showed
        self._busy = 0.0                # ms: when the virtual line has sent everything written so far
        self._current = collections.deque(maxlen=self.CURRENT_SAMPLES)
        self._base = collections.deque(maxlen=self.BASE_BUCKETS)    # [bucket start, minimum]
        self._adjusted = None

    def wrote(self, nbytes, now):
        """``nbytes`` went to the OS at ``now``: they follow what the virtual line still has to send."""
        start = self._busy if self._busy > now else float(now)
        self._busy = start + nbytes * 1000.0 / self.rate
        self.bytes += nbytes

    def queued(self, now):
        """Bytes the virtual line has not sent yet."""
        left = self._busy - now
        return int(left * self.rate / 1000.0 + 0.999) if left > 0 else 0

    def backlog(self, now, seen=0):
        """What waits toward the line: the virtual queue or, if larger, the part of the OS queue we can see."""
        queued = self.queued(now)
        return seen if seen > queued else queued

    def target(self):
        return queue_bound(self.rate, self.delay / 1000.0, self.min_target, self.max_target,
                           None if self.min_time is None else self.min_time / 1000.0)

    def set_delay_signal(self, now, rtt):
        """A round-trip figure (ms, already minimum-filtered or a raw sample) measured across the link."""
        self._current.append(rtt)
        bucket = now - now % self.BUCKET_MS
        if self._base and self._base[-1][0] == bucket:
            if rtt < self._base[-1][1]:
                self._base[-1][1] = rtt
        else:
            self._base.append([bucket, rtt])
        base = min(b[1] for b in self._base)
        self.queue_delay = min(self._current) - base
        if self._adjusted is not None and now - self._adjusted < self.ADJUST_MS:
            return
        self._adjusted = now
        off = (self.DELAY_TARGET - self.queue_delay) / float(self.DELAY_TARGET)    # 1: no queue; < 0: too much
        if off < 0:
            factor = 1.0 + self.DECREASE_GAIN * max(-1.0, off)
        else:
            factor = 1.0 + self.INCREASE_GAIN * off
        self._set_rate(now, min(self.ceiling, max(self.ceiling * self.FLOOR, self.rate * factor)))

    def _set_rate(self, now, rate):
        if rate == self.rate:
            return
        queued = self.queued(now)       # the bytes still queued drain at the new rate from now on
        self.rate = rate
        self._busy = now + queued * 1000.0 / rate if queued else self._busy


class SerialWriter(threading.Thread):
    """Writes framed frames to the line in the order given; measures the line's drain.

    Frames are written strictly in the order the stack thread handed them over: priority is decided
    there, when the line has room, so nothing here can reorder the segments of one TCP connection.
    Consecutive frames are coalesced into one ``write`` of at most ``coalesce`` bytes.  A write posts
    nothing: ``queued`` (handed over, not yet written) and ``bytes_written`` are the stack thread's to read.
    When :meth:`put_all` finds nothing queued or being written on a measured (not paced) line, it writes the
    frames itself, on the caller's thread and under the writer's lock, as far as ``endpoint.try_write``
    takes them without waiting: an idle line costs no thread hand-off (the order holds, since the writer
    thread writes only what it took from the queue under the same lock, and counts it queued until
    written).
    Around writes it looks at the OS output queue (``endpoint.out_waiting()``) and feeds
    :class:`DrainMeter`; when its own queue is empty but the OS queue is above the meter's target it
    keeps looking (sleeping about as long as the line needs to drain the excess) and, once it is not,
    posts ``("room", writer)`` if the last :meth:`put_all` asked for it (``want_room``: output waits for
    the line's room): that is the stack thread's cue to hand over the next bulk frames.  Asked with
    nothing to write, it looks at once.  (A "room" that nothing waits for would cost the stack thread a
    wake-up after every write.)
    """

    POLL_MIN = 0.001
    POLL_MAX = 0.02

    def __init__(self, endpoint, post, on_gone, coalesce=16384, limit=1 << 20, meter=None,
                 clock=time.monotonic, pacer=None):
        super().__init__(name="serial-writer", daemon=True)
        self.endpoint = endpoint
        self._post = post
        self._on_gone = on_gone
        self._coalesce = coalesce
        self._limit = limit
        self._frames = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._halt = False
        self._watching = False          # written (or asked) since the last look found the line below its bound
        self._room_wanted = False       # the stack thread's last hand-over asked for "room" (put_all)
        self._clock = clock
        self.meter = meter if meter is not None else DrainMeter()
        self.pacer = pacer              # a LinePacer where the endpoint cannot show its backlog
        self._pace_lock = threading.Lock()      # the pacer or meter is used by this thread and the stack thread
        self._out_waiting = endpoint.out_waiting
        self._try_write = endpoint.try_write
        self.dropped = 0
        self.bytes_written = 0
        self.writes = 0
        self.direct_writes = 0          # of those, made by put_all on the caller's thread
        self.rooms = 0

    @property
    def queued(self):
        with self._cond:
            return self._queued

    @property
    def rate(self):
        """The line's rate in bytes/s: the pace, or the measured drain (None while unknown)."""
        if self.pacer is not None:
            return self.pacer.rate
        return self.meter.rate

    def target(self):
        """The bound on what may wait toward the line."""
        if self.pacer is not None:
            return self.pacer.target()
        return self.meter.target()

    def backlog(self):
        """Bytes waiting toward the line: the OS queue (or, just after a write, what it left queued, if the
        OS does not show it yet), or for a paced line the virtual one (if larger)."""
        seen = self._out_waiting()
        with self._pace_lock:
            if self.pacer is None:
                now = self._clock()
                self.meter.observe(now, seen)       # a look like the writer's own (put_all may write next)
                return self.meter.backlog(now, seen)
            return self.pacer.backlog(self._now_ms(), seen)

    def set_delay_signal(self, rtt):
        """A round trip across the link (ms) measured by the stack: a rising minimum slows a paced line."""
        if self.pacer is not None:
            with self._pace_lock:
                self.pacer.set_delay_signal(self._now_ms(), rtt)

    def _now_ms(self):
        return int(self._clock() * 1000)

    def put(self, urgent, frame):
        """Queue one framed frame (``urgent`` is informational: order is kept); False if full or stopped."""
        with self._cond:
            if self._halt or self._queued + len(frame) > self._limit:
                self.dropped += 1
                return False
            self._frames.append(frame)
            self._queued += len(frame)
            self._cond.notify()
            return True

    def put_all(self, frames, want_room=False):
        """Queue framed frames in order, under one lock and one wake-up; the bytes queued.

        ``want_room``: output waits for the line's room, so post ``("room", writer)`` once the line is below
        its bound (looking at once if nothing was written since the last look); False takes back an earlier
        request.  Frames past the limit (or all, once stopped) are dropped and counted, as :meth:`put` does.
        """
        queued = 0
        with self._cond:
            idle = not self._queued             # nothing queued, nothing being written
            for frame in frames:
                if self._halt or self._queued + len(frame) > self._limit:
                    self.dropped += 1
                    continue
                self._frames.append(frame)
                self._queued += len(frame)
                queued += len(frame)
            if queued and idle and self.pacer is None:
                self._write_now()
            self._room_wanted = want_room
            if want_room:
                self._watching = True
            if self._frames or want_room:
                self._cond.notify()
        return queued

    def _write_now(self):
        """put_all's write on the caller's thread (holding ``_cond``, with nothing in flight): the queue's head
        as far as the endpoint takes it without waiting; what is left stays at the head for the writer."""
        chunks, size = self._take()
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        n = self._try_write(data)
        if n < size:
            self._frames.appendleft(data[n:] if n else data)
        if n:
            with self._pace_lock:
                self.meter.wrote(n, self._clock())
            self._queued -= n
            self.bytes_written += n
            self.writes += 1
            self.direct_writes += 1

    def stop(self):
        with self._cond:
            self._halt = True
            self._cond.notify()

    def _take(self):
        """Frames from the head, up to the coalescing limit (at least one)."""
        chunks = []
        size = 0
        queue = self._frames
        while queue and (not chunks or size + len(queue[0]) <= self._coalesce):
            frame = queue.popleft()
            chunks.append(frame)
            size += len(frame)
        return chunks, size

    def _look(self):
        if self.pacer is not None:
            return self.backlog()
        seen = self._out_waiting()
        now = self._clock()
        with self._pace_lock:
            self.meter.observe(now, seen)
            return self.meter.backlog(now, seen)

    def run(self):
        try:
            self._run()
        except LineGone as exc:
            if not self._halt:
                self._on_gone("write: %s" % exc)
        except Exception as exc:
            log.exception("serial writer failed")
            self._on_gone("writer failed: %s" % exc)

    def _run(self):
        poll = None
        while True:
            with self._cond:
                # (Watching with no sleep set: put_all asked for "room" since the last look.)
                if not self._frames and not self._halt and (poll is not None or not self._watching):
                    self._cond.wait(poll)
                if self._halt:
                    return
                chunks, size = self._take() if self._frames else ((), 0)
            if chunks:
                self._look()
                self.endpoint.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                if self.pacer is not None:
                    with self._pace_lock:
                        self.pacer.wrote(size, self._now_ms())
                else:
                    with self._pace_lock:
                        self.meter.wrote(size, self._clock())
                with self._cond:
                    self._queued -= size
                    self.bytes_written += size
                    # A look after the write only for a "room" asked for: where nothing waits for the line
                    # (a handshake, an echo), the look before the next write feeds the meter.
                    self._watching = self._room_wanted
                self.writes += 1
                poll = 0
                continue
            poll = None
            if self._watching:
                backlog = self._look()
                excess = backlog - self.target()
                if excess <= 0:
                    with self._cond:
                        self._watching = False
                        post, self._room_wanted = self._room_wanted, False
                    if post:
                        self.rooms += 1
                        self._post(("room", self))
                else:
                    poll = self._poll_after(excess)

    def _poll_after(self, excess):
        """Seconds to sleep before the next look when ``excess`` bytes more than the bound wait: as long as the
        line needs to drain them, but no longer than the meter counts a write the OS did not show yet (at a
        rate estimate still far below a fast line's, that count would otherwise set a long sleep after every
        write)."""
        rate = self.rate
        poll = excess / rate if rate else self.POLL_MAX
        if self.pacer is None:
            with self._pace_lock:
                unseen = self.meter.unseen_for(self._clock())
            if unseen is not None and unseen < poll:
                poll = unseen
        return min(self.POLL_MAX, max(self.POLL_MIN, poll))


class LineManager(threading.Thread):
    """Opens the endpoint (again and again, for devices) and runs its reader and writer."""

    def __init__(self, post, opener=None, endpoint=None, coalesce=16384, writer_limit=1 << 20,
                 clock=time.monotonic, meter_factory=None, pacer_factory=None):
        super().__init__(name="line-manager", daemon=True)
        self._post = post
        self._opener = opener
        self._first = endpoint
        self._coalesce = coalesce
        self._writer_limit = writer_limit
        self._meter_factory = meter_factory or DrainMeter    # one fresh DrainMeter per opened line
        self._pacer_factory = pacer_factory     # a fresh LinePacer per line whose backlog cannot be seen
        self._clock = clock
        self._stop_event = threading.Event()
        self._gone = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""
        self._current = None            # (reader, writer) of the open line
        self.opens = 0
        self.failures = 0

    def stop(self):
        self._stop_event.set()
        self._gone.set()

    def _report_gone(self, reader, writer):
        def on_gone(reason):
            with self._lock:
                if self._current != (reader, writer):
                    return
                self._current = None
                self._reason = reason
            self._post(("line_down", self, reason))
            self._gone.set()
        return on_gone

    def _open(self):
        if self._first is not None:
            endpoint, self._first = self._first, None
            return endpoint
        if self._opener is None:
            return None
        return self._opener()

    def run(self):
        try:
            self._run()
        except Exception as exc:        # a bug: end the program rather than hang without a line
            log.exception("line manager failed")
            self._post(("fatal", 1, "line manager failed: %s" % exc))

    def _run(self):
        backoff = BACKOFF_START
        opened_once = False
        while not self._stop_event.is_set():
            try:
                endpoint = self._open()
            except OpenError as exc:
                self.failures += 1
                if exc.permanent or (exc.startup_fatal and not opened_once):
                    self._post(("fatal", exc.code, str(exc)))
                    return
                log.warning("%s; retrying in %g s", exc, backoff)
                if self._stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if endpoint is None:
                return
            opened_once = True
            self.opens += 1
            stopping, duration = self._run_line(endpoint)
            if stopping:
                return
            if duration >= STABLE_AFTER:
                backoff = BACKOFF_START
            if not endpoint.reopenable:
                if endpoint.final_note:
                    log.warning("%s", endpoint.final_note)
                self._post(("line_final", self, self._reason, endpoint.final_exit_code))
                return
            log.info("reopening %s in %g s", endpoint.name, backoff)
            if self._stop_event.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _run_line(self, endpoint):
        """Serve one open endpoint until it is gone: (stopping, seconds it was up)."""
        self._gone.clear()
        pacer = None
        if not endpoint.backlog_visible and self._pacer_factory is not None:
            pacer = self._pacer_factory()
            log.info("%s: its backlog cannot be seen: output paced at %d bytes/s (the configured baudrate)",
                     endpoint.name, pacer.rate)
        writer = SerialWriter(endpoint, self._post, None, self._coalesce, self._writer_limit,
                              meter=self._meter_factory(), pacer=pacer)
        reader = SerialReader(endpoint, self._post, None)
        on_gone = self._report_gone(reader, writer)
        writer._on_gone = reader._on_gone = on_gone
        with self._lock:
            self._current = (reader, writer)
        opened_at = self._clock()
        self._post(("line_up", self, endpoint, writer, reader))
        writer.start()
        reader.start()
        self._gone.wait()
        stopping = self._stop_event.is_set()
        if stopping:
            # Let the last frames (LCP Terminate-Request) reach the line.
            deadline = self._clock() + 1.0
            while writer.queued and writer.is_alive() and self._clock() < deadline:
                time.sleep(0.01)
        with self._lock:
            self._current = None
        reader.stop()
        writer.stop()
        endpoint.cancel()
        reader.join(2.0)
        writer.join(2.0)
        endpoint.close()
        return stopping, self._clock() - opened_at
