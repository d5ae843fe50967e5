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
  After each write it posts ``("written", writer, nbytes)``.  It also
  measures the line: ``endpoint.out_waiting()`` reads the OS output queue
  (TIOCOUTQ; for our pseudo-terminal FIONREAD on its slave, for a pipe
  FIONREAD) and :class:`DrainMeter` turns successive readings into the
  line's real drain rate and, from it, the bound on what may wait toward the
  line (about 10 ms of line time, see the stack loop).  Once the OS queue has
  drained below that bound it posts ``("room", writer)``: the stack thread
  then hands over the next frames.  The configured baud rate is only the
  first guess: a pty, a socket or a USB CDC-ACM port ignores it and is
  measured running at full speed.
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
        self.bytes_read = 0

    def consumed(self, nbytes):
        """The stack thread has fed ``nbytes`` of ours to the Core."""
        with self._cond:
            self._inflight -= nbytes
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
                        self._cond.wait(0.5)
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
    at most ``max_target``.  With no estimate and no measurement at all it is ``max_target``, which is
    what endpoints without an observable queue (a pipe to a fast reader) get: our own queue only.
    """

    ALPHA = 0.25

    def __init__(self, initial=None, min_target=128, max_target=65536, delay=0.010, min_interval=0.05):
        self.rate = float(initial) if initial else None
        self.min_target = min_target
        self.max_target = max(min_target, max_target)
        self.delay = delay
        self.min_interval = min_interval
        self.samples = 0                # busy-line samples taken
        self.measurable = False         # an OS queue was ever seen non-empty
        self._t = None
        self._backlog = 0
        self._written = 0

    def wrote(self, nbytes):
        self._written += nbytes

    def observe(self, now, backlog):
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
        return int(min(self.max_target, max(self.min_target, self.rate * self.delay)))


class SerialWriter(threading.Thread):
    """Writes framed frames to the line in the order given; measures the line's drain.

    Frames are written strictly in the order the stack thread handed them over: priority is decided
    there, when the line has room, so nothing here can reorder the segments of one TCP connection.
    Consecutive frames are coalesced into one ``write`` of at most ``coalesce`` bytes.  After each
    write the writer posts ``("written", writer, nbytes)``.  Around writes it looks at the OS output
    queue (``endpoint.out_waiting()``) and feeds :class:`DrainMeter`; when its own queue is empty but the OS
    queue is above the meter's target it keeps looking (sleeping about as long as the line needs to
    drain the excess) and posts ``("room", writer)`` once it is not: that is the stack thread's cue to
    hand over the next bulk frames.
    """

    POLL_MIN = 0.001
    POLL_MAX = 0.02

    def __init__(self, endpoint, post, on_gone, coalesce=16384, limit=1 << 20, meter=None,
                 clock=time.monotonic):
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
        self._watching = False          # written since the last "room": the stack thread may be waiting
        self._clock = clock
        self.meter = meter if meter is not None else DrainMeter()
        self.backlog = getattr(endpoint, "out_waiting", None) or (lambda: 0)
        self.dropped = 0
        self.bytes_written = 0
        self.writes = 0
        self.rooms = 0

    @property
    def queued(self):
        with self._cond:
            return self._queued

    @property
    def rate(self):
        """Measured drain rate in bytes/s (None while unknown)."""
        return self.meter.rate

    def target(self):
        return self.meter.target()

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
        backlog = self.backlog()
        self.meter.observe(self._clock(), backlog)
        return backlog

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
                if not self._frames and not self._halt:
                    self._cond.wait(poll)
                if self._halt:
                    return
                chunks, size = self._take() if self._frames else ((), 0)
            if chunks:
                self._look()
                self.endpoint.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                self.meter.wrote(size)
                with self._cond:
                    self._queued -= size
                self.bytes_written += size
                self.writes += 1
                self._watching = True
                self._post(("written", self, size))
                poll = 0
                continue
            poll = None
            if self._watching:
                backlog = self._look()
                excess = backlog - self.meter.target()
                if excess <= 0:
                    self._watching = False
                    self.rooms += 1
                    self._post(("room", self))
                else:
                    rate = self.meter.rate
                    poll = excess / rate if rate else self.POLL_MAX
                    poll = min(self.POLL_MAX, max(self.POLL_MIN, poll))


class LineManager(threading.Thread):
    """Opens the endpoint (again and again, for devices) and runs its reader and writer."""

    def __init__(self, post, opener=None, endpoint=None, coalesce=16384, writer_limit=1 << 20,
                 clock=time.monotonic, meter_factory=None):
        super().__init__(name="line-manager", daemon=True)
        self._post = post
        self._opener = opener
        self._first = endpoint
        self._coalesce = coalesce
        self._writer_limit = writer_limit
        self._meter_factory = meter_factory or DrainMeter    # one fresh DrainMeter per opened line
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
        writer = SerialWriter(endpoint, self._post, None, self._coalesce, self._writer_limit,
                              meter=self._meter_factory())
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
