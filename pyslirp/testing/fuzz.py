"""Seeded random frames and packets into a ``Core`` whose link is up: only counted drops may happen.

Theory of operation
-------------------
``fuzz_core(count, seed)`` brings a Core's link up in memory (compliance.LinkPeer) and feeds it ``count`` inputs
drawn from one ``random.Random(seed)``, each one of:

* raw line noise: random bytes with flags and escapes among them (the deframer's input);
* a well-framed PPP frame (good FCS) of a random protocol (IP, VJ, CCP, LCP, IPCP, PAP, CHAP, unknown ones) with
  a random body; LCP and IPCP frames are limited to codes that do not end the session (a Terminate-Request or a
  Configure-Request is legal and renegotiates, which is not what is being measured: the link is brought up again
  when it went down anyway, and ``relinks`` counts it);
* an IPv4 packet: a valid header with a random protocol and payload, or a valid TCP/UDP/ICMP packet with a few
  bits flipped anywhere (headers, checksums, lengths);
* a TCP segment to a mapped port with random flags, sequence numbers, window and options.

The service side answers as the runtime would (a connection request is connected or refused at random, data is
consumed at once), the clock advances a few milliseconds per input with the core's timers run when due, and the
output is drained after every input, so the core's buffers stay bounded.  Any exception out of the core is a
failure, recorded with the input's kind; at the end the link must still be up and answer a ping.  The report sums
the drops the link and the stack counted, by reason.
"""

import random
import struct
from dataclasses import dataclass, field

from pyslirp.net.events import ServiceConnect, ServiceSend
from pyslirp.wire import hdlc, ppp as wppp
from pyslirp.wire.errors import ParseError
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import Ipv4Repr
from pyslirp.wire.tcp import TcpRepr

from .compliance import LinkPeer, default_core

PROTOCOLS = (wppp.PROTO_IP, wppp.PROTO_VJC, wppp.PROTO_VJUC, wppp.PROTO_CCP, 0x00FD, wppp.PROTO_LCP,
             wppp.PROTO_IPCP, wppp.PROTO_PAP, wppp.PROTO_CHAP, 0x0057, 0x8057, 0x4021, 0x0001)
# Codes that leave the session up: no Configure-* or Terminate-*, nor Code-Reject or Protocol-Reject (a reject of
# a code or protocol LCP needs ends the link, RFC 1661 5.6/5.7: legal, but not what is measured here).
SAFE_CP_CODES = (9, 10, 11, 12, 13, 14, 0, 15, 200, 255)
ECHO_PORT_SERVICE = 22


@dataclass(frozen=True)
class FuzzReport:
    inputs: int
    exceptions: tuple = field(default=())      # (kind, repr of the exception), the first few
    drops: dict = field(default_factory=dict)  # reason -> count, summed over the link's and the stack's counters
    relinks: int = 0                           # times the link had to be brought up again
    link_up: bool = False
    ping: bool = False

    @property
    def ok(self):
        return not self.exceptions and self.link_up and self.ping


def _counters(core):
    out = {}
    for owner in (core.link, core.stack):
        for name, value in getattr(owner, "counters", {}).items():
            if isinstance(value, int):
                out[name] = out.get(name, 0) + value
    return out


