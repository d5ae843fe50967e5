"""The link's protocol table: one entry per PPP protocol, and the base class of every control protocol.

Theory of operation
-------------------
pppd keeps one ``struct protent`` per protocol it speaks (``pppd/main.c``
``protocols[]``): the protocol number and what to do with a received packet,
a Protocol-Reject, the lower layer coming up or going down, an administrative
Open or Close.  The receive path is a loop over that table, and a new control
protocol is one more entry.  :class:`Protocol` is that entry here; the link
(:mod:`pyslirp.ppp.link`) holds a list of them and:

* hands a received packet to the entry whose ``protocol`` matches, or whose
  ``data_protocol`` matches (IPCP's data protocol is IP, as pppd's
  ``datainput``), if the link's phase is one of the entry's ``phases``;
  a protocol no entry claims gets an LCP Protocol-Reject (RFC 1661 5.7);
* calls ``lower_up`` / ``lower_down`` of every entry but LCP when LCP
  reaches or leaves Opened (pppd's ``link_established`` / ``lcp_down``), and
  ``open`` of the network-layer entries (``ncp = True``) when the link
  enters the Network phase (pppd's ``start_networks``);
* passes a received Protocol-Reject to the entry that owns the rejected
  protocol (``protocol_rejected``);
* multiplexes the entries' timers (``get_timer`` / ``handle_timer``).

:class:`ControlProtocol` is the base of LCP and of every NCP (IPCP, CCP; an
IPV6CP would be a fourth): it builds the RFC 1661 automaton
(:class:`~pyslirp.ppp.fsm.Fsm`) with the link's counts and timers, shares
its ``counters`` dict with it, and maps the table's calls onto the
automaton's events (Up, Down, Open, Close, RXJ-).  Subclasses fill the
automaton's hooks, as before.

:class:`Transform` is one stage between the table and the framing: on output
it may replace ``(protocol, information)`` by a compressed form (Van Jacobson
on IP packets, Deflate on the whole PPP packet), on input it undoes that, or
drops the packet (``None``).  The link runs its stages in order on output and
in reverse order on input; ``toss`` tells a stage that a received frame was
lost (bad FCS, aborted, too long), so that state depending on every frame
arriving (VJ's) is resynchronised.
"""

import enum

from pyslirp.ppp.fsm import Fsm, FsmCallbacks


class Phase(enum.Enum):
    """RFC 1661 section 3.2."""
    DEAD = "Dead"
    ESTABLISH = "Establish"
    AUTHENTICATE = "Authenticate"
    NETWORK = "Network"
    TERMINATE = "Terminate"


NETWORK_ONLY = frozenset((Phase.NETWORK,))
AFTER_LCP = frozenset((Phase.AUTHENTICATE, Phase.NETWORK))


class Protocol(object):
    """One entry of the protocol table (pppd's ``struct protent``); every method defaults to doing nothing."""

    protocol = 0                 # the PPP protocol number
    data_protocol = None         # the data protocol it governs (IPCP: IP), or None
    name = ""
    phases = NETWORK_ONLY        # link phases in which its packets are accepted
    ncp = False                  # opened when the link enters the Network phase

    def input(self, info, now):
        """A received packet of ``protocol``."""

    def data_input(self, info, now):
        """A received packet of ``data_protocol``."""

    def protocol_rejected(self, now):
        """The peer sent an LCP Protocol-Reject for ``protocol`` or ``data_protocol``."""

    def lower_up(self, now):
        """LCP is Opened: this protocol may send."""

    def lower_down(self, now, reason):
        """LCP left Opened."""

    def open(self, now):
        """Administrative Open (Network phase, for an NCP)."""

    def close(self, now, reason):
        """Administrative Close."""

    def get_timer(self):
        return None

    def handle_timer(self, now):
        pass


class ControlProtocol(FsmCallbacks, Protocol):
    """LCP or an NCP: a table entry that runs one RFC 1661 automaton."""

    def __init__(self, config, output):
        self.config = config
        self.counters = {}
        self.fsm = Fsm(self.name, self, output, max_configure=config.max_configure,
                       max_terminate=config.max_terminate, max_failure=config.max_failure,
                       restart_ms=config.restart_interval * 1000)
        self.fsm.counters = self.counters

    @property
    def state(self):
        return self.fsm.state

    def input(self, info, now):
        self.fsm.input(info, now)

    def protocol_rejected(self, now):
        self.fsm.protocol_rejected(now)

    def lower_up(self, now):
        self.fsm.up(now)

    def lower_down(self, now, reason):
        self.fsm.down(now, reason)

    def open(self, now):
        self.fsm.open(now)

    def close(self, now, reason):
        self.fsm.close(now, reason)

    def get_timer(self):
        return self.fsm.timer

    def handle_timer(self, now):
        self.fsm.handle_timer(now)


class Discard(Protocol):
    """A protocol we know but do not run on this link: its packets are counted and dropped, never rejected."""

    phases = AFTER_LCP

    def __init__(self, protocol, name, drop):
        self.protocol = protocol
        self.name = name
        self._drop = drop

    def input(self, info, now):
        self._drop(self.protocol)


class Transform(object):
    """A compression stage between the table and the framing; the identity by default."""

    def compress(self, protocol, info):
        """``(protocol, info)`` as it goes on the line."""
        return protocol, info

    def decompress(self, protocol, info):
        """``(protocol, info)`` as received, undone; None drops the packet."""
        return protocol, info

    def toss(self):
        """A received frame was lost."""
