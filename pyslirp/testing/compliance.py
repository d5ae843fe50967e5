"""TCP compliance scripts against a server ``Core``, in the style of packetdrill.

Theory of operation
-------------------
``verify_tcp_compliance(core_factory)`` runs every case of :data:`CASES` against a fresh ``Core`` from
``core_factory()`` (no arguments), with a fake clock, and returns a :class:`ComplianceReport`: one
:class:`CaseResult` per case, passed or failed with the reason.  No thread, socket or clock is involved: the
script plays the PPP client and the TCP peer in memory (:class:`LinkPeer` brings the link up with LCP and IPCP,
as pppd would, and answers LCP echoes), and plays the service behind the core (a connection request is answered
"connected" at once, whatever the service sends the script says, and every byte delivered to the service is
consumed at once, so the receive window stays open unless a case says otherwise).

A case is a function of a :class:`Script`.  Times are milliseconds on the script's clock, sequence numbers are
relative to each side's ISN (0 is the SYN), as in packetdrill::

    s.syn(at=0, mss=1460, sack=True)
    synack = s.expect(SYN | ACK, by=10, ack=1)      # by: the latest acceptable time
    s.inject(ACK, at=100)
    s.inject(ACK | PSH, payload=b"hello", at=200)
    s.expect(ACK, by=700, ack=6)                    # RFC 1122 4.2.3.2: an ACK within 500 ms
    s.expect_none(until=1200)

``expect`` runs the core's timers up to ``by`` and takes the first segment the core sent; a missing segment, a
segment with other values, or (``expect_none``) a segment that should not have come fails the case with a line
that says what was expected and what came.  The cases quote the RFC they check: the RFC 9293 state diagram
(handshake, data, both ways of closing, simultaneous close, TIME-WAIT, resets), RFC 5961 (challenge ACKs for
in-window RSTs and SYNs, blind data injection), RFC 6298 (initial RTO, backoff, restart on new ACKs), RFC 7323
window scaling and RFC 2018 SACK.  Values an implementation may choose (its ISN, its window, its MSS when the link
allows more) are never compared; the limits the RFCs set are.
"""

import random
from dataclasses import dataclass, field

from pyslirp.net.events import FlowLog, ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend, ServiceShutdown
from pyslirp.wire import hdlc, ppp as wppp
from pyslirp.wire.errors import ParseError
from pyslirp.wire.ipv4 import PROTO_TCP, Ipv4Repr
from pyslirp.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpRepr, flags_str

MASK = 0xFFFFFFFF
CLIENT_ISS = 0xFFFFFF00         # near the wrap: every comparison in the core must be wrap-safe
CLIENT_PORT = 40000
LCP_MAGIC = 1
LCP_OPT_ACCM = 2
LCP_OPT_MAGIC = 5
IPCP_OPT_ADDRESS = 3

__all__ = ["verify_tcp_compliance", "ComplianceReport", "CaseResult", "CaseFailed", "Script", "LinkPeer",
           "CASES", "default_core", "ACK", "FIN", "PSH", "RST", "SYN"]


class CaseFailed(AssertionError):
    """A script's expectation was not met; the message says how."""


@dataclass(frozen=True)
class CaseResult:
    name: str
    rfc: str
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class ComplianceReport:
    results: tuple = field(default=())

    @property
    def passed(self):
        return [r for r in self.results if r.passed]

    @property
    def failed(self):
        return [r for r in self.results if not r.passed]

    @property
    def ok(self):
        return bool(self.results) and not self.failed

    def __str__(self):
        lines = ["%s  %-44s %s%s" % ("pass" if r.passed else "FAIL", r.name, r.rfc,
                                      "" if r.passed else ": " + r.reason) for r in self.results]
        lines.append("%d passed, %d failed" % (len(self.passed), len(self.failed)))
        return "\n".join(lines)


def default_core(**overrides):
    """A ``Core`` with pyslirp's default configuration (``overrides``: dotted config keys, e.g. ``tcp.sack``)."""
    from pyslirp import config as config_mod
    from pyslirp.core import Core
    settings = {"ppp.lcp_echo_interval": 0}
    settings.update(overrides)
    cfg = config_mod.validate(config_mod.apply_overrides({}, settings))
    return Core(config_mod.link_config(cfg), config_mod.stack_config(cfg), random.Random(7))


