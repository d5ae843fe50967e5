"""The audit log (JSON lines) and the connection log: what the runtime writes about links, logins and flows.

Theory of operation
-------------------
The stack thread sees every event worth recording: the link's ``LinkUp``,
``LinkDown`` and ``AuthResult`` (pyslirp/ppp/events.py) and the stack's
``FlowLog`` values (pyslirp/net/events.py: a flow opened, closed or was
refused).  :class:`EventLog` turns each into

* the human log's line, as before: one line per TCP connection at open and
  at close (INFO, or DEBUG with ``[logging] connection_log = false``);
  refusals by the policy and datagram flows that cannot be served at INFO
  but at most REFUSAL_LOG_RATE a second (a client can make them happen at
  will); UDP and ping flows at DEBUG;
* and, when ``[logging] audit_file`` is set, one audit record.

:class:`AuditLog` writes the records: one JSON object per line, UTF-8,
``{"ts": RFC 3339 UTC time with milliseconds, "event": name, ...}``, flushed
after every line.  Events and their fields:

* ``link_up``: ``user`` (the authenticated user, "" without
  authentication), ``local_ip``, ``remote_ip``, ``mtu``;
* ``link_down``: ``user``, ``reason``, ``administrative`` (closed on
  purpose, by us or by the client's Terminate-Request; false: the line was
  lost and the TCP flows may wait for the client, ``[ppp] resume_grace``);
* ``auth``: ``method`` (pap, chap), ``user`` (the name the client sent),
  ``ok``;
* ``flow_open``: ``protocol`` (tcp, udp, icmp), ``client`` and ``server``
  (``address:port`` as the client sees them; for ICMP echo the address and
  ``ident``, the echo identifier), ``route`` (service, udp_service, dns,
  nat), ``service`` (the metrics' label), ``target`` (``host:port`` it
  leaves for), ``via`` (direct, socks5, http);
* ``flow_close``: the same, plus ``bytes_in`` (payload from the client),
  ``bytes_out`` (payload to it), ``duration`` (seconds) and ``reason``;
  a TCP flow whose service connect was still under way when the link went
  down also has ``"connected": false``;
* ``flow_refused``: ``protocol``, ``client``, ``server``, ``reason`` (one
  line), ``cause`` (policy, limit, rate, service_down, proxy), plus the
  route's fields when the refusal came from the service or the proxy;
* ``limit``: ``limit`` (the configuration key that was hit, e.g.
  ``max_connections``), ``cause``, ``protocol``, ``client``, ``server``;
  after a ``flow_refused`` record, or alone with ``action``
  (``syn_cookies``: ``max_half_open`` or ``new_connections_per_second``
  turned SYN cookies on, at this flow's SYN; once per such period) and
  ``reason``;
* ``reload``: ``ok`` and ``detail`` (what was applied and what needs a
  restart, or why the file was refused);
* ``breaker``: ``target`` (``host:port``, ``via`` when not direct), ``state``
  (``open``, ``half_open``, ``closed``), ``failures`` (consecutive failed
  connects) and ``reason`` (the last failure's).

Never a password, never a payload byte: the records are built from the
fields above only.  ``flow_refused`` and ``limit`` records are written at
most AUDIT_REFUSAL_RATE a second (bursts of AUDIT_REFUSAL_BURST): a flood of
refused packets must not be able to rotate the earlier records away; the
next record written says how many were left out (``suppressed``), and the
metrics count them.

Rotation follows the log file's settings: when a line would take the file
past ``max_size`` bytes it is renamed ``FILE.1`` (``FILE.1`` to ``FILE.2``
..., keeping ``rotate_count`` old files; with ``rotate_count = 0`` the file
starts again empty); ``max_size = 0`` never rotates.  :meth:`AuditLog.reopen`
(SIGHUP) reopens the file for an external rotator.  A failed write is
counted (``lost``) and logged at a limited rate; the daemon carries on.
"""

import json
import logging
import os
import time

