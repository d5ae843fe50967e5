"""SimulatedClient: a full PPP + TCP client (the client role's core) against a server Core, in memory.

Theory of operation
-------------------
Tests that want a real peer for a :class:`~pyslirp.core.Core` -- LCP, the
authentication, IPCP, VJ and Deflate, TCP connections opened from the far
side -- without threads, sockets or a clock use this.  It holds two sans-IO
cores: ``client``, a :class:`~pyslirp.client_core.ClientCore` (the same code
as ``pyslirp.py client``), and ``server``, the Core under test (built with
defaults unless given).  Time is ``now``, integer milliseconds, moved only by
:meth:`advance` / :meth:`run`: each step exchanges every byte both cores
have for the line (one direction, then the other, until both are quiet),
dispatches their events, and runs the timers that are due, earliest first.

The server's service connections (``ServiceConnect``) are served in memory
by ``services``: a dict from port (or ``(host, port)``) to a factory of
objects with ``data(bytes) -> bytes`` (the reply, possibly empty) and
``eof() -> bool`` (True: close our side too); :class:`EchoService` echoes.  A
port with no entry is refused as a dead service would be (``service_failed``:
the server answers the SYN with a RST); :data:`NEVER_CONNECTS` as the value
leaves the service connecting forever (the server never answers the SYN).

Names: with the server's DNS forwarder on, :meth:`resolve` has the client
look a name up over the link; the server's upstream is ``names`` (a dict
name -> IPv4 address; anything else is NXDOMAIN) and the answer lands in
``resolved``.

The client's flows (:meth:`connect`) are :class:`SimFlow` values that
collect what happened: ``connected``, ``refused`` (the reason), ``received``
bytes, ``closed`` (the reason), ``peer_fin``; :meth:`SimFlow.send` and
:meth:`SimFlow.shutdown` act on them.  Every byte received is taken at once
(``service_written``), so windows never stall.

:meth:`inject` hands frames or packets to either side as if they came from
the line: ``bytes`` starting with an IPv4 version nibble are framed as a PPP
IP frame, other ``bytes`` are taken as one PPP frame (protocol and
information, without the HDLC framing), and :class:`RawBytes` goes in as it
is.  The :class:`Recorder` (``recorder``) keeps every PPP frame that crossed
the line (injected ones too), with its time, direction ("in" to the server,
"out" from it) and the decoded protocol, so that a test can assert what
crossed the link.
"""

import random
from dataclasses import dataclass

from pyslirp.client_core import ClientCore
from pyslirp.core import Core
from pyslirp.net import refusal
from pyslirp.net.client_stack import ClientStackConfig, FlowClosed, FlowConnected, FlowRefused, Resolved
from pyslirp.net.events import (DnsQuery, ServiceClose, ServiceConnect, ServiceReadCredit, ServiceSend,
                                ServiceShutdown)
from pyslirp.ppp.link import LinkConfig
from pyslirp.wire import dns as wdns
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

DEFAULT_ACCM = 0xFFFFFFFF
MAX_RECORDED = 65535            # the recorder's deframers take frames up to this long
NEVER_CONNECTS = "never connects"   # a ``services`` value: the service's socket never connects
MAX_EXCHANGE_ROUNDS = 64        # line exchanges within one step before time must move on
LINE_EXCHANGE_ROUNDS = 8        # the same over a paced line (LineSimulatedClient), where a round moves less


def client_link_config(**overrides):
    """A client-role LinkConfig: ask for any address, accept any server address, no dialogue."""
    base = dict(role="client", local_ip="0.0.0.0", remote_ip="0.0.0.0", answer="none")
    base.update(overrides)
    return LinkConfig(**base)


@dataclass(frozen=True)
class RawBytes:
    """Bytes for :meth:`SimulatedClient.inject` that go onto the line exactly as given."""
    data: bytes


@dataclass(frozen=True)
class Frame:
    """One PPP frame that crossed the link: ``direction`` "in" (to the server) or "out" (from it)."""
    at: int
    direction: str
    frame: bytes
    protocol: int