# ============================================================================ the PPP side

class LinkPeer(object):
    """Plays a PPP client (pppd's defaults, reduced) against a ``Core`` in memory: LCP with ACCM 0 and a magic
    number, IPCP asking for an address; answers LCP Echo-Requests; hands IP packets both ways."""

    def __init__(self, core, now=0):
        self.core = core
        self.now = now
        self.deframer = hdlc.Deframer(accm=0)
        self.control = []           # (protocol, code, ident, data) of control packets not yet looked at
        self.ip = []                # IP packets from the core, bytes
        self.events = []            # the core's events
        self.local_ip = None        # the core's address
        self.remote_ip = None       # ours
        self.answer_echoes = True   # False: the line is cut as far as LCP is concerned

    def pump(self):
        for _, data in self.core.take_serial_output(-1, self.now):
            for frame in self.deframer.feed(data):
                try:
                    proto, info = wppp.parse_frame(frame)
                except ParseError:
                    continue
                if proto == wppp.PROTO_IP:
                    self.ip.append(info)
                elif proto in (wppp.PROTO_LCP, wppp.PROTO_IPCP):
                    code, ident, body = wppp.parse_cp(info)
                    if proto == wppp.PROTO_LCP and code == wppp.ECHO_REQUEST and self.core.is_up:
                        if not self.answer_echoes:
                            continue
                        reply = wppp.build_cp(wppp.ECHO_REPLY, ident, b"\0\0\0" + bytes([LCP_MAGIC]) + body[4:])
                        self.core.receive_serial(hdlc.encode_frame(wppp.build_frame(wppp.PROTO_LCP, reply)),
                                                 self.now)
                        continue
                    self.control.append((proto, code, ident, body))
        self.events.extend(self.core.take_events())

    def _send_cp(self, proto, code, ident, options):
        info = wppp.build_cp(code, ident, wppp.build_options(options))
        self.core.receive_serial(hdlc.encode_frame(wppp.build_frame(proto, info)), self.now)
        self.pump()

    def _take(self, proto, code):
        for i, (p, c, ident, body) in enumerate(self.control):
            if p == proto and c == code:
                del self.control[i]
                return ident, body
        raise CaseFailed("the link did not come up: no %s code %d (got %r)" % (
            wppp.protocol_name(proto), code, [(wppp.protocol_name(p), c) for p, c, _, _ in self.control]))

    def bring_up(self):
        core = self.core
        core.lower_up(self.now)
        self.pump()
        ident, body = self._take(wppp.PROTO_LCP, wppp.CONFIGURE_REQUEST)
        self._send_cp(wppp.PROTO_LCP, wppp.CONFIGURE_ACK, ident, wppp.parse_options(body))
        self._send_cp(wppp.PROTO_LCP, wppp.CONFIGURE_REQUEST, 1,
                      [(LCP_OPT_ACCM, b"\0\0\0\0"), (LCP_OPT_MAGIC, b"\0\0\0" + bytes([LCP_MAGIC]))])
        self._take(wppp.PROTO_LCP, wppp.CONFIGURE_ACK)
        self._send_cp(wppp.PROTO_IPCP, wppp.CONFIGURE_REQUEST, 1, [(IPCP_OPT_ADDRESS, b"\0\0\0\0")])
        ident, body = self._take(wppp.PROTO_IPCP, wppp.CONFIGURE_NAK)
        address = dict(wppp.parse_options(body)).get(IPCP_OPT_ADDRESS)
        if address is None:
            raise CaseFailed("the link did not offer an address")
        self._send_cp(wppp.PROTO_IPCP, wppp.CONFIGURE_REQUEST, 2, [(IPCP_OPT_ADDRESS, address)])
        self._take(wppp.PROTO_IPCP, wppp.CONFIGURE_ACK)
        ident, body = self._take(wppp.PROTO_IPCP, wppp.CONFIGURE_REQUEST)
        self._send_cp(wppp.PROTO_IPCP, wppp.CONFIGURE_ACK, ident, wppp.parse_options(body))
        ours = dict(wppp.parse_options(body)).get(IPCP_OPT_ADDRESS)
        if not core.is_up:
            raise CaseFailed("the link did not come up after LCP and IPCP")
        self.remote_ip, self.local_ip = address, ours
        self.control = []

    def send_ip(self, packet):
        self.core.receive_serial(hdlc.encode_frame(wppp.build_frame(wppp.PROTO_IP, packet)), self.now)
        self.pump()

    def take_ip(self):
        out, self.ip = self.ip, []
        return out


