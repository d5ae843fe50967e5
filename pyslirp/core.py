"""The sans-IO core: one PPP link and one IP stack glued together.

Theory of operation: the stack thread owns exactly one :class:`Core` and is
the only caller of its methods.  Raw serial bytes go into the
:class:`~pyslirp.ppp.link.PPPLink` (which owns the HDLC deframer, LCP, auth
and IPCP); the link's events are dispatched at once:

* ``IPReceived``  -> ``IPStack.receive_packet``;
* ``LinkUp``      -> logged; the stack is told the session's MTU (the smaller
  of ours and the peer's MRU, RFC 1661 section 6.1: the peer's MRU is what we
  may send) and whether the link compresses TCP/IP headers (Van Jacobson:
  the stack then leaves TCP timestamps out of its SYN-ACKs), and reported
  to the runtime;
* ``LinkDown``    -> ``IPStack.reset`` (every connection dropped, its service
  socket closed through ``ServiceClose`` events) when the session was closed
  administratively, else ``IPStack.suspend`` (see below); logged, reported;
* anything else (``AuthResult``) -> reported to the runtime.

Sessions that survive the line: when the link goes down without an
administrative close (``LinkDown.administrative`` false: the client's pppd
killed and restarted, the line cut, the adapter unplugged, an echo timeout)
the stack keeps every TCP flow and its service socket for ``resume_grace``
seconds (``StackConfig.resume_grace``; 0 resets at once, as before).  At the
next ``LinkUp`` the flows carry on (``IPStack.resume``) if the new session is
the same client: the same addresses and, with authentication, the same user;
otherwise they are reset at once (``resumes_refused``).  The grace timer
itself is the stack's: past it the stack resets by itself.  Our own close
(SIGTERM) and the client's Terminate-Request reset at once, suspended or not;
``lower_down`` (the serial device gone) is a lost line like any other.

Output is pulled, never pushed: :meth:`take_serial_output` first takes the
link's own framed control frames (LCP/IPCP/auth, urgent), then asks the stack
for IP datagrams within ``budget`` bulk bytes (control and small packets
always come) and frames each through ``PPPLink.send_ip``.  The budget is
spent in line bytes: the stack counts the IP bytes of the bulk datagrams it
hands out, the frames the link makes of them are what the line carries, and
when compression (Van Jacobson, Deflate) made them smaller, what is left of
the budget is asked for again, so that the bytes queued toward the line
stay near the budget whatever the compression ratio.  The runtime calls
it when the line has room and passes as budget the room left under a small
bound on the bytes queued toward the line (its writer queue plus the OS
output queue), so what is returned is what goes onto the line next, in that
order, and bulk data waits in the TCP send buffers (where it is backpressure
on the service sockets) instead of in front of keystrokes.  The runtime also
reports the line's measured drain rate (:meth:`set_line_rate`), which the
stack uses to size segments and windows to the line, and takes the round
trips the stack's connections measured (:meth:`take_delay_signal`), which
slow a paced line whose real queue grows out of sight.

Timers: :meth:`get_timer` is the earlier of the link's and the stack's
deadlines; :meth:`handle_timer` runs whichever is due.  Times are integer
milliseconds supplied by the caller.

Flow reports from the runtime (service threads, UDP sockets, the pinger, the DNS
relay) are passed through to the stack as they come.

A silent line under a stalled flow: a line cut that the keepalive does not
notice (shorter than ``lcp_echo_interval * lcp_echo_failure``) leaves the
link up while TCP backs off its retransmission timer, and nothing tells it
when the line carries again: the client, a receiver, has nothing to send.
So while some connection is backed off (``IPStack.stalled``) and nothing was
received for PROBE_MS, the Core asks the link for an LCP Echo-Request every
PROBE_MS (``PPPLink.probe``, about 20 bytes each).  A probe answered within
PROBE_MS shows the line is fine: what is lost is lost to its noise, so the
backed-off timers are undone and run again with the estimate's RTO
(``IPStack.line_answers``, conn.py "A noisy line"), and there is no more
probing until no connection is backed off.  Once a probe went unanswered the
line is taken to be out; the first bytes received after that are the line's
"connected again" and the
stack retransmits at once (``IPStack.link_alive``), instead of after a
backed-off timeout.  A backed-off connection (each stack timer that finds
one, probing or not), a fast retransmit (``IPStack.take_lost_frame_signal``,
after input) and the line coming back after an outage also tell the
link that the client may have lost a frame (``PPPLink.peer_lost_frame``): its Van Jacobson
decompressor then discards the slot's packets until an uncompressed one, so
ours are sent whole for a while and the next loss costs a fast retransmit
(a short while after a retransmission, ``suspected=True``: it may have been
spurious, and whole headers cost a busy line 8%: ppp/ipcp.py);
with Deflate, CCP restarts both histories with a Reset-Ack, so that the
retransmission is not compressed against the lost original.  The other way
round, the client's CCP Reset-Request (``PPPLink.take_peer_drop_signal``)
shows that its decompressor dropped our frames from a lost one on: a
connection with nothing new to send retransmits its first unacknowledged
segment after the Reset-Ack (``IPStack.link_dropped``), where a tail loss
would otherwise wait for the retransmission timer.

Reload: :meth:`reconfigure` hands a new stack configuration to the stack
(``IPStack.reconfigure``); the PPP link is not renegotiated.

Contract notes: ``Core(link_config, stack_config, rng, tap=None, link=None,
stack=None)``: ``link`` and ``stack`` may be injected by tests;
``take_serial_output`` takes an optional ``now`` (default: the time of the
latest call) for ``PPPLink.send_ip`` and ``allow_one_over`` (see the method);
``set_line_rate(bytes_per_second)`` passes the measured line rate to the
stack; at ``LinkUp`` the stack is told the session MTU (``IPStack.set_mtu``).
"""

