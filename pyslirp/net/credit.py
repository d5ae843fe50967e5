"""Read credit and backlog of one TCP flow fed from a local socket (server and client stacks alike).

Theory of operation
-------------------
The socket's reader may only read what it was granted: ``granted`` minus
``received`` bytes are in flight towards the stack.  Bytes that arrive when
the connection's send buffer cannot take them all wait in ``backlog``; new
bytes queue behind it so order holds.  Credit is granted again only once the
backlog drained, up to the connection's free send space, so the backlog never
exceeds one grant.  The socket's EOF (``eof``) becomes our FIN after the last
backlogged byte.

A flow record here is any object with ``conn`` (a TcpConnection), ``backlog``
(bytes), ``eof``, ``granted`` and ``received``.
"""


def send_or_queue(rec, data, now):
    """``data`` from the socket: to the connection, or behind the backlog when there is one."""
    if rec.backlog:
        rec.backlog += data
    else:
        taken = rec.conn.send(data, now)
        if taken < len(data):
            rec.backlog = bytes(data[taken:])


def new_credit(rec, now):
    """Drain the backlog (then send the FIN that waited for it); the credit to grant now, 0 for none.
    ``granted`` already counts what is returned."""
    conn = rec.conn
    if rec.backlog:
        taken = conn.send(rec.backlog, now)
        rec.backlog = rec.backlog[taken:]
        if rec.backlog:
            return 0
        if rec.eof:
            conn.shutdown(now)      # the FIN that waited for the backlog
    if rec.eof:
        return 0
    credit = conn.send_space - (rec.granted - rec.received)
    if credit <= 0:
        return 0
    rec.granted += credit
    return credit
