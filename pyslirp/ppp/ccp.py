"""CCP, the Compression Control Protocol (RFC 1962), with Deflate (RFC 1979): negotiation and the compression stage.

Theory of operation
-------------------
:class:`Ccp` is two things for the link: an NCP entry of its protocol table
(protocol 0x80FD, opened in the Network phase like IPCP, filling the hooks
of the shared RFC 1661 automaton), and the last compression stage before the
framing (a :class:`~pyslirp.ppp.protocol.Transform`, after Van Jacobson on
output and therefore first on input, as pppd and Linux order them).

Negotiation.  CCP options name the compression methods a side can
*receive*.  Our Configure-Request offers Deflate with a 2^15 window under
both its numbers, 26 (RFC 1979) and 24 (the draft number pppd also sends),
exactly as pppd does; the peer's Acks and Naks adjust it as pppd's
``ccp_nakci`` / ``ccp_rejci`` do: a smaller window it suggests (9..15) is
taken, a suggestion we cannot use (another method, window below 9) or a
Reject removes the option, and with nothing left we ask for nothing (an
empty request, which the peer acknowledges: no compression towards us, no
loop).  The peer's request is judged option by option (RFC 1962 section 2.1
lets it list several methods; like pppd we acknowledge every one we can do):

* Deflate (26 or 24), four octets: method 8 and check method 0 (sequence
  numbers) with a window of 9 to 15 is acknowledged; a window of 8 is Nak'd
  with 9 -- zlib cannot compress with a 256-octet window (pppd turns 8 into 9
  for the same reason), and 9 is the nearest window we can honour; the peer
  asks again with 9 or stops asking.  Anything else unusable is Nak'd with our
  largest window, method 8, check 0.
* Anything else -- BSD-Compress (21), Predictor, Stac, MPPC/MPPE, unknown
  options, a Deflate option of the wrong length -- is rejected.  A peer that
  keeps asking for values we Nak is rejected after Max-Failure (the
  automaton's rule).

The first Deflate option we acknowledged is the method we send with (the
peer's kernel prepares its decompressor for its first option); its window is
our compressor's.

When compression runs: as Linux's ``ppp_ccp_peek`` decides, and RFC 1979
asks ("the transmitter synchronizes clearing the dictionary with the
transmission of the configure-ACK or Reset-Ack that starts compression").
Our Configure-Ack of the peer's request starts (clears) our compressor; a
valid Configure-Ack of our request starts our decompressor.  A
Configure-Request concerns what its sender receives: the peer's stops our
compressor (its kernel stopped decompressing when it sent it), ours stops our
decompressor (its kernel stops compressing when it gets it).  A
Terminate-Request or -Ack either way stops both, and so do CCP going down and
LCP leaving Opened.  From its start every packet
of protocol 0x0001-0x3FFF we send goes through the compressor's history, but
RFC 1962 2: "Before any compressed packets may be communicated, PPP MUST
reach the Network-Layer Protocol phase, and the Compression Control Protocol
MUST reach the Opened state" -- so until CCP is Opened every packet is sent
as it was (Linux's decompressor, started by our Ack, adds it to its history
as we did).  On input we decompress whatever arrives once our decompressor
runs: Linux starts compressing as soon as it has sent its Ack.

Reset (RFC 1962 section 5.1; Linux and pppd's handling).  A packet that does
not decompress (sequence number out of step after a lost frame, corrupt
data, beyond the MRU) is dropped, so is every compressed packet after it, and
we send a Reset-Request; it is repeated after ``RESET_REQUEST_MS`` only if
more packets were dropped meanwhile (pppd's ``RREQ_REPEAT``), and once that
time has passed the next dropped packet sends a new one at once (pppd's
``RACK_PENDING`` cleared): the Reset-Request itself may have been lost.  The peer's
Reset-Ack -- any Reset-Ack, as Linux resets its decompressor on each --
clears our decompressor's history and compressed packets decompress again.
A Reset-Request from the peer is answered with a Reset-Ack carrying its
Identifier, and our compressor's history is cleared with that Ack.  While our
decompressor is out of step, uncompressed packets are not added to its
history (it is cleared at the Reset-Ack anyway).

Resynchronising after a retransmission timeout (:meth:`Ccp.resync`).  A
frame of ours lost on the line puts the peer's decompressor out of step,
but it only finds out (and asks for a reset) when a *compressed* packet
arrives, and that packet is then lost too.  TCP makes this systematic: bulk
data is mostly incompressible and goes plain, so the first compressed packet
after a loss is typically the retransmission of the lost segment -- which
compresses so well precisely because its lost original is in our history,
and which the peer therefore can never decompress.  Every other
retransmission timeout was wasted that way on a noisy line (and each costs a
doubled timeout).  So when the link hears of a retransmission timeout or a
fast retransmit (``PPPLink.peer_lost_frame``, from the Core), we send a
Reset-Ack of our own accord: it clears our compressor at that point
of the output, before the retransmission is compressed, and Linux's
``ppp_ccp_peek`` resets the decompressor on every Reset-Ack it receives,
whatever its Identifier (pppd ignores one it did not ask for).  At most one a
``RESYNC_MS``, and only when something entered the history since its last
clearing.  A peer that ignored it would ask for a reset at the next
compressed packet, as without it.

Counters (``counters``): the automaton's, and ``compressed_out``,
``uncompressed_out`` (through the history but sent as they were),
``bytes_before``/``bytes_after`` (of those), ``decompressed_in``,
``uncompressed_in``, ``decompress_errors``, ``dropped_while_resetting``,
``reset_requests_sent``/``_received``, ``reset_acks_sent``/``_received``,
``resyncs`` (Reset-Acks sent unasked, see above), ``compressed_without_ccp`` (0x00FD with no decompressor running).
"""

