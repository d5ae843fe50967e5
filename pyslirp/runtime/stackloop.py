"""The stack thread: owns the Core and every protocol object; everything else posts to it.

Theory of operation (the design card's shape)::

    serial reader --("serial", ...)--> [inbox] --> stack thread: Core (PPPLink + IPStack)
    service threads --("svc_*", ...)--> [inbox]        |
    line manager --("line_up"/"line_down")-> [inbox]   +--> serial writer (bounded queue)
    signal handlers --("signal", ...)--> [inbox]       +--> service threads (per-connection calls)

The loop waits on the inbox with a timeout of the next deadline (the Core's
timer, the stats line, a re-flush while the OS output queue drains), with
integer milliseconds from ``time.monotonic``; dispatches what came (a bounded
batch, so timers stay punctual under load); runs due timers; then flushes:
framed output to the writer and the Core's events to the service manager.

Output budget: the stack thread counts the bytes it handed the writer and
not yet reported written (``("written", ...)``), adds the OS output queue
(TIOCOUTQ where the endpoint has one) and passes the room left under
``line_budget`` to ``Core.take_serial_output``; bulk data beyond that waits in
TCP send buffers.  Every "written" report wakes the loop, which refills.

The inbox is a ``queue.SimpleQueue``, whose ``put`` is safe to call from a
signal handler.  Producers bound themselves: the reader by bytes in flight,
the service threads by the TCP credit scheme.

Stopping (SIGINT/SIGTERM): ``Core.close`` sends LCP Terminate-Request; the
loop waits for the link to die (Terminate-Ack) for at most ``stop_timeout``
ms, lets the writer drain, then stops the line, aborts the service
connections and returns 0.  A second signal while stopping returns at once.
SIGHUP reopens the log files.
"""

import logging
import queue
import random
import time

from pyslirp import logsetup, metrics
from pyslirp.core import Core
from pyslirp.ppp.events import AuthResult, LinkDown, LinkUp
from pyslirp.runtime.serialio import LineManager
from pyslirp.runtime.services import CONNECT_TIMEOUT, ServiceManager

log = logging.getLogger("pyslirp.runtime")

BATCH = 256             # inbox items handled between timer runs
STOP_TIMEOUT = 3000     # ms to wait for the LCP Terminate-Ack
DRAIN_TIMEOUT = 1000    # ms to let the writer drain before closing the line


def monotonic_ms():
    return int(time.monotonic() * 1000)


