"""Metrics: explicit, typed definitions, a snapshot of their figures, the Prometheus text and JSON forms.

Theory of operation
-------------------
Every figure pyslirp exports is declared once below as a :class:`Family`:
its name, its kind (counter, gauge or histogram), one line of help and the
names of its labels, fixed for the family.  Nothing is discovered by
reflection: a counter is exported because it is listed here, with the
labels listed here.

The figures live in the protocol objects (plain integer attributes and
dicts, docs/ARCHITECTURE.md) and in the runtime.  :func:`collect` reads
them into a :class:`Snapshot`, an immutable value; it must run on the
thread that owns the protocol objects (the stack thread), because it walks
their tables.  A snapshot can then be handed to any other thread (the
metrics server renders it there), logged, or compared in tests.

Two renderings of one snapshot:

* :func:`render_text`: the Prometheus text exposition format, version
  0.0.4: one ``# HELP`` and one ``# TYPE`` line per family, then its
  samples; counters end in ``_total``; a histogram is its cumulative
  ``_bucket{le="..."}`` samples ending with ``le="+Inf"``, then ``_sum``
  and ``_count``; times are in seconds; label values escape backslash,
  double quote and line feed, help text backslash and line feed.
* :func:`render_json` (:func:`to_json`): the same figures as a JSON object,
  ``{"metrics": {name: {"type", "help", "samples": [{"labels", "value"}]}}}``,
  histogram samples with ``"buckets": {le: cumulative count}``, ``"sum"``
  and ``"count"``; ``le`` strings are those of the text form.

:func:`format_line` is the one-line form for the log (the periodic stats
line and SIGUSR1).

Histograms are counted where the observations happen with
:class:`Buckets` (integer milliseconds, non-cumulative counts per bucket);
the snapshot turns them into cumulative counts in seconds.

Directions: ``in`` is toward pyslirp from the client's side (read from the
serial line, sent by the client), ``out`` toward the client.
"""

import bisect
import json
import math
from collections import namedtuple

from pyslirp.net.flows import PROTOCOL_NAMES

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

# The connect-time histogram's bucket bounds, in ms (exported in seconds).
CONNECT_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class Family(namedtuple("Family", "name kind help labels buckets")):
    """One metric family's definition.  ``buckets``: a histogram's upper bounds in seconds (ascending)."""
    __slots__ = ()


def _family(name, kind, help_text, labels=(), buckets=()):
    if not name or not set(name) <= _NAME_OK or name[0].isdigit():
        raise ValueError("bad metric name %r" % name)
    if (kind == COUNTER) != name.endswith("_total"):
        raise ValueError("%s: counters, and only counters, end in _total" % name)
    if kind == HISTOGRAM and (not buckets or list(buckets) != sorted(buckets)):
        raise ValueError("%s: a histogram needs ascending buckets" % name)
    if "le" in labels and kind == HISTOGRAM:
        raise ValueError("%s: le is the histogram's own label" % name)
    return Family(name, kind, help_text, tuple(labels), tuple(buckets))


def counter(name, help_text, labels=()):
    return _family(name, COUNTER, help_text, labels)


def gauge(name, help_text, labels=()):
    return _family(name, GAUGE, help_text, labels)


def histogram(name, help_text, buckets, labels=()):
    return _family(name, HISTOGRAM, help_text, labels, buckets)


# ---------------------------------------------------------------------------
# The families (names and labels are relied upon by dashboards: change them only deliberately)

LINK_UP = gauge("pyslirp_link_up", "1 while the PPP link carries IP (IPCP is Opened), else 0.")
LINE_OPEN = gauge("pyslirp_serial_line_open", "1 while the serial line (device, pty, stdio) is open, else 0.")
SERIAL_BYTES = counter("pyslirp_serial_bytes_total", "Bytes read from (in) and written to (out) the serial line.",
                       ("direction",))
SERIAL_NOISE = counter("pyslirp_serial_noise_bytes_total",
                       "Bytes read from the serial line outside any PPP frame (before the first flag).")
PPP_FRAMES = counter("pyslirp_ppp_frames_total", "PPP frames received (in) and sent (out).", ("direction",))
PPP_ERRORS = counter("pyslirp_ppp_errors_total",
                     "Received frames dropped by the deframer (bad_fcs, too_long, too_short, aborted) "
                     "or as malformed (frame_*).", ("reason",))