class Recorder(object):
    """Every PPP frame on the line, in order: "in" travels to the server, "out" from it.

    The line's bytes are deframed here (each direction with its own deframer), so what is recorded is
    what crossed the line, injected frames included, whichever server Core is under test.  ``protocol``
    is -1 for a frame whose PPP header does not parse.
    """

    def __init__(self, clock):
        self._clock = clock
        self.frames = []
        self._deframers = {"in": hdlc.Deframer(mru=MAX_RECORDED, accm=0),
                           "out": hdlc.Deframer(mru=MAX_RECORDED, accm=0)}

    def feed(self, direction, data):
        for frame in self._deframers[direction].feed(data):
            self.record(direction, frame)

    def record(self, direction, frame):
        try:
            protocol = wppp.parse_frame(frame)[0]
        except ParseError:
            protocol = -1
        self.frames.append(Frame(self._clock(), direction, bytes(frame), protocol))

    def of(self, protocol, direction=None):
        return [f for f in self.frames if f.protocol == protocol and (direction is None or f.direction == direction)]

    def clear(self):
        self.frames = []


class EchoService(object):
    """An in-memory service that sends back what it receives and closes when the client does."""

    def __init__(self):
        self.received = bytearray()

    def data(self, data):
        self.received += data
        return data

    def eof(self):
        return True


class SimFlow(object):
    """One flow the simulated client opened (see the module docstring)."""

    def __init__(self, sim, flow_id, host, port):
        self._sim = sim
        self.flow_id = flow_id
        self.host = host
        self.port = port
        self.connected = False
        self.refused = None
        self.closed = None
        self.peer_fin = False
        self.received = bytearray()
        self.credit = 0
        self._outbox = bytearray()
        self._eof_pending = False

    @property
    def done(self):
        return self.refused is not None or self.closed is not None

    def send(self, data):
        """Queue bytes from the 'local application'; they go as the stack grants credit."""
        self._outbox += data
        self._sim._feed(self)

    def shutdown(self):
        """The local application's EOF (after what was queued)."""
        self._eof_pending = True
        self._sim._feed(self)

    def abort(self):
        self._sim.client.service_error(self.flow_id, "aborted", self._sim.now)


class _ServerConn(object):
    def __init__(self, service):
        self.service = service
        self.credit = 0
        self._outbox = bytearray()
        self._eof_pending = False


def _pump(core, conn_id, end, now):
    """A local end's queued bytes (a SimFlow's or a service's) to ``core`` as far as its read credit goes,
    then its EOF once every byte went: how either side's socket thread would read."""
    n = min(len(end._outbox), end.credit)
    if n:
        data = bytes(end._outbox[:n])
        del end._outbox[:n]
        end.credit -= n
        core.service_data(conn_id, data, now)
    if end._eof_pending and not end._outbox:
        end._eof_pending = False
        core.service_eof(conn_id, now)


