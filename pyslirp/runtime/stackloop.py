"""The stack thread: owns the Core and every protocol object; everything else posts to it.

Theory of operation (the design card's shape)::

    serial reader --("serial", ...)--> [inbox] --> stack thread: Core (PPPLink + IPStack)
    service threads --("svc_*", ...)--> [inbox]        |
    datagram relay --("udp_*"/"ping_*")-> [inbox]      +--> serial writer (bounded queue)
    DNS relay --("dns_*", ...)--> [inbox]              +--> service threads (per-connection calls)
    line manager --("line_up"/"line_down")-> [inbox]   +--> datagram relay (UDP and ping flows)
    signal handlers --("signal", ...)--> [inbox]       +--> DNS relay (upstream queries)

The loop waits on the inbox with a timeout of the next deadline (the Core's
timer, the stats line, a re-flush while the line has no room), with
integer milliseconds from ``time.monotonic``; dispatches what came (a bounded
batch, so timers stay punctual under load); runs due timers; then flushes:
framed output to the writer and the Core's events to the service manager.

Output scheduling (latency under load): a serial line is slow, and every byte
queued toward it is a byte a keystroke waits behind (at 115200 bit/s, 1 KB is
90 ms).  So little is queued: the bound is the writer's ``target()``, about
TARGET_DELAY of line time at the rate the writer measures (at least
MIN_TARGET bytes, but that floor at most MIN_TARGET_TIME of line time: 28
bytes at 9600 bit/s; at most ``line_budget``).  At each flush the budget is that
bound minus what is already on its way -- bytes handed to the writer and not
yet written (``writer.queued``, a counter of the writer's: its writes post
nothing) plus the OS output queue (``writer.backlog()``) -- and
``Core.take_serial_output(budget, allow_one_over=True)`` returns the frames
to send next, in order: link control and small packets always, bulk while
the budget is positive (one frame may exceed it).  Bulk beyond that waits in
the TCP send buffers, where the next keystroke can still overtake it.  The
writer's "room" report (the line drained below the bound) wakes the loop to
refill; it comes only when the flush that handed the writer its frames asked
for it (``put_all(frames, want_room=Core.wants_room)``: output was held back
for want of budget), so after a handshake or an echo, where nothing waits,
the writes wake nobody.  A 20 ms re-flush is the safety net.  A wake-up that
brought only items which change nothing the Core sends, and found no timer
due, does not flush: service threads' "done", a service's "svc_written" that
made no window update due (``Core.service_written`` says), and a "room" asked
for before the last flush found nothing held back.  Whenever the measured
rate moves by more than an eighth the Core is told (``set_line_rate``): the
stack sizes segments and windows to it.  The other way, each flush hands
the writer the smallest round trip the stack's connections measured on
small segments since the last one (``Core.take_delay_signal`` ->
``SerialWriter.set_delay_signal``): on a paced line (backlog not visible) a
rising minimum slows the pace, and the slower pace comes back to the Core as
a new rate.

The inbox is a ``queue.SimpleQueue``, whose ``put`` is safe to call from a
signal handler.  Producers bound themselves: the reader by bytes in flight,
the service threads by the TCP credit scheme.

Stopping (SIGINT/SIGTERM): ``Core.close`` sends LCP Terminate-Request; the
loop waits for the link to die (Terminate-Ack) for at most ``stop_timeout``
ms, lets the writer drain, then stops the line, aborts the service
connections and returns 0.  A second signal while stopping returns at once.

SIGHUP reloads: the ``reloader`` (runtime/reload.py, built by the command
line) re-reads the configuration file on this thread and, when it
validates, applies it through :meth:`Runtime.reconfigure` -- the Core's
stack (services, limits, outbound policy, DNS), the service connectors'
proxy and timeout, the connection log, the stats interval -- and
:meth:`Runtime.replace_dns_relay` / :meth:`Runtime.replace_audit`.  The PPP
link is not touched and the flows already open carry on.  The log files
and the audit log are reopened either way (an external log rotator sends
SIGHUP too), and the audit log records the reload.

Metrics and records: the figures are the stack thread's, so the snapshot
(pyslirp/metrics.py ``collect``) is built here: when the metrics server asks
(``("metrics",)`` through the :class:`SnapshotBox`, at most once per
MAX_AGE_MS), for the periodic stats line, and on SIGUSR1 (the snapshot as one
log line).  The link's and the stack's events that are worth a record
(``LinkUp``, ``LinkDown``, ``AuthResult``, ``FlowLog``) go to the
:class:`~pyslirp.runtime.audit.EventLog`: the connection log's lines and the
audit log.
"""