class Runtime(object):
    """Runs pyslirp until stopped; :meth:`run` returns the exit code."""

    def __init__(self, link_config, stack_config, opener=None, endpoint=None, line_budget=65536,
                 coalesce=16384, stats_interval=0, tap=None, rng=None, connection_log=True,
                 connect_timeout=CONNECT_TIMEOUT, stop_timeout=STOP_TIMEOUT, baudrate=0, core=None):
        self.inbox = queue.SimpleQueue()
        self.core = core if core is not None else Core(
            link_config, stack_config, rng if rng is not None else random.SystemRandom(), tap=tap)
        self.services = ServiceManager(self.post, connect_timeout=connect_timeout,
                                       connection_log=connection_log)
        self.line = LineManager(self.post, opener=opener, endpoint=endpoint, coalesce=coalesce,
                                writer_limit=max(4 * line_budget, 1 << 20))
        self.line_budget = line_budget
        self.baudrate = baudrate
        self.stats_interval = stats_interval * 1000
        self.stop_timeout = stop_timeout
        self.endpoint = None
        self.writer = None
        self.reader = None
        self.line_queued = 0
        self.exit_code = None
        self._stopping = None           # None, "closing" or "draining"
        self._stop_deadline = None
        self._reflush_at = None
        self._next_stats = None
        self._counters = {"line_ups": 0, "line_downs": 0, "link_ups": 0, "link_downs": 0,
                          "auth_failures": 0, "serial_bytes_in": 0, "serial_bytes_out": 0,
                          "internal_errors": 0}

    # -- for other threads and signal handlers ------------------------------------

    def post(self, item):
        self.inbox.put(item)

    def request_stop(self):
        self.inbox.put(("signal", "stop"))

    def request_reopen_logs(self):
        self.inbox.put(("signal", "hup"))

    def counters(self):
        out = dict(("runtime." + k, v) for k, v in self._counters.items())
        out["runtime.services_active"] = len(self.services)
        out["runtime.services_started"] = self.services.started
        out["runtime.line_queued"] = self.line_queued
        if self.writer is not None:
            out["runtime.writer_dropped"] = self.writer.dropped
        return out

    # -- the loop ---------------------------------------------------------------

    def run(self):
        now = monotonic_ms()
        if self.stats_interval:
            self._next_stats = now + self.stats_interval
        self.line.start()
        try:
            while self.exit_code is None:
                now = monotonic_ms()
                timeout = self._timeout(now)
                try:
                    item = self.inbox.get(timeout=timeout)
                except queue.Empty:
                    item = None
                now = monotonic_ms()
                try:
                    self._step(item, now)
                except Exception:
                    # A bug in protocol code must not take the daemon down with it.
                    self._counters["internal_errors"] += 1
                    log.exception("internal error (continuing)")
        finally:
            self._shutdown()
        return self.exit_code

    def _step(self, item, now):
        handled = 0
        while item is not None:
            self._dispatch(item, now)
            handled += 1
            if handled >= BATCH:
                break
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                item = None
        self.core.handle_timer(now)
        self._flush(now)
        self._housekeeping(now)

    def _timeout(self, now):
        deadline = self.core.get_timer()
        for other in (self._stop_deadline, self._reflush_at, self._next_stats):
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        if deadline is None:
            return None
        # At least 1 ms: a deadline that a component fails to clear must not become a busy loop.
        return max(1, deadline - now) / 1000.0

    def _dispatch(self, item, now):
        kind = item[0]
        core = self.core
        if kind == "serial":
            reader, data = item[1], item[2]
            reader.consumed(len(data))
            if reader is self.reader:
                self._counters["serial_bytes_in"] += len(data)
                core.receive_serial(data, now)
        elif kind == "written":
            if item[1] is self.writer:
                self.line_queued -= item[2]
                self._counters["serial_bytes_out"] += item[2]
        elif kind == "svc_data":
            core.service_data(item[1], item[2], now)
        elif kind == "svc_written":
            core.service_written(item[1], item[2], now)
        elif kind == "svc_connected":
            core.service_connected(item[1], now)
        elif kind == "svc_failed":
            log.info("connection %d: service unreachable: %s", item[1], item[2])
            core.service_failed(item[1], item[2], now)
        elif kind == "svc_eof":
            core.service_eof(item[1], now)
        elif kind == "svc_error":
            core.service_error(item[1], item[2], now)
        elif kind == "svc_done":
            self.services.forget(item[1])
        elif kind == "line_up":
            _, _, self.endpoint, self.writer, self.reader = item
            self.line_queued = 0
            self._counters["line_ups"] += 1
            log.info("serial line open: %s", self.endpoint.name)
            if self._stopping is None:
                core.lower_up(now)
        elif kind == "line_down":
            if self.writer is not None:
                log.warning("serial line lost: %s", item[2])
                self._line_down(now)
        elif kind == "line_final":
            if self.writer is not None:
                log.info("serial line closed: %s", item[2])
                self._line_down(now)
            if self.exit_code is None:
                self.exit_code = item[3]
        elif kind == "fatal":
            log.error("%s", item[2])
            self.exit_code = item[1]
        elif kind == "signal":
            if item[1] == "hup":
                logsetup.reopen()
                log.info("log files reopened")
            else:
                self._begin_stop(now)
        else:
            log.warning("unknown inbox item %r", kind)

    def _line_down(self, now):
        self._counters["line_downs"] += 1
        self.writer = self.reader = self.endpoint = None
        self.line_queued = 0
        self.core.lower_down(now)

    def _begin_stop(self, now):
        if self._stopping is not None:
            log.info("second stop request: exiting now")
            self.exit_code = 0
            return
        log.info("stopping")
        if self.writer is None:
            self.exit_code = 0
            return
        self._stopping = "closing"
        self._stop_deadline = now + self.stop_timeout
        self.core.close(now)

    def _flush(self, now):
        core = self.core
        writer = self.writer
        if writer is not None:
            outq = self.endpoint.out_waiting() if self.endpoint is not None else 0
            budget = self.line_budget - self.line_queued - outq
            for urgent, frame in core.take_serial_output(budget if budget > 0 else 0, now):
                if writer.put(urgent, frame):
                    self.line_queued += len(frame)
            self._reflush_at = None
            if outq > 0:
                # Nothing reports the OS queue draining: look again shortly.
                delay = outq * 10000 // self.baudrate if self.baudrate else 10
                self._reflush_at = now + min(100, max(5, delay))
        else:
            core.take_serial_output(0, now)
            self._reflush_at = None
        for event in core.take_events():
            if self.services.handle(event):
                continue
            if isinstance(event, LinkUp):
                self._counters["link_ups"] += 1
            elif isinstance(event, LinkDown):
                self._counters["link_downs"] += 1
            elif isinstance(event, AuthResult) and not event.ok:
                self._counters["auth_failures"] += 1

    def _housekeeping(self, now):
        if self._next_stats is not None and now >= self._next_stats:
            self._next_stats = now + self.stats_interval
            log.info("stats: %s", metrics.format_line(metrics.snapshot(self.core, self)))
        if self._stopping == "closing":
            if self.core.is_dead or now >= self._stop_deadline or self.writer is None:
                self._stopping = "draining"
                self._stop_deadline = now + DRAIN_TIMEOUT
        if self._stopping == "draining":
            if self.line_queued <= 0 or now >= self._stop_deadline or self.writer is None:
                self.exit_code = 0

    def _shutdown(self):
        self.line.stop()
        self.line.join(5.0)
        self.services.close_all()
