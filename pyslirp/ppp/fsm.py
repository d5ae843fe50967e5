"""The RFC 1661 option-negotiation automaton, shared by LCP and IPCP.

Theory of operation
-------------------
RFC 1661 section 4 describes one finite-state automaton that every control
protocol (LCP, IPCP, ...) runs: ten states, sixteen events, and a fixed set of
actions.  :data:`TRANSITIONS` is that section 4.1 table as data,
``(state, event) -> (actions, next state)``; a pair missing from it is one the
RFC marks '-' (illegal): it is counted, logged and ignored.

:class:`Fsm` executes the table, as pppd's ``fsm.c`` does, and leaves every
protocol-specific decision to hooks on a callbacks object
(:class:`FsmCallbacks`): ``resetci`` (start a negotiation afresh), ``addci``
(our Configure-Request options), ``ackci`` / ``nakci`` / ``rejci`` (the peer
answered our request), ``reqci`` (judge the peer's request), ``up`` /
``down`` / ``starting`` / ``finished`` (the This-Layer-Up/-Down/-Started/
-Finished actions), ``extcode`` (codes beyond 1-7, e.g. LCP Echo) and ``ser``
(Send-Echo-Reply).  There are no globals and no clock: every entry point takes
``now`` (integer milliseconds), the restart timer is a deadline exposed by
:meth:`Fsm.get_timer` and run by :meth:`Fsm.handle_timer`, and packets leave
through the injected ``output(packet)`` callable as complete control packets
(code, identifier, length, data) for the owner to frame.

Decisions the table leaves open, taken as pppd takes them:

* The *restart counter* (section 4.6) is set by ``irc`` to Max-Configure or
  Max-Terminate ("as appropriate": Max-Terminate when the same action list
  sends a Terminate-Request), decremented by every Configure-Request or
  Terminate-Request sent, and a timeout is TO+ while it is above zero, TO-
  otherwise; ``zrc`` zeroes it and still arms the timer, so that the Stopping
  state lasts one restart interval (section 4.4: "This gives the peer time to
  process the Terminate-Ack").
* The timer runs only in Closing, Stopping, Req-Sent, Ack-Rcvd and Ack-Sent
  (section 4.2); entering any other state stops it.
* A Configure-Request is RCR+ or RCR- depending on the ``reqci`` hook's
  verdict.  The two table rows only differ from the ``sca``/``scn`` action on,
  so the shared prefix (``tld``, ``irc``, ``scr``) runs first and ``reqci``
  judges the request afterwards, exactly as pppd's ``fsm_rconfreq`` does.  In
  Closed, Closing and Stopping a request is never answered and ``reqci`` is not
  consulted.
* Configure-Ack/-Nak/-Reject are only events when they answer our current
  request (section 5.2: "the Identifier field ... MUST match that of the last
  transmitted Configure-Request") and the hook accepts their contents; a
  second answer to one request is ignored.  Invalid ones are silently
  discarded (counted).  In Closed/Stopped/Closing/Stopping no answer is
  expected and the table's response (``sta`` or nothing) applies to any.
* Max-Failure (section 4.6): after that many Configure-Naks sent without an
  Ack, ``reqci`` is told to reject what it would otherwise Nak.
* Code-Reject (section 5.6): a rejected code 1-7 is catastrophic (RXJ-), any
  other (an LCP extension such as Echo) is RXJ+.
* The Restart and Passive options (footnotes r and p of the table) are not
  used: an Open in Stopped, Closing or Stopping keeps the state, and TO-
  during negotiation goes to Stopped, where a new Configure-Request from the
  peer restarts negotiation ("passive" listening).
* The order of the actions of one cell is free (section 4.1: "multiple actions
  may be implemented in any convenient order"): ``tld`` and the packet actions
  run in the old state, then the state changes, then ``tlu``/``tls``/``tlf``
  run in the new state (as pppd's up/starting/finished hooks do).

Extension beyond pppd's hook list: ``state_changed(old, new)`` is called on
every change of state (the link uses it to follow its phases).  ``trace``, when
set to a list, records the name of every action executed (tests compare it
with the RFC table).
"""

import enum
import logging

from pyslirp.net.ratelimit import every_power_of_two
from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