# ============================================================================ the script

def _seq_lt(a, b):
    return ((a - b) & MASK) > 0x80000000


class Script(object):
    """One TCP connection scripted against a ``Core`` (see the module docstring)."""

    def __init__(self, core, port=22, client_port=CLIENT_PORT, client_iss=CLIENT_ISS):
        self.core = core
        self.peer = LinkPeer(core)
        self.peer.bring_up()
        self.now = self.peer.now
        self.t0 = self.now
        self.port = port
        self.client_port = client_port
        self.c_iss = client_iss
        self.s_iss = None           # the core's ISN, from its SYN-ACK
        self.snd_nxt = 0            # relative: our next sequence number
        self.rcv_nxt = 0            # relative: what we acknowledge by default
        self.window = 65535
        self.wscale = None
        self.queue = []             # (time, TcpRepr) from the core, not yet expected
        self.other = []             # (time, TcpRepr) for other ports/connections
        self.service = bytearray()  # bytes delivered to the service
        self.service_eof = False
        self.service_closed = None  # the reason, once the core closed the service connection
        self.conn_id = None
        self.connects = 0
        self.consume = True         # the service takes every byte at once
        self.credit = 0
        self.bad = []
        self._last_t = None

    # -- time ----------------------------------------------------------------------
    def at(self, t):
        """Absolute time of script time ``t``."""
        return self.t0 + t

    def advance(self, t):
        """Run the core's timers up to script time ``t``, collecting what it sends."""
        end = self.at(t)
        while True:
            deadline = self.core.get_timer()
            if deadline is None or deadline > end:
                break
            self._set_now(max(self.now, deadline))
            self.core.handle_timer(self.now)
            self._collect()
        self._set_now(max(self.now, end))
        self._collect()

    def _set_now(self, now):
        self.now = now
        self.peer.now = now

    # -- the core's output ------------------------------------------------------------
    def _collect(self):
        self.peer.pump()
        for raw in self.peer.take_ip():
            try:
                ip = Ipv4Repr.parse(raw)
                if ip.protocol != PROTO_TCP:
                    continue
                seg = TcpRepr.parse(ip.payload, ip.src, ip.dst)
            except ParseError as exc:
                self.bad.append(str(exc))
                continue
            t = self.now - self.t0
            if seg.dst_port == self.client_port and seg.src_port == self.port:
                self.queue.append((t, seg))
            else:
                self.other.append((t, seg))
        for ev in self.peer.events:
            self._service_event(ev)
        self.peer.events = []

    def _service_event(self, ev):
        core = self.core
        if isinstance(ev, ServiceConnect):
            self.connects += 1
            self.conn_id = ev.conn_id
            core.service_connected(ev.conn_id, self.now)
            self.peer.pump()
            self.peer.events.extend(core.take_events())
        elif isinstance(ev, ServiceSend) and ev.conn_id == self.conn_id:
            self.service += ev.data
            if self.consume:
                core.service_written(ev.conn_id, len(ev.data), self.now)
        elif isinstance(ev, ServiceReadCredit) and ev.conn_id == self.conn_id:
            self.credit += ev.nbytes
        elif isinstance(ev, ServiceShutdown) and ev.conn_id == self.conn_id:
            self.service_eof = True
        elif isinstance(ev, ServiceClose) and ev.conn_id == self.conn_id:
            self.service_closed = ev.reason or "closed"
        elif (isinstance(ev, FlowLog) and ev.kind == "closed" and ev.flow.client_port == self.client_port
              and ev.flow.server_port == self.port):
            self.service_closed = self.service_closed or ev.reason or "closed"

    # -- the client's input -------------------------------------------------------------
    def segment(self, flags, seq=None, ack=None, payload=b"", window=None, port=None, **options):
        """A TcpRepr from the client: ``seq``/``ack`` relative to the ISNs (default: where each side is)."""
        if seq is None:
            seq = self.snd_nxt
        if ack is None:
            ack = self.rcv_nxt
        if window is None:
            window = self.window
        abs_ack = (self.s_iss + ack) & MASK if (flags & ACK and self.s_iss is not None) else 0
        return TcpRepr(self.client_port, port or self.port, (self.c_iss + seq) & MASK, abs_ack, flags, window,
                       payload=payload, **options)

    def inject(self, flags, at=None, seq=None, ack=None, payload=b"", window=None, port=None, advance=True,
               **options):
        """Send a segment from the client at script time ``at`` (default: now)."""
        if at is not None:
            self.advance(at)
        seg = self.segment(flags, seq, ack, payload, window, port, **options)
        if advance and seq is None:
            self.snd_nxt += seg.seg_len
        src, dst = self.peer.remote_ip, self.peer.local_ip
        self.peer.send_ip(Ipv4Repr(src, dst, PROTO_TCP, seg.emit(src, dst)).emit())
        self._collect()
        return seg

    def syn(self, at=0, window=65535, mss=1460, wscale=None, sack=False, timestamp=None):
        """The client's SYN (relative seq 0); the service behind the core connects at once."""
        self.wscale = wscale
        self.snd_nxt = 0
        return self.inject(SYN, at=at, window=window, mss=mss, wscale=wscale, sack_permitted=sack,
                           timestamp=timestamp)

    def service_send(self, data, at=None):
        if at is not None:
            self.advance(at)
        self.core.service_data(self.conn_id, data, self.now)
        self._collect()

    def service_close(self, at=None):
        """The service's EOF: the core should send its FIN after the queued data."""
        if at is not None:
            self.advance(at)
        self.core.service_eof(self.conn_id, self.now)
        self._collect()

    # -- expectations -------------------------------------------------------------------
    def rel_seq(self, seg):
        return (seg.seq - self.s_iss) & MASK if self.s_iss is not None else None

    def rel_ack(self, seg):
        return (seg.ack - self.c_iss) & MASK

    def describe(self, seg):
        text = "%s seq=%s ack=%s win=%d len=%d" % (flags_str(seg.flags), self.rel_seq(seg),
                                                  self.rel_ack(seg) if seg.flags & ACK else "-", seg.window,
                                                  len(seg.payload))
        if seg.sack_blocks and self.s_iss is not None:
            text += " sack=%s" % [((a - self.c_iss) & MASK, (b - self.c_iss) & MASK) for a, b in seg.sack_blocks]
        return text

    def expect(self, flags, by, seq=None, ack=None, payload=None, length=None, not_before=None, check=None,
               what=""):
        """The next segment from the core must have ``flags`` by script time ``by``.

        The flags are compared exactly, except PSH (RFC 9293 3.9.1: when to push is the sender's choice).
        ``seq``/``ack`` relative; ``payload`` bytes or ``length``; ``not_before`` the earliest acceptable time;
        ``check(seg)`` returns a reason string to fail.  The segment is returned; an ACK or data in order moves
        the script's defaults along.
        """
        if not self.queue:
            self.advance(by)
        label = (what + ": ") if what else ""
        want = flags_str(flags)
        if not self.queue:
            raise CaseFailed("%sexpected %s by %d ms, got nothing" % (label, want, by))
        t, seg = self.queue.pop(0)
        self._last_t = t
        if t > by:
            raise CaseFailed("%sexpected %s by %d ms, it came at %d ms" % (label, want, by, t))
        if not_before is not None and t < not_before:
            raise CaseFailed("%sexpected %s not before %d ms, it came at %d ms (%s)" % (
                label, want, not_before, t, self.describe(seg)))
        if flags & SYN and self.s_iss is None:
            self.s_iss = seg.seq
        problems = []
        if seg.flags & ~PSH != flags & ~PSH:
            problems.append("flags %s" % flags_str(seg.flags))
        if seq is not None and self.rel_seq(seg) != seq & MASK:
            problems.append("seq %s, expected %d" % (self.rel_seq(seg), seq))
        if ack is not None and (not seg.flags & ACK or self.rel_ack(seg) != ack & MASK):
            problems.append("ack %s, expected %d" % (self.rel_ack(seg), ack))
        if payload is not None and seg.payload != payload:
            problems.append("payload %r, expected %r" % (seg.payload[:32], payload[:32]))
        if length is not None and len(seg.payload) != length:
            problems.append("length %d, expected %d" % (len(seg.payload), length))
        if check is not None and not problems:
            reason = check(seg)
            if reason:
                problems.append(reason)
        if problems:
            raise CaseFailed("%sexpected %s at %d ms, got %s: %s" % (label, want, t, self.describe(seg),
                                                                     "; ".join(problems)))
        rel = self.rel_seq(seg)
        if rel == self.rcv_nxt or flags & SYN:
            self.rcv_nxt = (rel + seg.seg_len) & MASK
        return seg

    def last_time(self):
        """When (script time) the segment the last ``expect`` took was sent."""
        return self._last_t

    def expect_none(self, until, what=""):
        """Nothing at all from the core until script time ``until``."""
        self.advance(until)
        if self.queue:
            t, seg = self.queue[0]
            raise CaseFailed("%sexpected nothing until %d ms, got %s at %d ms" % (
                (what + ": ") if what else "", until, self.describe(seg), t))

    def drain(self, until):
        """Take everything the core sends until ``until``: [(time, segment)]."""
        self.advance(until)
        out, self.queue = self.queue, []
        return out

    def require(self, condition, reason):
        if not condition:
            raise CaseFailed(reason)

    def establish(self, at=0, **syn_options):
        """Handshake at ``at``: SYN, SYN-ACK, ACK 10 ms later (a 10 ms RTT sample)."""
        self.syn(at=at, **syn_options)
        synack = self.expect(SYN | ACK, by=at + 10, ack=1, what="SYN-ACK")
        self.inject(ACK, at=at + 10)
        return synack


