"""Both ways at once on a clean 115200 bit/s line, on a fake clock: a download, an upload and 64-byte exchanges.

pyslirp serves; the client is the client role's Core (pyslirp.testing.SimulatedClient), and the line is two
pyslirp.testing.linkemu LineDirections at 11,520 bytes/s each.  The server's output is taken as the runtime takes
it (about 10 ms of line time queued toward the line), the client's all at once (pppd writing into its tty).
VJ and Deflate are on both ways, as with pppd's defaults.
"""

import random

from pyslirp.net.stack import Service, StackConfig
from pyslirp.ppp.ipcp import NOISY_PACKETS, SUSPECT_PACKETS
from pyslirp.ppp.link import LinkConfig
from pyslirp.testing.client import EchoService, LineSimulatedClient, client_link_config
from pyslirp.testing.linkemu import Impairments, LineDirection

RATE = 11520                # bytes/s: 115200 bit/s 8N1
SERVER_BOUND = 128          # bytes queued toward the line before the server is asked for more (runtime MIN_TARGET)
SIZE = 400000


class Source(object):
    def data(self, data):
        return b""

    def eof(self):
        return True


class Sink(object):
    def __init__(self):
        self.received = 0

    def data(self, data):
        self.received += len(data)
        return b""

    def eof(self):
        return True


class PacedSim(LineSimulatedClient):
    """LineSimulatedClient on a clean 115200 line: ``down`` carries the server's frames, ``up`` the client's."""

    def __init__(self, **kw):
        super().__init__(LineDirection(Impairments(baud=115200), seed=2, name="down"),
                         LineDirection(Impairments(baud=115200), seed=1, name="up"),
                         RATE, server_bound=SERVER_BOUND, **kw)
        self.sources = {}

    def _server_events(self):
        before = set(self._server_conns)
        moved = super()._server_events()
        for conn_id in set(self._server_conns) - before:
            conn = self._server_conns[conn_id]
            if isinstance(conn.service, Source):
                conn._outbox += random.Random(1).getrandbits(SIZE * 8).to_bytes(SIZE, "little")
        return moved

    def run(self, until=None, timeout=60000):
        """Step the clock 1 ms at a time (the paced line needs its caller often)."""
        self.start()
        end = self.now + timeout
        while self.now < end:
            self._exchange()
            if until is not None and until():
                return True
            self.now += 1
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
        return False


def two_way(seconds, warmup=3000):
    """Download, upload and an exchange every 250 ms, all started at once; returns (down, up) as fractions of
    the line between ``warmup`` and the end, the exchanges' round trips (ms) and the server's link counters."""
    sink = Sink()
    services = (Service(5002, "127.0.0.1", 5002, "source"), Service(5001, "127.0.0.1", 5001, "sink"),
                Service(5003, "127.0.0.1", 5003, "echo"))
    sim = PacedSim(services={5002: Source, 5001: lambda: sink, 5003: EchoService},
                   server_stack_config=StackConfig(services=services), server_link_config=LinkConfig(),
                   link_config=client_link_config())
    assert sim.link_up()
    t0 = sim.now
    down = sim.connect("10.0.0.1", 5002)
    up = sim.connect("10.0.0.1", 5001)
    up.send(random.Random(2).getrandbits(SIZE * 8).to_bytes(SIZE, "little"))
    echo = sim.connect("10.0.0.1", 5003)
    probe = {"sent_at": None, "next": t0 + 100, "n": 0}
    rtts = []
    marks = {}

    def step():
        now = sim.now
        if echo.connected:
            if probe["sent_at"] is None and now >= probe["next"]:
                probe["sent_at"] = now
                echo.send(random.Random(probe["n"]).getrandbits(512).to_bytes(64, "little"))
            elif probe["sent_at"] is not None and len(echo.received) >= 64 * (probe["n"] + 1):
                rtts.append(now - probe["sent_at"])
                probe["n"] += 1
                probe["sent_at"] = None
                probe["next"] = now + 250
        if now - t0 == warmup:
            marks["from"] = (len(down.received), sink.received, dict(sim.server.link.ipcp_counters))
        return now - t0 >= seconds * 1000

    sim.run(step, seconds * 1000 + 1000)
    span = seconds - warmup / 1000.0
    d0, u0, c0 = marks["from"]
    counters = dict((k, v - c0.get(k, 0)) for k, v in sim.server.link.ipcp_counters.items())
    return ((len(down.received) - d0) / span / RATE, (sink.received - u0) / span / RATE, rtts, counters,
            sim.server)


def test_both_ways_at_once_on_a_clean_line_nothing_is_resent_and_vj_stays_compressed():
    # The download's first segments (1460 bytes, before the exchanges make the line interactive) used to queue
    # behind each other and behind a pure window update for longer than the retransmission timeout learnt on
    # the small handshake: 1-3 were sent again although nothing was lost, each telling the link the client may
    # have lost a frame (whole VJ headers for a while: before SUSPECT_PACKETS, for the rest of the transfer, 85%
    # of the line each way instead of 93%; test_a_suspected_loss_refreshes_vj_briefly_and_a_real_one_for_long).
    # On this clean line nothing is retransmitted now, headers stay compressed, over 90% each way.
    down, up, rtts, counters, server = two_way(8)
    retransmitted = sum(rec.conn.rto_count + rec.conn.fast_retransmits for rec in server.stack._conns.values())
    assert retransmitted == 0
    assert counters["vj_compressed_out"] > 5 * counters["vj_uncompressed_out"]
    assert down >= 0.9 and up >= 0.9
    assert len(rtts) >= 15


def test_a_suspected_loss_refreshes_vj_briefly_and_a_real_one_for_long():
    from test_vj_link import segments, vj_session, US, PEER, VJC, VJUC
    from pyslirp.wire import ppp as wppp
    link, client = vj_session()
    stage = link.ipcp.vj
    packets = segments(US, PEER, 22, 40000, SUSPECT_PACKETS + 2)
    link.peer_lost_frame(client.now, suspected=True)     # the Core saw a TCP retransmission
    kinds = [stage.compress(wppp.PROTO_IP, p)[0] for p in packets]
    assert set(kinds[:SUSPECT_PACKETS - 1]) == {VJUC}
    assert kinds[SUSPECT_PACKETS:] == [VJC, VJC]
    # A loss that is certain (here the line coming back after an outage) refreshes for NOISY_PACKETS, and a
    # suspected one meanwhile does not shorten that.
    link.peer_lost_frame(client.now)
    link.peer_lost_frame(client.now, suspected=True)
    more = segments(US, PEER, 22, 40000, NOISY_PACKETS + 1, start=1000 + 100 * len(packets))
    kinds = [stage.compress(wppp.PROTO_IP, p)[0] for p in more]
    assert set(kinds[:NOISY_PACKETS - 1]) == {VJUC}
    assert kinds[NOISY_PACKETS] == VJC