class _Fuzzer(object):
    def __init__(self, core, rng):
        self.core = core
        self.rng = rng
        self.peer = LinkPeer(core)
        self.peer.bring_up()
        self.now = self.peer.now
        self.conns = set()

    # -- inputs -----------------------------------------------------------------------
    def noise(self):
        rng = self.rng
        data = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
        for _ in range(rng.randrange(0, 4)):
            data[rng.randrange(len(data))] = rng.choice((0x7E, 0x7D))
        return bytes(data)

    def frame(self):
        rng = self.rng
        proto = rng.choice(PROTOCOLS)
        body = rng.getrandbits(8 * 40).to_bytes(40, "big")[:rng.randrange(0, 41)]
        if proto in (wppp.PROTO_LCP, wppp.PROTO_IPCP, wppp.PROTO_CCP) and len(body) >= 4:
            code = rng.choice(SAFE_CP_CODES)
            length = len(body) if rng.random() < 0.7 else rng.randrange(0, 0x10000)
            body = bytes([code]) + body[1:2] + struct.pack("!H", length) + body[4:]
        if proto == wppp.PROTO_IP and rng.random() < 0.7:
            body = self.ip_packet()
        return hdlc.encode_frame(wppp.build_frame(proto, body, acfc=rng.random() < 0.5, pfc=rng.random() < 0.3))

    def ip_packet(self):
        rng = self.rng
        src, dst = self.peer.remote_ip, self.peer.local_ip
        kind = rng.randrange(4)
        if kind == 0:
            payload = rng.getrandbits(8 * 32).to_bytes(32, "big")[:rng.randrange(0, 33)]
            return Ipv4Repr(src, dst, rng.randrange(256), payload).emit()
        if kind == 1:
            return self.tcp_packet()
        if kind == 2:
            icmp = IcmpRepr(rng.randrange(256), rng.randrange(4), struct.pack("!HH", rng.getrandbits(16), 1),
                            b"ping").emit()
            return Ipv4Repr(src, dst, 1, icmp).emit()
        good = bytearray(self.tcp_packet())
        for _ in range(rng.randrange(1, 4)):
            good[rng.randrange(len(good))] ^= 1 << rng.randrange(8)
        return bytes(good)

    def tcp_packet(self):
        rng = self.rng
        src, dst = self.peer.remote_ip, self.peer.local_ip
        options = {}
        if rng.random() < 0.3:
            options["mss"] = rng.randrange(0x10000)
        if rng.random() < 0.2:
            options["wscale"] = rng.randrange(16)
        if rng.random() < 0.2:
            options["sack_permitted"] = True
        if rng.random() < 0.2:
            a = rng.getrandbits(32)
            options["sack_blocks"] = ((a, (a + rng.randrange(1, 3000)) & 0xFFFFFFFF),)
        if rng.random() < 0.2:
            options["timestamp"] = (rng.getrandbits(32), rng.getrandbits(32))
        payload = bytes(rng.randrange(0, 100))
        seg = TcpRepr(40000 + rng.randrange(8), rng.choice((ECHO_PORT_SERVICE, ECHO_PORT_SERVICE, 7, 80)),
                      rng.getrandbits(32), rng.getrandbits(32), rng.randrange(64), rng.randrange(0x10000),
                      payload=payload, **options)
        try:
            raw = seg.emit(src, dst)
        except (ParseError, ValueError, OverflowError, struct.error):
            raw = seg.payload
        return Ipv4Repr(src, dst, 6, raw).emit()

    # -- the runtime's side ---------------------------------------------------------------
    def service(self):
        core = self.core
        for ev in core.take_events():
            if isinstance(ev, ServiceConnect):
                if self.rng.random() < 0.8:
                    core.service_connected(ev.conn_id, self.now)
                    self.conns.add(ev.conn_id)
                else:
                    core.service_failed(ev.conn_id, "refused", self.now)
            elif isinstance(ev, ServiceSend):
                core.service_written(ev.conn_id, len(ev.data), self.now)

    def step(self, kind):
        rng = self.rng
        if kind == 0:
            data = self.noise()
        elif kind == 1:
            data = self.frame()
        else:
            data = hdlc.encode_frame(wppp.build_frame(wppp.PROTO_IP, self.ip_packet()))
        self.core.receive_serial(data, self.now)
        self.service()
        self.core.take_serial_output(-1, self.now)
        self.now += rng.randrange(0, 5)
        deadline = self.core.get_timer()
        if deadline is not None and deadline <= self.now:
            self.core.handle_timer(self.now)
            self.service()
            self.core.take_serial_output(-1, self.now)

    def ping(self):
        self.peer.now = self.now
        self.peer.ip = []
        echo = IcmpRepr(8, 0, b"\x12\x34\x00\x01", b"after the fuzz").emit()
        self.peer.send_ip(Ipv4Repr(self.peer.remote_ip, self.peer.local_ip, 1, echo).emit())
        for raw in self.peer.take_ip():
            try:
                ip = Ipv4Repr.parse(raw)
                if ip.protocol == 1 and IcmpRepr.parse(ip.payload).type == 0:
                    return True
            except ParseError:
                continue
        return False


def fuzz_core(count, seed=0, core_factory=None, max_exceptions=20):
    """Feed ``count`` seeded random inputs to a Core (``core_factory()``, default pyslirp's defaults): FuzzReport."""
    rng = random.Random(seed)
    core = (core_factory or default_core)()
    fz = _Fuzzer(core, rng)
    exceptions = []
    relinks = 0
    done = 0
    for i in range(count):
        done += 1
        kind = rng.randrange(3)
        try:
            fz.step(kind)
        except Exception as exc:    # the finding: the core let something escape
            if len(exceptions) < max_exceptions:
                exceptions.append((("noise", "frame", "ip")[kind], "%s: %s" % (type(exc).__name__, exc)))
        if not core.is_up:
            relinks += 1
            fz.peer = LinkPeer(core, fz.now)
            try:
                fz.peer.bring_up()
            except Exception as exc:
                exceptions.append(("relink", "%s: %s" % (type(exc).__name__, exc)))
                break
    link_up = core.is_up
    ping = False
    if link_up:
        try:
            ping = fz.ping()
        except Exception as exc:
            exceptions.append(("ping", "%s: %s" % (type(exc).__name__, exc)))
    return FuzzReport(inputs=done, exceptions=tuple(exceptions), drops=_counters(core), relinks=relinks,
                      link_up=link_up, ping=ping)