log = logging.getLogger("pyslirp.ppp")

CONFREQ = wppp.CONFIGURE_REQUEST
CONFACK = wppp.CONFIGURE_ACK
CONFNAK = wppp.CONFIGURE_NAK
CONFREJ = wppp.CONFIGURE_REJECT
TERMREQ = wppp.TERMINATE_REQUEST
TERMACK = wppp.TERMINATE_ACK
CODEREJ = wppp.CODE_REJECT

# The reason of a session the peer ended with a Terminate-Request (an administrative close on its side).
PEER_TERMINATED = "peer requested termination"


class State(enum.IntEnum):
    """RFC 1661 section 4.2, numbered as in the section 4.1 table."""
    INITIAL = 0
    STARTING = 1
    CLOSED = 2
    STOPPED = 3
    CLOSING = 4
    STOPPING = 5
    REQ_SENT = 6
    ACK_RCVD = 7
    ACK_SENT = 8
    OPENED = 9


STATE_NAMES = {
    State.INITIAL: "Initial", State.STARTING: "Starting", State.CLOSED: "Closed",
    State.STOPPED: "Stopped", State.CLOSING: "Closing", State.STOPPING: "Stopping",
    State.REQ_SENT: "Req-Sent", State.ACK_RCVD: "Ack-Rcvd", State.ACK_SENT: "Ack-Sent",
    State.OPENED: "Opened",
}


class Event(enum.Enum):
    """RFC 1661 section 4.3; the values are the RFC's own names."""
    UP = "Up"
    DOWN = "Down"
    OPEN = "Open"
    CLOSE = "Close"
    TO_PLUS = "TO+"
    TO_MINUS = "TO-"
    RCR_PLUS = "RCR+"
    RCR_MINUS = "RCR-"
    RCA = "RCA"
    RCN = "RCN"
    RTR = "RTR"
    RTA = "RTA"
    RUC = "RUC"
    RXJ_PLUS = "RXJ+"
    RXJ_MINUS = "RXJ-"
    RXR = "RXR"


# Actions (RFC 1661 section 4.4).
ACTIONS = ("tlu", "tld", "tls", "tlf", "irc", "zrc", "scr", "sca", "scn", "str", "sta", "scj", "ser")

_S = State
_E = Event


def _cells(*cells):
    """One event's row: ten (actions tuple, next state) cells, None where illegal."""
    assert len(cells) == 10
    return cells


def note(counters, reason, level, msg, *args):
    """Count ``reason`` and log its 1st, 2nd, 4th, 8th ... occurrence (peer-triggered logs are bounded)."""
    n = counters.get(reason, 0) + 1
    counters[reason] = n
    if every_power_of_two(n):
        log.log(level, msg + " (%d so far)", *(args + (n,)))
    return n