LINK_SESSIONS = counter("pyslirp_link_sessions_total", "PPP sessions that reached IPCP Opened.")
LINK_SUSPENDED = gauge("pyslirp_link_suspended",
                       "1 while the line is lost and TCP flows wait for the client to come back ([ppp] resume_grace).")
LINK_SUSPENSIONS = counter("pyslirp_link_suspensions_total", "Lost lines whose TCP flows were kept, by how the wait "
                           "ended (resumed: the client came back; expired: resume_grace ran out).", ("result",))
LCP_ECHO_RTT = gauge("pyslirp_lcp_echo_rtt_seconds", "Round-trip time of the latest answered LCP Echo-Request.")
AUTH = counter("pyslirp_auth_total", "Authentication attempts by method (pap, chap) and result (ok, fail).",
               ("method", "result"))
LINE_DRAIN = gauge("pyslirp_line_drain_bytes_per_second", "The serial line's measured drain rate (0: not known yet).")
LINE_QUEUED = gauge("pyslirp_line_queued_bytes", "Bytes waiting toward the serial line: in pyslirp's writer "
                    "(writer) and in the operating system's output queue (os: 0 where it cannot be seen).",
                    ("where",))
IP_PACKETS = counter("pyslirp_ip_packets_total", "IP datagrams from the client (in) and to it (out).", ("direction",))
IP_DROPPED = counter("pyslirp_ip_dropped_total", "IP datagrams dropped, by reason.", ("reason",))
TCP_ACTIVE = gauge("pyslirp_tcp_connections_active",
                   "TCP connections open now (connected to their service, not in TIME-WAIT); service is the "
                   "service's name, or nat, dns.", ("service",))
TCP_CONNECTING = gauge("pyslirp_tcp_connections_connecting",
                       "TCP connections whose service (or proxy) connect is under way.", ("service",))
TCP_TOTAL = counter("pyslirp_tcp_connections_total", "TCP connections connected to their service.", ("service",))
CONNECTION_ERRORS = counter("pyslirp_connection_errors_total",
                            "TCP connections that failed or ended abnormally, by service and reason.",
                            ("service", "reason"))
CONNECTIONS_REFUSED = counter("pyslirp_connections_refused_total",
                              "TCP connections refused, by reason (policy, limit, rate, proxy, service_down).",
                              ("reason",))
FLOWS_REFUSED = counter("pyslirp_flows_refused_total", "Flows of every protocol (TCP, UDP, ICMP echo) refused, "
                        "by reason.", ("reason",))
TCP_RETRANSMISSIONS = counter("pyslirp_tcp_retransmissions_total",
                              "Segments retransmitted toward the client, closed connections included.")
TCP_RESETS = counter("pyslirp_tcp_resets_sent_total", "TCP resets sent to the client.")
SERVICE_BYTES = counter("pyslirp_service_bytes_total",
                        "TCP payload bytes from the client (in) and to it (out), by service.",
                        ("service", "direction"))
SERVICE_CONNECT = histogram("pyslirp_service_connect_seconds",
                            "Time from the client's SYN to the service socket connected (directly or through the "
                            "proxy).", tuple(ms / 1000.0 for ms in CONNECT_BUCKETS_MS), ("service",))
DATAGRAM_ACTIVE = gauge("pyslirp_datagram_flows_active", "UDP and ICMP echo flows open now.", ("protocol",))
DATAGRAM_TOTAL = counter("pyslirp_datagram_flows_total", "UDP and ICMP echo flows opened, by protocol and service.",
                         ("protocol", "service"))
DATAGRAM_BYTES = counter("pyslirp_datagram_bytes_total",
                         "UDP and ICMP echo payload bytes from the client (in) and to it (out).",
                         ("protocol", "service", "direction"))
INTERNAL_ERRORS = counter("pyslirp_internal_errors_total", "Unexpected exceptions caught by the stack thread.")
BREAKER_OPEN = gauge("pyslirp_service_breaker_open",
                     "1 while a service target's circuit breaker is open or half-open (new connections skip it, "
                     "or one is its trial), else 0.", ("target",))
BREAKER_TRANSITIONS = counter("pyslirp_service_breaker_transitions_total",
                              "Circuit breaker state changes of the service targets, by the state entered.",
                              ("state",))
SYN_COOKIES = counter("pyslirp_syn_cookies_total",
                      "SYNs answered with a SYN cookie (sent) or left unanswered by the SYN-ACK rate limit (limited); "
                      "ACKs that returned a valid cookie (valid) or none (invalid).", ("result",))