# ============================================================================ the cases

CASES = []


def case(rfc):
    def register(fn):
        CASES.append((fn.__name__, rfc, fn))
        return fn
    return register


# -- RFC 9293: the state diagram -------------------------------------------------------------

@case("RFC 9293 3.5 (three-way handshake)")
def handshake(s):
    s.syn(at=0, mss=1460)
    synack = s.expect(SYN | ACK, by=10, ack=1, what="SYN-ACK")
    s.require(synack.mss is not None, "the SYN-ACK carries no MSS option (RFC 9293 3.7.1, SHLD-5)")
    s.inject(ACK, at=10)
    s.inject(ACK | PSH, payload=b"ping", at=20)
    s.expect(ACK, by=520, ack=5, what="ACK of data (RFC 1122 4.2.3.2: within 500 ms)")
    s.require(bytes(s.service) == b"ping", "the service got %r" % bytes(s.service))
    s.require(s.connects == 1, "the service was connected %d times" % s.connects)


@case("RFC 9293 3.8.1 / RFC 6298 2.1 (SYN-ACK retransmitted, initial RTO 1 s)")
def synack_retransmitted(s):
    s.syn(at=0)
    s.expect(SYN | ACK, by=10, ack=1, what="SYN-ACK")
    s.expect_none(until=999, what="before the initial RTO")
    s.expect(SYN | ACK, by=1010, seq=0, ack=1, what="SYN-ACK retransmission at 1 s")
    s.inject(ACK, at=1100)
    s.inject(ACK | PSH, payload=b"x", at=1110)
    s.expect(ACK, by=1610, ack=2, what="ACK of data")


