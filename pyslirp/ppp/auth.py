"""PAP (RFC 1334) and CHAP with MD5 (RFC 1994): the authenticator (server role) and the peer (client role).

Theory of operation
-------------------
When ``require_auth`` is "pap" or "chap", our LCP Configure-Request asks the
peer to authenticate itself with that protocol; once LCP is Opened the link
enters the Authenticate phase and calls :meth:`start` of the matching server
object here.  Each server answers the peer's packets, reports exactly one
result through ``on_result(user, ok)`` per session, and exposes one deadline
(``get_timer``/``handle_timer``).  Packets leave through ``output(packet)`` as
complete PAP/CHAP packets (code, identifier, length, data) for the link to
frame.  Secrets are ``(user, password)`` pairs from the configuration; they are
compared with :func:`hmac.compare_digest`, and passwords never reach the log.

PAP (RFC 1334 2.2): the peer sends Authenticate-Request (Peer-ID, Password);
we answer Authenticate-Ack or -Nak.  "The Authenticate-Request packet MUST be
repeated until a valid reply packet is received" (2.2.1), so a request that
arrives after we have acknowledged (our Ack was lost) is acknowledged again.
If no request arrives within ``wait_ms`` the authentication fails.

CHAP (RFC 1994 4.1): we send a Challenge with a fresh random value (16 octets
from the injected ``rng``) and our name; the peer answers with
MD5(Identifier || secret || Challenge) and its name (RFC 1994 4.1: the
Response Value is the one-way hash over the Identifier, then the secret, then
the Challenge Value, concatenated).  The Challenge is retransmitted every ``restart_ms`` until a Response
with its Identifier arrives, at most ``max_challenges`` times (pppd resends the
same packet; so do we).  A Response with another Identifier is discarded.  A
repeated Response after Success is answered with Success again (our Success
may have been lost).

A failure (wrong password, unknown user, timeout, a Protocol-Reject of the
protocol while we wait) is reported once; the link then terminates LCP and
goes back to listening.  Both servers are entries of the link's protocol
table (:mod:`pyslirp.ppp.protocol`): LCP going down stops them.

The authenticating peer (the client role, :class:`PapClient`,
:class:`ChapClient`): when our LCP acknowledged the server's
Authentication-Protocol, the link starts the matching client once LCP is
Opened.  PAP sends Authenticate-Request (our user and password) every
``restart_ms`` until an Ack or Nak with its Identifier arrives, at most
``max_requests`` times; CHAP answers every Challenge with MD5(Identifier ||
password || Challenge) and our user as Name, and takes Success or Failure
for the Identifier answered.  Each reports once through ``on_result(user,
ok, message)``.
"""

import hashlib
import hmac
import logging
import struct

from pyslirp.ppp.fsm import note
from pyslirp.ppp.protocol import AFTER_LCP, Protocol
from pyslirp.wire import ppp as wppp
from pyslirp.wire.errors import ParseError

log = logging.getLogger("pyslirp.ppp")

PAP_AUTH_REQ = 1
PAP_AUTH_ACK = 2
PAP_AUTH_NAK = 3

CHAP_CHALLENGE = 1
CHAP_RESPONSE = 2
CHAP_SUCCESS = 3
CHAP_FAILURE = 4

CHALLENGE_LEN = 16
OUR_NAME = b"pyslirp"

_U8 = struct.Struct("!B")

IDLE = "idle"
WAITING = "waiting"
SUCCEEDED = "succeeded"
FAILED = "failed"


def _to_bytes(text):
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def _name(raw):
    return raw.decode("utf-8", "replace")


def chap_md5_response(ident, secret, challenge):
    """RFC 1994 4.1 with MD5 (algorithm 5): MD5(Identifier || secret || Challenge)."""
    return hashlib.md5(_U8.pack(ident & 0xFF) + _to_bytes(secret) + bytes(challenge)).digest()


