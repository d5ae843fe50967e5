"""runtime.hostaddrs: this host's IPv4 addresses, with and without socket.if_nameindex (PyPy 3.9 has none)."""

import socket

from pyslirp.runtime import hostaddrs


def test_loopback_is_among_the_addresses():
    assert "127.0.0.1" in hostaddrs.interface_addresses()


def test_without_if_nameindex_the_interfaces_come_from_sys_class_net(monkeypatch):
    with_index = hostaddrs.interface_addresses()
    monkeypatch.delattr(socket, "if_nameindex", raising=False)     # PyPy 3.9 has none anyway
    assert hostaddrs.interface_addresses() == with_index
