"""Round-trip time estimation and the retransmission timeout (RFC 6298).

Theory of operation: every valid RTT sample R updates the smoothed RTT and its
variation (RFC 6298 section 2):

    first sample:  SRTT = R, RTTVAR = R / 2
    later:         RTTVAR = (1 - beta) * RTTVAR + beta * |SRTT - R|
                   SRTT   = (1 - alpha) * SRTT + alpha * R
    RTO = SRTT + max(G, 4 * RTTVAR), clamped to [min_rto, max_rto]

with alpha = 1/8, beta = 1/4.  Before the first sample the RTO is the initial
value (1 second, RFC 6298 2.1).  Each expiry doubles the RTO ("back off the
timer", 5.5) up to max_rto; the backed-off value is kept until a new sample
arrives (Karn's algorithm, section 3 and the note after 5.7), which
collapses it back.  The caller is responsible for the other half of Karn's
algorithm: never sampling a retransmitted segment (timestamps excepted).

When samples come from the Timestamps option on many ACKs per round trip the
gains are divided by the number of samples expected per window (RFC 7323
appendix G), so that SRTT and RTTVAR keep their usual memory.

``slack`` (ms, 0 by default) is the least the variation term may be: RTO =
SRTT + max(G, 4 * RTTVAR, slack), as Linux's srtt + max(mdev, rto_min).  On
a serial line every round trip is nearly the same (a frame's line time), so
RTTVAR decays towards zero and the RTO ends a hair above SRTT: a frame that
waited behind another one's tail, or a delayed ACK, then times out and is
sent twice, at 9600 bit/s 1.6 s of line for a 1500-byte frame.  The owner
sets it to what the line's queueing may add to a round trip.

All times are integer milliseconds; the estimator keeps floats internally.
"""

import math


class RttEstimator(object):
    ALPHA = 0.125
    BETA = 0.25

    def __init__(self, initial_rto=1000, min_rto=200, max_rto=60000, granularity=1):
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.srtt = None        # float ms, None before the first sample
        self.rttvar = None
        self.backoff = 0        # number of doublings since the last sample
        self._slack = 0         # ms: the least variation term (see "slack" above)
        self._base = initial_rto

    @property
    def slack(self):
        return self._slack

    @slack.setter
    def slack(self, ms):
        """A new least variation term applies at once, not from the next sample: when a slow line's segments grow
        (interactive traffic has gone), the RTO learnt on small ones would expire under the first large ones."""
        self._slack = ms
        if self.srtt is not None:
            self._base = self._compute()

    @property
    def rto(self):
        """The current retransmission timeout in ms, backoff included."""
        return min(self.max_rto, self._base << self.backoff)

    def sample(self, rtt, expected_samples=1):
        """Feed one RTT measurement (ms); collapses any backoff."""
        rtt = max(0, int(rtt))
        if self.srtt is None:
            # RFC 6298 2.2: the first measurement.
            self.srtt = float(rtt)
            self.rttvar = rtt / 2.0
        else:
            # RFC 6298 2.3 (gains per RFC 7323 appendix G when sampling every ACK).
            n = max(1, expected_samples)
            alpha = self.ALPHA / n
            beta = self.BETA / n
            self.rttvar = (1 - beta) * self.rttvar + beta * abs(self.srtt - rtt)
            self.srtt = (1 - alpha) * self.srtt + alpha * rtt
        self.backoff = 0
        self._base = self._compute()

    def _compute(self):
        return self._clamp(int(math.ceil(self.srtt + max(self.granularity, 4 * self.rttvar, self._slack))))

    def _clamp(self, rto):
        # RFC 6298 2.4 / 2.5: a lower bound (configurable; 1 s in the RFC) and an upper bound (>= 60 s).
        return max(self.min_rto, min(self.max_rto, rto))

    def on_timeout(self):
        """RFC 6298 5.5: the retransmission timer expired: double the RTO."""
        if self.rto < self.max_rto:
            self.backoff += 1

    def clear_backoff(self):
        """Forget the doublings: the expiries were caused by a known outage, not by the path (see
        TcpConnection.resume); the RTO is again the estimate's."""
        self.backoff = 0

    def reset_after_syn_loss(self):
        """RFC 6298 5.7: the SYN(-ACK) was retransmitted and no sample exists: RTO = 3 s for data."""
        if self.srtt is None:
            self.backoff = 0
            self._base = max(self._base, self._clamp(3000))