class _Resender(object):
    """One packet sent every ``restart_ms`` while no answer comes, ``max_sends`` times in all: CHAP's
    Challenge (RFC 1994 4.1) and PAP's Authenticate-Request (RFC 1334 2.2.1) both keep a Restart timer
    and a Max-Configure counter, as the RFC 1661 4.6 automaton does.  The class using it supplies
    ``state``, ``timer``, ``_output``, ``_count``, the counter it bumps per send (``sent_counter``) and
    what happens when every send went unanswered (``_unanswered``)."""

    sent_counter = ""

    def __init__(self, restart_ms, max_sends):
        self.restart_ms = restart_ms
        self.max_sends = max_sends
        self.sent = 0
        self._packet = b""

    def _send_first(self, packet, now):
        self._packet = packet
        self.state = WAITING
        self.sent = 0
        self._send(now)

    def _send(self, now):
        self.sent += 1
        self._count(self.sent_counter)
        self._output(self._packet)
        self.timer = now + self.restart_ms

    def handle_timer(self, now):
        if self.timer is None or now < self.timer:
            return
        self.timer = None
        if self.state != WAITING:
            return
        if self.sent >= self.max_sends:
            self._unanswered()
            return
        self._send(now)

    def _unanswered(self):
        raise NotImplementedError


class _Auth(Protocol):
    """A protocol-table entry of either side: packets are accepted once LCP is Opened (Authenticate and
    Network phases); LCP going down forgets the session."""

    method = ""
    protocol = 0
    phases = AFTER_LCP

    def __init__(self, output, on_result):
        self._output = output
        self._on_result = on_result
        self.state = IDLE
        self.timer = None
        self.counters = {}

    def _count(self, reason):
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def stop(self):
        """LCP went down: forget this session."""
        self.state = IDLE
        self.timer = None

    def lower_down(self, now, reason):
        self.stop()

    def get_timer(self):
        return self.timer


class _Server(_Auth):
    """The authenticator: we check who the peer is."""

    def __init__(self, secrets, output, on_result):
        _Auth.__init__(self, output, on_result)
        self.secrets = tuple((_to_bytes(user), _to_bytes(password)) for user, password in secrets)
        self.user = ""

    def _secret(self, user):
        """The password for ``user`` (bytes), or None; the scan does not stop early."""
        found = None
        for name, password in self.secrets:
            if hmac.compare_digest(name, user) and found is None:
                found = password
        return found

    def protocol_rejected(self, now):
        """The peer will not authenticate with this protocol: a failure, if we were waiting for it."""
        if self.state == WAITING:
            self._finish("", False)

    def _finish(self, user, ok):
        self.state = SUCCEEDED if ok else FAILED
        self.timer = None
        self.user = user
        self._on_result(user, ok)


class PapServer(_Server):
    """RFC 1334 PAP, authenticator side."""

    method = "pap"
    protocol = wppp.PROTO_PAP

    def __init__(self, secrets, output, on_result, wait_ms=30000):
        _Server.__init__(self, secrets, output, on_result)
        self.wait_ms = wait_ms

    def start(self, now):
        self.state = WAITING
        self.timer = now + self.wait_ms

    def handle_timer(self, now):
        if self.timer is None or now < self.timer:
            return
        self.timer = None
        if self.state == WAITING:
            log.info("PAP: no Authenticate-Request from the peer")
            self._count("timeout")
            self._finish("", False)

    def input(self, packet, now):
        try:
            code, ident, data = wppp.parse_cp(packet)
            if code != PAP_AUTH_REQ:
                self._count("unexpected_code")
                return
            user, password = self._parse_request(data)
        except ParseError as exc:
            note(self.counters, "malformed", logging.DEBUG, "PAP: malformed packet dropped: %s", exc)
            return
        if self.state == WAITING:
            secret = self._secret(user)
            ok = secret is not None and hmac.compare_digest(secret, password)
            self._reply(ident, ok)
            log.debug("PAP: user %r %s", _name(user), "authenticated" if ok else "failed to authenticate")
            self._finish(_name(user), ok)
        elif self.state == SUCCEEDED and _name(user) == self.user:
            # Our Ack was lost and the peer retransmits: acknowledge again.
            secret = self._secret(user)
            self._reply(ident, secret is not None and hmac.compare_digest(secret, password))
        else:
            self._count("not_waiting")

    @staticmethod
    def _parse_request(data):
        """Peer-ID Length, Peer-ID, Passwd-Length, Password (RFC 1334 2.2.1)."""
        if not data:
            raise ParseError("too_short", "no Peer-ID length")
        n = data[0]
        if 1 + n + 1 > len(data):
            raise ParseError("bad_length", "Peer-ID overruns the packet")
        user = data[1:1 + n]
        m = data[1 + n]
        if 2 + n + m > len(data):
            raise ParseError("bad_length", "Password overruns the packet")
        return user, data[2 + n:2 + n + m]

    def _reply(self, ident, ok):
        message = b"Login ok" if ok else b"Login incorrect"
        self._output(wppp.build_cp(PAP_AUTH_ACK if ok else PAP_AUTH_NAK, ident,
                                   _U8.pack(len(message)) + message))