@case("RFC 9293 3.10.7.4 (data both ways in ESTABLISHED)")
def data_both_ways(s):
    s.establish()
    s.service_send(b"hello from the service", at=20)
    s.expect(ACK | PSH, by=30, seq=1, payload=b"hello from the service", what="service data")
    s.inject(ACK | PSH, payload=b"reply", at=40)
    s.expect(ACK, by=540, ack=6, check=lambda seg: None if s.rel_seq(seg) == 23 else "seq %d" % s.rel_seq(seg))
    s.require(bytes(s.service) == b"reply", "the service got %r" % bytes(s.service))


@case("RFC 9293 3.6 (passive close: CLOSE-WAIT, LAST-ACK, CLOSED)")
def passive_close(s):
    s.establish()
    s.inject(FIN | ACK, at=20)
    s.expect(ACK, by=520, ack=2, what="ACK of the FIN")
    s.advance(530)
    s.require(s.service_eof, "the service was not told of the client's FIN")
    s.service_close(at=600)
    fin = s.expect(FIN | ACK, by=610, seq=1, ack=2, what="our FIN (LAST-ACK)")
    s.inject(ACK, at=620, ack=2)
    s.advance(700)
    s.require(s.service_closed is not None, "the connection did not close after the last ACK")
    s.inject(ACK | PSH, payload=b"late", at=800, ack=2)
    s.expect(RST, by=810, seq=2, what="RST for a segment after CLOSED (RFC 9293 3.10.7.1)")
    del fin


