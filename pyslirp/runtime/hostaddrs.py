"""This host's own IPv4 interface addresses (for the outbound policy: they are never NAT targets by default).

Read without privilege: ``SIOCGIFADDR`` on each interface that ``socket.if_nameindex`` lists (or, where the
interpreter has no ``if_nameindex``, as PyPy 3.9 has not, that ``/sys/class/net`` lists).  An interface without an
IPv4 address (or one that vanished meanwhile) is skipped.
"""

import fcntl
import os
import socket
import struct

SIOCGIFADDR = 0x8915
_IFREQ = struct.Struct("16s16x")


def interface_addresses():
    """Sorted dotted-quad IPv4 addresses of this host's interfaces (may be empty)."""
    out = set()
    try:
        if hasattr(socket, "if_nameindex"):
            names = [name for _, name in socket.if_nameindex()]
        else:
            names = os.listdir("/sys/class/net")
    except OSError:
        return ()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for name in names:
            try:
                res = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, _IFREQ.pack(name.encode()[:15]))
            except OSError:
                continue
            out.add(socket.inet_ntoa(res[20:24]))
    finally:
        sock.close()
    return tuple(sorted(out))