import logging
import queue
import random
import threading
import time

from pyslirp import logsetup, metrics
from pyslirp.core import Core
from pyslirp.net.events import BreakerChange, DnsQuery
from pyslirp.net.ratelimit import every_power_of_two
from pyslirp.ppp.events import AuthResult, LinkDown, LinkUp
from pyslirp.runtime.connectors import CONNECT_TIMEOUT
from pyslirp.net.events import FlowLog
from pyslirp.runtime.audit import EventLog
from pyslirp.runtime.datagrams import DatagramRelay
from pyslirp.runtime.metrics_server import SnapshotBox
from pyslirp.runtime.serialio import DrainMeter, LineManager, LinePacer
from pyslirp.runtime.services import ServiceManager

log = logging.getLogger("pyslirp.runtime")

BATCH = 256             # inbox items handled between timer runs
MIN_TARGET = 128        # bytes: the smallest bound on what waits toward the line
TARGET_DELAY = 0.010    # s: the bound is this much line time at the measured rate (at least MIN_TARGET)
MIN_TARGET_TIME = 0.030 # s: ... but MIN_TARGET never holds more line time than this (on a slow line)
REFLUSH_MS = 20         # look again this soon when the line had no room (safety net for "room")
STOP_TIMEOUT = 3000     # ms to wait for the LCP Terminate-Ack
DRAIN_TIMEOUT = 1000    # ms to let the writer drain before closing the line
DRAIN_POLL_MS = 5       # ... looking at its queue this often (its writes post nothing)
# Stack of every thread started from here on (serial reader and writer, one per service connection): our
# threads run shallow loops, and the default (8 MiB of address space each on Linux) would reserve 8 GB for
# a thousand connections.
THREAD_STACK = 512 * 1024


# Inbox items that change nothing the Core sends: a turn that brought only these (and found no timer due)
# does not flush.  "svc_done": a service thread finished (the stack heard its connection's end before, in
# its svc_eof, svc_error or the stack's own close).  "svc_written" and "room" are such items when the Core
# says so (Runtime._dispatch).
_NO_FLUSH = frozenset(("svc_done",))


def monotonic_ms():
    return int(time.monotonic() * 1000)


