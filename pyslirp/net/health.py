"""Service health: one circuit breaker per service target.  Sans-IO.

Theory of operation
-------------------
A ``[services.PORT]`` leads to its ``host:port`` and, optionally, to the
targets of its ``fallback`` list, tried in that order when a connect fails
(the runtime's service thread does the trying; net/flows.py puts the targets
on the flow's Route).  Each target -- ``host``, ``port`` and ``via``, the
way it is reached, since a target behind a proxy can fail where the same
address reached directly does not -- has one :class:`Breaker` here, shared
by every service that names it.

The breaker is the classic three-state circuit breaker::

    CLOSED --(failures consecutive failed connects)--> OPEN
    OPEN --(cooldown elapsed; a new flow asks)--> HALF_OPEN (that flow's connect is the one trial)
    HALF_OPEN --trial connected--> CLOSED        HALF_OPEN --trial failed--> OPEN (a new cooldown)
    HALF_OPEN --trial never made (the flow went, or connected to an earlier target)--> OPEN, trial free again
    HALF_OPEN --no result within a cooldown--> HALF_OPEN with the next flow as the trial

While a target is OPEN, or HALF_OPEN with its trial in flight, new flows
skip it: they go to the next target, and when no target is left the flow is
refused at once (an RST), instead of each client SYN waiting for a connect
timeout to a service that is down.  A success resets the count of
consecutive failures.  ``failures = 0`` turns the breakers off: every target
is always tried.

Nothing here runs on a timer: an OPEN breaker whose cooldown has passed
turns HALF_OPEN when the next flow asks (:meth:`Health.usable`), so its
state reads ``open`` until then.  Time is the caller's ``now`` in integer
milliseconds; the stack thread is the only caller.

Every state change is logged (warning when a target goes down, info when it
comes back) and queued as a :class:`BreakerChange` for the metrics and the
audit log (:meth:`Health.take_changes`); ``transitions`` counts them by the
state entered, and :meth:`Health.states` maps each target's label to its
state.  The table holds the configured targets only, so it is bounded by
the configuration: :meth:`Health.track` keeps exactly the targets the
configuration names.
"""

import logging
from collections import namedtuple
from dataclasses import dataclass

log = logging.getLogger("pyslirp.net.health")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)

DEFAULT_FAILURES = 5
DEFAULT_COOLDOWN = 30000        # ms
MAX_REASON = 200                # characters of the last failure's reason kept for the log
MAX_CHANGES = 256               # state changes queued for take_changes() (more are counted, not queued)


class Target(namedtuple("Target", "host port via")):
    """One place a service's flows connect to: ``host``, ``port`` and ``via`` (direct, socks5, http)."""
    __slots__ = ()

    @property
    def label(self):
        """``127.0.0.1:22``, ``[::1]:22`` or ``db.example:5432 via socks5``: for logs and metrics."""
        host = "[%s]" % self.host if ":" in self.host else self.host
        text = "%s:%d" % (host, self.port)
        if self.via != "direct":
            text += " via " + self.via
        return text


@dataclass(frozen=True)
class BreakerChange:
    """A breaker changed state: ``target`` (its label), the new ``state``, the consecutive ``failures`` so far
    and the ``reason`` of the last failure (empty when it closed)."""
    target: str
    state: str
    failures: int
    reason: str = ""


class Breaker(object):
    """The state of one target (see the module docstring); changed only through ``Health._set``."""
    __slots__ = ("target", "state", "failures", "until", "trial", "trial_at", "reason")

    def __init__(self, target):
        self.target = target
        self.state = CLOSED
        self.failures = 0       # consecutive failed connects
        self.until = 0          # OPEN: ms when the cooldown ends
        self.trial = None       # HALF_OPEN: the flow whose connect is the trial
        self.trial_at = 0       # ... since when (a trial never reported is given up after a cooldown)
        self.reason = ""        # the last failure's reason


