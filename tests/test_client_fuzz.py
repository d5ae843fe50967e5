"""Seeded fuzz of the client role's input: random and mutated packets and frames are counted, never raised."""

import random

from pyslirp.net.client_stack import ClientStack, ClientStackConfig
from pyslirp.net.stack import Service, StackConfig
from pyslirp.testing import EchoService, SimulatedClient
from pyslirp.wire.ipv4 import PROTO_ICMP, PROTO_TCP, Ipv4Repr, ip_bytes
from pyslirp.wire.tcp import ACK, RST, SYN, TcpRepr

US = ip_bytes("10.0.0.2")
PEER = ip_bytes("10.0.0.1")


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        if data and rng.random() < 0.7:
            data[rng.randrange(len(data))] = rng.getrandbits(8)
        elif rng.random() < 0.5:
            del data[rng.randrange(len(data) + 1):]
        else:
            data += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 20)))
    return bytes(data)


def test_client_stack_survives_random_packets():
    rng = random.Random(20261201)
    stack = ClientStack(ClientStackConfig(), random.Random(1))
    stack.set_addresses("10.0.0.2", "10.0.0.1", 0)
    for i in range(20):
        stack.open_flow(i, "10.0.0.1", 1000 + i, 0)
    stack.take_packets(-1)
    now = 0
    for n in range(6000):
        now += rng.randrange(0, 50)
        kind = rng.random()
        if kind < 0.4:
            seg = TcpRepr(1000 + rng.randrange(25), rng.randrange(49152, 65536), rng.getrandbits(32),
                          rng.getrandbits(32), rng.choice((SYN | ACK, ACK, RST, RST | ACK, 0, SYN)),
                          rng.getrandbits(16), payload=bytes(rng.randrange(40)))
            packet = Ipv4Repr(src=PEER, dst=US, protocol=PROTO_TCP, payload=seg.emit(PEER, US), ttl=64).emit()
        elif kind < 0.5:
            packet = Ipv4Repr(src=PEER, dst=US, protocol=PROTO_ICMP,
                              payload=bytes([3, rng.randrange(16), 0, 0]) + bytes(4) + bytes(rng.randrange(40)),
                              ttl=64).emit()
        else:
            packet = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        if rng.random() < 0.5:
            packet = _mutate(rng, packet)
        stack.receive_packet(packet, now)
        if stack.get_timer() is not None and stack.get_timer() <= now:
            stack.handle_timer(now)
        stack.take_packets(rng.choice((-1, 0, 500)))
        stack.take_events()
    assert sum(stack.counters.values()) > 0


def test_client_core_survives_random_frames_on_an_open_link():
    rng = random.Random(7)
    sim = SimulatedClient(services={7: EchoService},
                          server_stack_config=StackConfig(services=(Service(7, "127.0.0.1", 7, "echo"),)))
    assert sim.link_up()
    flow = sim.connect("10.0.0.1", 7)
    assert sim.run(lambda: flow.connected, 5000)
    protocols = (0x0021, 0x002D, 0x002F, 0x00FD, 0xC021, 0x8021, 0x80FD, 0xC023, 0xC223, 0x0057, 0x1234)
    for _ in range(3000):
        protocol = rng.choice(protocols)
        body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60)))
        frame = bytes([protocol >> 8, protocol & 0xFF]) + body
        sim.inject(frame, to="client")
    flow.send(b"still alive")
    assert sim.run(lambda: bytes(flow.received).endswith(b"still alive") or flow.done, 30000)
