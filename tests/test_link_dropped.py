"""A frame of ours lost toward the client: its Deflate decompressor drops everything after it until our CCP Reset-Ack
(Linux ppp_generic does; so does the client role), and its Reset-Request may be the only sign.  When nothing new
follows (a tail loss), the connection then retransmits at once (``TcpConnection.link_dropped``) instead of after a
retransmission timeout.
"""

import random

from test_link import PPPD_IPCP, make_link
from test_tcp_harness import ACK, Conn, TcpConfig, pattern, seq_add
from test_vj_link import VJ_0F_01
from pyslirp.net.stack import Service, StackConfig
from pyslirp.ppp.link import LinkConfig
from pyslirp.testing.client import LineSimulatedClient, client_link_config
from pyslirp.testing.linkemu import Impairments, LineDirection
from test_twoway_line import RATE, SERVER_BOUND, PacedSim, Source

MSS = 1460


def _in_flight(size):
    """A connection that sent ``size`` bytes after a first round trip: (harness, the unacknowledged data segments,
    time)."""
    h = Conn(config=TcpConfig(sndbuf=200000))
    h.conn.send(pattern(size), h.now)
    t = 10
    for s in h.recv(at=t):                  # the first flight is acknowledged: the window grows
        t += 1
        h.send(ACK, ack=seq_add(s.seq, len(s.payload)), at=t)
    out = [s for s in h.recv(at=t) if s.payload]
    return h, out, t


def test_a_tail_the_client_link_dropped_is_retransmitted_at_once():
    h, segs, t = _in_flight(6 * MSS)
    assert len(segs) >= 2 and not h.conn._pending_send()        # all sent: a loss now is a tail loss
    assert h.conn.link_dropped(t + 5)
    out = [s for s in h.recv(at=t + 5) if s.payload]
    # The segment at SND.UNA goes now, not after the retransmission timer; fast recovery as for a dup ACK.
    assert [s.seq for s in out] == [segs[0].seq]
    assert h.conn.rto_count == 0 and h.conn.link_drops == 1 and h.conn.fast_retransmits == 1
    assert h.conn.in_recovery
    # The client repeating its Reset-Request within the same window changes nothing.
    assert not h.conn.link_dropped(t + 6)
    assert [s for s in h.recv(at=t + 6) if s.payload] == []
    # Its ACK of the first shows the second missing (a partial ACK): NewReno resends it, and the rest arrives.
    h.send(ACK, ack=segs[1].seq, at=t + 50)
    assert [s.seq for s in h.recv(at=t + 50) if s.payload][:1] == [segs[1].seq]
    h.send(ACK, ack=seq_add(segs[-1].seq, len(segs[-1].payload)), at=t + 90)
    assert not h.conn.in_recovery and h.conn.snd_una == h.conn.snd_max


def test_with_new_data_to_send_the_hole_is_left_to_the_acks():
    h, segs, t = _in_flight(100000)
    assert h.conn._pending_send()
    assert not h.conn.link_dropped(t + 5)
    assert h.conn.link_drops == 0 and h.conn.fast_retransmits == 0 and not h.conn.in_recovery
    assert all(s.seq not in [x.seq for x in segs] for s in h.recv(at=t + 5) if s.payload)


def test_link_dropped_with_nothing_in_flight_does_nothing():
    h = Conn()
    assert not h.conn.link_dropped(h.now + 5)
    assert h.recv(at=h.now + 5) == [] and h.conn.link_drops == 0


def test_the_peers_reset_request_is_signalled_once():
    from test_ccp import CcpClient
    from pyslirp.ppp.ccp import RESET_REQUEST
    from pyslirp.wire import ppp as wppp
    link = make_link()
    link.lower_up(0)
    client = CcpClient(link, ipcp_options=[(2, VJ_0F_01)] + PPPD_IPCP)
    client.start()
    client.run()
    assert link.is_up and link.ccp.compressor is not None
    assert not link.take_peer_drop_signal()
    client.send_cp(wppp.PROTO_CCP, RESET_REQUEST, 0x42)
    assert link.take_peer_drop_signal()
    assert not link.take_peer_drop_signal()


class Download(LineSimulatedClient):
    """A 115200 line both ways (fake clock, Deflate and VJ, as pppd negotiates them); the service on port 5002
    sends ``size`` random bytes to each connection, then closes."""

    def __init__(self, size):
        self.down = LineDirection(Impairments(baud=115200), seed=2, name="down")
        services = (Service(5002, "127.0.0.1", 5002, "source"),)
        super().__init__(self.down, LineDirection(Impairments(baud=115200), seed=1, name="up"), RATE,
                         server_bound=SERVER_BOUND, services={5002: Source},
                         server_stack_config=StackConfig(services=services), server_link_config=LinkConfig(),
                         link_config=client_link_config())
        self.payload = random.Random(1).getrandbits(size * 8).to_bytes(size, "little")

    def _server_events(self):
        before = set(self._server_conns)
        moved = super()._server_events()
        for conn_id in set(self._server_conns) - before:
            conn = self._server_conns[conn_id]
            conn._outbox += self.payload
            conn._eof_pending = True
        return moved

    run = PacedSim.run


def download(size, cut_at=None, cut_ms=3):
    """The client downloads ``size`` bytes; the downlink is cut for ``cut_ms`` ``cut_at`` ms after the
    connection opened: (what arrived, ms from the open to the FIN, the server's connection)."""
    sim = Download(size)
    assert sim.link_up()
    flow = sim.connect("10.0.0.1", 5002)
    start = sim.now
    conn = {}

    def step():
        if not conn:
            for rec in sim.server.stack._conns.values():
                conn["c"] = rec.conn
        if cut_at is not None:
            if sim.now == start + cut_at:
                sim.down.cut(True, sim.now)
            elif sim.now == start + cut_at + cut_ms:
                sim.down.cut(False, sim.now)
        return flow.peer_fin
    assert sim.run(step, 60000)
    return bytes(flow.received), sim.now - start, conn["c"], sim.payload


def test_the_last_frames_lost_toward_the_client_are_resent_without_a_timeout():
    # A tail loss: nothing of ours follows the lost frames to draw a duplicate ACK or a SACK, so only the
    # client's Reset-Request tells of them; before, the retransmission timer did (1.1 s more here).
    data, clean, conn, payload = download(20000)
    assert data == payload and conn.link_drops == 0
    data, took, conn, payload = download(20000, cut_at=clean - 60)
    assert data == payload
    assert conn.link_drops == 1 and conn.rto_count == 0
    assert took < clean + 400, (took, clean)
