"""LCP, the Link Control Protocol (RFC 1661 sections 5 and 6, RFC 1662 7.1): the hooks and the keepalive.

Theory of operation
-------------------
:class:`Lcp` fills the hooks of the shared automaton (:mod:`pyslirp.ppp.fsm`)
for protocol 0xC021, as pppd's ``lcp.c`` does, and reports to an *owner* (the
link) through ``lcp_up()``, ``lcp_down()``, ``lcp_starting()``,
``lcp_finished()``, ``lcp_state_changed(old, new)``,
``lcp_protocol_rejected(protocol)``, ``lcp_looped_back()`` and
``lcp_echo_failed()``.

Four sets of options, as in pppd:

* ``want``: what the configuration asks for: Async-Control-Character-Map 0 (so
  that the peer escapes nothing it need not), a Magic-Number (if
  ``negotiate_magic``), Protocol-Field- and Address-and-Control-Field-
  Compression, the MRU only when it is not the default 1500, and the
  Authentication-Protocol when ``require_auth`` is "pap" or "chap" (CHAP with
  algorithm 5, MD5).
* ``tried``: ``want`` adjusted by the peer's Naks and Rejects during one
  negotiation (``resetci`` copies ``want``); every Configure-Request is built
  from it.
* ``got``: the options the peer acknowledged (our receive side: the ACCM the
  peer will use towards us, our magic number).
* ``his``: the peer's options we acknowledged (our send side: the peer's MRU,
  its ACCM, whether it can receive compressed fields).

The client role (``role = "client"``, :mod:`pyslirp.ppp.link`): the same
options are asked for (pppd's defaults: ACCM 0, magic, PFC, ACFC, the MRU
when not 1500) and the peer's Authentication-Protocol is judged by
``_judge_auth_request``: with credentials PAP and CHAP-MD5 are acknowledged
(``his.auth``, the method the link then runs as the authenticating peer),
other methods are Nak'd with one of those; without credentials it is rejected.

Judging the peer's request (``reqci``): MRU is accepted from 128 up (below, it
is Nak'd with 128, pppd's minimum; RFC 1661 6.1 lets the peer send smaller
frames anyway); any ACCM is accepted (RFC 1662 7.1); a Magic-Number of zero, or
equal to ours, is Nak'd with a fresh random one (RFC 1661 6.4: "If the two
Magic-Numbers are equal ... a Configure-Nak MUST be sent specifying a
different Magic-Number value"); PFC and ACFC are accepted.  Everything else is
rejected: the Authentication-Protocol (we are the authenticator, never the
authenticated), Quality-Protocol, Callback, MRRU, Short-Sequence, Endpoint
Discriminator, and any unknown option or known option of the wrong length.

Answers to our request: a Nak of our magic number means the peer saw its own
number, i.e. possibly a looped-back line; we pick a new number, and after
``LOOPBACK_WARN`` consecutive ones the log says the line looks looped back and
the owner is told (the link then stops negotiating and listens, as pppd gives
up with "Serial line is looped back").  A
Nak of the Authentication-Protocol suggesting another method is not
followed: we keep asking for the configured method (never falling back to
another one, e.g. from CHAP to PAP).  A peer normally ends that by rejecting
the option after its own Max-Failure; so that a peer that Naks forever cannot
keep us looping, after ``max_failure`` such Naks we stop asking, exactly as
after a Reject.  Either way ``got.auth`` stays empty and the link fails the
authentication when LCP opens (as pppd does: "peer refused to authenticate").
An MRU Nak we cannot follow is bounded the same way (we fall back to the
default 1500).

Codes beyond 7 (``extcode``): Protocol-Reject is handed to the owner (only in
Opened, RFC 1661 5.7); Echo-Request, Echo-Reply, Discard-Request and the RFC
1570 Identification and Time-Remaining are the automaton's RXR event, whose
``ser`` action answers an Echo-Request (Opened only, RFC 1661 5.8) with our
magic number.  Unknown codes get a Code-Reject from the automaton.

Link up at once (:meth:`Lcp.input`): a Configure-Request that arrives in
Req-Sent when nothing at all arrived since our last request means the peer
started after our request went out and never saw it; our request is
retransmitted at once (the Restart timer expiring early; the restart counter
initialised again if it had run out) instead of after up to
``restart_interval`` seconds.  The RFC 1661 table is not changed; the method's
docstring argues it.

Keepalive (pppd's lcp-echo-interval/-failure/-adaptive): while Opened an
Echo-Request goes out every ``lcp_echo_interval`` seconds; a reply (with a
magic number other than ours) clears the count of outstanding ones; when
``lcp_echo_failure`` requests are outstanding at the next interval the owner
is told (``lcp_echo_failed``).  ``note_traffic()`` (the link calls it for every
IP frame received) also proves the peer alive: the next interval then sends
nothing (pppd's lcp-echo-adaptive).  A reply whose identifier is that of the
latest request gives ``echo_rtt`` (ms; the metrics' LCP round-trip time).
"""

