"""Congestion control behind a small interface; NewReno implemented (RFC 5681, RFC 6582).

Theory of operation: the connection owns the sequence-number bookkeeping
(snd_una, the recovery point "recover", duplicate-ACK counting, which segment
to retransmit); the controller owns only the arithmetic on the congestion
window (cwnd) and the slow-start threshold (ssthresh).  The connection calls:

* ``on_ack(acked, now, flight)`` for every ACK that acknowledges new data
  outside fast recovery;
* ``on_dup_ack(flight)`` for a duplicate ACK while in fast recovery
  (inflates the window);
* ``on_recovery_start(flight)`` on the third duplicate ACK (fast retransmit);
* ``on_partial_ack(acked)`` and ``on_recovery_end(flight)`` for the ACKs that
  arrive during fast recovery;
* ``on_rto(flight)`` when the retransmission timer expires;
* ``on_idle(now)`` before sending after an idle period (RFC 5681 4.1).

``window()`` is the number of bytes that may be in flight.  Byte counts are
in bytes of payload; ``mss`` is the sender maximum segment size (SMSS).
``flight`` (FlightSize, bytes sent and not yet acknowledged) is optional
everywhere; without it the controller uses its own cwnd in its place.
"""


class Controller(object):
    """Interface, and a trivial controller with a fixed window (for tests and as a baseline)."""

    def __init__(self, mss, max_window=1 << 30):
        self.mss = max(1, mss)
        self.max_window = max_window
        self.cwnd = max_window
        self.ssthresh = max_window

    def window(self):
        return self.cwnd

    def set_mss(self, mss):
        self.mss = max(1, mss)

    def _flight(self, flight):
        return self.cwnd if flight is None else flight

    def on_ack(self, acked, now, flight=None):
        pass

    def on_dup_ack(self, flight=None):
        pass

    def on_recovery_start(self, flight=None):
        pass

    def on_partial_ack(self, acked):
        pass

    def on_recovery_end(self, flight=None):
        pass

    def on_rto(self, flight=None):
        pass

    def on_idle(self, now):
        pass


def initial_window(mss):
    """RFC 5681 3.1, equation (1): IW from SMSS."""
    if mss > 2190:
        return 2 * mss
    if mss > 1095:
        return 3 * mss
    return 4 * mss


class NewReno(Controller):
    """Slow start, congestion avoidance, fast retransmit and NewReno fast recovery."""

    def __init__(self, mss, max_window=1 << 30):
        super().__init__(mss, max_window)
        self.cwnd = initial_window(self.mss)
        # RFC 5681 3.1: "The initial value of ssthresh SHOULD be set arbitrarily high".
        self.ssthresh = max_window
        self._ca_bytes = 0          # bytes acked towards the next congestion-avoidance increment

    def set_mss(self, mss):
        grow = self.cwnd == initial_window(self.mss)
        super().set_mss(mss)
        if grow:
            self.cwnd = initial_window(self.mss)

    def _cap(self):
        self.cwnd = max(self.mss, min(self.cwnd, self.max_window))

    def on_ack(self, acked, now, flight=None):
        if acked <= 0:
            return
        if self.cwnd < self.ssthresh:
            # RFC 5681 3.1, equation (2): slow start, at most SMSS per ACK.
            self.cwnd += min(acked, self.mss)
        else:
            # RFC 5681 3.1, congestion avoidance with appropriate byte counting (RFC 3465 2.1):
            # one SMSS per cwnd bytes acknowledged.
            self._ca_bytes += acked
            if self._ca_bytes >= self.cwnd:
                self._ca_bytes -= self.cwnd
                self.cwnd += self.mss
        self._cap()

    def _halve(self, flight):
        # RFC 5681 equation (4): ssthresh = max(FlightSize / 2, 2 * SMSS).
        self.ssthresh = max(self._flight(flight) // 2, 2 * self.mss)
        self._ca_bytes = 0

    def on_recovery_start(self, flight=None):
        # RFC 6582 3.2 step 2 / RFC 5681 3.2 steps 2-3.
        self._halve(flight)
        self.cwnd = self.ssthresh + 3 * self.mss
        self._cap()

    def on_dup_ack(self, flight=None):
        # RFC 6582 3.2 step 3: inflate by SMSS for every additional duplicate ACK in recovery.
        # (The connection only calls this while in fast recovery.)
        self.cwnd += self.mss
        self._cap()

    def on_partial_ack(self, acked):
        # RFC 6582 3.2 step 5: deflate by the amount acknowledged, add back SMSS if that was >= SMSS.
        self.cwnd -= acked
        if acked >= self.mss:
            self.cwnd += self.mss
        self._cap()

    def on_recovery_end(self, flight=None):
        # RFC 6582 3.2 step 4 (full acknowledgment), option (1): min(ssthresh, max(FlightSize, SMSS) + SMSS).
        self.cwnd = min(self.ssthresh, max(self._flight(flight), self.mss) + self.mss)
        self._cap()

    def on_rto(self, flight=None):
        # RFC 5681 3.1, equations (4) and the loss window: cwnd = 1 SMSS.
        self._halve(flight)
        self.cwnd = self.mss
        self._cap()

    def on_idle(self, now):
        # RFC 5681 4.1: restart from the restart window after an idle period longer than the RTO.
        self.cwnd = min(self.cwnd, initial_window(self.mss))
        self._cap()
