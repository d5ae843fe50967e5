"""RFC 6528 initial sequence numbers."""

import random

from pyslirp.net.tcp.isn import IsnGenerator

A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def test_isn_moves_with_the_4us_clock():
    gen = IsnGenerator(random.Random(1))
    base = gen.isn(A, 22, B, 40000, 0)
    assert gen.isn(A, 22, B, 40000, 1) == (base + 250) & 0xFFFFFFFF
    assert gen.isn(A, 22, B, 40000, 1000) == (base + 250000) & 0xFFFFFFFF


def test_isn_depends_on_the_tuple_and_the_secret():
    gen = IsnGenerator(random.Random(1))
    values = {gen.isn(A, 22, B, port, 0) for port in range(40000, 40100)}
    assert len(values) == 100
    other = IsnGenerator(random.Random(2))
    assert other.isn(A, 22, B, 40000, 0) != gen.isn(A, 22, B, 40000, 0)
    again = IsnGenerator(random.Random(1))
    assert again(A, 22, B, 40000, 0) == gen.isn(A, 22, B, 40000, 0)


def test_isn_wraps_at_32_bits():
    gen = IsnGenerator(random.Random(3))
    late = gen.isn(A, 22, B, 1, 10 ** 12)
    assert 0 <= late <= 0xFFFFFFFF
