"""IPv4 input and output for the stack: header checks, reassembly, datagram building, ICMP errors. Sans-IO.

Theory of operation
-------------------
The stack above (net/stack.py: flows, the service bridge, output scheduling)
does not care about the address family; everything that does lives here, in
:class:`Ipv4Layer`, so that an IPv6 layer with the same interface can stand
beside it later.

Input (:meth:`Ipv4Layer.input`), every drop counted by reason through the
stack's ``drop`` callback:

1. parse and validate the header (wire/ipv4.py: version, IHL, lengths,
   checksum; link padding trimmed, options skipped by IHL);
2. the source must be the client (RFC 1122 3.2.1.3: only the peer lives on a
   point-to-point link; anything else is spoofed and dropped);
3. the destination must not be a broadcast or multicast address (dropped:
   nothing here answers them); which other addresses are served --
   loopback and 0/8 included, which net/flows.py refuses unless
   ``outbound.allow`` names them -- is the flow policy's business, not this
   layer's;
4. fragments are reassembled (net/frag.py, bounded, 30 s timeout).

Output: :meth:`datagram` wraps a transport payload into one IPv4 datagram
with TTL 64, the next identification and DF (every TCP segment fits the MTU
by construction); :meth:`datagrams` does the same for payloads that may not
fit (an echo reply to a reassembled ping, a large UDP answer) and fragments
them without DF (RFC 791 3.2).

ICMP errors (:meth:`icmp_error`) obey RFC 1122 3.2.2 (net/icmp.py
``may_send_error``) and share one token bucket (RFC 1812 4.3.2.8 asks for a
rate limit).  Their source is the gateway (``local_ip``) unless the caller
names another (an error relayed for a NAT'd flow comes from the outside host
that sent it).
"""

from dataclasses import replace

from pyslirp.net import icmp as icmp_policy
from pyslirp.net.frag import Reassembler, fragment
from pyslirp.net.ratelimit import TokenBucket
from pyslirp.wire import icmp as icmp_wire
from pyslirp.wire.errors import ParseError
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import PROTO_ICMP, Ipv4Repr, ip_bytes, ip_str, is_multicast_or_broadcast

TTL = 64
HEADER_LEN = 20                 # IPv4 header without options


class Ipv4Layer(object):
    def __init__(self, local_ip, remote_ip, mtu, rng, drop, counters):
        self.local = ip_bytes(local_ip)         # the gateway's address (ours)
        self.remote = ip_bytes(remote_ip)       # the client's
        self.mtu = mtu
        self.header_len = HEADER_LEN
        self._drop = drop                       # drop(reason, detail=""): count and log
        self._counters = counters               # the stack's counters dict
        self._ident = rng.randrange(0x10000)
        self.frag = Reassembler()
        self._icmp_bucket = TokenBucket(icmp_policy.ERROR_RATE, icmp_policy.ERROR_BURST)
        self.icmp_rate_limited = 0
        self.unreachable_sent = 0

    def _count(self, name):
        self._counters[name] = self._counters.get(name, 0) + 1

    # -- input ---------------------------------------------------------------------

    def input(self, packet, now):
        """The validated (and reassembled) datagram, or None when it was dropped or is incomplete."""
        try:
            ip = Ipv4Repr.parse(packet)
        except ParseError as e:
            self._drop("ip_" + e.reason, e.detail)
            return None
        if ip.src != self.remote:
            self._drop("ip_bad_src", ip_str(ip.src))
            return None
        if is_multicast_or_broadcast(ip.dst):
            self._drop("ip_broadcast", ip_str(ip.dst))
            return None
        if ip.is_fragment:
            self._count("ip_fragments")
            ip = self.frag.add(ip, now)
        return ip

    def get_timer(self):
        return self.frag.get_timer()

    def handle_timer(self, now):
        """Expired reassemblies: RFC 1122 3.3.2, Time Exceeded (reassembly) when fragment zero had arrived."""
        out = []
        for first in self.frag.handle_timer(now):
            packet = self.icmp_error(first, IcmpRepr.time_exceeded(icmp_wire.CODE_REASSEMBLY_EXCEEDED,
                                                                   icmp_policy.quote(first)), now)
            if packet is not None:
                out.append(packet)
        return out

    def clear(self):
        self.frag.clear()

    # -- output --------------------------------------------------------------------

    def _next_ident(self):
        ident = self._ident
        self._ident = (ident + 1) & 0xFFFF
        return ident

    def repr(self, protocol, payload, src, dst, dont_fragment=True):
        return Ipv4Repr(src=src, dst=dst, protocol=protocol, payload=payload, ttl=TTL,
                        ident=self._next_ident(), dont_fragment=dont_fragment)

    def datagram(self, protocol, payload, src, dst):
        """One datagram with DF, or None (counted) if it would exceed the MTU."""
        if len(payload) + HEADER_LEN > self.mtu:
            self._drop("ip_oversize_out", "%d > %d" % (len(payload) + HEADER_LEN, self.mtu))
            return None
        return self.repr(protocol, payload, src, dst).emit()

    def datagrams(self, protocol, payload, src, dst):
        """A datagram that may exceed the MTU: DF when it fits, else fragments (RFC 791 3.2)."""
        ip = self.repr(protocol, payload, src, dst)
        if ip.total_len <= self.mtu:
            return [ip.emit()]
        self._count("ip_fragmented_out")
        return [piece.emit() for piece in fragment(replace(ip, dont_fragment=False), self.mtu)]

    def icmp_error(self, ip, message, now, src=None):
        """The ICMP error ``message`` about datagram ``ip``, if RFC 1122 3.2.2 and the rate limit allow it."""
        allowed, why = icmp_policy.may_send_error(ip)
        if not allowed:
            self._count("icmp_error_suppressed_" + why)
            return None
        if not self._icmp_bucket.allow(now):
            self.icmp_rate_limited += 1
            return None
        if message.type == icmp_wire.TYPE_DEST_UNREACHABLE:
            self.unreachable_sent += 1
        return self.repr(PROTO_ICMP, message.emit(), src or self.local, ip.src).emit()

    def unreachable(self, ip, code, now, src=None):
        return self.icmp_error(ip, IcmpRepr.dest_unreachable(code, icmp_policy.quote(ip)), now, src)
