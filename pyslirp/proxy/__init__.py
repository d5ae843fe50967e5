"""Sans-IO clients of upstream proxies (SOCKS5, HTTP CONNECT): bytes in, bytes out, events; no sockets here."""