_ = None
# RFC 1661 section 4.1, one row per event, one cell per state 0..9.
_ROWS = {
    _E.UP: _cells(
        ((), _S.CLOSED), (("irc", "scr"), _S.REQ_SENT), _, _, _, _, _, _, _, _),
    _E.DOWN: _cells(
        _, _, ((), _S.INITIAL), (("tls",), _S.STARTING), ((), _S.INITIAL), ((), _S.STARTING),
        ((), _S.STARTING), ((), _S.STARTING), ((), _S.STARTING), (("tld",), _S.STARTING)),
    _E.OPEN: _cells(
        (("tls",), _S.STARTING), ((), _S.STARTING), (("irc", "scr"), _S.REQ_SENT),
        ((), _S.STOPPED), ((), _S.STOPPING), ((), _S.STOPPING),
        ((), _S.REQ_SENT), ((), _S.ACK_RCVD), ((), _S.ACK_SENT), ((), _S.OPENED)),
    _E.CLOSE: _cells(
        ((), _S.INITIAL), (("tlf",), _S.INITIAL), ((), _S.CLOSED), ((), _S.CLOSED),
        ((), _S.CLOSING), ((), _S.CLOSING),
        (("irc", "str"), _S.CLOSING), (("irc", "str"), _S.CLOSING), (("irc", "str"), _S.CLOSING),
        (("tld", "irc", "str"), _S.CLOSING)),
    _E.TO_PLUS: _cells(
        _, _, _, _, (("str",), _S.CLOSING), (("str",), _S.STOPPING),
        (("scr",), _S.REQ_SENT), (("scr",), _S.REQ_SENT), (("scr",), _S.ACK_SENT), _),
    _E.TO_MINUS: _cells(
        _, _, _, _, (("tlf",), _S.CLOSED), (("tlf",), _S.STOPPED),
        (("tlf",), _S.STOPPED), (("tlf",), _S.STOPPED), (("tlf",), _S.STOPPED), _),
    _E.RCR_PLUS: _cells(
        _, _, (("sta",), _S.CLOSED), (("irc", "scr", "sca"), _S.ACK_SENT),
        ((), _S.CLOSING), ((), _S.STOPPING),
        (("sca",), _S.ACK_SENT), (("sca", "tlu"), _S.OPENED), (("sca",), _S.ACK_SENT),
        (("tld", "scr", "sca"), _S.ACK_SENT)),
    _E.RCR_MINUS: _cells(
        _, _, (("sta",), _S.CLOSED), (("irc", "scr", "scn"), _S.REQ_SENT),
        ((), _S.CLOSING), ((), _S.STOPPING),
        (("scn",), _S.REQ_SENT), (("scn",), _S.ACK_RCVD), (("scn",), _S.REQ_SENT),
        (("tld", "scr", "scn"), _S.REQ_SENT)),
    _E.RCA: _cells(
        _, _, (("sta",), _S.CLOSED), (("sta",), _S.STOPPED), ((), _S.CLOSING), ((), _S.STOPPING),
        (("irc",), _S.ACK_RCVD), (("scr",), _S.REQ_SENT), (("irc", "tlu"), _S.OPENED),
        (("tld", "scr"), _S.REQ_SENT)),
    _E.RCN: _cells(
        _, _, (("sta",), _S.CLOSED), (("sta",), _S.STOPPED), ((), _S.CLOSING), ((), _S.STOPPING),
        (("irc", "scr"), _S.REQ_SENT), (("scr",), _S.REQ_SENT), (("irc", "scr"), _S.ACK_SENT),
        (("tld", "scr"), _S.REQ_SENT)),
    _E.RTR: _cells(
        _, _, (("sta",), _S.CLOSED), (("sta",), _S.STOPPED), (("sta",), _S.CLOSING),
        (("sta",), _S.STOPPING), (("sta",), _S.REQ_SENT), (("sta",), _S.REQ_SENT),
        (("sta",), _S.REQ_SENT), (("tld", "zrc", "sta"), _S.STOPPING)),
    _E.RTA: _cells(
        _, _, ((), _S.CLOSED), ((), _S.STOPPED), (("tlf",), _S.CLOSED), (("tlf",), _S.STOPPED),
        ((), _S.REQ_SENT), ((), _S.REQ_SENT), ((), _S.ACK_SENT), (("tld", "scr"), _S.REQ_SENT)),
    _E.RUC: _cells(
        _, _, (("scj",), _S.CLOSED), (("scj",), _S.STOPPED), (("scj",), _S.CLOSING),
        (("scj",), _S.STOPPING), (("scj",), _S.REQ_SENT), (("scj",), _S.ACK_RCVD),
        (("scj",), _S.ACK_SENT), (("scj",), _S.OPENED)),
    _E.RXJ_PLUS: _cells(
        _, _, ((), _S.CLOSED), ((), _S.STOPPED), ((), _S.CLOSING), ((), _S.STOPPING),
        ((), _S.REQ_SENT), ((), _S.REQ_SENT), ((), _S.ACK_SENT), ((), _S.OPENED)),
    _E.RXJ_MINUS: _cells(
        _, _, (("tlf",), _S.CLOSED), (("tlf",), _S.STOPPED), (("tlf",), _S.CLOSED),
        (("tlf",), _S.STOPPED), (("tlf",), _S.STOPPED), (("tlf",), _S.STOPPED),
        (("tlf",), _S.STOPPED), (("tld", "irc", "str"), _S.STOPPING)),
    _E.RXR: _cells(
        _, _, ((), _S.CLOSED), ((), _S.STOPPED), ((), _S.CLOSING), ((), _S.STOPPING),
        ((), _S.REQ_SENT), ((), _S.ACK_RCVD), ((), _S.ACK_SENT), (("ser",), _S.OPENED)),
}