class ChapServer(_Resender, _Server):
    """RFC 1994 CHAP with MD5, authenticator side."""

    method = "chap"
    protocol = wppp.PROTO_CHAP
    sent_counter = "challenges_sent"

    def __init__(self, secrets, output, on_result, rng, restart_ms=3000, max_challenges=10):
        _Server.__init__(self, secrets, output, on_result)
        _Resender.__init__(self, restart_ms, max_challenges)
        self.rng = rng
        self.ident = rng.getrandbits(8)
        self.challenge = b""

    def start(self, now):
        self.ident = (self.ident + 1) & 0xFF
        self.challenge = self.rng.getrandbits(8 * CHALLENGE_LEN).to_bytes(CHALLENGE_LEN, "big")
        self._send_first(wppp.build_cp(CHAP_CHALLENGE, self.ident,
                                       _U8.pack(CHALLENGE_LEN) + self.challenge + OUR_NAME), now)

    def _unanswered(self):
        log.info("CHAP: no Response to %d Challenges", self.sent)
        self._count("timeout")
        self._finish("", False)

    def input(self, packet, now):
        try:
            code, ident, data = wppp.parse_cp(packet)
            if code != CHAP_RESPONSE:
                self._count("unexpected_code")
                return
            if not data or 1 + data[0] > len(data):
                raise ParseError("bad_length", "Value-Size overruns the packet")
        except ParseError as exc:
            note(self.counters, "malformed", logging.DEBUG, "CHAP: malformed packet dropped: %s", exc)
            return
        size = data[0]
        value = data[1:1 + size]
        user = data[1 + size:]
        if ident != self.ident or self.state == IDLE:
            self._count("stale_response")
            return
        if self.state == SUCCEEDED:
            if _name(user) == self.user:
                self._output(wppp.build_cp(CHAP_SUCCESS, ident, b"Welcome"))
            return
        if self.state != WAITING:
            return
        secret = self._secret(user)
        ok = secret is not None and hmac.compare_digest(
            chap_md5_response(ident, secret, self.challenge), bytes(value))
        if ok:
            self._output(wppp.build_cp(CHAP_SUCCESS, ident, b"Welcome"))
        else:
            self._output(wppp.build_cp(CHAP_FAILURE, ident, b"Access denied"))
        log.debug("CHAP: user %r %s", _name(user), "authenticated" if ok else "failed to authenticate")
        self._finish(_name(user), ok)


# -- the authenticating peer (the client role) -----------------------------------------------


class _Client(_Auth):
    """The authenticating peer (the client role): we prove who we are to the server."""

    def __init__(self, user, password, output, on_result):
        _Auth.__init__(self, output, on_result)
        self.user = _to_bytes(user)
        self.password = _to_bytes(password)

    def protocol_rejected(self, now):
        if self.state == WAITING:
            self._finish(False, "the server rejects %s" % self.method.upper())

    def _finish(self, ok, message):
        self.state = SUCCEEDED if ok else FAILED
        self.timer = None
        self._on_result(_name(self.user), ok, message)