SYN_COOKIES_ON = gauge("pyslirp_syn_cookies_on",
                       "1 while new SYNs are answered with SYN cookies (half-open table full, or SYNs faster than "
                       "[limits] new_connections_per_second), else 0.")
HALF_OPEN_EVICTED = counter("pyslirp_tcp_half_open_evicted_total",
                            "Connections whose SYN-ACK went unanswered, reset to make room for a completed handshake.")
RATE_WAITS = counter("pyslirp_tcp_rate_waits_total",
                     "Connections that completed a SYN-cookie handshake when no token of [limits] "
                     "new_connections_per_second was free: their service connect waited for one.")
AUDIT_RECORDS = counter("pyslirp_audit_records_total",
                        "Audit log records written, suppressed (refusal floods) or lost (write errors).", ("result",))

FAMILIES = (
    LINK_UP, LINE_OPEN, SERIAL_BYTES, SERIAL_NOISE, PPP_FRAMES, PPP_ERRORS, LINK_SESSIONS, LINK_SUSPENDED,
    LINK_SUSPENSIONS, LCP_ECHO_RTT, AUTH,
    LINE_DRAIN, LINE_QUEUED, IP_PACKETS, IP_DROPPED, TCP_ACTIVE, TCP_CONNECTING, TCP_TOTAL, CONNECTION_ERRORS,
    CONNECTIONS_REFUSED, FLOWS_REFUSED, TCP_RETRANSMISSIONS, TCP_RESETS, SERVICE_BYTES, SERVICE_CONNECT,
    DATAGRAM_ACTIVE, DATAGRAM_TOTAL, DATAGRAM_BYTES, INTERNAL_ERRORS, AUDIT_RECORDS, BREAKER_OPEN,
    BREAKER_TRANSITIONS, SYN_COOKIES, SYN_COOKIES_ON, HALF_OPEN_EVICTED, RATE_WAITS,
)
BY_NAME = dict((f.name, f) for f in FAMILIES)

# The deframer's counters, always exported (zero included).
DEFRAMER_ERRORS = ("bad_fcs", "too_long", "too_short", "aborted")


# ---------------------------------------------------------------------------
# Observations and the snapshot value

class Buckets(object):
    """Observations (integer ms) counted into fixed buckets: non-cumulative counts, the overflow last."""
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds=CONNECT_BUCKETS_MS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0
        self.count = 0

    def observe(self, value):
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def merge(self, other):
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum
        self.count += other.count


class HistogramValue(namedtuple("HistogramValue", "cumulative sum count")):
    """A histogram sample: cumulative counts for each bound of the family (+Inf is ``count``), sum in seconds."""
    __slots__ = ()

    @classmethod
    def of(cls, buckets):
        total = 0
        cumulative = []
        for n in buckets.counts[:-1]:
            total += n
            cumulative.append(total)
        return cls(tuple(cumulative), buckets.sum / 1000.0, buckets.count)


class Snapshot(object):
    """The figures at one moment (``taken_ms``, monotonic): {family name: {label values: value}}.  Read-only."""

    def __init__(self, taken_ms, samples):
        self.taken_ms = taken_ms
        self._samples = samples

    def families(self):
        """(Family, [(label values, value)] sorted by labels) in definition order."""
        for fam in FAMILIES:
            yield fam, sorted(self._samples.get(fam.name, {}).items())

    def value(self, name, **labels):
        """One sample's value (None when absent); a histogram's is its HistogramValue."""
        fam = BY_NAME[name]
        key = tuple(str(labels[n]) for n in fam.labels)
        return self._samples.get(name, {}).get(key)

    def samples(self, name):
        """{label values: value} of one family."""
        return dict(self._samples.get(name, {}))

    def total(self, name, **labels):
        """The sum of a family's samples whose labels match the given ones (histograms: their counts)."""
        fam = BY_NAME[name]
        total = 0
        for key, value in self._samples.get(name, {}).items():
            if all(key[fam.labels.index(n)] == str(v) for n, v in labels.items()):
                total += value.count if isinstance(value, HistogramValue) else value
        return total


class _Builder(object):
    def __init__(self):
        self.samples = dict((f.name, {}) for f in FAMILIES)

    def set(self, fam, value, *labels):
        if len(labels) != len(fam.labels):
            raise ValueError("%s takes labels %s" % (fam.name, fam.labels))
        self.samples[fam.name][tuple(str(v) for v in labels)] = value

    def add(self, fam, value, *labels):
        key = tuple(str(v) for v in labels)
        if len(key) != len(fam.labels):
            raise ValueError("%s takes labels %s" % (fam.name, fam.labels))
        table = self.samples[fam.name]
        table[key] = table.get(key, 0) + value