@case("RFC 9293 3.6 (active close: FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT)")
def active_close(s):
    s.establish()
    s.service_close(at=20)
    s.expect(FIN | ACK, by=30, seq=1, ack=1, what="our FIN (FIN-WAIT-1)")
    s.inject(ACK, at=40, ack=2)
    s.expect_none(until=100, what="FIN-WAIT-2")
    s.inject(FIN | ACK, at=100, ack=2)
    s.expect(ACK, by=600, seq=2, ack=2, what="ACK of the client's FIN (TIME-WAIT)")
    # RFC 9293 3.10.7.4: in TIME-WAIT a retransmitted FIN is acknowledged again and the 2 MSL timer restarts.
    s.inject(FIN | ACK, at=1000, seq=1, ack=2)
    s.expect(ACK, by=1500, seq=2, ack=2, what="ACK of the retransmitted FIN in TIME-WAIT")


@case("RFC 9293 3.6 (simultaneous close: CLOSING, TIME-WAIT)")
def simultaneous_close(s):
    s.establish()
    s.service_close(at=20)
    s.expect(FIN | ACK, by=30, seq=1, ack=1, what="our FIN")
    s.inject(FIN | ACK, at=25, ack=1)          # the client's FIN crosses ours: it does not acknowledge it
    s.expect(ACK, by=35, seq=2, ack=2, what="ACK of the client's FIN (CLOSING)")
    s.inject(ACK, at=40, ack=2)
    s.expect_none(until=3000, what="TIME-WAIT: our FIN acknowledged, nothing to resend")


@case("RFC 9293 3.10.7.4 (RST with RCV.NXT resets the connection)")
def reset_in_established(s):
    s.establish()
    s.inject(RST, at=20, advance=False)
    s.advance(30)
    s.require(s.service_closed is not None, "the connection survived an exact RST")
    s.expect_none(until=2000, what="no answer to a RST")


@case("RFC 9293 3.10.7.1 (segment for no connection: RST seq=SEG.ACK)")
def rst_for_unknown_connection(s):
    seg = s.segment(ACK, seq=100, payload=b"x", port=s.port)
    s.s_iss = 0x12345678
    s.inject(ACK, at=0, seq=100, ack=500, payload=b"x")
    s.expect(RST, by=10, seq=500, what="RST <SEQ=SEG.ACK>")
    del seg


@case("RFC 9293 3.10.7.1 (SYN to a port without a service: RST|ACK)")
def syn_to_closed_port(s):
    s.port = 7          # no service on the echo port by default
    s.syn(at=0)
    s.expect(RST | ACK, by=10, ack=1, what="RST|ACK <ACK=SEG.SEQ+1>")


@case("RFC 9293 3.10.7.4 (out-of-window data is dropped and answered with an ACK)")
def out_of_window_data(s):
    s.establish(window=65535)
    s.inject(ACK | PSH, at=20, seq=1 + 10000000, payload=b"junk", advance=False)
    s.expect(ACK, by=30, ack=1, what="duplicate ACK for an unacceptable segment")
    s.require(not s.service, "out-of-window data reached the service")


# -- RFC 5961 ------------------------------------------------------------------------------------

@case("RFC 5961 3.2 (in-window RST: challenge ACK, the connection survives)")
def rst_in_window_challenge_ack(s):
    s.establish()
    s.inject(RST, at=20, seq=1 + 100, advance=False)
    s.expect(ACK, by=30, seq=1, ack=1, what="challenge ACK")
    s.require(s.service_closed is None, "an in-window (not exact) RST closed the connection")
    s.inject(ACK | PSH, payload=b"still here", at=40)
    s.expect(ACK, by=540, ack=11, what="the connection carries on")


@case("RFC 5961 3.2 (RST outside the window is dropped silently)")
def rst_out_of_window(s):
    s.establish()
    s.inject(RST, at=20, seq=1 + 0x40000000, advance=False)
    s.expect_none(until=600, what="nothing for an out-of-window RST")
    s.require(s.service_closed is None, "an out-of-window RST closed the connection")