class PapClient(_Resender, _Client):
    """RFC 1334 PAP, the peer side: Authenticate-Request until an Ack or Nak comes (2.2.1)."""

    method = "pap"
    protocol = wppp.PROTO_PAP
    sent_counter = "requests_sent"

    def __init__(self, user, password, output, on_result, restart_ms=3000, max_requests=10):
        _Client.__init__(self, user, password, output, on_result)
        _Resender.__init__(self, restart_ms, max_requests)
        self.ident = 0

    def start(self, now):
        self.ident = (self.ident + 1) & 0xFF
        # Peer-ID Length, Peer-ID, Passwd-Length, Password (RFC 1334 2.2.1); at most 255 octets each.
        user = self.user[:255]
        password = self.password[:255]
        self._send_first(wppp.build_cp(PAP_AUTH_REQ, self.ident,
                                       _U8.pack(len(user)) + user + _U8.pack(len(password)) + password), now)

    def _unanswered(self):
        log.info("PAP: no answer to %d Authenticate-Requests", self.sent)
        self._finish(False, "no answer from the server")

    def input(self, packet, now):
        try:
            code, ident, data = wppp.parse_cp(packet)
        except ParseError as exc:
            note(self.counters, "malformed", logging.DEBUG, "PAP: malformed packet dropped: %s", exc)
            return
        if code not in (PAP_AUTH_ACK, PAP_AUTH_NAK) or self.state != WAITING or ident != self.ident:
            # "...the Identifier field MUST be copied from the Identifier field of the
            # Authenticate-Request which caused this reply" (2.2.2): anything else is stale.
            self._count("unexpected")
            return
        message = _name(data[1:1 + data[0]]) if data and 1 + data[0] <= len(data) else ""
        ok = code == PAP_AUTH_ACK
        log.debug("PAP: the server answers %s%s", "Ack" if ok else "Nak", ": %s" % message if message else "")
        self._finish(ok, message or ("accepted" if ok else "refused"))


class ChapClient(_Client):
    """RFC 1994 CHAP with MD5, the peer side: each Challenge gets MD5(Identifier || secret || Challenge).

    The server may challenge again at any time during the session (RFC 1994 2: "at random intervals"):
    every Challenge is answered; the result is reported once, at the first Success or Failure.  A
    Challenge with the Identifier of the last one answered is a retransmission (our Response was lost):
    the same Response goes again.  If no Challenge comes within ``wait_ms`` the authentication fails.
    """

    method = "chap"
    protocol = wppp.PROTO_CHAP

    def __init__(self, user, password, output, on_result, wait_ms=30000):
        _Client.__init__(self, user, password, output, on_result)
        self.wait_ms = wait_ms
        self.responses = 0
        self._answered = None       # (identifier, challenge) of the last Response sent

    def start(self, now):
        self.state = WAITING
        self.timer = now + self.wait_ms
        self._answered = None

    def handle_timer(self, now):
        if self.timer is None or now < self.timer:
            return
        self.timer = None
        if self.state == WAITING:
            log.info("CHAP: no Challenge from the server")
            self._finish(False, "no challenge from the server")

    def input(self, packet, now):
        try:
            code, ident, data = wppp.parse_cp(packet)
            if code == CHAP_CHALLENGE and (not data or 1 + data[0] > len(data) or not data[0]):
                raise ParseError("bad_length", "Value-Size overruns the packet")
        except ParseError as exc:
            note(self.counters, "malformed", logging.DEBUG, "CHAP: malformed packet dropped: %s", exc)
            return
        if self.state == IDLE:
            self._count("not_started")
            return
        if code == CHAP_CHALLENGE:
            challenge = bytes(data[1:1 + data[0]])
            value = chap_md5_response(ident, self.password, challenge)
            self._answered = (ident, challenge)
            self.responses += 1
            self._output(wppp.build_cp(CHAP_RESPONSE, ident, _U8.pack(len(value)) + value + self.user))
            return
        if code in (CHAP_SUCCESS, CHAP_FAILURE):
            if self._answered is None or ident != self._answered[0]:
                self._count("stale_result")
                return
            ok = code == CHAP_SUCCESS
            if self.state == WAITING:
                message = _name(data)
                log.debug("CHAP: the server answers %s%s", "Success" if ok else "Failure",
                          ": %s" % message if message else "")
                self._finish(ok, message or ("accepted" if ok else "refused"))
            elif self.state == SUCCEEDED and not ok:
                # A later re-challenge failed: the server will end the session.
                self._finish(False, _name(data) or "refused on a re-challenge")
            return
        self._count("unexpected_code")