def collect(core, now, serial_in=0, serial_out=0, line_open=False, drain_rate=None, auth=None,
            internal_errors=0, audit=None, line_queued=(0, 0)):
    """A :class:`Snapshot` of the Core (its link, deframer and stack) and the runtime's figures.

    Call it on the thread that owns ``core``.  ``auth``: {(method, result): count}; ``audit``: {result: count}
    or None when there is no audit log; ``drain_rate``: bytes/s or None (unknown); ``line_queued``: bytes
    waiting toward the line, (in the writer, in the OS output queue).
    """
    b = _Builder()
    link = core.link
    stack = core.stack
    b.set(LINK_UP, 1 if core.is_up else 0)
    b.set(LINE_OPEN, 1 if line_open else 0)
    b.set(SERIAL_BYTES, serial_in, "in")
    b.set(SERIAL_BYTES, serial_out, "out")
    b.set(LINE_DRAIN, int(drain_rate) if drain_rate else 0)
    b.set(LINE_QUEUED, line_queued[0], "writer")
    b.set(LINE_QUEUED, line_queued[1], "os")
    b.set(INTERNAL_ERRORS, internal_errors)
    for (method, result), n in sorted((auth or {}).items()):
        b.set(AUTH, n, method, result)
    if audit is not None:
        for result in ("written", "suppressed", "lost"):
            b.set(AUDIT_RECORDS, audit.get(result, 0), result)

    # The link and its deframer.
    deframer = link.deframer
    b.set(PPP_FRAMES, link.frames_in, "in")
    b.set(PPP_FRAMES, link.frames_out, "out")
    for reason in DEFRAMER_ERRORS:
        b.set(PPP_ERRORS, getattr(deframer, reason), reason)
    for reason, n in link.counters.items():
        if reason.startswith("frame_"):
            b.set(PPP_ERRORS, n, reason)
    b.set(SERIAL_NOISE, deframer.noise_bytes)
    b.set(LINK_SESSIONS, core.sessions)
    rtt = link.lcp.echo_rtt
    if rtt is not None:
        b.set(LCP_ECHO_RTT, rtt / 1000.0)

    # The IP stack.
    b.set(LINK_SUSPENDED, 1 if stack.suspended else 0)
    b.set(LINK_SUSPENSIONS, stack.resumptions, "resumed")
    b.set(LINK_SUSPENSIONS, stack.resume_expiries, "expired")
    b.set(IP_PACKETS, stack.packets_in, "in")
    b.set(IP_PACKETS, stack.packets_out, "out")
    for reason, n in stack.dropped.items():
        b.set(IP_DROPPED, n, reason)
    for reason, n in core.counters.items():
        if n:
            b.add(IP_DROPPED, n, reason)
    b.set(TCP_RETRANSMISSIONS, stack.tcp_retransmissions())
    b.set(TCP_RESETS, stack.rst_sent)
    for label, fig in stack.service_figures().items():
        b.set(TCP_ACTIVE, fig.active, label)
        b.set(TCP_CONNECTING, fig.connecting, label)
        b.set(TCP_TOTAL, fig.opened, label)
        b.set(SERVICE_BYTES, fig.bytes_in, label, "in")
        b.set(SERVICE_BYTES, fig.bytes_out, label, "out")
        if fig.connect.count:
            b.set(SERVICE_CONNECT, HistogramValue.of(fig.connect), label)
    for (label, reason), n in stack.connection_errors.items():
        b.set(CONNECTION_ERRORS, n, label, reason)
    for cause, n in stack.flows_refused.items():
        b.set(FLOWS_REFUSED, n, cause)
    for cause, n in stack.tcp_refused.items():
        b.set(CONNECTIONS_REFUSED, n, cause)
    active = {"udp": 0, "icmp": 0}
    for (protocol, label), fig in stack.datagram_figures().items():
        name = PROTOCOL_NAMES.get(protocol, str(protocol))
        active[name] = active.get(name, 0) + fig.active
        b.set(DATAGRAM_TOTAL, fig.opened, name, label)
        b.set(DATAGRAM_BYTES, fig.bytes_in, name, label, "in")
        b.set(DATAGRAM_BYTES, fig.bytes_out, name, label, "out")
    for name, n in active.items():
        b.set(DATAGRAM_ACTIVE, n, name)
    b.set(SYN_COOKIES, stack.syncookies_sent, "sent")
    b.set(SYN_COOKIES, stack.syncookies_limited, "limited")
    b.set(SYN_COOKIES, stack.syncookies_accepted, "valid")
    b.set(SYN_COOKIES, stack.syncookies_invalid, "invalid")
    b.set(SYN_COOKIES_ON, 1 if stack.policy.cookies_on(now) else 0)
    b.set(HALF_OPEN_EVICTED, stack.half_open_evicted)
    b.set(RATE_WAITS, stack.token_waits)
    health = stack.policy.health
    for label, state in sorted(health.states().items()):
        b.set(BREAKER_OPEN, 0 if state == "closed" else 1, label)
    for state, n in sorted(health.transitions.items()):
        b.set(BREAKER_TRANSITIONS, n, state)
    return Snapshot(now, b.samples)