class SimulatedClient(object):
    """A ClientCore against a server Core in memory, with a fake clock (see the module docstring)."""

    def __init__(self, server=None, services=None, link_config=None, stack_config=None, seed=0,
                 server_link_config=None, server_stack_config=None, names=None):
        self.now = 0
        self.recorder = Recorder(lambda: self.now)
        self.client = ClientCore(link_config or client_link_config(), stack_config or ClientStackConfig(),
                                 random.Random(seed))
        if server is None:
            from pyslirp.net.stack import StackConfig
            server = Core(server_link_config or LinkConfig(), server_stack_config or StackConfig(),
                          random.Random(seed + 1))
        self.server = server
        self.services = {} if services is None else services
        self.names = {} if names is None else names     # the "upstream DNS": name -> IPv4 text
        self.resolved = {}                              # query_id -> Resolved, for resolve()
        self._next_query = 1
        self.flows = {}
        self.client_events = []
        self.server_events = []
        self._server_conns = {}
        self._next_flow = 1
        self._started = False

    # -- time ----------------------------------------------------------------------------

    def start(self):
        """Both ends see the line come up."""
        if not self._started:
            self._started = True
            self.server.lower_up(self.now)
            self.client.lower_up(self.now)
            self._exchange()

    def advance(self, ms):
        """Move the clock ``ms`` on, running every due timer and exchange on the way."""
        self.run(until=None, timeout=ms)

    def run(self, until=None, timeout=60000):
        """Step until ``until()`` is true (returns True) or ``timeout`` ms passed (returns False/None)."""
        self.start()
        end = self.now + timeout
        while True:
            self._exchange()
            if until is not None and until():
                return True
            deadline = _earliest(self.client.get_timer(), self.server.get_timer())
            if deadline is None or deadline > end:
                self.now = end
                self._exchange()
                return until() if until is not None else None
            self.now = max(self.now, deadline)
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)

    def link_up(self, timeout=30000):
        """Run until both ends report the link up."""
        return self.run(lambda: self.client.is_up and self.server.is_up, timeout)

    # -- flows -------------------------------------------------------------------------------

    def connect(self, host, port):
        """Open a flow from the client to ``host``:``port`` over the link (a :class:`SimFlow`)."""
        flow = SimFlow(self, self._next_flow, host, port)
        self._next_flow += 1
        self.flows[flow.flow_id] = flow
        self.client.open_flow(flow.flow_id, host, port, self.now)
        self._exchange()
        return flow

    def resolve(self, name):
        """Ask the client to look ``name`` up over the link; returns the query id (see ``resolved``)."""
        query_id = self._next_query
        self._next_query += 1
        self.client.resolve(query_id, name, self.now)
        self._exchange()
        return query_id

    def _feed(self, flow):
        if flow.done:
            return
        _pump(self.client, flow.flow_id, flow, self.now)

    # -- injection ---------------------------------------------------------------------------

    def inject(self, items, to="server"):
        """Hand frames or packets to ``to`` ("server" or "client") as if the line carried them."""
        core = self.server if to == "server" else self.client
        if isinstance(items, (bytes, bytearray, RawBytes)):
            items = [items]
        for item in items:
            if isinstance(item, RawBytes):
                data = item.data
            else:
                item = bytes(item)
                if item and item[0] >> 4 == 4:
                    item = wppp.build_frame(wppp.PROTO_IP, item)
                data = hdlc.encode_frame(item, DEFAULT_ACCM)
            self.recorder.feed("in" if to == "server" else "out", data)
            core.receive_serial(data, self.now)
        self._exchange()

    # -- the line and the events ----------------------------------------------------------------

    def _exchange(self):
        for _ in range(MAX_EXCHANGE_ROUNDS):
            moved = False
            for src, dst, direction in ((self.client, self.server, "in"), (self.server, self.client, "out")):
                for _, data in src.take_serial_output(-1, self.now):
                    moved = True
                    self.recorder.feed(direction, data)
                    dst.receive_serial(data, self.now)
            moved = self._client_events() or moved
            moved = self._server_events() or moved
            if not moved:
                return

    def _client_events(self):
        events = self.client.take_events()
        now = self.now
        for event in events:
            self.client_events.append(event)
            if isinstance(event, Resolved):
                self.resolved[event.query_id] = event
                continue
            flow = self.flows.get(getattr(event, "conn_id", getattr(event, "flow_id", None)))
            if flow is None:
                continue
            if isinstance(event, FlowConnected):
                flow.connected = True
            elif isinstance(event, FlowRefused):
                flow.refused = event.reason
            elif isinstance(event, FlowClosed):
                flow.closed = event.reason
            elif isinstance(event, ServiceSend):
                flow.received += event.data
                self.client.service_written(flow.flow_id, len(event.data), now)
            elif isinstance(event, ServiceReadCredit):
                flow.credit += event.nbytes
                self._feed(flow)
            elif isinstance(event, ServiceShutdown):
                flow.peer_fin = True
            elif isinstance(event, ServiceClose):
                flow.closed = flow.closed or event.reason
        return bool(events)

    def _server_events(self):
        events = self.server.take_events()
        now = self.now
        for event in events:
            self.server_events.append(event)
            conn_id = getattr(event, "conn_id", None)
            if isinstance(event, DnsQuery):
                self.server.dns_answer(self._dns_answer(event.payload), now)
                continue
            if isinstance(event, ServiceConnect):
                route = event.route
                factory = self.services.get((route.host, route.port), self.services.get(route.port))
                if factory is NEVER_CONNECTS:
                    continue                # the service socket never connects: the SYN goes unanswered
                if factory is None:
                    self.server.service_failed(conn_id, "connection refused", now, refusal.RESET)
                else:
                    self._server_conns[conn_id] = _ServerConn(factory())
                    self.server.service_connected(conn_id, now)
                continue
            conn = self._server_conns.get(conn_id)
            if conn is None:
                continue
            if isinstance(event, ServiceSend):
                self.server.service_written(conn_id, len(event.data), now)
                reply = conn.service.data(event.data)
                if reply:
                    conn._outbox += reply
            elif isinstance(event, ServiceReadCredit):
                conn.credit += event.nbytes
            elif isinstance(event, ServiceShutdown):
                if conn.service.eof():
                    conn._eof_pending = True
            elif isinstance(event, ServiceClose):
                self._server_conns.pop(conn_id, None)
                continue
            _pump(self.server, conn_id, conn, now)
        return bool(events)


    def _dns_answer(self, query):
        """The server's upstream DNS, in memory: ``names`` answers A questions, anything else is NXDOMAIN."""
        msg = wdns.Message.parse(query)
        question = msg.questions[0]
        name = wdns.name_text(question.name).rstrip(".").lower()
        address = self.names.get(name)
        head = query[:msg.question_end]
        if address is None or question.qtype != wdns.TYPE_A:
            rcode = wdns.RCODE_NXDOMAIN if address is None else wdns.RCODE_NOERROR
            return wdns.HEADER.pack(msg.id, wdns.FLAG_QR | wdns.FLAG_RD | wdns.FLAG_RA | rcode, 1, 0, 0, 0) + \
                head[wdns.HEADER_LEN:]
        answer = b"\xc0\x0c" + wdns.RR_FIXED.pack(wdns.TYPE_A, 1, 60, 4) + bytes(int(x) for x in address.split("."))
        return wdns.HEADER.pack(msg.id, wdns.FLAG_QR | wdns.FLAG_RD | wdns.FLAG_RA, 1, 1, 0, 0) + \
            head[wdns.HEADER_LEN:] + answer