import copy
import logging
import struct

from pyslirp.timers import earliest
from pyslirp.ppp.fsm import CONFACK, OptionVerdicts, State, note
from pyslirp.ppp.protocol import ControlProtocol, Phase
from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

log = logging.getLogger("pyslirp.ppp")

# Configuration option types (RFC 1661 section 6, IANA PPP numbers).
CI_MRU = 1
CI_ASYNCMAP = 2
CI_AUTHTYPE = 3
CI_QUALITY = 4
CI_MAGIC = 5
CI_PFC = 7
CI_ACFC = 8
CI_CALLBACK = 13
CI_MRRU = 17
CI_SSNHF = 18
CI_EPDISC = 19

# LCP codes beyond the automaton's 1-7 (RFC 1661 5.7-5.9, RFC 1570).
PROTOCOL_REJECT = wppp.PROTOCOL_REJECT
ECHO_REQUEST = wppp.ECHO_REQUEST
ECHO_REPLY = wppp.ECHO_REPLY
DISCARD_REQUEST = wppp.DISCARD_REQUEST
IDENTIFICATION = 12
TIME_REMAINING = 13

DEFAULT_MRU = 1500
MIN_MRU = 128
DEFAULT_ACCM = 0xFFFFFFFF
CHAP_MD5 = 5
LOOPBACK_WARN = 5

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_CHAP_AUTH = struct.Struct("!HB")


class LcpOptions(object):
    """One set of LCP options; None/False means "not negotiated"."""

    __slots__ = ("mru", "accm", "auth", "magic", "pfc", "acfc")

    def __init__(self, mru=None, accm=None, auth=None, magic=None, pfc=False, acfc=False):
        self.mru = mru
        self.accm = accm
        self.auth = auth        # None, "pap" or "chap"
        self.magic = magic
        self.pfc = pfc
        self.acfc = acfc

    def __eq__(self, other):
        return isinstance(other, LcpOptions) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "LcpOptions(%s)" % ", ".join("%s=%r" % (k, getattr(self, k)) for k in self.__slots__)


def auth_option_value(method):
    """The Authentication-Protocol option value for "pap" or "chap" (CHAP-MD5)."""
    if method == "pap":
        return _U16.pack(wppp.PROTO_PAP)
    if method == "chap":
        return _CHAP_AUTH.pack(wppp.PROTO_CHAP, CHAP_MD5)
    raise ValueError(method)


def _auth_method(value):
    if value == auth_option_value("pap"):
        return "pap"
    if value == auth_option_value("chap"):
        return "chap"
    return None


def build_lcp_options(opts):
    """Our Configure-Request options, in type order."""
    out = []
    if opts.mru is not None:
        out.append((CI_MRU, _U16.pack(opts.mru)))
    if opts.accm is not None:
        out.append((CI_ASYNCMAP, _U32.pack(opts.accm)))
    if opts.auth is not None:
        out.append((CI_AUTHTYPE, auth_option_value(opts.auth)))
    if opts.magic is not None:
        out.append((CI_MAGIC, _U32.pack(opts.magic)))
    if opts.pfc:
        out.append((CI_PFC, b""))
    if opts.acfc:
        out.append((CI_ACFC, b""))
    return wppp.build_options(out)


