"""A wake-up for a thread that sleeps in ``poll``: another thread calls :meth:`Wakeup.wake`.

A non-blocking socket pair: ``wake()`` writes one byte (a full buffer means the sleeper is already due to wake,
and a closed pair means it is gone: both are ignored), the sleeping thread polls :meth:`fileno` for input and
calls :meth:`drain` when it fires.  Safe to call ``wake()`` from any thread.

Only the first ``wake()`` after a :meth:`drain` writes: until the sleeper drains, a byte is already there, and
it looks at what it was woken for only after draining, so later wake-ups would tell it nothing new (a burst of
data and credit for one connection costs one system call, not one per hand-off).
"""

import socket


class Wakeup(object):
    def __init__(self):
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._pending = False           # a byte was written and not yet drained

    def fileno(self):
        return self._r.fileno()

    def wake(self):
        if self._pending:
            return
        self._pending = True
        try:
            self._w.send(b"x")
        except OSError:
            pass

    def drain(self):
        try:
            while self._r.recv(4096):
                pass
        except OSError:
            pass
        # After reading: a wake() meanwhile saw the flag still set and wrote nothing, which is right, since
        # the caller looks at its state only now.  Cleared before the read, such a byte could be read
        # here with the flag left set, and every later wake() would be lost.
        self._pending = False

    def close(self):
        self._r.close()
        self._w.close()