class Health(object):
    """The breakers of every service target.  ``failures``: consecutive failures that open a breaker (0 = never);
    ``cooldown``: ms an open breaker skips its target before one trial connect."""

    def __init__(self, failures=DEFAULT_FAILURES, cooldown=DEFAULT_COOLDOWN):
        self.failures = failures
        self.cooldown = cooldown
        self.breakers = {}              # Target -> Breaker
        self.transitions = dict((state, 0) for state in STATES)    # state entered -> count
        self.skipped = 0                # targets skipped for a new flow because their breaker was open
        self._changes = []

    def configure(self, failures, cooldown):
        """New thresholds (a reload); breakers keep their state.  Lowering ``failures`` opens nothing by itself:
        the next failure decides."""
        self.failures = failures
        self.cooldown = cooldown
        if not failures:
            for breaker in self.breakers.values():
                breaker.failures = 0
                breaker.trial = None
                if breaker.state != CLOSED:
                    self._set(breaker, CLOSED, logging.INFO, "breakers turned off")

    def track(self, targets):
        """The configured targets: each gets a breaker (closed when new), and those of targets no longer
        configured are forgotten."""
        wanted = set(targets)
        for target in [t for t in self.breakers if t not in wanted]:
            del self.breakers[target]
        for target in wanted:
            self._breaker(target)

    def _breaker(self, target):
        breaker = self.breakers.get(target)
        if breaker is None:
            breaker = self.breakers[target] = Breaker(target)
        return breaker

    def state(self, target):
        breaker = self.breakers.get(target)
        return breaker.state if breaker is not None else CLOSED

    def states(self):
        """``{target label: state}`` of every known target."""
        return dict((t.label, b.state) for t, b in self.breakers.items())

    def open_count(self):
        """Targets whose breaker is not closed."""
        return sum(1 for b in self.breakers.values() if b.state != CLOSED)

    def take_changes(self):
        changes, self._changes = self._changes, []
        return changes

    # -- the flow's side ---------------------------------------------------------------------------------------

    def usable(self, target, flow, now):
        """May a new ``flow`` try ``target``?  An open breaker past its cooldown makes ``flow`` its trial."""
        breaker = self.breakers.get(target)
        if breaker is None or breaker.state == CLOSED or not self.failures:
            return True
        if breaker.state == OPEN and now >= breaker.until:
            breaker.trial = flow
            breaker.trial_at = now
            self._set(breaker, HALF_OPEN, logging.DEBUG, "cooldown over, one trial connect")
            return True
        if breaker.state == HALF_OPEN and now >= breaker.trial_at + self.cooldown:
            # The trial never reported (its flow was refused later, or lost): another flow is the trial.
            breaker.trial = flow
            breaker.trial_at = now
            return True
        self.skipped += 1
        return False

    def retry_in(self, target, now):
        """ms until an open ``target`` may be tried again (0: it may, or its trial is in flight)."""
        breaker = self.breakers.get(target)
        if breaker is None or breaker.state != OPEN:
            return 0
        return max(0, breaker.until - now)

    def succeeded(self, target, flow, now):
        """A connect to ``target`` worked."""
        breaker = self.breakers.get(target)
        if breaker is None:
            return
        breaker.failures = 0
        breaker.trial = None
        if breaker.state != CLOSED:
            self._set(breaker, CLOSED, logging.INFO, "up again")

    def failed(self, target, flow, reason, now):
        """A connect to ``target`` failed (refused, unreachable, timed out, or refused by its proxy)."""
        breaker = self._breaker(target)
        breaker.failures += 1
        breaker.reason = reason[:MAX_REASON]
        if not self.failures:
            return
        seconds = self.cooldown // 1000
        if breaker.state == HALF_OPEN:
            breaker.trial = None
            breaker.until = now + self.cooldown
            self._set(breaker, OPEN, logging.INFO, "the trial connect failed (%s); skipping it for %d s more"
                      % (breaker.reason, seconds))
        elif breaker.state == CLOSED and breaker.failures >= self.failures:
            breaker.until = now + self.cooldown
            self._set(breaker, OPEN, logging.WARNING, "down after %d failed connects in a row (last: %s); "
                      "skipping it for %d s" % (breaker.failures, breaker.reason, seconds))
        elif breaker.state == OPEN:
            # A flow admitted before the breaker opened failed too: the cooldown runs from the latest failure.
            breaker.until = max(breaker.until, now + self.cooldown)

    def release(self, target, flow):
        """``flow`` holds the trial of ``target`` but never tried it: another flow may."""
        breaker = self.breakers.get(target)
        if breaker is not None and breaker.state == HALF_OPEN and breaker.trial == flow:
            breaker.trial = None
            # ``until`` has passed: the next flow that asks is the trial.
            self._set(breaker, OPEN, logging.DEBUG, "trial not made, the next flow tries")

    # -- internals ----------------------------------------------------------------------------------------------

    def _set(self, breaker, state, level, what):
        """The one place a breaker changes state: counted, logged, queued for take_changes()."""
        old = breaker.state
        if old == state:
            return
        breaker.state = state
        self.transitions[state] += 1
        log.log(level, "service target %s: %s -> %s: %s", breaker.target.label, old, state, what)
        if len(self._changes) < MAX_CHANGES:
            self._changes.append(BreakerChange(breaker.target.label, state, breaker.failures,
                                               breaker.reason if state != CLOSED else ""))
