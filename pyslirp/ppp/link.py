"""The PPP link: framing, the pre-PPP dialogue, the phases, the protocol table and compression (sans-IO).

Theory of operation
-------------------
:class:`PPPLink` is the server end of one PPP link.  Raw serial bytes go in
(:meth:`PPPLink.receive_data`), framed bytes come out (:meth:`take_output`,
as ``(urgent, bytes)`` pairs: control frames (LCP, IPCP, CCP, authentication)
and the answers of the pre-PPP dialogue are urgent
so that the runtime can put them ahead of queued bulk data), and events
(:mod:`pyslirp.ppp.events`) tell the owner when IP may flow.  Time is the
``now`` argument (integer milliseconds); randomness comes from ``rng``.

Phases (RFC 1661 section 3.2)::

    Dead -> Establish -> [Authenticate] -> Network -> Terminate -> Dead
     ^                                                              |
     +------------ listening for the next session <----------------+

:meth:`lower_up` gives LCP the Up and Open events: we send Configure-Requests
(Linux pppd and Windows both expect the server to).  The phase follows LCP:
This-Layer-Up enters Authenticate (when ``require_auth`` is set) or Network;
in Network IPCP gets Up and Open, and IPCP reaching Opened is ``LinkUp``.  The
session ends by the peer's Terminate-Request, by the keepalive (``lcp_echo_*``),
by failed authentication, or by IPCP giving up; the link then closes LCP and
opens it again at once, so that LCP sends its Terminate-Request, waits in
Stopping and settles in Stopped.  Stopped is the passive listening state (RFC
1661 4.2, footnote p of 4.1): "Upon reception of Configure-Request packets, an
appropriate response is sent", so a new client can dial in at any later time
and negotiation starts from scratch.  So does Max-Configure running out before
anyone answered.  Only :meth:`close` (administrative close) leaves LCP in
Closed, which refuses new sessions; ``is_dead`` then says it is safe to exit.
``LinkDown`` is emitted once per LCP session, when IPCP leaves Opened or LCP
leaves Opened, whichever comes first; it says whether the session was closed
administratively (our :meth:`close`, the peer's Terminate-Request) or the
line was lost (echo timeout, lower layer down, the peer renegotiating after
its pppd restarted), after which the owner may keep the session's flows.
A lost line can leave the peer Opened while we listen in Stopped (our
Terminate-Requests went into a cut line): when it then sends what only an
Opened peer sends (IP, IPCP, Echo-Requests), we answer with a Terminate-Ack,
at most once per restart interval (to read those frames, our receive ACCM
stays the session's after a lost line).  RFC 1661 5.2: "Reception of an
unelicited Terminate-Ack indicates that the peer is in the Closed or Stopped
states, or is otherwise in need of re-negotiation"; an Opened peer then
renegotiates (the RTA event in Opened: tld, scr), and a new session starts.

The client role (``role = "client"``, pppd's side of the link): the same
table, automata and compression stages, with the choices of a client.  LCP
asks what pppd asks by default and acknowledges the server's
Authentication-Protocol when we have credentials (:mod:`pyslirp.ppp.lcp`);
LCP Opened then runs the matching authenticating peer (:class:`~pyslirp.
ppp.auth.PapClient` or :class:`~pyslirp.ppp.auth.ChapClient`, both in the
table), whose success enters the Network phase and whose failure closes the
link (pppd exits: ``AuthResult`` not ok, then ``LinkDown``).  IPCP asks for
an address and DNS servers and takes the server's Naks
(:mod:`pyslirp.ppp.ipcp`); ``LinkUp`` carries the negotiated addresses.
There is no pre-PPP dialogue (``answer`` must be "none") and no
authentication of the server (``require_auth`` "none").

Before the first PPP frame (``answer = "auto"``): an
:class:`~pyslirp.ppp.answer.Answerer` sits in front of the deframer and
answers a client that talks first -- ``CLIENT`` (a Windows direct cable
connection) with ``CLIENTSERVER``, a modem dialler's AT commands with ``OK``
and its dial with ``CONNECT <line_speed>`` -- and passes everything from the
first flag octet on, undelayed.  Its answers go out as raw (unframed) output.
While the client is in modem command mode our frames are held back (dropped,
counted ``held_in_command_mode``; IP is refused).  A new call while LCP still
winds down the last session restarts LCP at once; a ``+++`` escape followed by
``ATH`` hangs the session up (``LinkDown("hangup")``) and LCP listens again; a
session that ends (LCP terminated) returns the answerer to waiting for the
next caller.

Framing (RFC 1662): the link owns the :class:`~pyslirp.wire.hdlc.Deframer`.
Until LCP is Opened we send with ACCM 0xFFFFFFFF (every control character
escaped: Linux ppp_async drops unescaped control characters before LCP is up)
and no compression; afterwards with the peer's ACCM, and with Address-and-
Control- and Protocol-Field-Compression for non-LCP frames when the peer asked
for them (RFC 1661 6.5/6.6: the option says the sender of the request can
receive compressed fields).  "Afterwards" starts when the peer has sent us a
frame that only an Opened peer sends (anything but LCP codes 1-7): when our
Configure-Ack is what opens LCP, the peer's kernel (Linux ppp_async) may
still be deframing with the default receive ACCM while our first IPCP request
arrives, and would drop its unescaped control characters; escaping more than
needed is always safe, so nothing is lost by waiting.  LCP Configure/Terminate/Code-Reject packets
(codes 1-7) always use the default ACCM (RFC 1662 7.1: "... LCP packets ...
codes 1 through 7 ... sent with the default ACCM" is how every implementation
reads it, so that renegotiation cannot deadlock).  Our receive ACCM (the
Deframer's ``accm``) is 0xFFFFFFFF until LCP is Opened, then the ACCM the peer
acknowledged (0): from then on the peer escapes nothing, and deleting
unescaped control characters would delete real data.  Because a whole read may
hold the frame that opens LCP followed by frames already sent with the new
ACCM, input is deframed one frame at a time until LCP is Opened.

The protocol table (:mod:`pyslirp.ppp.protocol`, pppd's ``protocols[]``):
``protocols`` lists one entry per protocol we speak -- LCP, PAP, CHAP (the
one not in use is a :class:`~pyslirp.ppp.protocol.Discard` entry, whose
packets are dropped), IPCP (whose data protocol is IP), CCP (whose data
protocol is the compressed datagram, 0x00FD; absent with ``compression =
"none"``, so that CCP gets a Protocol-Reject as pppd's ``noccp`` does) -- and the receive
path is a loop over it (RFC 1661 sections 3.4-3.5, 5.7): LCP always; before
LCP is Opened anything else is silently discarded; then each entry takes its
packets in the phases it lists (authentication from the Authenticate phase
on, the NCPs only in Network), IP reaches ``IPReceived`` once IPCP is Opened
(otherwise counted and dropped).  A protocol no entry claims (IPV6CP, IPv6,
...) gets an LCP Protocol-Reject while LCP is Opened, so that the peer stops
trying.  A Protocol-Reject *received* goes to the entry owning the protocol:
IPCP's RXJ- for IPCP or IP, a failed authentication for PAP/CHAP.  LCP
reaching Opened is ``lower_up`` for every other entry, leaving it
``lower_down``; entering the Network phase opens every NCP.  The timers are
the entries' timers.

Compression sits between the table and the framing (``transforms``, in the
order pppd and Linux apply them on output; input undoes them in reverse:
Van Jacobson on IP packets, :class:`~pyslirp.ppp.ipcp.VjStage`, RFC 1144,
then Deflate on the whole packet, :mod:`pyslirp.ppp.ccp`, RFC 1962/1979):
each stage may rewrite ``(protocol, information)`` on the way out and undo it
on the way in, or drop the packet; when a stage drops one, the stages that
follow it on input are told (``toss``), and every frame the deframer drops
(bad FCS, aborted, too long) is a ``toss`` for all of them.

Counters (plain attributes, read by the metrics): ``frames_in``,
``frames_out``, ``bytes_in``, ``bytes_out`` (unframed PPP frame octets),
``protocol_rejects_sent``, ``counters`` (drops by reason), ``lcp_counters``
(echoes sent/missed/replies, automaton drops), ``ipcp_counters``,
``auth_counters``, ``ccp_counters`` (packets and bytes compressed and
decompressed, resets), ``answer_counters`` (commands, dials, escapes,
hangups); the Deframer has its own (``deframer``).

Contract note: beyond docs/ARCHITECTURE.md, :class:`PPPLink` also exposes
``phase``, ``lcp``, ``ipcp``, ``auth``, ``ccp``, ``answer``, ``protocols``,
``transforms`` and ``deframer`` for tests and metrics.
"""

