"""Seeded fuzzing of the whole sans-IO core: PPP link + IP stack + TCP, fed hostile input.

The invariant (the daemon's promise): whatever arrives on the serial line, at whatever time, the core never
raises, everything it sends is well-formed (valid HDLC FCS, parseable PPP, IPv4 and TCP with correct checksums),
and a well-behaved connection opened after the storm still works.
"""

import random

import pytest

from test_core import PEER, US, Client, real_core

from pyslirp.net import refusal
from pyslirp.net.events import ServiceConnect, ServiceSend
from pyslirp.wire import ppp as wppp
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import Ipv4Repr
from pyslirp.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpRepr
from pyslirp.wire.udp import UdpRepr


def _rand_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not data:
            break
        op = rng.random()
        i = rng.randrange(len(data))
        if op < 0.5:
            data[i] ^= 1 << rng.randrange(8)
        elif op < 0.75:
            del data[i:i + rng.randrange(1, 8)]
        else:
            data[i:i] = _rand_bytes(rng, rng.randrange(1, 8))
    return bytes(data)


class Fuzzer(object):
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.client = Client(real_core())
        self.client.bring_up()
        self.conns = []          # (client port, our isn + 1, next client seq, conn_id)
        self.addressed = {US}    # every destination the client sent to: a flow answers from its own address

    def open_conn(self):
        c, rng = self.client, self.rng
        port = rng.randrange(1024, 65535)
        c.send_tcp(TcpRepr(port, 22, rng.getrandbits(32), 0, SYN, 65535, mss=rng.choice([None, 88, 536, 1460]),
                           wscale=rng.choice([None, 0, 7, 14]), sack_permitted=rng.random() < 0.5,
                           timestamp=rng.choice([None, (rng.getrandbits(32), 0)])))
        connects = [e for e in c.events if isinstance(e, ServiceConnect) and e.flow.client_port == port]
        if not connects:
            return
        cid = connects[-1].conn_id
        if rng.random() < 0.2:
            c.core.service_failed(cid, "refused", c.now, rng.choice(refusal.OUTCOMES))
        else:
            c.core.service_connected(cid, c.now)
            self.conns.append((port, cid))
        c.pump()

    def random_tcp(self):
        rng = self.rng
        port, dport = (rng.choice(self.conns)[0], 22) if self.conns and rng.random() < 0.8 else (
            rng.randrange(65536), rng.randrange(65536))
        flags = rng.choice([ACK, ACK | PSH, ACK | FIN, RST, RST | ACK, SYN, SYN | ACK, FIN, 0, rng.getrandbits(8)])
        return TcpRepr(port, dport, rng.getrandbits(32), rng.getrandbits(32), flags, rng.getrandbits(16),
                       urgent=rng.choice([0, rng.getrandbits(16)]),
                       mss=rng.choice([None, rng.getrandbits(16)]), wscale=rng.choice([None, rng.randrange(20)]),
                       sack_blocks=tuple((rng.getrandbits(32), rng.getrandbits(32))
                                         for _ in range(rng.choice([0, 0, 1, 3]))),
                       timestamp=rng.choice([None, (rng.getrandbits(32), rng.getrandbits(32))]),
                       payload=_rand_bytes(rng, rng.choice([0, 1, 10, 500])))

    def random_ip(self):
        rng = self.rng
        kind = rng.random()
        src = PEER if rng.random() < 0.9 else _rand_bytes(rng, 4)
        dst = US if rng.random() < 0.85 else _rand_bytes(rng, 4)
        self.addressed.add(dst)
        if kind < 0.5:
            payload, proto = self.random_tcp().emit(src, dst), 6
        elif kind < 0.65:
            payload, proto = UdpRepr(rng.randrange(65536), rng.randrange(65536),
                                     _rand_bytes(rng, rng.randrange(40))).emit(src, dst), 17
        elif kind < 0.8:
            payload, proto = IcmpRepr(rng.choice([0, 3, 8, 11, rng.randrange(256)]), rng.randrange(16),
                                      _rand_bytes(rng, 4), _rand_bytes(rng, rng.randrange(64))).emit(), 1
        else:
            payload, proto = _rand_bytes(rng, rng.randrange(64)), rng.randrange(256)
        mf = rng.random() < 0.1
        off = rng.choice([0, 0, 0, 8 * rng.randrange(100)])
        packet = Ipv4Repr(src, dst, proto, payload, ttl=rng.randrange(256), ident=rng.getrandbits(16),
                          more_fragments=mf, frag_offset=off).emit()
        if rng.random() < 0.3:
            packet = _mutate(rng, packet)
        return packet

    def step(self):
        c, rng = self.client, self.rng
        r = rng.random()
        if r < 0.1:
            if self.client.core.stack.connections_active < 12:   # below the per-service limit (16)
                self.open_conn()
        elif r < 0.6:
            c.send(wppp.PROTO_IP, self.random_ip())
        elif r < 0.7:
            proto = rng.choice([wppp.PROTO_LCP, wppp.PROTO_IPCP, wppp.PROTO_PAP, wppp.PROTO_CHAP,
                                wppp.PROTO_IPV6CP, wppp.PROTO_CCP, (rng.getrandbits(16) & 0xFEFF) | 0x0001])
            c.send(proto, _rand_bytes(rng, rng.randrange(0, 40)))
        elif r < 0.8:
            # Raw line noise, possibly containing flags and escapes.
            noise = bytes(rng.choice([0x7E, 0x7D, 0xFF, 0x03, 0x21, rng.getrandbits(8)])
                          for _ in range(rng.randrange(1, 60)))
            c.core.receive_serial(noise, c.now)
            c.pump()
        elif r < 0.9 and self.conns:
            port, cid = rng.choice(self.conns)
            what = rng.random()
            if what < 0.4:
                c.core.service_data(cid, _rand_bytes(rng, rng.randrange(1, 3000)), c.now)
            elif what < 0.6:
                c.core.service_written(cid, rng.randrange(0, 3000), c.now)
            elif what < 0.7:
                c.core.service_eof(cid, c.now)
            elif what < 0.75:
                c.core.service_error(cid, "fuzz", c.now)
            c.pump(budget=rng.choice([0, 100, 1 << 20]))
        else:
            c.now += rng.choice([1, 10, 200, 1000, 5000, 60000])
            c.core.handle_timer(c.now)
            c.pump()
        # Everything the core sent parsed (Client.pump deframes with FCS and parses PPP); IP and TCP too.
        for urgent, ip in c.ip_packets():
            assert ip.dst == PEER and ip.src in self.addressed
            if ip.protocol == 6 and not ip.more_fragments and ip.frag_offset == 0:
                TcpRepr.parse(ip.payload, ip.src, ip.dst)
        c.received = []


