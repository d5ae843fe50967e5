"""TCP (RFC 9293) for connections the PPP client opens."""