import logging
import struct

from pyslirp.ppp import deflate
from pyslirp.ppp.deflate import PROTO_COMP, DeflateCompressor, DeflateDecompressor
from pyslirp.ppp.fsm import CONFACK, CONFREQ, TERMACK, TERMREQ, OptionVerdicts, State, note
from pyslirp.ppp.protocol import ControlProtocol, Transform
from pyslirp.timers import earliest
from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

log = logging.getLogger("pyslirp.ppp")

# Configuration options (RFC 1962 section 3, IANA "PPP Compression Control Protocol" numbers).
CI_PREDICTOR_1 = 1
CI_PREDICTOR_2 = 2
CI_STAC = 17
CI_MPPC = 18
CI_BSD_COMPRESS = 21
CI_DEFLATE_DRAFT = 24        # the number of the Deflate draft; pppd offers it as "deflate(old#)"
CI_DEFLATE = 26              # RFC 1979
DEFLATE_KINDS = (CI_DEFLATE, CI_DEFLATE_DRAFT)

# CCP codes beyond the automaton's 1-7 (RFC 1962 section 5.1).
RESET_REQUEST = 14
RESET_ACK = 15

# RFC 1979 section 3: the option value is one octet of window and method, one of check method.
DEFLATE_METHOD = 8           # "Method ... 8 ... (deflate)", the low four bits
CHECK_SEQUENCE = 0           # "Check-Method ... 0 ... sequence number"
_DEFLATE_VALUE = struct.Struct("!BB")
DEFLATE_VALUE_LEN = _DEFLATE_VALUE.size

RESET_REQUEST_MS = 1000      # pppd's RACKTIMEOUT
RESYNC_MS = 200              # at most one unasked Reset-Ack (resync) in this interval: TCP's least RTO, so
                             # that every retransmission timeout may resync (net/tcp/conn.py, "A noisy line")


def deflate_value(window):
    """The Deflate option value for a window of 2^window octets (RFC 1979 3: window - 8 in the high nibble)."""
    return _DEFLATE_VALUE.pack(((window - 8) << 4) | DEFLATE_METHOD, CHECK_SEQUENCE)


def parse_deflate_value(value):
    """``(window, method, check)`` of a Deflate option value; ParseError if it is not two octets."""
    if len(value) != DEFLATE_VALUE_LEN:
        raise ParseError("bad_option", "Deflate option of %d octets" % (len(value) + 2))
    size_method, check = _DEFLATE_VALUE.unpack(value)
    return (size_method >> 4) + 8, size_method & 0x0F, check


def _method_name(kind, window):
    return "Deflate%s (%d)" % ("(old#)" if kind == CI_DEFLATE_DRAFT else "", window)