from pyslirp.net import events as ev
from pyslirp.net.flows import CAUSE_LIMIT, CAUSE_RATE, LIMIT_RATE, PROTO_ICMP, PROTO_TCP, PROTOCOL_NAMES, addr_str
from pyslirp.net.ratelimit import TokenBucket, every_power_of_two

log = logging.getLogger("pyslirp.runtime.audit")
flow_log = logging.getLogger("pyslirp.runtime.flows")

REFUSAL_LOG_RATE = 1            # refusal lines in the human log per second ...
REFUSAL_LOG_BURST = 5           # ... in bursts of this many
AUDIT_REFUSAL_RATE = 20         # flow_refused / limit audit records per second ...
AUDIT_REFUSAL_BURST = 100       # ... in bursts of this many


def rfc3339(t):
    """Seconds since the epoch -> ``2024-05-01T12:00:00.123Z`` (RFC 3339, UTC, milliseconds)."""
    ms = int(round(t * 1000))
    secs, ms = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%03dZ" % ms


class AuditLog(object):
    """One JSON object per line in ``path``, rotated at ``max_size`` bytes (see the module docstring)."""

    def __init__(self, path, max_size=0, rotate_count=0, clock=time.time):
        self.path = path
        self.max_size = max_size
        self.rotate_count = rotate_count
        self._clock = clock
        self.written = 0
        self.lost = 0
        self._file = None
        self._size = 0
        self._open()                    # OSError at start-up: the caller reports it

    def _open(self):
        self._file = open(self.path, "ab")
        self._size = self._file.tell()

    def _close(self):
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    def reopen(self):
        """Close and open the file again (after an external rotation, SIGHUP)."""
        self._close()
        try:
            self._open()
        except OSError as exc:
            self._failed(exc)

    def close(self):
        self._close()

    def _rotate(self):
        self._close()
        if self.rotate_count > 0:
            for i in range(self.rotate_count - 1, 0, -1):
                older = "%s.%d" % (self.path, i)
                if os.path.exists(older):
                    os.replace(older, "%s.%d" % (self.path, i + 1))
            os.replace(self.path, self.path + ".1")
            self._open()
        else:
            self._file = open(self.path, "wb")
            self._size = 0

    def write(self, event, **fields):
        """Write one record ``{"ts", "event", **fields}``; False (counted in ``lost``) if it could not be."""
        record = {"ts": rfc3339(self._clock()), "event": event}
        record.update(fields)
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            if self._file is None:
                self._open()
            if self.max_size and self._size and self._size + len(data) > self.max_size:
                self._rotate()
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            self._failed(exc)
            return False
        self._size += len(data)
        self.written += 1
        return True

    def _failed(self, exc):
        self.lost += 1
        self._close()
        if every_power_of_two(self.lost):
            log.error("audit log %s: %s (%d records lost so far)", self.path, exc.strerror or exc, self.lost)


def _endpoint(addr, port, protocol):
    return addr_str(addr) if protocol == PROTO_ICMP else "%s:%d" % (addr_str(addr), port)


