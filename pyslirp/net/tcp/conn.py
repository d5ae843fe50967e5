"""One TCP connection opened by the PPP client (RFC 9293), sans-IO.

CONTRACT (the IP stack codes against exactly this; the implementation may add
to it but not change it):

    from pyslirp.wire.tcp import TcpRepr           # parsed segment value (see wire/tcp.py)
    from pyslirp.net.tcp.conn import TcpConfig, TcpConnection, TcpState, rst_for

    conn = TcpConnection(syn, local_ip, remote_ip, config, iss, now, mss_limit)
        # syn: the client's SYN (TcpRepr); local_ip/remote_ip: 4-byte bytes;
        # iss: our initial sequence number (net/tcp/isn.py, RFC 6528);
        # mss_limit: the largest MSS the link allows (link MTU - 40).
        # The connection starts in SYN_RECEIVED but sends nothing until accept():
        # the service socket must connect first.
    conn.accept(now)              # service connected: emit SYN-ACK
    conn.refuse(now)              # service down: emit RST|ACK for the SYN, state CLOSED, event "closed"
    conn.receive(seg, now)        # a segment of this 4-tuple
    conn.send(data) -> int        # queue bytes from the service; returns how many were taken (<= send_space)
    conn.send_space -> int        # free room in the bounded send buffer
    conn.shutdown(now)            # service EOF: FIN after all queued data
    conn.abort(now)               # emit RST, state CLOSED, event "closed"
    conn.read() -> bytes          # in-order data for the service (empty if none); stays counted against
                                  # the receive window until consumed()
    conn.consumed(nbytes, now)    # the service socket took nbytes: the window reopens (window update if it grew
                                  # by >= 2*MSS or from zero)
    conn.take_segments(budget) -> List[TcpRepr]
                                  # segments to emit now, in order; control segments (SYN, FIN, RST, pure ACKs,
                                  # window updates, probes) always; payload only while the payload bytes of this
                                  # call stay <= budget (budget < 0 means unlimited)
    conn.get_timer() -> Optional[int]; conn.handle_timer(now)
    conn.take_events() -> List[str]   # in order, each once:
        "established"  handshake complete
        "readable"     read() has data
        "writable"     send_space grew (the runtime may grant read credit)
        "peer_fin"     the client's FIN arrived and every byte before it has been read(): shutdown(SHUT_WR)
        "reset"        the client reset the connection
        "timeout"      retransmissions exhausted (the connection sent RST and is closed)
        "closed"       the connection is finished (CLOSED, or TIME_WAIT expired): delete it
    conn.state -> TcpState        # enum of the RFC 9293 states
    conn.bytes_in, conn.bytes_out, conn.retransmits, ...   # plain int counters

    rst_for(seg) -> Optional[TcpRepr]
        # RFC 9293 3.10.7.1: the reset to send for a segment that matches no connection (None for a RST).

TcpConfig is a frozen dataclass of tunables with sane defaults (buffer sizes, MSS override, delayed-ACK time,
RTO bounds, retry counts, TIME_WAIT length, keepalive, Nagle, window scaling/SACK/timestamps switches).
"""
