"""ICMP policy for the stack: echo replies, when an error may be sent, rate limits.

Theory of operation: the stack answers Echo Requests to its own address with
Echo Replies (RFC 792: "the source and destination addresses are simply
reversed, the type code changed to 0, and the checksum recomputed"; the
identifier, sequence number and data are returned unchanged, RFC 1122
3.2.2.6).  It sends three kinds of error: Destination Unreachable
(host: a datagram for an address that is not ours; protocol; port: a UDP
datagram to a port nobody serves) and Time Exceeded (reassembly timeout).

:func:`may_send_error` holds RFC 1122 3.2.2's list of datagrams that must
never provoke an ICMP error; ``ERROR_RATE`` and ``ERROR_BURST`` size the
token bucket (net/ratelimit.py, re-exported here for the stack) that limits
how many errors leave per second.
"""

from pyslirp.net.ratelimit import TokenBucket
from pyslirp.wire import icmp as icmp_wire
from pyslirp.wire.ipv4 import PROTO_ICMP, is_multicast_or_broadcast, is_unicast

__all__ = ["ERROR_BURST", "ERROR_RATE", "TokenBucket", "echo_reply", "may_send_error", "quote"]

# Defaults for the error rate limit: a burst of 20, then 10 per second (RFC 1812 4.3.2.8 asks for a limit; the
# numbers are in the range Linux uses for icmp_ratelimit).
ERROR_RATE = 10
ERROR_BURST = 20


def may_send_error(ip):
    """Whether RFC 1122 3.2.2 allows an ICMP error about datagram ``ip`` (an Ipv4Repr).

    "An ICMP error message MUST NOT be sent as the result of receiving:
     * an ICMP error message, or
     * a datagram destined to an IP broadcast or IP multicast address, or
     * a datagram sent as a link-layer broadcast [none on PPP], or
     * a non-initial fragment, or
     * a datagram whose source address does not define a single host."
    Returns (allowed, reason) where reason names the rule that forbids it.
    """
    if ip.frag_offset != 0:
        return False, "non_initial_fragment"
    if is_multicast_or_broadcast(ip.dst):
        return False, "to_broadcast"
    if not is_unicast(ip.src):
        return False, "from_non_unicast"
    if ip.protocol == PROTO_ICMP:
        # Unknown ICMP types count as errors: answering them could start an error loop.
        if not ip.payload or ip.payload[0] not in icmp_wire.QUERY_TYPES:
            return False, "about_icmp_error"
    return True, ""


def echo_reply(request):
    """The Echo Reply to an Echo Request (IcmpRepr): same identifier, sequence number and data."""
    return icmp_wire.IcmpRepr(icmp_wire.TYPE_ECHO_REPLY, 0, request.rest, request.payload)


def quote(ip):
    """The part of datagram ``ip`` an error message carries: its header and the first bytes of its data.

    RFC 792 asks for the header and 64 bits of data; RFC 1812 4.3.2.3 allows up to 576 bytes in all, which lets
    the client match the error to a connection by more than the ports.
    """
    header = ip.emit_header()
    room = icmp_wire.MAX_QUOTE - len(header)
    return header + ip.payload[:max(room, 8)]
