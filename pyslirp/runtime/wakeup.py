"""A wake-up for a thread that sleeps in ``poll``: another thread calls :meth:`Wakeup.wake`.

A non-blocking socket pair: ``wake()`` writes one byte (a full buffer means the sleeper is already due to wake,
and a closed pair means it is gone: both are ignored), the sleeping thread polls :meth:`fileno` for input and
calls :meth:`drain` when it fires.  Safe to call ``wake()`` from any thread.
"""

import socket


class Wakeup(object):
    def __init__(self):
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self):
        return self._r.fileno()

    def wake(self):
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

    def close(self):
        self._r.close()
        self._w.close()
