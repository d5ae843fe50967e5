import random

from pyslirp.wire.checksum import internet_checksum, ones_sum, pseudo_header_sum


def _reference(data):
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def test_rfc1071_example():
    # RFC 1071 section 3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_ipv4_header_known_answer():
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(hdr) == 0xB861


def test_random_against_reference_including_memoryview_and_odd_lengths():
    rng = random.Random(7)
    for n in list(range(0, 40)) + [1499, 1500, 65535]:
        data = bytes(rng.getrandbits(8) for _ in range(n))
        want = _reference(data)
        assert internet_checksum(data) == want
        assert internet_checksum(memoryview(data)) == want
        assert internet_checksum(bytearray(data)) == want


def _reference_sum(data, initial):
    """Word by word with end-around carry, as RFC 1071 section 4.1 does it."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_folded_sum_zero_and_all_ones_and_initial_values():
    # A non-zero total folds to 0xFFFF, never to 0; only nothing at all sums to 0.
    rng = random.Random(3)
    cases = [b"", b"\x00", b"\x00\x00", b"\xff\xff", b"\xff", b"\xff" * 7, b"\x00\x01\xff\xfe", bytes(1500)]
    cases += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60))) for _ in range(300)]
    for data in cases:
        for initial in (0, 1, 0xFFFE, 0xFFFF, 0x1FFFE, rng.randrange(0x20000)):
            assert ones_sum(data, initial) == _reference_sum(data, initial), (data, initial)


def test_pseudo_header_feeds_into_sum():
    src, dst = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
    seg = b"\x12\x34\x00\x16" + bytes(16)
    whole = src + dst + bytes([0, 6]) + len(seg).to_bytes(2, "big") + seg
    assert internet_checksum(seg, pseudo_header_sum(src, dst, 6, len(seg))) == _reference(whole)


def test_pseudo_header_refuses_addresses_that_are_not_ipv4():
    import pytest
    from pyslirp.wire.checksum import pseudo_header_sum
    v4 = b"\x0a\x00\x00\x01"
    v6 = b"\x20\x01" + b"\x00" * 13 + b"\x01"
    for src, dst in ((v6, v4), (v4, v6), (v6, v6), (b"\x0a\x00\x00", v4)):
        with pytest.raises(ValueError):
            pseudo_header_sum(src, dst, 6, 20)
    assert pseudo_header_sum(v4, v4, 6, 20) == pseudo_header_sum(bytearray(v4), v4, 6, 20)