class LineSimulatedClient(SimulatedClient):
    """A ``SimulatedClient`` whose line is two paced directions (``pyslirp.testing.linkemu.LineDirection``).

    ``down`` carries the server's frames, ``up`` the client's.  The server is asked for output only while fewer
    than ``server_bound`` bytes wait for the line (as the runtime's writer bounds its queue, about 10 ms of
    line time at 115200), and is told the line's rate (``line_rate``, bytes a second); the client writes
    everything at once, as pppd does into its tty buffer.  Frames lost or damaged on a direction are whatever
    its impairments make of them.
    """

    def __init__(self, down, up, line_rate, server_bound=128, **kw):
        super().__init__(**kw)
        self.down = down
        self.up = up
        self.server_bound = server_bound
        self.queued = {"down": bytearray(), "up": bytearray()}
        self.server.set_line_rate(int(line_rate))

    def _exchange(self):
        for _ in range(LINE_EXCHANGE_ROUNDS):
            moved = False
            for line, dst in ((self.up, self.server), (self.down, self.client)):
                data = line.receive(self.now)
                if data:
                    moved = True
                    dst.receive_serial(data, self.now)
            q = self.queued["down"]
            budget = max(0, self.server_bound - len(q))
            for _, frame in self.server.take_serial_output(budget, self.now, allow_one_over=budget > 0):
                q += frame
            for _, frame in self.client.take_serial_output(-1, self.now):
                self.queued["up"] += frame
            for line, q in ((self.down, self.queued["down"]), (self.up, self.queued["up"])):
                if q:
                    del q[:line.send(q, self.now)]
                else:
                    line.source_idle()
            moved = self._client_events() or moved
            moved = self._server_events() or moved
            if not moved:
                return


def _earliest(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
