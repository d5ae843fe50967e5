"""Answering clients that talk before PPP: a Windows direct cable connection and a modem dialler (sans-IO).

Theory of operation
-------------------
Some clients do not start PPP at once.  Windows' "direct cable connection"
(and RAS on a null-modem cable) sends ``CLIENT`` and waits for the host to
answer ``CLIENTSERVER``.  A client set up for a modem sends Hayes commands --
``AT``, ``ATZ``, ``ATE0V1``, ``AT&K0`` ... -- each answered ``OK``, then dials
(``ATDT5551234``) and waits for ``CONNECT 115200`` before it starts PPP.
:class:`Answerer` sits in front of the HDLC deframer and plays that part: raw
line bytes go in (:meth:`receive`, with ``now`` in integer milliseconds), the
bytes meant for the deframer come out, the answers are taken with
:meth:`take_output`, and :meth:`take_events` says when a call was connected
(``CALL``: ``CONNECT`` or ``CLIENTSERVER`` sent, PPP follows), when the client
escaped to command mode (``ESCAPED``) and when it hung up (``HANGUP``).

States: ``WAITING`` (nothing recognisable seen: the line may well be a plain
PPP client), ``COMMAND`` (the client is talking to its "modem"), ``ONLINE``
(after ``CONNECT`` or ``CLIENTSERVER``: PPP is expected), ``PPP``.  The first
flag octet 0x7E in any state starts PPP, and everything from that octet on
goes to the deframer unchanged and undelayed: the first frame is never eaten.
Before it, bytes are chatter: lines ending in CR or LF are commands, and
``CLIENT`` is recognised anywhere (Windows sends it without a line end).  A
command line is one that starts with ``AT`` (any case; ``A/`` repeats the
last one); anything else is ignored, as a modem ignores it.  Every buffer is
bounded (``MAX_LINE``).

The commands a dialler uses: ``D`` (dial: ``CONNECT <speed>`` and ONLINE;
the rest of the line is the number), ``A`` (answer: the same), ``O`` (back
online after an escape), ``H`` (hang up: ``OK``; if a session was suspended,
``HANGUP``), ``Z`` and ``&F`` (defaults), ``E`` (echo), ``V`` (verbose or
numeric result codes: 0 OK, 1 CONNECT, 3 NO CARRIER, 4 ERROR), ``Q`` (quiet);
every other command (``&K0``, ``S0=0``, ``L``, ``M``, ``X4``, ``I`` ...) is
accepted with ``OK``.  With echo on (the Hayes default, ``E1``) a command line
is echoed before its answer.

When the link's PPP session ends (LCP terminated), :meth:`session_ended`
returns to ``WAITING``: the next client, or the same one dialling again, is
answered as the first one was.

Escape (Hayes ``+++`` with guard times, S2/S12): in any state but command
mode, after at least
``guard_ms`` of silence, the three characters ``+++`` followed by
``guard_ms`` of silence return to command mode with ``OK`` (``ESCAPED``: the
link drops what the deframer holds of them).  The ``+`` characters reach the
deframer like any other byte until the silence after them has been seen, so a
PPP stream is never held back; a PPP frame cannot look like an escape, since
after a silence a frame starts with the flag.  In command mode after an
escape, ``ATH`` (or dialling again) hangs the session up (``HANGUP``) and
``ATO`` resumes it.

:attr:`Answerer.quiet` is true while the client is in command mode: a modem
would not pass our PPP frames then, and a dialler reading its ``OK`` should
not see them; the link holds its frames back (they are dropped, as on a line
without carrier; LCP's timer sends them again).
"""

import logging

log = logging.getLogger("pyslirp.ppp")

FLAG = b"\x7e"
MAX_LINE = 256               # longest command line kept; longer chatter is dropped
GUARD_MS = 1000              # Hayes S12 default: 50 fiftieths of a second

WAITING = "waiting"
COMMAND = "command"
ONLINE = "online"
PPP = "ppp"

ESCAPED = "escaped"          # events
HANGUP = "hangup"
CALL = "call"                # CONNECT or CLIENTSERVER sent: a new call, PPP follows