import logging
from dataclasses import dataclass
from typing import Tuple

from pyslirp.net.ratelimit import every_power_of_two
from pyslirp.ppp.answer import CALL, ESCAPED, HANGUP, Answerer
from pyslirp.ppp.auth import IDLE, ChapClient, ChapServer, PapClient, PapServer
from pyslirp.ppp.ccp import Ccp
from pyslirp.ppp.events import AuthResult, IPReceived, LinkDown, LinkUp
from pyslirp.ppp.fsm import NEGOTIATING, PEER_TERMINATED, State
from pyslirp.ppp.ipcp import NOISY_PACKETS, SUSPECT_PACKETS, Ipcp
from pyslirp.ppp.lcp import DEFAULT_ACCM, Lcp
from pyslirp.ppp.protocol import NETWORK_ONLY, ControlProtocol, Discard, Phase
from pyslirp.timers import earliest
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

log = logging.getLogger("pyslirp.ppp")

# Bound on framed bytes waiting in take_output() (IP frames beyond it are refused).
MAX_PENDING_OUTPUT = 256 * 1024

_FLAG = b"\x7e"
_LCP_BASIC_CODES = frozenset(range(1, 8))


@dataclass(frozen=True)
class LinkConfig:
    local_ip: str = "10.0.0.1"
    remote_ip: str = "10.0.0.2"
    dns: Tuple[str, ...] = ()
    mru: int = 1500                     # what we ask for / accept
    lcp_echo_interval: int = 30         # seconds, 0 disables
    lcp_echo_failure: int = 4
    max_configure: int = 10
    max_terminate: int = 2
    max_failure: int = 5
    restart_interval: int = 3           # seconds
    negotiate_magic: bool = True
    require_auth: str = "none"          # "none" | "pap" | "chap"
    secrets: Tuple[Tuple[str, str], ...] = ()   # (user, password)
    compression: str = "deflate"        # CCP: "deflate" | "none" (CCP is then Protocol-Rejected)
    vj: bool = True                     # Van Jacobson TCP/IP header compression (IPCP option 2)
    answer: str = "auto"                # "auto": answer CLIENT and AT commands before PPP; "none"
    line_speed: int = 115200            # bit/s, reported in CONNECT
    role: str = "server"                # "server" | "client" (see "The client role" above)
    user: str = ""                      # client role: the name we authenticate with, if the server asks
    password: str = ""                  # client role: its password (PAP) or secret (CHAP-MD5)


