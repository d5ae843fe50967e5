"""A heap of deadlines keyed by owner, with lazy re-arming.

Theory of operation: every timed component (the LCP restart timer, one TCP
connection, the fragment reassembler, ...) is a *key*.  ``schedule(key, t)``
records the key's single deadline in a dict.  The heap only ever needs an
entry at or before the key's real deadline:

* moving a deadline *later* (the common case: a TCP ACK re-arms the
  retransmission timer) only updates the dict; the old, earlier heap entry
  pops, sees the later deadline and is pushed again once.  Per-ACK re-arming
  therefore costs O(1) and does not churn the heap;
* moving a deadline *earlier* pushes a new entry; the stale one is skipped
  when popped;
* ``cancel(key)`` drops the dict entry; its heap entries are skipped.

Times are integer milliseconds supplied by the caller; nothing here reads a
clock.
"""

import heapq
import itertools


class TimerQueue(object):
    def __init__(self):
        self._heap = []
        self._deadline = {}
        self._tie = itertools.count()

    def __len__(self):
        return len(self._deadline)

    def __contains__(self, key):
        return key in self._deadline

    def deadline(self, key):
        """The key's deadline, or None."""
        return self._deadline.get(key)

    def schedule(self, key, deadline):
        """Arm ``key`` for ``deadline`` (None cancels)."""
        if deadline is None:
            self._deadline.pop(key, None)
            return
        old = self._deadline.get(key)
        self._deadline[key] = deadline
        if old is None or deadline < old:
            heapq.heappush(self._heap, (deadline, next(self._tie), key))

    def cancel(self, key):
        self._deadline.pop(key, None)

    def _settle(self):
        """Drop stale heap heads so that heap[0] is a live, exact deadline."""
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            real = self._deadline.get(key)
            if real == when:
                return
            heapq.heappop(heap)
            if real is not None and real > when:
                heapq.heappush(heap, (real, next(self._tie), key))

    def next_deadline(self):
        """The earliest live deadline, or None when nothing is armed."""
        self._settle()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now):
        """Remove and return the keys whose deadline is <= now, earliest first."""
        due = []
        heap = self._heap
        while True:
            self._settle()
            if not heap or heap[0][0] > now:
                return due
            _, _, key = heapq.heappop(heap)
            del self._deadline[key]
            due.append(key)


def earliest(*deadlines):
    """The earliest of some optional deadlines (None = not armed), or None."""
    armed = [d for d in deadlines if d is not None]
    return min(armed) if armed else None