class Runtime(object):
    """Runs pyslirp until stopped; :meth:`run` returns the exit code."""

    def __init__(self, link_config, stack_config, opener=None, endpoint=None, line_budget=65536,
                 coalesce=16384, stats_interval=0, tap=None, rng=None, connection_log=True,
                 connect_timeout=CONNECT_TIMEOUT, stop_timeout=STOP_TIMEOUT, baudrate=0, core=None, proxy=None,
                 dns_relay=None, datagrams=None, audit=None, reloader=None):
        self.inbox = queue.SimpleQueue()
        self.core = core if core is not None else Core(
            link_config, stack_config, rng if rng is not None else random.SystemRandom(), tap=tap)
        self._answered = []             # reports of service connects decided on this thread (see _flush)
        self.services = ServiceManager(self.post, connect_timeout=connect_timeout, proxy=proxy,
                                       answer=self._answered.append)
        self.records = EventLog(audit, connection_log=connection_log)
        self.metrics_box = SnapshotBox(self.post)
        self.metrics_server = None      # a MetricsServer on metrics_box, started and stopped with the loop
        # UDP and ping flows: one relay thread for all their sockets; the DNS relay only with the forwarder.
        self.datagrams = datagrams if datagrams is not None else DatagramRelay(self.post)
        self.dns_relay = dns_relay
        self.reloader = reloader        # reloader(runtime, now) on SIGHUP; None: only reopen the log files
        self._running = False
        self.line_budget = line_budget
        self.baudrate = baudrate
        self.line = LineManager(self.post, opener=opener, endpoint=endpoint, coalesce=coalesce,
                                writer_limit=max(4 * line_budget, 1 << 20), meter_factory=self._new_meter,
                                pacer_factory=self._new_pacer if baudrate else None)
        self.stats_interval = stats_interval * 1000
        self.stop_timeout = stop_timeout
        self.endpoint = None
        self.writer = None
        self.reader = None
        self._room_wanted = False       # the last flush held output back for the line's room (Core.wants_room)
        self._bytes_out = 0             # written by the writers of lines now closed
        self.exit_code = None
        self._stopping = None           # None, "closing" or "draining"
        self._stop_deadline = None
        self._reflush_at = None
        self._told_rate = None          # the line rate last told to the Core
        self._next_stats = None
        self._counters = {"line_ups": 0, "line_downs": 0, "link_ups": 0, "link_downs": 0,
                          "auth_failures": 0, "serial_bytes_in": 0,
                          "internal_errors": 0, "reloads": 0, "reloads_refused": 0}
        self._auth = {}                 # (method, "ok" | "fail") -> count

    def _new_meter(self):
        """The drain meter of a newly opened line: the configured speed is only the first guess."""
        return DrainMeter(initial=self.baudrate / 10.0 if self.baudrate else None,
                          max_target=self.line_budget, min_target=min(MIN_TARGET, self.line_budget),
                          delay=TARGET_DELAY, min_time=MIN_TARGET_TIME)

    def _new_pacer(self):
        """The pacer of a line whose backlog cannot be seen: the configured speed is the line's speed."""
        return LinePacer(self.baudrate / 10.0, max_target=self.line_budget,
                         min_target=min(MIN_TARGET, self.line_budget), delay=int(TARGET_DELAY * 1000),
                         min_time=int(MIN_TARGET_TIME * 1000))

    # -- for other threads and signal handlers ------------------------------------

    def post(self, item):
        self.inbox.put(item)

    def request_stop(self):
        self.inbox.put(("signal", "stop"))

    def request_reopen_logs(self):
        self.inbox.put(("signal", "hup"))

    def request_snapshot_log(self):
        self.inbox.put(("signal", "usr1"))

    request_reload = request_reopen_logs

    @property
    def line_queued(self):
        """Bytes handed to the writer and not yet written."""
        writer = self.writer
        return writer.queued if writer is not None else 0

    def _serial_bytes_out(self):
        writer = self.writer
        return self._bytes_out + (writer.bytes_written if writer is not None else 0)

    # -- reload (stack thread only) ------------------------------------------------

    def reconfigure(self, now, stack_config, proxy=None, connect_timeout=CONNECT_TIMEOUT, connection_log=True,
                    stats_interval=0):
        """Apply a reloaded configuration: the Core's stack, then the runtime's own settings.  New flows use
        it; open flows keep what they have."""
        self.core.reconfigure(stack_config, now)
        self.services.reconfigure(proxy=proxy, connect_timeout=connect_timeout)
        self.records.connection_log = connection_log
        interval = stats_interval * 1000
        if interval != self.stats_interval:
            self.stats_interval = interval
            self._next_stats = now + interval if interval else None

    def replace_dns_relay(self, relay):
        """Stop the DNS relay (queries in flight there are dropped; the forwarder times them out) and use
        ``relay`` (not yet started; None: no relay) from now on."""
        old, self.dns_relay = self.dns_relay, relay
        if old is not None:
            old.stop(join_timeout=1.0)
        if relay is not None and self._running:
            relay.start()

    def replace_audit(self, audit):
        """Write the audit log to ``audit`` (an open AuditLog, or None: no audit log) from now on."""
        old, self.records.audit = self.records.audit, audit
        if old is not None and old is not audit:
            old.close()

    def _reload(self, now):
        """SIGHUP: the reloader, if any; the log files and the audit log reopened; a ``reload`` record."""
        result = None
        if self.reloader is not None:
            result = self.reloader(self, now)
            if result.ok:
                self._counters["reloads"] += 1
            else:
                self._counters["reloads_refused"] += 1
        logsetup.reopen()
        if self.records.audit is not None:
            self.records.audit.reopen()
        if result is None:
            log.info("log files reopened")
            self.records.reload(True, "log files reopened")
        elif result.ok:
            self.records.reload(True, "applied: %s%s" % (", ".join(result.changed) or "no change",
                                                       "; needs a restart: " + ", ".join(result.restart)
                                                       if result.restart else ""))
        else:
            self.records.reload(False, result.error)
        return result

    def counters(self):
        out = dict(("runtime." + k, v) for k, v in self._counters.items())
        out["runtime.serial_bytes_out"] = self._serial_bytes_out()
        out["runtime.services_active"] = len(self.services)
        out["runtime.services_started"] = self.services.started
        out["runtime.line_queued"] = self.line_queued
        if self.writer is not None:
            out["runtime.writer_dropped"] = self.writer.dropped
            rate = self.writer.rate
            out["runtime.line_rate"] = int(rate) if rate is not None else 0     # measured, bytes/s
            out["runtime.line_target"] = self.writer.target()                   # bound on the line's queue
            out["runtime.line_paced"] = int(self.writer.pacer is not None)      # backlog unseen: paced at baud
        return out

    # -- the loop ---------------------------------------------------------------

    def snapshot(self, now):
        """The figures now (pyslirp/metrics.py); stack thread only."""
        writer = self.writer
        c = self._counters
        return metrics.collect(self.core, now, serial_in=c["serial_bytes_in"], serial_out=self._serial_bytes_out(),
                               line_open=writer is not None, drain_rate=writer.rate if writer is not None else None,
                               auth=self._auth, internal_errors=c["internal_errors"], audit=self.records.counts(),
                               line_queued=(writer.queued, writer.backlog()) if writer is not None else (0, 0))

    def run(self):
        threading.stack_size(THREAD_STACK)
        now = monotonic_ms()
        if self.stats_interval:
            self._next_stats = now + self.stats_interval
        if self.metrics_server is not None:
            self.metrics_server.start()
        self.line.start()
        self.datagrams.start()
        if self.dns_relay is not None:
            self.dns_relay.start()
        self._running = True
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
                    # Logged with its traceback at the 1st, 2nd, 4th, 8th ... occurrence, so that a
                    # bug triggered by every packet cannot flood the log.
                    self._counters["internal_errors"] += 1
                    n = self._counters["internal_errors"]
                    if every_power_of_two(n):
                        log.exception("internal error (continuing; %d so far)", n)
        finally:
            self._shutdown()
        return self.exit_code

    def _step(self, item, now):
        handled = 0
        written_only = item is not None
        while item is not None:
            if self._dispatch(item, now):
                written_only = False
            handled += 1
            if handled >= BATCH:
                break
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                item = None
        if written_only and not self._due(now):
            # Only items that gave the Core nothing to send (bytes reaching the line, service threads that
            # finished, ...; see _dispatch): a flush now would find nothing new and cost a look at the line's
            # queue, the Core's output and events.  When output waits for room, the writer's "room" report
            # (which follows every write once the line's queue is below its bound) is the turn that refills.
            self._housekeeping(now)
            return
        self.core.handle_timer(now)
        self._flush(now)
        self._housekeeping(now)

    def _due(self, now):
        """A timer of the Core's or a re-flush is due."""
        deadline = self.core.get_timer()
        if deadline is not None and deadline <= now:
            return True
        return self._reflush_at is not None and self._reflush_at <= now

    def _timeout(self, now):
        deadline = self.core.get_timer()
        drain = now + DRAIN_POLL_MS if self._stopping == "draining" else None
        for other in (self._stop_deadline, self._reflush_at, self._next_stats, drain):
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        if deadline is None:
            return None
        # At least 1 ms: a deadline that a component fails to clear must not become a busy loop.
        return max(1, deadline - now) / 1000.0

    def _dispatch(self, item, now):
        """Apply one inbox item.  False when it gave the Core nothing to send (no flush needed for it: the
        kinds of _NO_FLUSH, a "svc_written" that made no window update due, a "room" no output waited for)."""
        kind = item[0]
        if kind in _NO_FLUSH:
            self._dispatch_quiet(item)
            return False
        core = self.core
        if kind == "serial":
            reader, data = item[1], item[2]
            reader.consumed(len(data))
            if reader is self.reader:
                self._counters["serial_bytes_in"] += len(data)
                core.receive_serial(data, now)
        elif kind == "room":
            return self._room_wanted    # the line drained below its bound: the flush refills it
        elif kind == "svc_data":
            core.service_data(item[1], item[2], now)
        elif kind == "svc_written":
            return core.service_written(item[1], item[2], now)
        elif kind == "svc_connected":
            core.service_connected(item[1], now, item[2], item[3])
        elif kind == "svc_failed":
            core.service_failed(item[1], item[2], now, item[3], item[4])
        elif kind == "svc_eof":
            core.service_eof(item[1], now)
        elif kind == "svc_error":
            core.service_error(item[1], item[2], now)
        elif kind == "udp_data":
            core.udp_data(item[1], item[2], now)
        elif kind == "udp_error":
            core.udp_error(item[1], item[2], now)
        elif kind == "ping_reply":
            core.ping_reply(item[1], item[2], item[3], now)
        elif kind == "flow_failed":
            core.flow_failed(item[1], item[2], item[3], now)
        elif kind == "dns_answer":
            core.dns_answer(item[1], now)
        elif kind == "dns_failed":
            core.dns_failed(item[1], now)
        elif kind == "line_up":
            _, _, self.endpoint, self.writer, self.reader = item
            self._room_wanted = False
            self._told_rate = None
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
        elif kind == "metrics":
            if self.metrics_box.stale(now):
                self.metrics_box.publish(self.snapshot(now))
        elif kind == "signal":
            if item[1] == "hup":
                self._reload(now)
            elif item[1] == "usr1":
                log.info("metrics: %s", metrics.format_line(self.snapshot(now), skip_zero=False))
            else:
                self._begin_stop(now)
        else:
            log.warning("unknown inbox item %r", kind)
        return True

    def _dispatch_quiet(self, item):
        if item[0] == "svc_done":
            self.services.forget(item[1])

    def _line_down(self, now):
        self._counters["line_downs"] += 1
        self._bytes_out = self._serial_bytes_out()
        self.writer = self.reader = self.endpoint = None
        self._room_wanted = False
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
        self._reflush_at = None
        # Events first: a ServiceConnect whose connect is decided at once (a local service) is answered here,
        # so the SYN-ACK it brings leaves with this flush, not one loop turn later.  The hand-offs to service
        # threads wait until the output is with the writer (ServiceManager.hold).
        self.services.hold()
        try:
            self._handle_events(now)
            self._flush_output(now)
        finally:
            self.services.release()
        self._handle_events(now)

    def _flush_output(self, now):
        core = self.core
        writer = self.writer
        if writer is not None:
            target = writer.target()
            backlog = writer.backlog()
            budget = target - writer.queued - backlog
            frames = [frame for _, frame in self._take_output(budget if budget > 0 else 0, now)]
            wanted, self._room_wanted = self._room_wanted, core.wants_room
            if frames or wanted or self._room_wanted:
                writer.put_all(frames, self._room_wanted)      # one hand-over for the whole flush
            if budget <= 0:
                # The writer posts "room" when the line drains below the bound; this is only the
                # safety net should the bound move under it.
                self._reflush_at = now + REFLUSH_MS
            self._tell_rate(writer.rate)
            rtt = core.take_delay_signal()
            if rtt is not None:
                writer.set_delay_signal(rtt)
        else:
            core.take_serial_output(0, now)

    def _handle_events(self, now):
        """The Core's events to the service manager, the datagram relay, the records; connects decided at once
        reported back to the Core, until no event is left."""
        core = self.core
        answered = self._answered
        downs = []
        events = core.take_events()
        while events:
            self._route_events(events, now, downs)
            while answered:
                items = answered[:]
                del answered[:]
                for item in items:
                    self._dispatch(item, now)
            events = core.take_events()
        for event in downs:
            self.records.link_down(event)

    def _route_events(self, events, now, downs):
        core = self.core
        for event in events:
            if self.services.handle(event) or self.datagrams.handle(event):
                continue
            if isinstance(event, FlowLog):
                self.records.flow(event, now)
            elif isinstance(event, BreakerChange):
                self.records.breaker(event)
            elif isinstance(event, DnsQuery):
                if self.dns_relay is not None:
                    self.dns_relay.submit(event.upstream_id, event.payload)
                else:
                    core.dns_failed(event.upstream_id, now)
            elif isinstance(event, LinkUp):
                self._counters["link_ups"] += 1
                self.records.link_up(event)
            elif isinstance(event, LinkDown):
                self._counters["link_downs"] += 1
                downs.append(event)         # recorded after the flows the link took down with it
            elif isinstance(event, AuthResult):
                if not event.ok:
                    self._counters["auth_failures"] += 1
                key = (event.method, "ok" if event.ok else "fail")
                self._auth[key] = self._auth.get(key, 0) + 1
                self.records.auth(event)

    def _take_output(self, budget, now):
        """The Core's next frames; a positive budget lets one bulk frame through even if it is larger."""
        return self.core.take_serial_output(budget, now, allow_one_over=True)

    def _tell_rate(self, rate):
        """Tell the Core the measured line rate (bytes/s) when it has moved by more than an eighth."""
        if rate is None:
            return
        told = self._told_rate
        if told is not None and abs(rate - told) * 8 < told:
            return
        self._told_rate = rate
        self.core.set_line_rate(int(rate))

    def _housekeeping(self, now):
        if self._next_stats is not None and now >= self._next_stats:
            self._next_stats = now + self.stats_interval
            log.info("stats: %s", metrics.format_line(self.snapshot(now)))
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
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.records.audit is not None:
            self.records.audit.close()
        self.datagrams.stop()
        if self.dns_relay is not None:
            self.dns_relay.stop()