@pytest.mark.parametrize("seed", range(8))
def test_core_survives_hostile_input_and_still_serves(seed):
    f = Fuzzer(seed)
    for _ in range(1500):
        f.step()
    c = f.client
    stack = c.core.stack
    # The storm really exercised the stack: connections came and went, bad packets were counted.
    assert stack.connections_opened >= 5 and stack.connections_closed >= 1
    assert sum(stack.counters.values()) > 100
    # The PPP link may have been terminated by the noise (a random Terminate-Request is legitimate input);
    # a client that negotiates again gets a working connection.
    if not c.core.is_up:
        c.now += 1000
        c.core.handle_timer(c.now)
        c.pump()
        c.received = []
        c.bring_up()
    assert c.core.is_up
    c.events = []
    c.received = []
    c.send_tcp(TcpRepr(50123, 22, 7000, 0, SYN, 65535, mss=1460))
    connects = [e for e in c.events if isinstance(e, ServiceConnect) and e.flow.client_port == 50123]
    assert connects, "a fresh SYN after the fuzzing was not admitted"
    cid = connects[0].conn_id
    c.core.service_connected(cid, c.now)
    c.pump()
    synacks = [s for _, s in c.tcp_segments() if s.flags & SYN and s.dst_port == 50123]
    assert synacks and synacks[0].ack == 7001
    c.send_tcp(TcpRepr(50123, 22, 7001, synacks[0].seq + 1, ACK | PSH, 65535, payload=b"still alive"))
    assert ServiceSend(cid, b"still alive") in c.events