import logging

from pyslirp.net import refusal
from pyslirp.ppp.events import AuthResult, IPReceived, LinkDown, LinkUp
from pyslirp.timers import earliest

log = logging.getLogger("pyslirp.core")

# take_serial_output asks the stack again while compression leaves budget over, at most this often.
MAX_TAKE_ROUNDS = 8
PROBE_MS = 500              # a silent line under a stalled flow is probed this often (see above)


class Core(object):
    def __init__(self, link_config, stack_config, rng, tap=None, link=None, stack=None):
        """Build the PPPLink and IPStack (``link``/``stack`` may be given, for tests)."""
        self.link_config = link_config
        self.stack_config = stack_config
        self._rng = rng
        if link is None:
            from pyslirp.ppp.link import PPPLink
            link = PPPLink(link_config, rng, tap=tap)
        self.link = link
        if stack is None:
            from pyslirp.net.stack import IPStack
            stack = IPStack(stack_config, rng)
        self.stack = stack
        self._stack_mtu = stack_config.mtu     # the MTU the stack was last told (or built with)
        self._stack_live = False        # the stack may hold connections (since LinkUp)
        self._events = []
        self._now = 0
        self.session_mtu = None
        self.line_rate = None
        self.sessions = 0
        self.counters = {"ip_out_link_down": 0, "resumes_refused": 0}
        self._auth_user = None          # the user authenticated in the current LCP session
        self._session = None            # (local_ip, remote_ip, user) of the session whose flows the stack holds
        self._last_rx = None            # ms: the latest bytes from the line
        self._probe_at = None           # ms: next look at a stalled flow on a silent line
        self._probing = False           # an Echo-Request went out and was not answered yet
        self._outage = False            # one went unanswered: the next bytes mean the line is back
        self._line_ok = False           # one was answered in time: no probing until nothing is stalled
        self.probes = 0

    # -- the line -------------------------------------------------------------

    def lower_up(self, now):
        """The serial line is ready: the link starts negotiating."""
        self._now = now
        self.link.lower_up(now)
        self._pump(now)

    def lower_down(self, now):
        """The serial line is gone (device unplugged, EOF): a lost line (the flows may be kept)."""
        self._now = now
        self.link.lower_down(now)
        self._pump(now)

    def receive_serial(self, data, now):
        """Raw bytes read from the serial line."""
        self._now = now
        self._last_rx = now
        self.link.receive_data(data, now)
        self._pump(now)
        if self.link.take_peer_drop_signal() and self._stack_live:
            # The client's decompressor dropped our frames since a lost one: a tail loss is retransmitted after
            # the Reset-Ack the link has just queued, not after a retransmission timeout.
            self.stack.link_dropped(now)
        if self._stack_live and self.stack.take_lost_frame_signal():
            # A fast retransmit is queued: the client lost a frame of ours (ppp/ccp.py, "Resynchronising"),
            # or took a duplicate ACK for a loss: suspected only (ppp/ipcp.py, SUSPECT_PACKETS).
            self.link.peer_lost_frame(now, suspected=True)
        if self._probing:
            outage = self._outage
            self._probing = self._outage = False
            self._probe_at = None
            if not outage:
                self._line_ok = True
                if self._stack_live:
                    # The line carries both ways: the backed-off flows lose frames to its noise (conn.py,
                    # "A noisy line"): their timers run again with the estimate's RTO.
                    self.stack.line_answers(now)
            elif self._stack_live:
                # What went into the dead line is lost: the retransmissions now follow a resync.
                self.link.peer_lost_frame(now)
                self.stack.link_alive(now)

    def close(self, now, reason="pyslirp is shutting down"):
        """Administrative close: LCP Terminate-Request (see ``is_dead``)."""
        self._now = now
        self.link.close(reason, now)
        self._pump(now)
        self._reset_stack(now)

    @property
    def is_dead(self):
        """The link is terminated and idle: safe to exit after close()."""
        return self.link.is_dead

    @property
    def is_up(self):
        return self.link.is_up

    # -- timers ----------------------------------------------------------------

    def get_timer(self):
        """The earliest deadline (absolute ms) of the link and the stack, or None."""
        return earliest(earliest(self.link.get_timer(), self.stack.get_timer()), self._probe_at)

    def handle_timer(self, now):
        """Run whatever is due at ``now``."""
        self._now = now
        deadline = self.link.get_timer()
        if deadline is not None and deadline <= now:
            self.link.handle_timer(now)
            self._pump(now)
        deadline = self.stack.get_timer()
        if deadline is not None and deadline <= now:
            self.stack.handle_timer(now)
            if self._stack_live:
                stalled = self.stack.stalled()
                if stalled:
                    # A retransmission timeout (probing or not): the client may have lost a frame of ours,
                    # and its VJ decompressor with it the slot (ppp/ipcp.py, NOISY_PACKETS), its Deflate
                    # decompressor its step (ppp/ccp.py, "Resynchronising"); or the timeout was spurious (an
                    # RTO learnt on small segments while the first bulk ones queue): suspected only.
                    self.link.peer_lost_frame(now, suspected=True)
                if self._probe_at is None:
                    if self._line_ok and not stalled:
                        self._line_ok = False
                    elif stalled and not self._line_ok:
                        self._probe_at = now
        if self._probe_at is not None and self._probe_at <= now:
            self._probe(now)

    def _probe(self, now):
        """A stalled flow: probe the line if it has been silent for PROBE_MS (see "A silent line")."""
        if not (self._stack_live and self.link.is_up and self.stack.stalled()):
            self._probe_at = None
            self._probing = self._outage = False
            return
        silent_since = self._last_rx if self._last_rx is not None else now - PROBE_MS
        if now - silent_since >= PROBE_MS and self.link.probe(now):
            if self._probing:
                self._outage = True     # the previous probe went unanswered
            self.probes += 1
            self._probing = True
            self._probe_at = now + PROBE_MS
        else:
            self._probe_at = max(now + 1, silent_since + PROBE_MS)

    # -- output and events -----------------------------------------------------

    def take_serial_output(self, budget, now=None, allow_one_over=False):
        """Framed bytes for the line: [(urgent, bytes)], link control first, in the order they must go.

        ``budget`` bounds the bulk IP bytes taken from the stack (control and
        small packets always come); ``allow_one_over``: with a positive budget
        the first bulk datagram may exceed it (``IPStack.take_packets``).
        """
        if now is None:
            now = self._now
        link = self.link
        out = list(link.take_output())
        remaining = budget
        for _ in range(MAX_TAKE_ROUNDS):
            if allow_one_over:
                packets = self.stack.take_packets(remaining, allow_one_over=True)
            else:
                packets = self.stack.take_packets(remaining)
            if not packets:
                return out
            if not link.is_up:
                self.counters["ip_out_link_down"] += len(packets)
                return out
            asked = cost = 0
            for urgent, packet in packets:
                if not urgent:
                    asked += len(packet)
                if link.send_ip(packet, now):
                    for frame_urgent, frame in link.take_output():
                        out.append((urgent or frame_urgent, frame))
                        if not urgent:
                            cost += len(frame)
                else:
                    self.counters["ip_out_link_down"] += 1
            # The stack counted the bulk datagrams' IP bytes; the line carries their frames.  When
            # compression made those cheaper, the budget left over is asked for again.
            if budget < 0 or not asked or cost >= asked:
                return out
            remaining -= cost
            if remaining <= 0:
                return out
            allow_one_over = False
        return out

    @property
    def wants_room(self):
        """Output is waiting for the line's room: something the last ``take_serial_output`` may have held back
        for want of budget (``IPStack.wants_room``; the link's own frames never wait for it).  False: more
        room on the line brings nothing new to send."""
        return self.stack.wants_room

    def reconfigure(self, stack_config, now):
        """A reloaded configuration for the IP stack (IPStack.reconfigure): new flows follow it, established
        ones carry on.  The link is not touched: what would need a new negotiation (addresses, MTU,
        authentication) is not part of ``stack_config``'s reloadable values."""
        self._now = now
        self.stack.reconfigure(stack_config, now)
        self.stack_config = stack_config

    def set_line_rate(self, rate):
        """The line's measured drain rate in bytes/s (the runtime measures it; see runtime/serialio.py)."""
        self.line_rate = rate
        self.stack.set_line_rate(rate)

    def take_delay_signal(self):
        """The smallest round trip (ms) the stack's TCP connections measured across the link since the last
        call, or None (``IPStack.take_delay_signal``): the runtime paces a line it cannot see by it."""
        return self.stack.take_delay_signal()

    def take_events(self):
        """Link events of interest (LinkUp, LinkDown, AuthResult), then the stack's service events."""
        events = self._events
        self._events = []
        stack_events = self.stack.take_events()
        if stack_events:
            events.extend(stack_events)
        return events

    # -- service threads' reports (pass-throughs) --------------------------------

    def service_connected(self, conn_id, now, target=0, failures=()):
        self._now = now
        self.stack.service_connected(conn_id, now, target, failures)

    def service_failed(self, conn_id, reason, now, outcome=refusal.RESET, failures=()):
        self._now = now
        self.stack.service_failed(conn_id, reason, now, outcome, failures)

    def service_data(self, conn_id, data, now):
        self._now = now
        self.stack.service_data(conn_id, data, now)

    def service_eof(self, conn_id, now):
        self._now = now
        self.stack.service_eof(conn_id, now)

    def service_written(self, conn_id, nbytes, now):
        """True when the report gave the stack something to send or to report (a window update): a report
        that did not needs no flush."""
        self._now = now
        return self.stack.service_written(conn_id, nbytes, now)

    def service_error(self, conn_id, reason, now):
        self._now = now
        self.stack.service_error(conn_id, reason, now)

    def udp_data(self, flow_id, payload, now):
        self._now = now
        self.stack.udp_data(flow_id, payload, now)

    def udp_error(self, flow_id, outcome, now):
        self._now = now
        self.stack.udp_error(flow_id, outcome, now)

    def ping_reply(self, flow_id, seq, payload, now):
        self._now = now
        self.stack.ping_reply(flow_id, seq, payload, now)

    def flow_failed(self, flow_id, reason, outcome, now):
        self._now = now
        self.stack.flow_failed(flow_id, reason, outcome, now)

    def dns_answer(self, payload, now):
        self._now = now
        self.stack.dns_answer(payload, now)

    def dns_failed(self, upstream_id, now):
        self._now = now
        self.stack.dns_failed(upstream_id, now)

    # -- internals --------------------------------------------------------------

    def _pump(self, now):
        """Dispatch the link's events until it has none."""
        while True:
            events = self.link.take_events()
            if not events:
                return
            for event in events:
                if isinstance(event, IPReceived):
                    if self._stack_live:
                        self.stack.receive_packet(event.packet, now)
                elif isinstance(event, LinkUp):
                    self._link_up(event, now)
                    self._events.append(event)
                elif isinstance(event, LinkDown):
                    self._link_down(event, now)
                    self._events.append(event)
                else:
                    if isinstance(event, AuthResult) and event.ok:
                        self._auth_user = event.user
                    self._events.append(event)

    def _link_up(self, event, now):
        mtu = self.stack_config.mtu
        if event.mtu and event.mtu < mtu:
            mtu = event.mtu
        self.session_mtu = mtu
        self.sessions += 1
        if mtu != self._stack_mtu:
            self.stack.set_mtu(mtu)
            self._stack_mtu = mtu
        self.stack.set_header_compression(event.header_compression)
        session = (event.local_ip, event.remote_ip, self._auth_user)
        if self.stack.suspended:
            if session == self._session:
                self.stack.resume(now)
            else:
                self.counters["resumes_refused"] += 1
                log.info("the new session is not the one that was lost (%s): closing its connections",
                         "another user" if session[:2] == self._session[:2] else "other addresses")
                self.stack.reset(now, "link down, another client")
        self._session = session
        self._stack_live = True
        log.debug("session up: %s <-> %s, mtu %d", event.local_ip, event.remote_ip, mtu)

    def _link_down(self, event, now):
        log.debug("link down: %s%s", event.reason, " (administrative)" if event.administrative else "")
        self._auth_user = None
        if event.administrative:
            self._reset_stack(now)
        elif self._stack_live:
            self._stack_live = False
            self.stack.suspend(now)

    def _reset_stack(self, now):
        if self._stack_live or self.stack.suspended:
            self._stack_live = False
            self.stack.reset(now)
