"""How a refused flow is shown to the client: the outcome of a failed connect, named once for every layer.

A connect that fails (directly, or at an upstream proxy) is reported with one of these outcomes, and the stack
answers the client's SYN (or datagram) accordingly, as libslirp does for direct connects:

* ``RESET``: TCP RST|ACK ("connection refused"): ECONNREFUSED, SOCKS 01/05/07/08, auth failure, timeout;
* ``NET_UNREACHABLE``: ICMP destination unreachable, code 0: ENETUNREACH, SOCKS 03;
* ``HOST_UNREACHABLE``: ICMP destination unreachable, code 1: EHOSTUNREACH, SOCKS 04;
* ``ADMIN_PROHIBITED``: ICMP destination unreachable, code 13 (RFC 1812 5.2.7.1): the allow-list, SOCKS 02;
* ``PORT_UNREACHABLE``: ICMP destination unreachable, code 3: a UDP port nobody serves, here or outside.
"""

RESET = "reset"
NET_UNREACHABLE = "net_unreachable"
HOST_UNREACHABLE = "host_unreachable"
ADMIN_PROHIBITED = "admin_prohibited"
OUTCOMES = (RESET, NET_UNREACHABLE, HOST_UNREACHABLE, ADMIN_PROHIBITED)
PORT_UNREACHABLE = "port_unreachable"   # UDP: ICMP destination unreachable, code 3 (RFC 1122 4.1.3.1)
OUTCOMES = OUTCOMES + (PORT_UNREACHABLE,)