class PPPLink(object):
    """The server end of one PPP link (see the module docstring)."""

    def __init__(self, config, rng, tap=None):
        if config.require_auth not in ("none", "pap", "chap"):
            raise ValueError("require_auth must be none, pap or chap, not %r" % (config.require_auth,))
        if config.compression not in ("deflate", "none"):
            raise ValueError("compression must be deflate or none, not %r" % (config.compression,))
        if config.answer not in ("auto", "none"):
            raise ValueError("answer must be auto or none, not %r" % (config.answer,))
        if config.role not in ("server", "client"):
            raise ValueError("role must be server or client, not %r" % (config.role,))
        if config.role == "client" and (config.require_auth != "none" or config.answer != "none"):
            raise ValueError("the client role authenticates nobody and answers no dialler "
                             "(require_auth and answer must be none)")
        self.client = config.role == "client"
        self.config = config
        self._rng = rng
        self._tap = tap
        # RFC 1661 6.1: always able to receive 1500-octet frames, whatever we ask for.
        self.deframer = hdlc.Deframer(mru=max(config.mru, 1500), accm=DEFAULT_ACCM, mark_errors=True)
        self.lcp = Lcp(config, rng, self._lcp_output, self)
        self.ipcp = Ipcp(config, self._sender(wppp.PROTO_IPCP), self)
        restart_ms = config.restart_interval * 1000
        if config.require_auth == "pap":
            self.auth = PapServer(config.secrets, self._sender(wppp.PROTO_PAP), self._auth_result,
                                  wait_ms=restart_ms * config.max_configure)
        elif config.require_auth == "chap":
            self.auth = ChapServer(config.secrets, self._sender(wppp.PROTO_CHAP), self._auth_result, rng,
                                   restart_ms=restart_ms, max_challenges=config.max_configure)
        else:
            self.auth = None
        # The client role: both authenticating-peer entries; LCP's negotiation picks the one that runs.
        self.auth_clients = {}
        if self.client:
            self.auth_clients["pap"] = PapClient(config.user, config.password, self._sender(wppp.PROTO_PAP),
                                                 self._client_auth_result, restart_ms=restart_ms,
                                                 max_requests=config.max_configure)
            self.auth_clients["chap"] = ChapClient(config.user, config.password,
                                                   self._sender(wppp.PROTO_CHAP), self._client_auth_result,
                                                   wait_ms=restart_ms * config.max_configure)
        # The protocol table (pppd's protocols[]): the receive path is a loop over it.
        self.protocols = [self.lcp]
        for proto in (wppp.PROTO_PAP, wppp.PROTO_CHAP):
            client = [c for c in self.auth_clients.values() if c.protocol == proto]
            if client:
                self.protocols.append(client[0])
            elif self.auth is not None and self.auth.protocol == proto:
                self.protocols.append(self.auth)
            else:
                self.protocols.append(Discard(proto, wppp.protocol_name(proto), self._auth_unexpected))
        self.protocols.append(self.ipcp)
        # Compression stages, in output order (input runs them in reverse): VJ on IP, then CCP on the packet.
        self.transforms = [self.ipcp.vj]
        if config.compression == "deflate":
            self.ccp = Ccp(config, self._sender(wppp.PROTO_CCP), mru=self.deframer.mru)
            self.protocols.append(self.ccp)
            self.transforms.append(self.ccp)
        else:
            self.ccp = None
        self.answer = self._new_answerer()
        self.phase = Phase.DEAD
        self.is_up = False
        self.mtu = 1500
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.protocol_rejects_sent = 0
        self.sessions = 0
        self.counters = {}
        self.lcp_counters = self.lcp.counters
        self.ipcp_counters = self.ipcp.counters
        self.auth_counters = self.auth.counters if self.auth is not None else {}
        self.ccp_counters = self.ccp.counters if self.ccp is not None else {}
        self._peer_resets = 0           # CCP Reset-Requests received so far (see receive_data)
        self._peer_dropped = False      # a Reset-Request came in since take_peer_drop_signal
        self.answer_counters = self.answer.counters if self.answer is not None else {}
        self._closed = False
        self._lcp_open = False
        self._peer_open = False       # the peer has shown that its LCP is Opened too
        self._down_reported = True
        self._end_reason = None       # why we are ending the session (overrides the automaton's)
        self._nudged_at = None        # ms of the last Terminate-Ack sent to a peer that thinks it is Opened
        self._output = []
        self._pending = 0
        self._events = []
        self._todo = []
        self._now = 0
        self._log_counts = {}

    # -- the contract --------------------------------------------------------------

    @property
    def vj_active(self):
        """Van Jacobson compression runs in at least one direction (IPCP Opened with VJ negotiated).

        TCP options that change with every segment (timestamps) force uncompressed VJ headers: a stack
        on this link should not negotiate them while this is true.
        """
        return self.ipcp.vj.active

    @property
    def is_dead(self):
        """Closed administratively and LCP finished: safe to exit."""
        return self._closed and self.lcp.state in (State.INITIAL, State.CLOSED)

    def _new_answerer(self):
        if self.config.answer != "auto":
            return None
        return Answerer(speed=self.config.line_speed)

    def lower_up(self, now):
        """The serial line is ready: LCP Open and Up (we send Configure-Requests)."""
        self._now = now
        if self._closed:
            return
        self._reset_answerer()
        self.deframer.reset()
        self.deframer.accm = DEFAULT_ACCM
        self.lcp.fsm.open(now)
        self.lcp.fsm.up(now)
        self._after(now)

    def lower_down(self, now):
        """The serial line is gone."""
        self._now = now
        self._end_reason = "lower layer down"
        self.lcp.fsm.down(now, "lower layer down")
        self._end_reason = None
        self.deframer.reset()
        self.deframer.accm = DEFAULT_ACCM
        self._reset_answerer()
        self._after(now)

    def _reset_answerer(self):
        if self.answer is not None:
            self.answer = self._new_answerer()
            self.answer_counters = self.answer.counters

    def receive_data(self, data, now):
        """Raw serial bytes."""
        self._now = now
        if self.answer is not None and not self.answer.started:
            data = self.answer.receive(data, now)
            self._answer_results(now)
            if not data:
                self._after(now)
                return
        elif self.answer is not None:
            self.answer.receive(data, now)      # online: passes everything, watches for the +++ escape
        feed = self.deframer.feed
        pos = 0
        end = len(data)
        while pos < end:
            if self._lcp_open:
                chunk = data[pos:] if pos else data
                pos = end
            else:
                # One frame at a time: the frame that opens LCP changes the receive ACCM
                # for the frames after it in the same read.
                flag = data.find(_FLAG, pos)
                stop = end if flag < 0 else flag + 1
                chunk = data[pos:stop]
                pos = stop
            for frame in feed(chunk):
                if frame is None:
                    # A frame was lost on the line (bad FCS, aborted, too long or short).
                    for stage in self.transforms:
                        stage.toss()
                else:
                    self._receive_frame(frame, now)
        ccp = self.ccp
        if ccp is not None and ccp.counters["reset_requests_received"] != self._peer_resets:
            # The peer's decompressor lost one of our frames: its VJ decompressor tosses too (Linux calls
            # slhc_toss on every receive error), so our VJ compressor refreshes for a while (ipcp.py).
            self._peer_resets = ccp.counters["reset_requests_received"]
            self.ipcp.vj.peer_lost_frame()
            self._peer_dropped = True
        self._after(now)

    def send_ip(self, packet, now):
        """Frame one IPv4 datagram; False (counted) unless IPCP is Opened and there is room."""
        self._now = now
        if not self.is_up:
            self._count("ip_send_not_up")
            return False
        if self.answer is not None and self.answer.quiet:
            self._count("ip_send_command_mode")
            return False
        if self._pending > MAX_PENDING_OUTPUT:
            self._count("ip_send_output_full")
            return False
        self._emit(wppp.PROTO_IP, packet, False)
        return True

    def take_peer_drop_signal(self):
        """True once after the peer's CCP Reset-Request: its decompressor lost one of our frames and drops the
        compressed frames after it until our Reset-Ack (Linux ppp_generic), so what was in flight is lost
        (net/tcp/conn.py, "Frames the client's link layer dropped")."""
        dropped = self._peer_dropped
        self._peer_dropped = False
        return dropped

    def peer_lost_frame(self, now=None, suspected=False):
        """The peer may have lost one of our frames: VJ refreshes its slots for a while (ipcp.py,
        NOISY_PACKETS, as after a CCP Reset-Request; SUSPECT_PACKETS when ``suspected``: a TCP
        retransmission, which may have been spurious), and CCP restarts the Deflate histories with a
        Reset-Ack (ccp.py, "Resynchronising"), so that the retransmission is not compressed against the lost
        original."""
        if now is not None:
            self._now = now
        self.ipcp.vj.peer_lost_frame(SUSPECT_PACKETS if suspected else NOISY_PACKETS)
        if self.ccp is not None:
            self.ccp.resync(self._now)

    def probe(self, now):
        """An LCP Echo-Request now (LCP.probe), to learn whether the line carries; False unless LCP is Opened."""
        self._now = now
        sent = self.lcp.probe(now)
        self._after(now)
        return sent

    def close(self, reason, now):
        """Administrative close: LCP Terminate-Request, then Closed (``is_dead``)."""
        self._now = now
        if not self._closed:
            log.info("closing the link: %s", reason)
        self._closed = True
        self._end_reason = reason
        self.lcp.fsm.close(now, reason)
        self._end_reason = None
        if self.auth is not None and self.auth.state != IDLE:
            self.auth.stop()
        self._after(now)

    def get_timer(self):
        answer = self.answer.get_timer() if self.answer is not None else None
        return earliest(answer, *[entry.get_timer() for entry in self.protocols])

    def handle_timer(self, now):
        self._now = now
        if self.answer is not None:
            self.answer.handle_timer(now)
            self._answer_results(now)
        for entry in self.protocols:
            entry.handle_timer(now)
        self._after(now)

    def take_output(self):
        out = self._output
        self._output = []
        self._pending = 0
        return out

    def take_events(self):
        events = self._events
        self._events = []
        return events

    # -- input --------------------------------------------------------------------------

    def _receive_frame(self, frame, now):
        self.frames_in += 1
        self.bytes_in += len(frame)
        if self._tap is not None:
            self._tap("in", frame)
        try:
            protocol, info = wppp.parse_frame(frame)
        except ParseError as exc:
            self._drop("frame_" + exc.reason, "malformed frame: %s" % exc)
            return
        if protocol == wppp.PROTO_LCP:
            if info and info[0] not in _LCP_BASIC_CODES:
                if self._lcp_open:
                    self._peer_open = True      # Echo, Discard, ...: only sent once Opened
                else:
                    self._nudge(now)
            self.lcp.input(info, now)
            return
        if not self._lcp_open:
            # RFC 1661 3.4: "Any non-LCP packets received during this phase MUST be silently discarded."
            self._drop("before_lcp_open", "%s frame before LCP is open" % wppp.protocol_name(protocol))
            self._nudge(now)
            return
        self._peer_open = True
        for stage in reversed(self.transforms):
            decoded = stage.decompress(protocol, info)
            if decoded is None:
                for earlier in self.transforms[:self.transforms.index(stage)]:
                    earlier.toss()
                return
            protocol, info = decoded
        self._dispatch(protocol, info, now)

    def _dispatch(self, protocol, info, now):
        """The demultiplexer: a loop over the protocol table (pppd's get_input)."""
        phase = self.phase
        for entry in self.protocols:
            if entry.protocol == protocol:
                if phase in entry.phases:
                    entry.input(info, now)
                elif entry.phases == NETWORK_ONLY:
                    # RFC 1661 3.5: only LCP and authentication in the Authenticate phase.
                    self._drop("%s_before_network" % entry.name.lower(),
                               "%s frame in phase %s" % (entry.name, phase.value))
                else:
                    self._drop("%s_in_%s" % (entry.name.lower(), phase.value.lower()),
                               "%s frame in phase %s" % (entry.name, phase.value))
                return
            if entry.data_protocol == protocol:
                entry.data_input(info, now)
                return
        # RFC 1661 5.7: a protocol we do not speak gets a Protocol-Reject (only while LCP is Opened).
        if self.lcp.send_protocol_reject(protocol, info):
            self.protocol_rejects_sent += 1
            self._note("protocol_reject", "Protocol-Reject sent for %s" % wppp.protocol_name(protocol),
                       level=logging.INFO)

    def ip_received(self, packet, now):
        """IPCP's data protocol: an IP datagram (after any decompression)."""
        self.lcp.note_traffic()
        if self.is_up:
            self._events.append(IPReceived(packet))
        else:
            self._drop("ip_not_open", "IP frame while IPCP is not open")

    def _auth_unexpected(self, protocol):
        self._drop("auth_unexpected", "%s frame, not in use" % wppp.protocol_name(protocol))

    # -- output -----------------------------------------------------------------------

    def _lcp_output(self, packet):
        self._emit(wppp.PROTO_LCP, packet, True)

    def _sender(self, protocol):
        """The output callable of a control protocol: its packets are urgent."""
        def output(packet):
            self._emit(protocol, packet, True)
        return output

    def _emit(self, protocol, info, urgent):
        if self.answer is not None and self.answer.quiet:
            # The client is in modem command mode: a modem would not carry our frames now.
            self._count("held_in_command_mode")
            return
        for stage in self.transforms:
            protocol, info = stage.compress(protocol, info)
        if self._peer_open and not (protocol == wppp.PROTO_LCP and info and info[0] in _LCP_BASIC_CODES):
            his = self.lcp.his
            accm = self.lcp.send_accm
            frame = wppp.build_frame(protocol, info, acfc=his.acfc, pfc=his.pfc)
        else:
            accm = DEFAULT_ACCM
            frame = wppp.build_frame(protocol, info)
        if self._tap is not None:
            self._tap("out", frame)
        framed = hdlc.encode_frame(frame, accm)
        self.frames_out += 1
        self.bytes_out += len(frame)
        self._pending += len(framed)
        self._output.append((urgent, framed))

    # -- the pre-PPP dialogue ------------------------------------------------------------

    def _answer_results(self, now):
        answer = self.answer
        out = answer.take_output()
        if out:
            self._pending += len(out)
            self._output.append((True, out))
        for event in answer.take_events():
            if event == ESCAPED:
                self.deframer.reset()           # the "+++" it was holding as the start of a frame
            elif event == HANGUP:
                self._hangup(now)
            elif event == CALL and self.lcp.state not in (State.REQ_SENT, State.STOPPED, State.CLOSED,
                                                          State.INITIAL, State.STARTING):
                # A new call while LCP still winds the last session down (Stopping lasts a restart
                # interval) or holds one the client has forgotten: start afresh, as on a new line.
                self._hangup(now)

    def _hangup(self, now):
        """The client hung up its "modem": the session ends as if the line had dropped, and we listen again."""
        log.info("the client hung up: listening for a new call")
        self._end_reason = "hangup"
        self.lcp.fsm.down(now, "hangup")
        self._end_reason = None
        self.deframer.reset()
        self.deframer.accm = DEFAULT_ACCM
        if not self._closed:
            self.lcp.fsm.up(now)

    # -- LCP owner hooks -------------------------------------------------------------

    def _set_phase(self, phase):
        if phase != self.phase:
            log.debug("phase %s => %s", self.phase.value, phase.value)
            self.phase = phase

    def lcp_state_changed(self, old, new):
        if new in NEGOTIATING:
            self._set_phase(Phase.ESTABLISH)
        elif new in (State.CLOSING, State.STOPPING):
            self._set_phase(Phase.TERMINATE)
        elif new != State.OPENED:
            self._set_phase(Phase.DEAD)
        if self.answer is not None and new in (State.CLOSING, State.STOPPING, State.CLOSED, State.STOPPED):
            # The session is over: a client that talks before PPP is answered again.
            self.answer.session_ended()

    def lcp_starting(self):
        pass

    def lcp_up(self):
        now = self.lcp.fsm.now
        self._lcp_open = True
        self._down_reported = False
        self.sessions += 1
        self.deframer.accm = self.lcp.recv_accm
        self.mtu = self.lcp.peer_mru
        for entry in self.protocols:
            if entry is not self.lcp and isinstance(entry, ControlProtocol):
                entry.fsm.mru = self.mtu        # bounds the Code-Rejects it sends
        # pppd's link_established: the other protocols may now send.
        for entry in self.protocols:
            if entry is not self.lcp:
                entry.lower_up(now)
        if self.client:
            self._client_authenticate(now)
            return
        method = self.config.require_auth
        if method == "none":
            self._enter_network(now)
            return
        self._set_phase(Phase.AUTHENTICATE)
        if self.lcp.got.auth != method:
            log.info("the peer refused to authenticate with %s", method.upper())
            self._todo.append(lambda now: self._auth_result("", False))
            return
        self.auth.start(now)

    def lcp_down(self):
        now = self.lcp.fsm.now
        reason = self._end_reason or self.lcp.fsm.reason or "LCP down"
        self._lcp_open = False
        self._peer_open = False
        if self._closed or reason == PEER_TERMINATED:
            self.deframer.accm = DEFAULT_ACCM
        # else the peer may not know the session ended and still send with the negotiated ACCM (the
        # Terminate-Ack of _nudge needs its frames); escaped characters decode the same with either ACCM.
        # pppd's link_down: every other entry loses its lower layer, and the NCPs are closed so that the
        # next session opens them only in its own Network phase.
        for entry in self.protocols:
            if entry is not self.lcp:
                entry.lower_down(now, reason)
                if entry.ncp:
                    entry.close(now, "LCP down")
        self._report_down(reason)

    def lcp_finished(self):
        self._set_phase(Phase.DEAD)
        if self._closed:
            log.info("link terminated")
        else:
            log.debug("LCP finished: listening for a new session")

    def lcp_protocol_rejected(self, protocol):
        now = self.lcp.fsm.now
        self._note("peer_protocol_rejects", "the peer rejects protocol %s" % wppp.protocol_name(protocol),
                   level=logging.INFO)
        for entry in self.protocols:
            if entry is not self.lcp and protocol in (entry.protocol, entry.data_protocol):
                entry.protocol_rejected(now)
                return

    def lcp_looped_back(self):
        log.warning("the serial line is looped back: LCP stops negotiating and listens")
        self._todo.append(lambda now: self._end_session("looped back", now, force=True))

    def lcp_echo_failed(self):
        self._todo.append(lambda now: self._end_session("echo timeout", now))

    # -- IPCP owner hooks -------------------------------------------------------------

    def ipcp_up(self):
        self.is_up = True
        self._down_reported = False
        local, remote = self.ipcp.local_text, self.ipcp.remote_text
        log.info("link up: %s <-> %s, peer MRU %d", local, remote, self.mtu)
        self._events.append(LinkUp(local, remote, self.mtu, self.vj_active))

    def ipcp_down(self):
        self._report_down(self._end_reason or self.ipcp.fsm.reason or "IPCP down")

    def ipcp_finished(self):
        if self._lcp_open:
            self._todo.append(lambda now: self._end_session("no network protocol running", now))

    # -- sessions ------------------------------------------------------------------------

    def _enter_network(self, now):
        """pppd's start_networks: every network-layer entry of the table is opened."""
        self._set_phase(Phase.NETWORK)
        for entry in self.protocols:
            if entry.ncp:
                entry.open(now)

    def _auth_result(self, user, ok):
        now = self._now
        method = self.config.require_auth
        self._events.append(AuthResult(user, ok, method))
        if ok:
            log.info("authentication (%s) ok for %r", method.upper(), user)
            if self._lcp_open and self.phase == Phase.AUTHENTICATE:
                self._enter_network(now)
        else:
            log.info("authentication (%s) failed%s", method.upper(), " for %r" % user if user else "")
            self._todo.append(lambda now: self._end_session("authentication failed", now))

    def _client_authenticate(self, now):
        """The client role, LCP Opened: authenticate if our LCP acknowledged the server's request."""
        method = self.lcp.his.auth
        if method is None:
            self._enter_network(now)
            return
        self._set_phase(Phase.AUTHENTICATE)
        self.auth = self.auth_clients[method]
        self.auth_counters = self.auth.counters
        self.auth.start(now)

    def _client_auth_result(self, user, ok, message):
        now = self._now
        method = self.auth.method if self.auth is not None else "none"
        self._events.append(AuthResult(user, ok, method))
        if ok:
            log.info("authenticated to the server (%s) as %r", method.upper(), user)
            if self._lcp_open and self.phase == Phase.AUTHENTICATE:
                self._enter_network(now)
        elif self._lcp_open:
            # pppd as a client gives up: the session is over and we do not dial again.
            log.warning("authentication (%s) as %r failed: %s", method.upper(), user, message)
            self._todo.append(lambda now: self.close("authentication failed", now))

    def _end_session(self, reason, now, force=False):
        """Terminate LCP and go back to listening (LCP Close then Open, as pppd's persist)."""
        if self._closed or not (self._lcp_open or force):
            return
        log.info("ending the session: %s", reason)
        self._end_reason = reason
        self.lcp.fsm.close(now, reason)
        self.lcp.fsm.open(now)
        self._end_reason = None

    def _nudge(self, now):
        """The peer acts Opened while we listen: a Terminate-Ack makes it renegotiate (module docstring)."""
        if self._closed or self.lcp.fsm.state != State.STOPPED:
            return
        if self._nudged_at is not None and now - self._nudged_at < self.config.restart_interval * 1000:
            return
        self._nudged_at = now
        self._note("terminate_ack_nudges", "the peer acts as if LCP were open: Terminate-Ack sent",
                   level=logging.INFO)
        self.lcp.fsm.send(wppp.TERMINATE_ACK, self.lcp.fsm.next_id())

    def _report_down(self, reason):
        """LinkDown once per session: IPCP or LCP left Opened, whichever came first."""
        self.is_up = False
        if not self._down_reported:
            self._down_reported = True
            administrative = self._closed or reason == PEER_TERMINATED
            log.info("link down: %s", reason)
            self._events.append(LinkDown(reason, administrative))

    def _after(self, now):
        """Run work deferred out of the automata's hooks."""
        while self._todo:
            todo = self._todo
            self._todo = []
            for job in todo:
                job(now)

    # -- accounting --------------------------------------------------------------------

    def _count(self, reason):
        self.counters[reason] = self.counters.get(reason, 0) + 1
        return self.counters[reason]

    def _drop(self, reason, message):
        self._note(reason, message)

    def _note(self, reason, message, level=logging.DEBUG):
        """Count ``reason``; log its 1st, 2nd, 4th, 8th ... occurrence."""
        n = self._count(reason)
        if every_power_of_two(n):
            log.log(level, "%s (%d so far)", message, n)
