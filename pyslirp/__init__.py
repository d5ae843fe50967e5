"""pyslirp: a userspace PPP gateway.

A PPP client dials in over a serial line; pyslirp speaks PPP on the line with
plain read()/write(), runs its own IPv4/TCP stack in memory and turns each of
the client's connections into an ordinary outbound socket to a local service.
No root, no tun/tap, no routes.
"""

__version__ = "0.1.0"