class Ccp(ControlProtocol, Transform):
    """CCP for one link: automaton hooks, Deflate both ways, Reset-Request/-Ack."""

    protocol = wppp.PROTO_CCP
    data_protocol = PROTO_COMP
    name = "CCP"
    ncp = True

    def __init__(self, config, output, mru=1500):
        self._link_output = output
        self.mru = mru
        ControlProtocol.__init__(self, config, self._peek_output)
        for key in ("compressed_out", "uncompressed_out", "bytes_before", "bytes_after", "decompressed_in",
                    "uncompressed_in", "decompress_errors", "dropped_while_resetting", "reset_requests_sent",
                    "reset_requests_received", "reset_acks_sent", "reset_acks_received", "resyncs",
                    "lost_frame_resets", "compressed_without_ccp"):
            self.counters[key] = 0
        self.want = [(CI_DEFLATE, deflate.MAX_WINDOW), (CI_DEFLATE_DRAFT, deflate.MAX_WINDOW)]
        self.tried = list(self.want)       # what our next Configure-Request asks for
        self._sent = None                  # the options of our last Configure-Request
        self._ignored = 0                  # Naks we did not follow, this negotiation
        self.receive_method = None         # (kind, window) the peer acknowledged: it compresses towards us
        self.send_method = None            # (kind, window) we acknowledged: we compress towards the peer
        self._his = None                   # the method of the request we are judging / last acknowledged
        self.compressor = None
        self.decompressor = None
        self.resetting = False             # our decompressor is out of step: waiting for a Reset-Ack
        self._repeat = False               # packets were dropped since our last Reset-Request
        self._reset_id = 0
        self.reset_timer = None
        self._resync_at = None             # when the last unasked Reset-Ack went out

    # -- the peek: what starts and stops compression ---------------------------------

    def _peek_output(self, packet):
        code = packet[0]
        if code == CONFREQ:
            # Our request is about what we receive: the peer stops compressing when it gets it.
            self._stop_decompressor("sent Configure-Request")
        elif code in (TERMREQ, TERMACK):
            self._stop("sent %s" % _CODE_NAMES[code])
        elif code == CONFACK:
            self._start_compressor()
        elif code == RESET_ACK and self.compressor is not None:
            self.compressor.reset()
        self._link_output(packet)

    def input(self, info, now):
        if info and info[0] == CONFREQ:
            # The peer's request is about what it receives: it stopped decompressing when it sent it.
            self._stop_compressor("received Configure-Request")
        elif info and info[0] in (TERMREQ, TERMACK):
            self._stop("received %s" % _CODE_NAMES[info[0]])
        self.fsm.input(info, now)

    def _start_compressor(self):
        method = self._his
        self.send_method = method
        if method is None:
            self.compressor = None
            return
        self.compressor = DeflateCompressor(method[1])
        log.debug("CCP: compressing with %s from our Configure-Ack", _method_name(*method))

    def _start_decompressor(self):
        self.receive_method = self._sent[0] if self._sent and self._sent[0] else None
        self.resetting = False
        self.reset_timer = None
        if self.receive_method is None:
            self.decompressor = None
            return
        self.decompressor = DeflateDecompressor(self.mru)
        log.debug("CCP: decompressing %s from the peer's Configure-Ack", _method_name(*self.receive_method))

    def _stop_compressor(self, why):
        if self.compressor is not None:
            log.debug("CCP: compression stopped (%s)", why)
        self.compressor = None

    def _stop_decompressor(self, why):
        if self.decompressor is not None:
            log.debug("CCP: decompression stopped (%s)", why)
        self.decompressor = None
        self.resetting = False
        self.reset_timer = None

    def _stop(self, why):
        self._stop_compressor(why)
        self._stop_decompressor(why)

    # -- the compression stage ------------------------------------------------------

    def compress(self, protocol, info):
        compressor = self.compressor
        if compressor is None or not deflate.compressible(protocol):
            return protocol, info
        before_in, before_out = compressor.bytes_in, compressor.bytes_out
        out = compressor.compress(protocol, info, send_compressed=self.fsm.state == State.OPENED)
        counters = self.counters
        counters["compressed_out" if out[0] == PROTO_COMP else "uncompressed_out"] += 1
        counters["bytes_before"] += compressor.bytes_in - before_in
        counters["bytes_after"] += compressor.bytes_out - before_out
        return out

    def decompress(self, protocol, info):
        decompressor = self.decompressor
        if decompressor is None:
            return protocol, info           # 0x00FD goes on to data_input: counted and dropped
        if protocol == PROTO_COMP:
            if self.resetting:
                self.counters["dropped_while_resetting"] += 1
                self._still_resetting()
                return None
            try:
                protocol, info = decompressor.decompress(info)
            except ParseError as exc:
                self._failed(exc)
                return None
            self.counters["decompressed_in"] += 1
            return protocol, info
        if deflate.compressible(protocol) and not self.resetting:
            try:
                decompressor.incomp(protocol, info)
            except ParseError as exc:
                self._failed(exc)
                return protocol, info
            self.counters["uncompressed_in"] += 1
        return protocol, info

    def data_input(self, info, now):
        note(self.counters, "compressed_without_ccp", logging.DEBUG,
             "CCP: compressed packet while no decompression was negotiated: dropped")

    def _failed(self, exc):
        self.counters["decompress_errors"] += 1
        note(self.counters, "decompress_error_" + exc.reason, logging.INFO,
             "CCP: decompression failed (%s): asking the peer to reset", exc)
        self.resetting = True
        self._repeat = False
        if self.fsm.state == State.OPENED:
            self._send_reset_request(self.fsm.now, new=True)

    def toss(self):
        """A frame from the peer was lost on the line (bad FCS, aborted, too long): ask for a reset at once.

        The lost frame went through the peer's compressor (everything of protocol 0x0001-0x3FFF does, sent
        compressed or not), so our decompressor is out of step from here; waiting for the next compressed
        packet to fail (RFC 1979 section 2.1's sequence check) would also lose that packet, and on a TCP flow
        it is typically the retransmission of the lost segment, which compresses against the lost original
        (see "Resynchronising") and so is lost again, for a retransmission timeout.  A Reset-Request now
        reaches the peer a segment's line time before our duplicate ACK does, so its compressor is clear
        before the retransmission is compressed.  While a reset is already under way, the timer repeats it."""
        if self.decompressor is None or self.fsm.state != State.OPENED:
            return
        if self.resetting:
            self._still_resetting()
            return
        self.counters["lost_frame_resets"] += 1
        self.resetting = True
        self._repeat = False
        self._send_reset_request(self.fsm.now, new=True)

    def _still_resetting(self):
        """A packet was lost while a reset is under way: the timer repeats the Reset-Request; once the timer has
        run out with nothing lost meanwhile, a new one goes at once (pppd's RACK_PENDING is clear by then).
        Without that, a lost Reset-Request followed by a quiet second would leave us dropping the peer's
        compressed packets for good (its retransmissions compress against what we lost)."""
        if self.reset_timer is None and self.fsm.state == State.OPENED:
            self._repeat = False
            self._send_reset_request(self.fsm.now, new=True)
        else:
            self._repeat = True

    def _send_reset_request(self, now, new):
        if new:
            self._reset_id = self.fsm.next_id()
        self.counters["reset_requests_sent"] += 1
        self.fsm.send(RESET_REQUEST, self._reset_id)
        self.reset_timer = now + RESET_REQUEST_MS

    def resync(self, now):
        """The peer may have lost one of our frames (a TCP retransmission timeout): restart both histories.

        Sends a Reset-Ack unasked (see "Resynchronising" above); True if one was sent.
        """
        compressor = self.compressor
        if compressor is None or self.fsm.state != State.OPENED or compressor.seq == 0:
            return False            # nothing entered the history since it was last cleared
        if self._resync_at is not None and now - self._resync_at < RESYNC_MS:
            return False
        self._resync_at = now
        self.counters["resyncs"] += 1
        self.counters["reset_acks_sent"] += 1
        # The Reset-Ack clears our compressor's history as it goes (see _peek_output).
        self.fsm.send(RESET_ACK, self.fsm.next_id())
        return True

    # -- timers -------------------------------------------------------------------------

    def get_timer(self):
        return earliest(self.fsm.timer, self.reset_timer)

    def handle_timer(self, now):
        self.fsm.handle_timer(now)
        if self.reset_timer is not None and now >= self.reset_timer:
            self.reset_timer = None
            if self.resetting and self._repeat and self.fsm.state == State.OPENED:
                self._repeat = False
                self._send_reset_request(now, new=False)

    # -- automaton hooks ------------------------------------------------------------------

    def resetci(self):
        self.tried = list(self.want)
        self._ignored = 0

    def addci(self):
        self._sent = list(self.tried)
        return wppp.build_options([(kind, deflate_value(window)) for kind, window in self.tried])

    def _sent_bytes(self):
        return wppp.build_options([(kind, deflate_value(window)) for kind, window in (self._sent or ())])

    def ackci(self, data):
        """RFC 1661 5.2: the Ack repeats our request."""
        if self._sent is None or bytes(data) != self._sent_bytes():
            return False
        self._start_decompressor()
        return True

    def nakci(self, data):
        asked = dict(self._sent or ())
        tried = dict(self.tried)
        followed = False
        for kind, value in wppp.parse_options(data):
            if kind not in DEFLATE_KINDS or kind not in asked:
                continue
            try:
                window, method, check = parse_deflate_value(value)
            except ParseError:
                window, method, check = 0, 0, 0
            if method != DEFLATE_METHOD or check != CHECK_SEQUENCE or window < deflate.MIN_WINDOW:
                # pppd: "Stop asking for Deflate if we don't understand his suggestion."
                log.info("CCP: peer suggests an unusable Deflate option (%s): no longer asking for Deflate",
                         value.hex())
                tried = {}
                followed = True
                break
            if window < asked[kind]:
                tried = dict((k, window) for k in tried)
                followed = True
        if not followed:
            self._ignored += 1
            if self._ignored >= self.config.max_failure:
                log.info("CCP: peer keeps refusing our Deflate window: no longer asking for it")
                tried = {}
        self.tried = [(kind, tried[kind]) for kind, _ in self.tried if kind in tried]
        return True

    def rejci(self, data):
        """RFC 1661 5.4: the Reject lists options of our request, unmodified."""
        sent = dict((kind, deflate_value(window)) for kind, window in (self._sent or ()))
        options = wppp.parse_options(data)
        for kind, value in options:
            if sent.get(kind) != value:
                return False
        rejected = set(kind for kind, _ in options)
        self.tried = [(kind, window) for kind, window in self.tried if kind not in rejected]
        if rejected and not self.tried:
            log.info("CCP: peer cannot compress with Deflate towards us")
        return True

    def reqci(self, data, reject_if_disagree):
        verdicts = OptionVerdicts(data, reject_if_disagree)
        method = None
        for kind, value in wppp.parse_options(data):
            if kind not in DEFLATE_KINDS or len(value) != DEFLATE_VALUE_LEN:
                # BSD-Compress, Predictor, Stac, MPPC, unknown options, a Deflate option of the wrong length.
                verdicts.reject(kind, value)
                continue
            window, dmethod, check = parse_deflate_value(value)
            if dmethod == DEFLATE_METHOD and check == CHECK_SEQUENCE and \
                    deflate.MIN_WINDOW <= window <= deflate.MAX_WINDOW:
                if method is None:
                    method = (kind, window)
            elif dmethod == DEFLATE_METHOD and check == CHECK_SEQUENCE and window == 8:
                # zlib cannot compress with a 256-octet window (pppd's DEFLATE_MIN_WORKS): offer 512.
                verdicts.nak(kind, value, deflate_value(deflate.MIN_WINDOW))
            else:
                verdicts.nak(kind, value, deflate_value(deflate.MAX_WINDOW))
        code, reply = verdicts.result()
        if verdicts.forced_rejects:
            log.info("CCP: peer keeps asking for Deflate values we Nak; rejecting them (Max-Failure %d)",
                     self.config.max_failure)
        self._his = method if code == CONFACK else None
        return code, reply

    def up(self):
        recv = _method_name(*self.receive_method) if self.receive_method else "none"
        send = _method_name(*self.send_method) if self.send_method else "none"
        log.info("CCP up: receive %s, send %s", recv, send)
        if self.resetting and self.decompressor is not None:
            self._send_reset_request(self.fsm.now, new=True)

    def down(self):
        self._stop("CCP down")

    def finished(self):
        self._stop("CCP finished")

    def extcode(self, code, ident, data):
        if code == RESET_REQUEST:
            self.counters["reset_requests_received"] += 1
            if self.compressor is not None:
                # The Reset-Ack clears our compressor's history as it goes (see _peek_output).
                self.counters["reset_acks_sent"] += 1
                self.fsm.send(RESET_ACK, ident)
            return True
        if code == RESET_ACK:
            self.counters["reset_acks_received"] += 1
            if self.decompressor is not None:
                # Linux clears its compressor with every Reset-Ack it sends, whatever the Identifier.
                self.decompressor.reset()
                if self.resetting:
                    log.debug("CCP: Reset-Ack: decompressing again")
                self.resetting = False
                self._repeat = False
                self.reset_timer = None
            return True
        return False

    def lower_down(self, now, reason):
        ControlProtocol.lower_down(self, now, reason)
        self._stop("lower layer down")


_CODE_NAMES = {CONFREQ: "Configure-Request", TERMREQ: "Terminate-Request", TERMACK: "Terminate-Ack"}