# ---------------------------------------------------------------------------
# Renderings

def escape_label(value):
    """A label value for the text format: backslash, double quote and line feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text):
    """Help text for the text format: backslash and line feed escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value):
    """A sample value as the text format writes it (integers exactly; +Inf, -Inf, NaN)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _labels_text(names, values, extra=None):
    pairs = ['%s="%s"' % (n, escape_label(v)) for n, v in zip(names, values)]
    if extra is not None:
        pairs.append('%s="%s"' % extra)
    return "{%s}" % ",".join(pairs) if pairs else ""


def le_strings(fam):
    """The ``le`` label values of a histogram family, +Inf last."""
    return [format_value(bound) for bound in fam.buckets] + ["+Inf"]


def render_text(snapshot):
    """The Prometheus text exposition format 0.0.4 (``Content-Type: text/plain; version=0.0.4``)."""
    lines = []
    for fam, samples in snapshot.families():
        lines.append("# HELP %s %s" % (fam.name, escape_help(fam.help)))
        lines.append("# TYPE %s %s" % (fam.name, fam.kind))
        if fam.kind != HISTOGRAM:
            for labels, value in samples:
                lines.append("%s%s %s" % (fam.name, _labels_text(fam.labels, labels), format_value(value)))
            continue
        les = le_strings(fam)
        for labels, value in samples:
            counts = list(value.cumulative) + [value.count]
            for le, n in zip(les, counts):
                lines.append("%s_bucket%s %d" % (fam.name, _labels_text(fam.labels, labels, ("le", le)), n))
            lines.append("%s_sum%s %s" % (fam.name, _labels_text(fam.labels, labels), format_value(value.sum)))
            lines.append("%s_count%s %d" % (fam.name, _labels_text(fam.labels, labels), value.count))
    return "\n".join(lines) + "\n"


def to_json(snapshot):
    """The same figures as a JSON-ready dict (see the module docstring)."""
    out = {}
    for fam, samples in snapshot.families():
        items = []
        for labels, value in samples:
            item = {"labels": dict(zip(fam.labels, labels))}
            if fam.kind == HISTOGRAM:
                item["buckets"] = dict(zip(le_strings(fam), list(value.cumulative) + [value.count]))
                item["sum"] = value.sum
                item["count"] = value.count
            else:
                item["value"] = value
            items.append(item)
        out[fam.name] = {"type": fam.kind, "help": fam.help, "samples": items}
    return {"metrics": out}


def render_json(snapshot):
    return json.dumps(to_json(snapshot), separators=(",", ":")) + "\n"


def format_line(snapshot, skip_zero=True):
    """One log line: ``name{label=value}=figure`` without the ``pyslirp_`` prefix (histograms: count and sum)."""
    parts = []
    for fam, samples in snapshot.families():
        short = fam.name[len("pyslirp_"):] if fam.name.startswith("pyslirp_") else fam.name
        for labels, value in samples:
            tag = ",".join("%s=%s" % (n, escape_label(v)) for n, v in zip(fam.labels, labels))
            tag = "{%s}" % tag if tag else ""
            if isinstance(value, HistogramValue):
                if value.count or not skip_zero:
                    parts.append("%s_count%s=%d" % (short, tag, value.count))
                    parts.append("%s_sum%s=%s" % (short, tag, format_value(round(value.sum, 6))))
            elif value or not skip_zero:
                parts.append("%s%s=%s" % (short, tag, format_value(value)))
    return " ".join(parts)