@case("RFC 5961 4.2 (SYN in ESTABLISHED: challenge ACK)")
def syn_in_established(s):
    s.establish()
    s.inject(SYN, at=20, seq=0 + 5000, advance=False, mss=1460)
    s.expect(ACK, by=30, seq=1, ack=1, what="challenge ACK")
    s.require(s.service_closed is None, "a SYN in ESTABLISHED closed the connection")
    s.require(s.connects == 1, "a SYN in ESTABLISHED opened another service connection")


@case("RFC 5961 5.2 (ACK of data never sent: ACK, and the segment is dropped)")
def ack_of_unsent_data(s):
    s.establish()
    s.inject(ACK | PSH, at=20, ack=1 + 100000, payload=b"blind")
    s.expect(ACK, by=30, seq=1, ack=1, what="ACK for SEG.ACK > SND.NXT")
    s.require(not s.service, "data with an ACK of unsent data reached the service: %r" % bytes(s.service))


# -- RFC 6298 ------------------------------------------------------------------------------------

def _first_data(s, n=100):
    s.service_send(bytes(n), at=100)
    return s.expect(ACK | PSH, by=110, seq=1, length=n, what="data")


@case("RFC 6298 2 and 5 (retransmission at the RTO, not before; RTO >= SRTT + 4 RTTVAR)")
def rto_first_retransmission(s):
    s.establish()                       # one sample: 10 ms, so RTO = max(min RTO, 10 + 4 * 5)
    _first_data(s)
    s.expect(ACK | PSH, by=100 + 60000, seq=1, length=100, what="retransmission")
    t = s.last_time()
    s.require(t >= 100 + 30, "retransmitted %d ms after sending, below SRTT + 4*RTTVAR" % (t - 100))


@case("RFC 6298 5.5 (the RTO doubles on each expiry while nothing shows the line carries)")
def rto_backoff(s):
    s.establish()
    # A client whose link answered the Core's probe would show the line carries, and a Core may then keep the
    # RTO for a few expiries (pyslirp's does: net/tcp/conn.py, "A noisy line"): here the line is silent.
    s.peer.answer_echoes = False
    _first_data(s)
    times = [100]
    for i in range(4):
        s.expect(ACK | PSH, by=100 + 60000, seq=1, what="retransmission %d" % (i + 1))
        times.append(s.last_time())
    gaps = [b - a for a, b in zip(times, times[1:])]
    for a, b in zip(gaps, gaps[1:]):
        s.require(abs(b - 2 * a) <= 2, "retransmission gaps %s do not double" % gaps)


@case("RFC 6298 5.3 (a new ACK restarts the timer)")
def rto_restart_on_ack(s):
    s.establish(mss=1000)               # RTT sample 10 ms
    s.service_send(bytes(2000), at=100)
    s.expect(ACK | PSH, by=110, seq=1, length=1000, what="first segment")
    s.expect(ACK | PSH, by=110, seq=1001, length=1000, what="second segment")
    # The first is acknowledged 150 ms later: a second sample (150 ms), so RTO >= SRTT + 4 RTTVAR = 182 ms
    # (2.3: SRTT 27.5, RTTVAR 38.75), and the timer restarts now (5.3) instead of running from 100 ms.
    s.inject(ACK, at=250, ack=1001)
    s.expect(ACK | PSH, by=250 + 60000, seq=1001, what="retransmission of the second")
    t = s.last_time()
    s.require(t - 250 >= 180, "retransmitted %d ms after the ACK at 250 ms: the timer was not restarted, or the "
              "RTO is below SRTT + 4 RTTVAR" % (t - 250))


# -- RFC 7323 window scaling --------------------------------------------------------------------

@case("RFC 7323 2.2 (window scale offered only in answer, SYN-ACK window unscaled)")
def window_scale_negotiated(s):
    s.syn(at=0, window=65535, wscale=7)
    synack = s.expect(SYN | ACK, by=10, ack=1)
    s.require(synack.wscale is not None, "the SYN-ACK carries no window scale though the SYN did")
    s.require(synack.wscale <= 14, "window scale %d above 14 (RFC 7323 2.3)" % synack.wscale)


@case("RFC 7323 1.3 (no window scale in the SYN: none in the SYN-ACK)")
def window_scale_absent(s):
    s.syn(at=0, window=65535)
    synack = s.expect(SYN | ACK, by=10, ack=1)
    s.require(synack.wscale is None, "the SYN-ACK carries a window scale the SYN did not offer")