class EventLog(object):
    """Link, login and flow events -> the human log's lines and the audit records (stack thread only)."""

    def __init__(self, audit=None, connection_log=True):
        self.audit = audit
        self.connection_log = connection_log
        self._refusal_lines = TokenBucket(REFUSAL_LOG_RATE, REFUSAL_LOG_BURST)
        self._refusal_records = TokenBucket(AUDIT_REFUSAL_RATE, AUDIT_REFUSAL_BURST)
        self.suppressed = 0             # refusal records left out (in total)
        self._suppressed_since = 0      # ... since the last one written
        self.user = ""                  # the session's authenticated user

    def counts(self):
        """{written, suppressed, lost} of the audit log, or None without one (the metrics)."""
        if self.audit is None:
            return None
        return {"written": self.audit.written, "suppressed": self.suppressed, "lost": self.audit.lost}

    def _write(self, event, **fields):
        if self.audit is not None:
            self.audit.write(event, **fields)

    # -- the link -----------------------------------------------------------------------------

    def auth(self, event):
        if event.ok:
            self.user = event.user
        self._write("auth", method=event.method, user=event.user, ok=bool(event.ok))

    def link_up(self, event):
        self._write("link_up", user=self.user, local_ip=event.local_ip, remote_ip=event.remote_ip, mtu=event.mtu)

    def link_down(self, event):
        self._write("link_down", user=self.user, reason=event.reason, administrative=bool(event.administrative))
        self.user = ""

    def reload(self, ok, detail):
        self._write("reload", ok=bool(ok), detail=detail)

    def breaker(self, event):
        """A service target's circuit breaker changed state (net/health.py BreakerChange)."""
        self._write("breaker", target=event.target, state=event.state, failures=event.failures,
                    reason=event.reason)

    # -- flows --------------------------------------------------------------------------------

    def flow(self, event, now):
        """One FlowLog: its line for the human log, its audit record."""
        self._line(event, now)
        if self.audit is None:
            return
        flow, route = event.flow, event.route
        fields = {"protocol": PROTOCOL_NAMES.get(flow.protocol, str(flow.protocol)),
                  "client": _endpoint(flow.client_addr, flow.client_port, flow.protocol),
                  "server": _endpoint(flow.server_addr, flow.server_port, flow.protocol)}
        if flow.protocol == PROTO_ICMP:
            fields["ident"] = flow.client_port
        if route.admitted:
            fields.update(route=route.kind, service=route.label,
                          target="%s:%d" % (route.host, route.port) if route.host else "", via=route.via)
        kind = event.kind
        if kind == ev.COOKIES:
            self._limit(event, fields, now, action="syn_cookies")
        elif kind == ev.OPENED:
            self.audit.write("flow_open", **fields)
        elif kind in (ev.CLOSED, ev.ABANDONED):
            fields.update(bytes_in=event.bytes_in, bytes_out=event.bytes_out,
                          duration=round(event.duration_ms / 1000.0, 3), reason=event.reason)
            if kind == ev.ABANDONED:
                fields["connected"] = False
            self.audit.write("flow_close", **fields)
        else:
            self._refused(event, fields, now)

    def _throttled(self, fields, now):
        """False if the refusal records' limit leaves this one out; else ``fields`` say how many it left out."""
        if not self._refusal_records.allow(now):
            self.suppressed += 1
            self._suppressed_since += 1
            return False
        if self._suppressed_since:
            fields["suppressed"] = self._suppressed_since
            self._suppressed_since = 0
        return True

    def _refused(self, event, fields, now):
        if not self._throttled(fields, now):
            return
        fields.update(reason=event.reason, cause=event.cause)
        self.audit.write("flow_refused", **fields)
        if event.cause in (CAUSE_LIMIT, CAUSE_RATE):
            # A flow that left while it waited for a token has its admitted route: the limit is the rate's.
            limit = event.route.limit or (LIMIT_RATE if event.cause == CAUSE_RATE else event.cause)
            self.audit.write("limit", limit=limit, cause=event.cause,
                             protocol=fields["protocol"], client=fields["client"], server=fields["server"])

    def _limit(self, event, fields, now, action):
        """A limit that did not refuse the flow but changed how it is answered (``action``: syn_cookies)."""
        if not self._throttled(fields, now):
            return
        self.audit.write("limit", limit=event.route.limit or event.cause, cause=event.cause, action=action,
                         reason=event.reason, **fields)

    def _line(self, event, now):
        text = event.text
        if event.flow.protocol == PROTO_TCP and event.route.admitted:
            flow_log.log(logging.INFO if self.connection_log else logging.DEBUG, "%s", text)
        elif event.kind == ev.REFUSED:
            if self._refusal_lines.allow(now):
                flow_log.info("%s", text)
        else:
            flow_log.debug("%s", text)
