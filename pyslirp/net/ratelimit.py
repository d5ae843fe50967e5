"""Rate limits shared by the protocol code: a token bucket, and a log throttle.

Theory of operation
-------------------
:class:`TokenBucket` allows ``rate`` events per second on average, and up to
``burst`` at once after a quiet spell.  It keeps milli-tokens in an integer:
one token is 1000 milli-tokens, and ``rate`` tokens per second is exactly
``rate`` milli-tokens per millisecond, so refilling after ``elapsed`` ms adds
``elapsed * rate`` with no division and no rounding drift.  The time is the
caller's ``now`` in integer milliseconds; nothing here reads a clock.  If
``now`` is earlier than the last time the bucket saw, the bucket adds nothing
and keeps its reference point, so the same interval can never be credited
twice: a clock that steps back makes the limit stricter, never looser.

Users: ICMP errors and refusal logs in the stack (RFC 1812 4.3.2.8 asks for
a limit on ICMP errors), and each TCP connection's challenge ACKs and its
answers to out-of-window segments (RFC 5961 section 7: "In order to alleviate
multiple RSTs/SYNs from triggering multiple challenge ACKs, an ACK throttling
mechanism is suggested"; the limit is ``TcpConfig.challenge_ack_limit`` per
second, with bursts of as many).

:func:`every_power_of_two` is the log throttle for things the peer can make
happen at will (malformed input, drops, a protocol bug hit by every packet):
count each reason and log its 1st, 2nd, 4th, 8th ... occurrence, so that n
occurrences cost about log2(n) lines, with neither a clock nor a timer.
"""

MILLI = 1000                    # milli-tokens per token


class TokenBucket(object):
    """``rate`` events per second with bursts of ``burst``; integer milli-tokens, time from the caller.

    The bucket starts full.  ``allowed`` and ``denied`` count the answers of :meth:`allow`.
    """

    def __init__(self, rate, burst, now=0):
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        if int(rate) != rate or int(burst) != burst:
            raise ValueError("rate and burst must be whole numbers")
        self.rate = int(rate)           # tokens per second == milli-tokens per millisecond
        self.capacity = int(burst) * MILLI
        self.tokens = self.capacity
        self.last = now
        self.allowed = 0
        self.denied = 0

    def allow(self, now):
        """Take one token if there is one; False (and counted) when the bucket is empty."""
        elapsed = now - self.last
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.capacity else self.capacity
            self.last = now
        if self.tokens >= MILLI:
            self.tokens -= MILLI
            self.allowed += 1
            return True
        self.denied += 1
        return False

    def wait_ms(self, now):
        """Milliseconds from ``now`` until :meth:`allow` would say yes (0: it would now); takes nothing."""
        tokens = self.tokens
        elapsed = now - self.last
        if elapsed > 0:
            tokens = min(self.capacity, tokens + elapsed * self.rate)
        if tokens >= MILLI:
            return 0
        return -(-(MILLI - tokens) // self.rate)


def every_power_of_two(n):
    """True when the count ``n`` (the first occurrence is 1) is 1, 2, 4, 8, ...: log this one."""
    return n > 0 and n & (n - 1) == 0