class Lcp(ControlProtocol):
    """LCP for one link: automaton hooks, options, echo keepalive."""

    protocol = wppp.PROTO_LCP
    name = "LCP"
    phases = frozenset(Phase)

    def __init__(self, config, rng, output, owner):
        self.rng = rng
        self.owner = owner
        ControlProtocol.__init__(self, config, output)
        self.want = self._want_from_config()
        self.tried = copy.copy(self.want)
        self.got = LcpOptions()
        self.his = LcpOptions()
        self._sent = None            # (options, bytes) of our last Configure-Request
        self.loop_naks = 0           # consecutive Naks of our magic number
        self._ignored = {}           # option type -> Naks we did not follow
        self.looped_back = False
        # keepalive
        self.echo_timer = None
        self.echos_pending = 0
        self.echo_disabled = False
        self._traffic = False
        self.echo_rtt = None            # ms: round trip of the latest answered Echo-Request (metrics)
        self._echo_sent = None          # (identifier, ms) of the latest Echo-Request
        self._heard = False             # a packet arrived since our last Configure-Request went out
        for key in ("echoes_sent", "echoes_missed", "echo_replies", "protocol_rejects_received",
                    "early_requests"):
            self.counters[key] = 0

    # -- what the link reads ---------------------------------------------------

    @property
    def peer_mru(self):
        """The peer's MRU: the largest frame we may send (RFC 1661 6.1, default 1500)."""
        return self.his.mru if self.his.mru is not None else DEFAULT_MRU

    @property
    def send_accm(self):
        """Control characters we must escape towards the peer (its ACCM, RFC 1662 7.1)."""
        return self.his.accm if self.his.accm is not None else DEFAULT_ACCM

    @property
    def recv_accm(self):
        """Control characters the peer escapes towards us (the ACCM it acknowledged)."""
        return self.got.accm if self.got.accm is not None else DEFAULT_ACCM

    @property
    def our_magic(self):
        """RFC 1661 5.8: our Magic-Number, or zero when it was not negotiated."""
        return self.got.magic if self.got.magic is not None else 0

    # -- option sets -------------------------------------------------------------

    def _new_magic(self):
        """A random non-zero Magic-Number, different from the one we use now."""
        current = getattr(self, "tried", None)
        avoid = current.magic if current is not None else None
        while True:
            magic = self.rng.getrandbits(32)
            if magic and magic != avoid:
                return magic

    def _want_from_config(self):
        cfg = self.config
        auth = cfg.require_auth if cfg.require_auth in ("pap", "chap") else None
        return LcpOptions(
            mru=cfg.mru if cfg.mru != DEFAULT_MRU else None,
            accm=0,
            auth=auth,
            magic=self._new_magic() if cfg.negotiate_magic else None,
            pfc=True,
            acfc=True,
        )

    # -- automaton hooks -----------------------------------------------------------

    def resetci(self):
        self.want = self._want_from_config()
        self.tried = copy.copy(self.want)
        self.got = LcpOptions()
        self.loop_naks = 0
        self._ignored = {}

    def addci(self):
        data = build_lcp_options(self.tried)
        self._sent = (copy.copy(self.tried), data)
        self._heard = False
        return data

    def input(self, info, now):
        """One LCP packet; a Configure-Request after a silence first brings our own request forward.

        Our Configure-Requests may have gone out before the peer opened the line (a client started
        after us, a serial port opened late): they were lost, and the Restart timer would decide when
        the peer sees ours -- up to ``restart_interval`` later, while it has already acknowledged us.
        So a Configure-Request that arrives in Req-Sent, when nothing at all arrived since our last
        request, is taken as what it shows: the peer has just started and never saw our request.  We
        run the Timeout event at once (TO+: our request is retransmitted, same Identifier) and then
        the Configure-Request as usual.  The automaton's table is untouched: RFC 1661 4.6 leaves the
        Restart timer's value to the implementation ("the Restart timer MAY begin at an initial small
        value and increase to the configured final value"), and this is a timer that expires early
        because the peer spoke.  When the counter had run out, it is initialised again first (irc):
        Max-Configure counts requests "sent without receiving a valid Configure-Ack, Configure-Nak or
        Configure-Reject before assuming that the peer is unable to respond", and the peer has just
        shown that it can.  (Our own request coming back on a looped-back line is not taken for a
        peer's.)  If the peer had seen our request after all, it gets it twice with the same
        Identifier, which RFC 1661 5.1 allows for a retransmission, and answers it twice; the second
        answer is stale and ignored (5.2: only the last request's Identifier counts, once).
        """
        fsm = self.fsm
        if info[:1] == b"\x01" and fsm.state == State.REQ_SENT and not self._heard and \
                not self._is_our_request(info):
            self.counters["early_requests"] += 1
            log.debug("LCP: Configure-Request from a peer that has not seen ours: sending ours now")
            if fsm.restart_count <= 0:
                fsm.restart_count = fsm.max_configure
            fsm.timer = now
            fsm.handle_timer(now)
        self._heard = True
        fsm.input(info, now)

    def _is_our_request(self, info):
        """A looped-back line returns our own request: that is no peer starting up."""
        if self._sent is None:
            return False
        try:
            code, _, data = wppp.parse_cp(info)
        except ParseError:
            return False
        return code == wppp.CONFIGURE_REQUEST and data == self._sent[1]

    def ackci(self, data):
        """RFC 1661 5.2: the Ack must repeat our request exactly."""
        if self._sent is None or data != self._sent[1]:
            return False
        self.got = copy.copy(self._sent[0])
        self.loop_naks = 0
        return True

    def nakci(self, data):
        options = wppp.parse_options(data)
        sent = self._sent[0] if self._sent is not None else LcpOptions()
        tried = self.tried
        magic_nak = False
        for kind, value in options:
            if kind == CI_MRU and len(value) == 2:
                mru = _U16.unpack(value)[0]
                # pppd: take a smaller MRU the peer suggests, or anything up to the default.
                if MIN_MRU <= mru and (mru <= self.config.mru or mru <= DEFAULT_MRU):
                    tried.mru = None if mru == DEFAULT_MRU and sent.mru is None else mru
                elif self._ignored_nak(CI_MRU) and sent.mru is not None:
                    log.warning("LCP: peer keeps refusing our MRU %d: asking for the default", sent.mru)
                    tried.mru = None
            elif kind == CI_ASYNCMAP and len(value) == 4 and sent.accm is not None:
                # The peer needs more characters escaped: ask for the union.
                tried.accm = sent.accm | _U32.unpack(value)[0]
            elif kind == CI_AUTHTYPE and sent.auth is not None:
                suggested = _auth_method(value) or "protocol 0x%s" % value[:2].hex()
                if self._ignored_nak(CI_AUTHTYPE):
                    # Bounded like Max-Failure: LCP then opens without it and the
                    # link fails the authentication.
                    log.warning("LCP: peer will not authenticate with %s (it offers %s)",
                                sent.auth, suggested)
                    tried.auth = None
                else:
                    log.info("LCP: peer suggests authentication %s instead of %s: still asking for %s",
                             suggested, sent.auth, sent.auth)
            elif kind == CI_MAGIC and len(value) == 4 and sent.magic is not None:
                magic_nak = True
                tried.magic = self._new_magic()
            elif kind in (CI_PFC, CI_ACFC):
                if kind == CI_PFC:
                    tried.pfc = False
                else:
                    tried.acfc = False
        if magic_nak:
            self.loop_naks += 1
            self.counters["magic_naks"] = self.counters.get("magic_naks", 0) + 1
            if self.loop_naks == LOOPBACK_WARN:
                self.looped_back = True
                log.warning("LCP: our magic number was Nak'd %d times in a row: "
                            "the serial line appears to be looped back", self.loop_naks)
                self.owner.lcp_looped_back()
        else:
            self.loop_naks = 0
        return True

    def _ignored_nak(self, kind):
        """Count a Nak we do not follow; True once it happened Max-Failure times."""
        n = self._ignored.get(kind, 0) + 1
        self._ignored[kind] = n
        return n >= self.config.max_failure

    def rejci(self, data):
        """RFC 1661 5.4: the Reject lists options of our request, unmodified."""
        options = wppp.parse_options(data)
        sent = self._sent[0] if self._sent is not None else LcpOptions()
        expected = dict(wppp.parse_options(self._sent[1])) if self._sent is not None else {}
        tried = self.tried
        for kind, value in options:
            if expected.get(kind) != value:
                return False
        for kind, value in options:
            if kind == CI_MRU:
                tried.mru = None
            elif kind == CI_ASYNCMAP:
                tried.accm = None
            elif kind == CI_AUTHTYPE:
                log.warning("LCP: peer refuses to authenticate with %s", sent.auth)
                tried.auth = None
            elif kind == CI_MAGIC:
                tried.magic = None
            elif kind == CI_PFC:
                tried.pfc = False
            elif kind == CI_ACFC:
                tried.acfc = False
        return True

    def reqci(self, data, reject_if_disagree):
        verdicts = OptionVerdicts(data, reject_if_disagree)
        his = LcpOptions()
        for kind, value in wppp.parse_options(data):
            if kind == CI_MRU and len(value) == 2:
                mru = _U16.unpack(value)[0]
                if mru < MIN_MRU:
                    verdicts.nak(kind, value, _U16.pack(MIN_MRU))
                else:
                    his.mru = mru
            elif kind == CI_ASYNCMAP and len(value) == 4:
                his.accm = _U32.unpack(value)[0]
            elif kind == CI_MAGIC and len(value) == 4:
                magic = _U32.unpack(value)[0]
                if magic == 0:
                    # RFC 1661 6.4: "A Magic-Number of zero is illegal and MUST always be Nak'd".
                    verdicts.nak(kind, value, _U32.pack(self._new_magic()))
                elif self.tried.magic is not None and magic == self.tried.magic:
                    # RFC 1661 6.4: equal magic numbers: possibly a looped-back line.
                    note(self.counters, "magic_equal", logging.INFO,
                         "LCP: peer's magic number equals ours (looped-back line?)")
                    verdicts.nak(kind, value, _U32.pack(self._new_magic()))
                else:
                    his.magic = magic
            elif kind == CI_PFC and not value:
                his.pfc = True
            elif kind == CI_ACFC and not value:
                his.acfc = True
            elif kind == CI_AUTHTYPE and self.config.role == "client":
                self._judge_auth_request(value, verdicts, his)
            else:
                # Authentication-Protocol (as the server we never authenticate ourselves),
                # Quality-Protocol, Callback, MRRU, endpoint discriminator,
                # unknown options, known ones of a wrong length.
                verdicts.reject(kind, value)
        code, reply = verdicts.result()
        if verdicts.forced_rejects:
            log.warning("LCP: peer keeps asking for values we Nak; rejecting them (Max-Failure %d)",
                        self.config.max_failure)
        if code == CONFACK:
            self.his = his
        return code, reply

    def _judge_auth_request(self, value, verdicts, his):
        """The client role: the server asks us to authenticate (RFC 1661 6.2).

        With credentials (``user``) PAP and CHAP-MD5 are accepted; CHAP with another algorithm
        (MS-CHAP) is Nak'd with CHAP-MD5, another protocol with PAP (what we can do), as pppd does.
        Without credentials the option is rejected: the server then decides whether to go on."""
        if not self.config.user:
            log.info("LCP: the server asks for authentication and we have no credentials")
            verdicts.reject(CI_AUTHTYPE, value)
            return
        method = _auth_method(value)
        if method is not None:
            his.auth = method
        elif value[:2] == _U16.pack(wppp.PROTO_CHAP):
            verdicts.nak(CI_AUTHTYPE, value, auth_option_value("chap"))
        else:
            verdicts.nak(CI_AUTHTYPE, value, auth_option_value("pap"))

    def up(self):
        now = self.fsm.now
        self.echos_pending = 0
        self.echo_disabled = False
        self._traffic = False
        self.echo_rtt = None            # a new session: its round trip is not known yet
        self._echo_sent = None
        interval = self.config.lcp_echo_interval
        self.echo_timer = now + interval * 1000 if interval > 0 else None
        self.fsm.mru = self.peer_mru
        log.info("LCP up: peer MRU %d, ACCM send 0x%08x recv 0x%08x, PFC %s, ACFC %s, auth %s",
                 self.peer_mru, self.send_accm, self.recv_accm, "on" if self.his.pfc else "off",
                 "on" if self.his.acfc else "off", self.got.auth or "none")
        self.owner.lcp_up()

    def down(self):
        self.echo_timer = None
        self.owner.lcp_down()
        self.his = LcpOptions()
        self.fsm.mru = DEFAULT_MRU

    def starting(self):
        self.owner.lcp_starting()

    def finished(self):
        self.owner.lcp_finished()

    def state_changed(self, old, new):
        self.owner.lcp_state_changed(old, new)

    def extcode(self, code, ident, data):
        now = self.fsm.now
        if code == PROTOCOL_REJECT:
            self.counters["protocol_rejects_received"] += 1
            if self.fsm.state != State.OPENED:
                # RFC 1661 5.7: "... received in any state other than the LCP
                # Opened state SHOULD be silently discarded."
                return True
            if len(data) < 2:
                self.counters["bad_protocol_reject"] = self.counters.get("bad_protocol_reject", 0) + 1
                return True
            self.owner.lcp_protocol_rejected(_U16.unpack_from(data)[0])
            return True
        if code in (ECHO_REQUEST, ECHO_REPLY, DISCARD_REQUEST):
            if len(data) < 4:
                # Every one of them starts with the sender's Magic-Number (RFC 1661 5.8, 5.9).
                self.counters["bad_echo"] = self.counters.get("bad_echo", 0) + 1
                return True
            if code == ECHO_REPLY:
                self._echo_reply(ident, data, now)
            self.fsm.rxr(code, ident, data, now)
            return True
        if code in (IDENTIFICATION, TIME_REMAINING):
            # RFC 1570; Windows sends Identification.  Nothing to do with it.
            self.fsm.rxr(code, ident, data, now)
            return True
        return False

    def ser(self, code, ident, data):
        """Send-Echo-Reply (RFC 1661 5.8): our magic number, then the request's data."""
        if code != ECHO_REQUEST:
            return
        reply = _U32.pack(self.our_magic) + data[4:]
        room = self.peer_mru - wppp.CP_HEADER_LEN
        self.fsm.send(ECHO_REPLY, ident, reply[:room])

    def code_rejected(self, code):
        if code == ECHO_REQUEST:
            log.info("LCP: peer rejects Echo-Request: keepalive disabled")
            self.echo_disabled = True
            self.echo_timer = None

    # -- protocol reject, keepalive ------------------------------------------------

    def send_protocol_reject(self, protocol, info):
        """RFC 1661 5.7: Rejected-Protocol then Rejected-Information, within the peer's MRU."""
        if self.fsm.state != State.OPENED:
            return False
        room = self.peer_mru - wppp.CP_HEADER_LEN - 2
        self.fsm.send(PROTOCOL_REJECT, self.fsm.next_id(), _U16.pack(protocol) + bytes(info[:room]))
        return True

    def note_traffic(self):
        """A frame other than LCP arrived: the peer is alive (lcp-echo-adaptive)."""
        self._traffic = True

    def _echo_reply(self, ident, data, now):
        if self.fsm.state != State.OPENED:
            return
        magic = _U32.unpack_from(data)[0]
        if self.got.magic is not None and magic == self.got.magic:
            note(self.counters, "looped_echo_replies", logging.INFO,
                 "LCP: received our own Echo-Reply: the line appears to be looped back")
            return
        self.counters["echo_replies"] += 1
        self.echos_pending = 0
        sent = self._echo_sent
        if sent is not None and sent[0] == ident:
            self.echo_rtt = now - sent[1]
            self._echo_sent = None

    def get_timer(self):
        return earliest(self.fsm.timer, self.echo_timer)

    def handle_timer(self, now):
        self.fsm.handle_timer(now)
        if self.echo_timer is not None and now >= self.echo_timer:
            self._echo_check(now)

    def _echo_check(self, now):
        cfg = self.config
        self.echo_timer = None
        if self.fsm.state != State.OPENED or self.echo_disabled or cfg.lcp_echo_interval <= 0:
            return
        self.echo_timer = now + cfg.lcp_echo_interval * 1000
        if self._traffic:
            self._traffic = False
            self.echos_pending = 0
            return
        if self.echos_pending:
            self.counters["echoes_missed"] += 1
        if cfg.lcp_echo_failure > 0 and self.echos_pending >= cfg.lcp_echo_failure:
            log.info("LCP: no reply to %d Echo-Requests: the peer is gone", self.echos_pending)
            self.echo_timer = None
            self.owner.lcp_echo_failed()
            return
        self.echos_pending += 1
        self.counters["echoes_sent"] += 1
        ident = self.fsm.next_id()
        self._echo_sent = (ident, now)
        self.fsm.send(ECHO_REQUEST, ident, _U32.pack(self.our_magic))