_CRLF = b"\r\n"
_RESULTS = {"OK": 0, "CONNECT": 1, "NO CARRIER": 3, "ERROR": 4}


class Answerer(object):
    """The pre-PPP dialogue of one serial line (see the module docstring)."""

    def __init__(self, speed=115200, guard_ms=GUARD_MS):
        self.speed = speed
        self.guard_ms = guard_ms
        self.state = WAITING
        self.suspended = False       # a session was escaped from and not hung up yet
        self.echo = True
        self.verbose = True
        self.quiet_results = False
        self.counters = {"commands": 0, "dials": 0, "client_server": 0, "escapes": 0, "hangups": 0,
                         "chatter_bytes": 0, "dropped_lines": 0}
        self._line = bytearray()
        self._last_command = b""
        self._out = []
        self._events = []
        self._last_rx = None         # time of the last byte received
        self._plus = 0               # "+" seen of a possible escape
        self._escape_at = None       # when the silence after "+++" completes the escape

    # -- what the link reads -----------------------------------------------------------

    @property
    def quiet(self):
        """True while our PPP frames must not go on the line (the client talks to its modem)."""
        return self.state == COMMAND

    @property
    def started(self):
        """PPP has started (a flag was seen)."""
        return self.state == PPP

    def take_output(self):
        out = b"".join(self._out)
        self._out = []
        return out

    def take_events(self):
        events, self._events = self._events, []
        return events

    def get_timer(self):
        return self._escape_at

    def handle_timer(self, now):
        if self._escape_at is not None and now >= self._escape_at:
            self._escape_at = None
            self._plus = 0
            self.counters["escapes"] += 1
            log.info("answer: +++ escape: the client is talking to its modem")
            self.state = COMMAND
            self.suspended = True
            self._line = bytearray()
            self._events.append(ESCAPED)
            self._result("OK")

    # -- input ----------------------------------------------------------------------------

    def receive(self, data, now):
        """Raw line bytes; returns those meant for the deframer."""
        if not data:
            return b""
        if not isinstance(data, bytes):
            data = bytes(data)
        silent = self._last_rx is None or now - self._last_rx >= self.guard_ms
        self._last_rx = now
        if self.state != COMMAND:
            self._watch_escape(data, now, silent)
        if self.state == PPP:
            return data
        if self.state == ONLINE:
            flag = data.find(FLAG)
            if flag < 0:
                return b""
            self._start_ppp()
            return data[flag:]
        flag = data.find(FLAG)
        if flag >= 0:
            self._chatter(data[:flag])
            self._start_ppp()
            return data[flag:]
        self._chatter(data)
        return b""

    def session_ended(self):
        """The PPP session is over (LCP terminated): what the next client says before PPP is answered again.

        The line stays "online" for the escape: a dialler's disconnect script (``+++``, ``ATH``) gets its
        ``OK``s.
        """
        if self.state == PPP:
            self.state = WAITING
            self._line = bytearray()

    def _start_ppp(self):
        if self.state != PPP:
            log.debug("answer: PPP started")
        self.state = PPP
        self.suspended = False
        self._line = bytearray()

    def _watch_escape(self, data, now, silent):
        """Hayes escape: silence, "+++", silence (the last silence is the timer)."""
        if self._plus or (silent and data[:1] == b"+"):
            if data.strip(b"+") or self._plus + len(data) > 3:
                self._plus = 0
                self._escape_at = None
                return
            self._plus += len(data)
            if self._plus == 3:
                self._escape_at = now + self.guard_ms
        elif self._escape_at is not None:
            self._escape_at = None
            self._plus = 0

    def _chatter(self, data):
        if not data:
            return
        self.counters["chatter_bytes"] += len(data)
        line = self._line
        line += data
        while self.state in (WAITING, COMMAND):
            ends = [i for i in (line.find(b"\r"), line.find(b"\n")) if i >= 0]
            end = min(ends) if ends else len(line)
            text = bytes(line[:end])
            if b"CLIENT" in text and not self._is_command(text):
                self._client_server()
                break
            if not ends:
                break
            del line[:end + 1]
            self._command_line(text)
        if self.state not in (WAITING, COMMAND):
            # Connected: what follows is the call's data, and only PPP (from its first flag) counts.
            del line[:]
        elif len(line) > MAX_LINE:
            self.counters["dropped_lines"] += 1
            del line[:]

    @staticmethod
    def _is_command(line):
        return bytes(line).lstrip().upper().startswith(b"AT")

    def _client_server(self):
        self.counters["client_server"] += 1
        log.info("answer: CLIENT from a direct cable connection: CLIENTSERVER")
        self._out.append(b"CLIENTSERVER")
        self.state = ONLINE
        self._events.append(CALL)

    # -- Hayes commands -------------------------------------------------------------------

    def _command_line(self, text):
        stripped = text.strip()
        upper = stripped.upper()
        if upper.startswith(b"A/"):
            upper = self._last_command
            if not upper:
                return
        elif not upper.startswith(b"AT"):
            return                      # not a command: a modem ignores it
        if self.state == WAITING:
            log.info("answer: the client speaks to a modem (%s): answering as one",
                     stripped[:40].decode("ascii", "replace"))
        self.state = COMMAND
        self.counters["commands"] += 1
        self._last_command = upper
        if self.echo:
            self._out.append(stripped + b"\r")
        self._run(upper[2:])

    def _run(self, cmds):
        i, n = 0, len(cmds)
        while i < n:
            c = cmds[i:i + 1]
            i += 1
            if c in (b" ", b"\t"):
                continue
            if c == b"D":
                # ATD[T|P]number: tone or pulse, then the number (whatever it is, the call connects).
                number = cmds[i:].lstrip(b" TP")
                self._connect("dial %s" % number.decode("ascii", "replace").strip())
                return
            if c == b"A":
                self._connect("answer")
                return
            if c == b"&" or c == b"\\" or c == b"%":
                i += 1                   # the letter after the prefix
            elif c == b"S":
                # S-register: Sn=v or Sn? -- accepted, not kept.
                while i < n and cmds[i:i + 1] not in (b"=", b"?") and cmds[i:i + 1].isdigit():
                    i += 1
                if i < n and cmds[i:i + 1] == b"?":
                    i += 1
                    self._out.append(_CRLF + b"000" + _CRLF if self.verbose else b"000\r")
                    continue
                if i < n and cmds[i:i + 1] == b"=":
                    i += 1
            digits = i
            while i < n and cmds[i:i + 1].isdigit():
                i += 1
            arg = int(cmds[digits:i]) if i > digits else 0
            if c == b"E":
                self.echo = arg == 1
            elif c == b"V":
                self.verbose = arg == 1
            elif c == b"Q":
                self.quiet_results = arg == 1
            elif c == b"Z":
                self.echo, self.verbose, self.quiet_results = True, True, False
            elif c == b"H":
                if arg == 0:
                    self._hangup("ATH")
            elif c == b"O":
                if self.suspended:
                    log.info("answer: ATO: back online")
                    self.state = PPP
                    self.suspended = False
                    self._result("CONNECT", speed=True)
                    return
                self._result("NO CARRIER")
                return
        self._result("OK")

    def _connect(self, what):
        if self.suspended:
            self._hangup("new call")
        self.counters["dials"] += 1
        log.info("answer: %s: CONNECT %d", what, self.speed)
        self.state = ONLINE
        self._plus = 0
        self._escape_at = None
        self._result("CONNECT", speed=True)
        self._events.append(CALL)

    def _hangup(self, why):
        if not self.suspended:
            return
        self.suspended = False
        self.counters["hangups"] += 1
        log.info("answer: %s: hanging up the session", why)
        self._events.append(HANGUP)

    def _result(self, name, speed=False):
        if self.quiet_results:
            return
        if self.verbose:
            text = name.encode("ascii") + (b" %d" % self.speed if speed else b"")
            self._out.append(_CRLF + text + _CRLF)
        else:
            self._out.append(b"%d\r" % _RESULTS[name])