@case("RFC 7323 2.3 (the client's scaled window bounds what is sent)")
def window_scale_applied(s):
    s.establish(window=65535, wscale=4, mss=1000)
    s.window = 100                                  # 100 << 4 = 1600 bytes
    s.inject(ACK, at=20)
    s.service_send(bytes(20000), at=30)
    sent = sum(len(seg.payload) for _, seg in s.drain(40))
    s.require(0 < sent <= 1600, "%d bytes sent into a window of 1600 (100 << 4)" % sent)
    s.require(sent > 100, "%d bytes: the window was not scaled" % sent)


# -- RFC 2018 SACK -------------------------------------------------------------------------------

@case("RFC 2018 2 (SACK-permitted answered only when offered)")
def sack_permitted(s):
    s.syn(at=0, sack=True)
    synack = s.expect(SYN | ACK, by=10, ack=1)
    s.require(synack.sack_permitted, "SACK-permitted offered, not answered")


@case("RFC 2018 4 (out-of-order data: a duplicate ACK with the SACK block)")
def sack_blocks_for_out_of_order(s):
    s.establish(sack=True)
    s.inject(ACK | PSH, at=20, seq=1 + 100, payload=bytes(100), advance=False)
    expect_block = ((s.c_iss + 101) & MASK, (s.c_iss + 201) & MASK)

    def has_block(seg):
        if not seg.sack_blocks or seg.sack_blocks[0] != expect_block:
            return "SACK blocks %s, expected the first to be %s" % (seg.sack_blocks, expect_block)
        return None
    s.expect(ACK, by=30, ack=1, check=has_block, what="duplicate ACK with a SACK block")
    s.inject(ACK | PSH, at=40, seq=1, payload=bytes(100), advance=False)
    s.snd_nxt = 201
    s.expect(ACK, by=540, ack=201, what="the hole filled: everything acknowledged")
    s.require(len(s.service) == 200, "the service got %d bytes, expected 200" % len(s.service))


@case("RFC 2018 / RFC 6675 (SACKed data is not resent: the hole is)")
def sack_driven_retransmission(s):
    s.establish(sack=True, mss=500)
    s.service_send(bytes(2000), at=20)
    segs = [seg for _, seg in s.drain(30) if seg.payload]
    s.require(len(segs) >= 4, "%d segments of a 2000-byte send with MSS 500" % len(segs))
    base = s.s_iss
    # The first segment is lost; the client SACKs the next three with duplicate ACKs (DupThresh 3).
    for k in range(1, 4):
        right = (base + 1 + 500 * (k + 1)) & MASK
        s.inject(ACK, at=40 + k, ack=1, sack_blocks=((((base + 501) & MASK), right),))
    seg = s.expect(ACK | PSH, by=60, seq=1, what="fast retransmission of the hole")
    s.require(len(seg.payload) <= 500, "retransmission of %d bytes past the hole" % len(seg.payload))
    rest = [x for _, x in s.drain(70) if x.payload]
    again = [x for x in rest if _seq_lt(x.seq, (base + 2001) & MASK) and not _seq_lt(x.seq, (base + 501) & MASK)]
    s.require(not again, "SACKed data was resent: %s" % [s.describe(x) for x in again])


# ============================================================================ the runner

def verify_tcp_compliance(core_factory, cases=None, port=22):
    """Run the compliance cases against fresh cores from ``core_factory()``: a :class:`ComplianceReport`.

    ``cases``: names to run (default: all of :data:`CASES`); ``port``: a port the core maps to a service.
    A case that raises anything but :class:`CaseFailed` fails with the exception's text.
    """
    results = []
    for name, rfc, fn in CASES:
        if cases is not None and name not in cases:
            continue
        try:
            script = Script(core_factory(), port=port)
            fn(script)
        except CaseFailed as exc:
            results.append(CaseResult(name, rfc, False, str(exc)))
        except Exception as exc:        # the core under test misbehaved: a failed case, not a crash
            results.append(CaseResult(name, rfc, False, "%s: %s" % (type(exc).__name__, exc)))
        else:
            if script.bad:
                results.append(CaseResult(name, rfc, False, "malformed segments: %s" % script.bad[:3]))
            else:
                results.append(CaseResult(name, rfc, True))
    return ComplianceReport(tuple(results))