#: ``(state, event) -> (actions, next_state)``; absent pairs are illegal ('-').
TRANSITIONS = dict(
    ((state, event), cell)
    for event, row in _ROWS.items()
    for state, cell in zip(State, row)
    if cell is not None
)

# RFC 1661 section 4.2: "The Restart timer is running in the Closing, Stopping,
# Req-Sent, Ack-Rcvd and Ack-Sent states"; it is not running in the others.
TIMER_STATES = frozenset((State.CLOSING, State.STOPPING, State.REQ_SENT, State.ACK_RCVD,
                          State.ACK_SENT))
NEGOTIATING = frozenset((State.REQ_SENT, State.ACK_RCVD, State.ACK_SENT))
_POST_ACTIONS = frozenset(("tlu", "tls", "tlf"))


class FsmCallbacks(object):
    """The protocol hooks (pppd's ``fsm_callbacks``); the defaults do nothing."""

    fsm = None    # set by Fsm

    def resetci(self):
        """A new negotiation starts: reset our wanted options."""

    def addci(self):
        """Our Configure-Request options (bytes)."""
        return b""

    def ackci(self, data):
        """The peer acknowledged our request with ``data``; False if it is not a valid Ack."""
        return True

    def nakci(self, data):
        """The peer Nak'd ``data``: adjust our wanted options; False if invalid."""
        return True

    def rejci(self, data):
        """The peer rejected ``data``: stop asking for it; False if invalid."""
        return True

    def reqci(self, data, reject_if_disagree):
        """Judge the peer's Configure-Request: ``(CONFACK|CONFNAK|CONFREJ, reply data)``.

        ``data`` is a well-formed option list; an option of a known type with a
        wrong length should be rejected.
        """
        return CONFACK, data

    def up(self):
        """This-Layer-Up."""

    def down(self):
        """This-Layer-Down."""

    def starting(self):
        """This-Layer-Started."""

    def finished(self):
        """This-Layer-Finished."""

    def extcode(self, code, ident, data):
        """A code beyond 1-7; True if handled, False to Code-Reject it."""
        return False

    def ser(self, code, ident, data):
        """Send-Echo-Reply for an RXR event (only the Opened state runs it)."""

    def code_rejected(self, code):
        """The peer Code-Rejected one of our codes beyond 1-7 (e.g. Echo-Request)."""

    def state_changed(self, old, new):
        """Called on every change of state."""


class OptionVerdicts(object):
    """Collects per-option answers to a Configure-Request (RFC 1661 sections 5.2-5.4).

    "If every Configuration Option received in a Configure-Request is
    recognizable and all values are acceptable", the Ack repeats the request
    unchanged; otherwise a Configure-Reject lists the unrecognized or
    non-negotiable options, and only if there are none a Configure-Nak lists
    the unacceptable ones with acceptable values.  With ``reject_if_disagree``
    (Max-Failure reached) every Nak becomes a Reject of the option as sent.
    """

    def __init__(self, data, reject_if_disagree=False):
        self.data = data
        self.reject_if_disagree = reject_if_disagree
        self.naks = []
        self.rejects = []
        self.forced_rejects = 0

    def ack(self, kind, value):
        pass

    def nak(self, kind, value, suggestion):
        if self.reject_if_disagree:
            self.forced_rejects += 1
            self.rejects.append((kind, value))
        else:
            self.naks.append((kind, suggestion))

    def reject(self, kind, value):
        self.rejects.append((kind, value))

    def result(self):
        if self.rejects:
            return CONFREJ, wppp.build_options(self.rejects)
        if self.naks:
            return CONFNAK, wppp.build_options(self.naks)
        return CONFACK, self.data


