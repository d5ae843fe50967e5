"""The serial line's threads: reader, writer and the line manager that (re)opens it.

Theory of operation:

* :class:`SerialReader` blocks in ``endpoint.read`` and posts each raw chunk
  to the stack thread's inbox as ``("serial", reader, data)``.  The bytes in
  flight (posted, not yet fed to the Core) are bounded: the reader waits
  when ``max_inflight`` is reached until the stack thread calls
  :meth:`SerialReader.consumed`.
* :class:`SerialWriter` drains a bounded queue of framed PPP frames.  Urgent
  frames (LCP/IPCP, TCP control and small segments: keystrokes) jump ahead
  of bulk frames that are not yet being written; consecutive frames are
  coalesced into one ``write`` of at most ``coalesce`` bytes (sized to the
  line speed, so an urgent frame never waits long behind one write).  After
  each write it posts ``("written", writer, nbytes)`` so the stack thread
  knows how much is still queued toward the line: that is how the Core's
  output budget is refilled.
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


class SerialWriter(threading.Thread):
    def __init__(self, endpoint, post, on_gone, coalesce=16384, limit=1 << 20):
        super().__init__(name="serial-writer", daemon=True)
        self.endpoint = endpoint
        self._post = post
        self._on_gone = on_gone
        self._coalesce = coalesce
        self._limit = limit
        self._urgent = collections.deque()
        self._bulk = collections.deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._halt = False
        self.dropped = 0
        self.bytes_written = 0
        self.writes = 0

    @property
    def queued(self):
        with self._cond:
            return self._queued

    def put(self, urgent, frame):
        """Queue one framed frame; False (and counted) if full or stopped."""
        with self._cond:
            if self._halt or self._queued + len(frame) > self._limit:
                self.dropped += 1
                return False
            (self._urgent if urgent else self._bulk).append(frame)
            self._queued += len(frame)
            self._cond.notify()
            return True

    def stop(self):
        with self._cond:
            self._halt = True
            self._cond.notify()

    def _take(self):
        """Urgent frames first, then bulk, up to the coalescing limit (at least one frame)."""
        chunks = []
        size = 0
        for queue in (self._urgent, self._bulk):
            while queue and (not chunks or size + len(queue[0]) <= self._coalesce):
                frame = queue.popleft()
                chunks.append(frame)
                size += len(frame)
        return chunks, size

    def run(self):
        try:
            while True:
                with self._cond:
                    while not self._urgent and not self._bulk and not self._halt:
                        self._cond.wait()
                    if self._halt:
                        return
                    chunks, size = self._take()
                self.endpoint.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                with self._cond:
                    self._queued -= size
                self.bytes_written += size
                self.writes += 1
                self._post(("written", self, size))
        except LineGone as exc:
            if not self._halt:
                self._on_gone("write: %s" % exc)
        except Exception as exc:
            log.exception("serial writer failed")
            self._on_gone("writer failed: %s" % exc)


class LineManager(threading.Thread):
    """Opens the endpoint (again and again, for devices) and runs its reader and writer."""

    def __init__(self, post, opener=None, endpoint=None, coalesce=16384, writer_limit=1 << 20,
                 clock=time.monotonic):
        super().__init__(name="line-manager", daemon=True)
        self._post = post
        self._opener = opener
        self._first = endpoint
        self._coalesce = coalesce
        self._writer_limit = writer_limit
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
                self._post(("line_final", self, self._reason, getattr(endpoint, "final_exit_code", 0)))
                return
            log.info("reopening %s in %g s", endpoint.name, backoff)
            if self._stop_event.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _run_line(self, endpoint):
        """Serve one open endpoint until it is gone: (stopping, seconds it was up)."""
        self._gone.clear()
        writer = SerialWriter(endpoint, self._post, None, self._coalesce, self._writer_limit)
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
