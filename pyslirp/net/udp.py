"""UDP delivery: the table of local UDP ports and what serves each.

Theory of operation: the stack parses and checksums each datagram
(wire/udp.py) and hands it to :meth:`UdpMux.deliver`.  A port with a bound
handler gets the datagram; a port without one makes ``deliver`` return False
and the stack answers ICMP Port Unreachable (RFC 1122 4.1.3.1: "If a
datagram arrives addressed to a UDP port for which there is no pending
LISTEN call, UDP SHOULD send an ICMP Port Unreachable message").

This is the one place where UDP services (a DNS forwarder, port mappings)
attach: ``stack.udp.bind(port, handler)``.  A handler is a callable
``handler(mux, datagram, now)`` taking a :class:`UdpDatagram`; it answers the
client with ``mux.send(local_port, client_port, payload)`` (queued, bounded,
and wrapped into IPv4 by the stack's ``take_packets``) and may hand events to
the runtime with ``mux.post_event(event)``.  Handlers are sans-IO like the
rest of the stack.
"""

from collections import deque
from dataclasses import dataclass

MAX_QUEUED = 64


@dataclass(frozen=True)
class UdpDatagram:
    src_port: int       # the client's port
    dst_port: int       # our port
    payload: bytes


class UdpMux(object):
    def __init__(self, max_queued=MAX_QUEUED):
        self.handlers = {}          # local port -> handler(mux, UdpDatagram, now)
        self.max_queued = max_queued
        self._out = deque()         # (local port, client port, payload) toward the client
        self._events = []
        self.delivered = 0
        self.sent = 0
        self.dropped_out = 0

    def bind(self, port, handler):
        if port in self.handlers:
            raise ValueError("UDP port %d already bound" % port)
        self.handlers[port] = handler

    def unbind(self, port):
        self.handlers.pop(port, None)

    def deliver(self, datagram, now):
        """Hand a datagram to its port's handler; False when nobody serves the port."""
        handler = self.handlers.get(datagram.dst_port)
        if handler is None:
            return False
        self.delivered += 1
        handler(self, datagram, now)
        return True

    def send(self, local_port, client_port, payload):
        """Queue a datagram for the client; False (and counted) when the queue is full."""
        if len(self._out) >= self.max_queued:
            self.dropped_out += 1
            return False
        self._out.append((local_port, client_port, bytes(payload)))
        return True

    def post_event(self, event):
        self._events.append(event)

    def take_datagrams(self):
        out = list(self._out)
        self._out.clear()
        self.sent += len(out)
        return out

    def take_events(self):
        events, self._events = self._events, []
        return events

    def clear(self):
        self._out.clear()
        self._events = []