class Fsm(object):
    """One instance of the automaton.

    ``output(packet)`` receives every control packet to send (code,
    identifier, length, data); ``restart_ms`` is the Restart timer.
    """

    def __init__(self, name, callbacks, output, max_configure=10, max_terminate=2,
                 max_failure=5, restart_ms=3000):
        self.name = name
        self.callbacks = callbacks
        callbacks.fsm = self
        self._output = output
        self.max_configure = max_configure
        self.max_terminate = max_terminate
        self.max_failure = max_failure
        self.restart_ms = restart_ms
        self.state = State.INITIAL
        self.timer = None            # restart timer deadline (ms) or None
        self.restart_count = 0
        self.ident = 0               # last identifier used
        self.reqid = None            # identifier of our current Configure-Request
        self.seen_ack = False        # our current request was answered
        self.nak_loops = 0           # Configure-Naks sent since the last Ack sent
        self.now = 0
        self.mru = 1500              # peer's MRU: bounds Code-Reject copies
        self.reason = ""             # what caused the current event (for logs and hooks)
        self.term_text = ""          # the data of our Terminate-Requests
        self.trace = None            # list: record executed actions (tests)
        self.counters = {}
        # context of the event being processed
        self._ctx_code = 0
        self._ctx_id = 0
        self._ctx_data = b""
        self._ctx_packet = b""
        self._ctx_retransmit = False
        self._reply = (CONFACK, b"")

    # -- administrative and lower-layer events ----------------------------------

    def up(self, now):
        """The lower layer is up (RFC 1661 4.3 "Up")."""
        self.now = now
        self.event(Event.UP, now)

    def down(self, now, reason="lower layer down"):
        """The lower layer is down ("Down")."""
        self.now = now
        self.reason = reason
        self.event(Event.DOWN, now)

    def open(self, now):
        """Administrative Open."""
        self.event(Event.OPEN, now)

    def close(self, now, reason="closed"):
        """Administrative Close; ``reason`` goes in our Terminate-Requests."""
        self.reason = self.term_text = reason
        self.event(Event.CLOSE, now)

    def protocol_rejected(self, now):
        """The peer sent a Protocol-Reject for this protocol: RXJ- (RFC 1661 5.7)."""
        self.reason = self.term_text = "protocol rejected by peer"
        self.event(Event.RXJ_MINUS, now)

    # -- timer -------------------------------------------------------------------

    def get_timer(self):
        return self.timer

    def handle_timer(self, now):
        """Run the restart timer if it is due: TO+ while the counter is above zero, else TO-."""
        if self.timer is None or now < self.timer:
            return
        self.timer = None
        self.now = now
        if self.restart_count > 0:
            self.event(Event.TO_PLUS, now)
        else:
            if self.state in NEGOTIATING:
                log.info("%s: no answer to %d Configure-Requests", self.name, self.max_configure)
                self.reason = "negotiation timed out"
            else:
                self.reason = "no Terminate-Ack"
            self.event(Event.TO_MINUS, now)

    # -- packets ---------------------------------------------------------------

    def next_id(self):
        self.ident = (self.ident + 1) & 0xFF
        return self.ident

    def send(self, code, ident, data=b""):
        """Send one control packet of this protocol."""
        self._output(wppp.build_cp(code, ident, data))

    def input(self, packet, now):
        """One received control packet (the information field of a frame)."""
        self.now = now
        try:
            code, ident, data = wppp.parse_cp(packet)
        except ParseError as exc:
            note(self.counters, "bad_packet", logging.DEBUG, "%s: malformed packet dropped: %s", self.name, exc)
            return
        if self.state in (State.INITIAL, State.STARTING):
            # The lower layer is not up: nothing can be received (pppd fsm_input).
            self._count("not_up")
            return
        self._ctx_code, self._ctx_id, self._ctx_data, self._ctx_packet = code, ident, data, packet
        if code == CONFREQ:
            self._rcv_conf_req(ident, data)
        elif code == CONFACK:
            self._rcv_conf_ack(ident, data)
        elif code in (CONFNAK, CONFREJ):
            self._rcv_conf_nak_rej(code, ident, data)
        elif code == TERMREQ:
            self.reason = PEER_TERMINATED
            self.event(Event.RTR, now, ident=ident)
        elif code == TERMACK:
            self.reason = "unexpected Terminate-Ack"
            self.event(Event.RTA, now, ident=ident)
        elif code == CODEREJ:
            self._rcv_code_reject(data)
        elif not self.callbacks.extcode(code, ident, data):
            note(self.counters, "unknown_code", logging.INFO, "%s: unknown code %d: Code-Reject", self.name, code)
            self.event(Event.RUC, now, ident=ident)

    def _rcv_conf_req(self, ident, data):
        state = self.state
        plus = TRANSITIONS.get((state, Event.RCR_PLUS))
        minus = TRANSITIONS.get((state, Event.RCR_MINUS))
        if plus is None or minus is None:
            self._illegal(Event.RCR_PLUS)
            return
        if state == State.OPENED:
            self.reason = "peer renegotiates"
        if "sca" not in plus[0]:
            # Closed, Closing, Stopping: never answered, reqci not consulted.
            self.event(Event.RCR_PLUS, self.now, ident=ident)
            return
        try:
            wppp.parse_options(data)
        except ParseError as exc:
            # RFC 1661 section 5: malformed packets are silently discarded.
            note(self.counters, "bad_options", logging.DEBUG, "%s: malformed Configure-Request dropped: %s",
                 self.name, exc)
            return
        prefix = plus[0][:plus[0].index("sca")]
        self._ctx_retransmit = False
        self._ctx_id = ident
        for action in prefix:
            self._act(action)
        code, reply = self.callbacks.reqci(data, self.nak_loops >= self.max_failure)
        if code == CONFACK:
            self.nak_loops = 0
            event, (actions, nxt) = Event.RCR_PLUS, plus
        else:
            if code == CONFNAK:
                self.nak_loops += 1
            event, (actions, nxt) = Event.RCR_MINUS, minus
        self._reply = (code, reply)
        self._run(event, actions[len(prefix):], nxt)

    def _answer_valid(self, ident):
        """An Ack/Nak/Reject answers our outstanding request (RFC 1661 5.2-5.4)."""
        if self.state not in NEGOTIATING and self.state != State.OPENED:
            return None      # not waiting for one: the table's sta/nothing applies
        if ident != self.reqid or self.seen_ack:
            note(self.counters, "stale_answer", logging.DEBUG,
                 "%s: answer id %d does not match request id %s: dropped", self.name, ident, self.reqid)
            return False
        return True

    def _rcv_conf_ack(self, ident, data):
        valid = self._answer_valid(ident)
        if valid is False:
            return
        if valid:
            if not self.callbacks.ackci(data):
                note(self.counters, "bad_ack", logging.INFO,
                     "%s: Configure-Ack does not match our request: dropped", self.name)
                return
            self.seen_ack = True
            if self.state == State.OPENED:
                self.reason = "peer renegotiates"
        self.event(Event.RCA, self.now, ident=ident)

    def _rcv_conf_nak_rej(self, code, ident, data):
        valid = self._answer_valid(ident)
        if valid is False:
            return
        if valid:
            hook = self.callbacks.nakci if code == CONFNAK else self.callbacks.rejci
            try:
                ok = hook(data)
            except ParseError:
                ok = False
            if not ok:
                note(self.counters, "bad_nak" if code == CONFNAK else "bad_reject", logging.INFO,
                     "%s: invalid Configure-%s: dropped", self.name, "Nak" if code == CONFNAK else "Reject")
                return
            self.seen_ack = True
            if self.state == State.OPENED:
                self.reason = "peer renegotiates"
        self.event(Event.RCN, self.now, ident=ident)

    def _rcv_code_reject(self, data):
        """RFC 1661 5.6: a rejected code 1-7 is catastrophic (RXJ-), others are RXJ+."""
        rejected = data[0] if data else 0
        if 1 <= rejected <= 7:
            log.warning("%s: peer rejected code %d: giving up", self.name, rejected)
            self.reason = self.term_text = "peer rejected code %d" % rejected
            self.event(Event.RXJ_MINUS, self.now)
        else:
            note(self.counters, "code_rejects_received", logging.INFO, "%s: peer rejected code %d",
                 self.name, rejected)
            self.callbacks.code_rejected(rejected)
            self.event(Event.RXJ_PLUS, self.now)

    def rxr(self, code, ident, data, now):
        """An Echo-Request, Echo-Reply or Discard-Request (LCP's RXR event)."""
        self.event(Event.RXR, now, code=code, ident=ident, data=data)

    # -- the table -------------------------------------------------------------

    def event(self, event, now, ident=None, code=None, data=None):
        """Run one RFC 1661 event through the table."""
        self.now = now
        cell = TRANSITIONS.get((self.state, event))
        if cell is None:
            self._illegal(event)
            return
        if ident is not None:
            self._ctx_id = ident
        if code is not None:
            self._ctx_code = code
        if data is not None:
            self._ctx_data = data
        self._ctx_retransmit = event == Event.TO_PLUS
        if event == Event.RCR_MINUS:
            self._reply = (CONFNAK, b"")
        elif event == Event.RCR_PLUS:
            self._reply = (CONFACK, self._ctx_data if self._ctx_code == CONFREQ else b"")
        self._run(event, cell[0], cell[1])

    def _run(self, event, actions, nxt):
        post = []
        for action in actions:
            if action in _POST_ACTIONS:
                post.append(action)
            elif action == "irc":
                self._irc(actions)
            else:
                self._act(action)
        self._change_state(nxt)
        for action in post:
            self._act(action)

    def _change_state(self, new):
        old = self.state
        if new not in TIMER_STATES:
            self.timer = None
        if new == State.OPENED and old != State.OPENED:
            self.restart_count = self.max_configure
        if new != old:
            self.state = new
            log.debug("%s %s => %s", self.name, STATE_NAMES[old], STATE_NAMES[new])
            self.callbacks.state_changed(old, new)

    def _illegal(self, event):
        note(self.counters, "illegal_event", logging.DEBUG, "%s: event %s is illegal in state %s: ignored",
             self.name, event.value, STATE_NAMES[self.state])

    def _count(self, reason):
        self.counters[reason] = self.counters.get(reason, 0) + 1

    # -- actions (RFC 1661 section 4.4) ------------------------------------------

    def _act(self, action):
        if self.trace is not None:
            self.trace.append(action)
        getattr(self, "_a_" + action)()

    def _irc(self, actions):
        """Initialize-Restart-Count: Max-Terminate before a Terminate-Request, else Max-Configure."""
        if self.trace is not None:
            self.trace.append("irc")
        self.restart_count = self.max_terminate if "str" in actions else self.max_configure

    def _a_irc(self):
        self.restart_count = self.max_configure

    def _a_zrc(self):
        self.restart_count = 0
        self.timer = self.now + self.restart_ms

    def _a_tlu(self):
        self.callbacks.up()

    def _a_tld(self):
        self.callbacks.down()

    def _a_tls(self):
        self.callbacks.starting()

    def _a_tlf(self):
        self.callbacks.finished()

    def _a_scr(self):
        """Send-Configure-Request with the options addci builds."""
        if self.state not in NEGOTIATING:
            # Not currently negotiating: start afresh (pppd fsm_sconfreq).
            self.callbacks.resetci()
            self.nak_loops = 0
        if not self._ctx_retransmit or self.reqid is None:
            # RFC 1661 5.1: a new Identifier for new contents; a retransmission may keep it.
            self.reqid = self.next_id()
        self.seen_ack = False
        self.send(CONFREQ, self.reqid, self.callbacks.addci())
        self.restart_count -= 1
        self.timer = self.now + self.restart_ms

    def _a_sca(self):
        code, reply = self._reply
        self.send(CONFACK, self._ctx_id, reply if code == CONFACK else self._ctx_data)

    def _a_scn(self):
        code, reply = self._reply
        self.send(code if code in (CONFNAK, CONFREJ) else CONFNAK, self._ctx_id, reply)

    def _a_str(self):
        self.send(TERMREQ, self.next_id(), self.term_text.encode("ascii", "replace")[:64])
        self.restart_count -= 1
        self.timer = self.now + self.restart_ms

    def _a_sta(self):
        self.send(TERMACK, self._ctx_id)

    def _a_scj(self):
        """Send-Code-Reject: a copy of the packet, truncated to the peer's MRU (RFC 1661 5.6)."""
        room = max(0, self.mru - wppp.CP_HEADER_LEN)
        self.send(CODEREJ, self.next_id(), bytes(self._ctx_packet[:room]))

    def _a_ser(self):
        self.callbacks.ser(self._ctx_code, self._ctx_id, self._ctx_data)
