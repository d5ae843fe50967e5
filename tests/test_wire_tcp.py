"""wire/tcp.py: fixed packet bytes, options, checks, round trips and a parser fuzz test."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyslirp.wire.errors import ParseError
from pyslirp.wire.tcp import (ACK, FIN, PSH, RST, SYN, TcpRepr, flags_str, max_sack_blocks,
                              sack_option_len, TS_OPTION_LEN)

SRC = bytes([10, 0, 0, 2])
DST = bytes([10, 0, 0, 1])


def ref_checksum(data, src=SRC, dst=DST):
    """A slow, obviously-correct Internet checksum over the pseudo-header (reference for the tests)."""
    pseudo = src + dst + bytes([0, 6]) + struct.pack("!H", len(data))
    blob = pseudo + data + (b"\x00" if len(data) % 2 else b"")
    total = 0
    for i in range(0, len(blob), 2):
        total += (blob[i] << 8) | blob[i + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def with_checksum(segment, src=SRC, dst=DST):
    b = bytearray(segment)
    b[16:18] = b"\x00\x00"
    b[16:18] = struct.pack("!H", ref_checksum(bytes(b), src, dst))
    return bytes(b)


# A Linux-style SYN: MSS 1460, SACK-permitted, timestamps 100/0, NOP, window scale 7.
LINUX_SYN = with_checksum(bytes.fromhex(
    "9c40 0016 01020304 00000000 a0 02 faf0 0000 0000"
    "020405b4 0402080a 00000064 00000000 01030307".replace(" ", "")))


def test_parse_linux_syn():
    seg = TcpRepr.parse(LINUX_SYN, SRC, DST)
    assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (40000, 22, 0x01020304, 0)
    assert seg.flags == SYN and seg.window == 64240
    assert seg.mss == 1460 and seg.wscale == 7 and seg.sack_permitted
    assert seg.timestamp == (100, 0)
    assert seg.payload == b"" and seg.seg_len == 1


def test_emit_exact_bytes_syn_ack():
    seg = TcpRepr(22, 40000, 0x11223344, 0x01020305, SYN | ACK, 65535, mss=1460, wscale=2,
                  sack_permitted=True, timestamp=(7, 100))
    raw = seg.emit(DST, SRC)
    expected = with_checksum(bytes.fromhex(
        "0016 9c40 11223344 01020305 a0 12 ffff 0000 0000"
        "020405b4 01030302 0402080a 00000007 00000064".replace(" ", "")), DST, SRC)
    assert raw == expected
    assert TcpRepr.parse(raw, DST, SRC) == seg


def test_emit_exact_bytes_data_with_sack():
    seg = TcpRepr(22, 40000, 1, 2, ACK | PSH, 512, timestamp=(1, 2), sack_blocks=((10, 20),),
                  payload=b"abc")
    raw = seg.emit(DST, SRC)
    expected = with_checksum(bytes.fromhex(
        "0016 9c40 00000001 00000002 b0 18 0200 0000 0000"
        "0101080a 00000001 00000002 0101050a 0000000a 00000014".replace(" ", "")) + b"abc", DST, SRC)
    assert raw == expected


def test_checksum_is_verified():
    bad = bytearray(LINUX_SYN)
    bad[5] ^= 0x40
    with pytest.raises(ParseError) as e:
        TcpRepr.parse(bytes(bad), SRC, DST)
    assert e.value.reason == "bad_checksum"
    # The pseudo-header counts: the same bytes from another address fail too.
    with pytest.raises(ParseError):
        TcpRepr.parse(LINUX_SYN, bytes([10, 0, 0, 3]), DST)
    # verify=False skips the check.
    assert TcpRepr.parse(bytes(bad), SRC, DST, verify=False).seq == 0x01020304 ^ 0x00400000


def test_odd_length_payload_checksum():
    seg = TcpRepr(1, 2, 3, 4, ACK, 5, payload=b"odd")
    raw = seg.emit(SRC, DST)
    assert ref_checksum(raw) == 0
    assert TcpRepr.parse(raw, SRC, DST).payload == b"odd"


@pytest.mark.parametrize("raw, reason", [
    (b"", "too_short"),
    (b"\x00" * 19, "too_short"),
    (bytes(12) + b"\x40" + bytes(7), "bad_offset"),        # data offset 4 words
    (bytes(12) + b"\x60" + bytes(7), "bad_offset"),        # 24 bytes claimed, 20 present
    (bytes(12) + b"\xf0" + bytes(46), "bad_offset"),       # 60 claimed, 59 present
], ids=["empty", "19_bytes", "offset_4", "offset_past_end", "options_past_end"])
def test_length_checks(raw, reason):
    with pytest.raises(ParseError) as e:
        TcpRepr.parse(raw, SRC, DST, verify=False)
    assert e.value.reason == reason


def _with_options(opts, payload=b""):
    opts = bytes(opts)
    assert len(opts) % 4 == 0
    header = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, ((20 + len(opts)) // 4) << 4, ACK, 100, 0, 0)
    return with_checksum(header + opts + payload)


def test_unknown_options_skipped_and_eol_stops():
    raw = _with_options([30, 6, 1, 2, 3, 4, 2, 4, 0x02, 0x18, 0, 2, 4, 5, 1, 1], b"x")
    seg = TcpRepr.parse(raw, SRC, DST)
    assert seg.mss == 0x218 and seg.payload == b"x"
    # After EOL nothing is parsed, even garbage.
    raw = _with_options([1, 0, 2, 1, 0xFF, 0xFF, 0xFF, 0xFF])
    assert TcpRepr.parse(raw, SRC, DST).mss is None


@pytest.mark.parametrize("opts", [
    [2, 0, 0, 0],                  # length 0
    [2, 1, 0, 0],                  # MSS with length 1
    [30, 1, 0, 0],                 # length 1
    [2, 3, 5, 1],                  # MSS length 3
    [3, 4, 7, 0],                  # WS length 4
    [4, 3, 0, 0],                  # SACK-permitted length 3
    [8, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],       # TS length 9
    [5, 2, 0, 0],                  # SACK without blocks
    [5, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],      # SACK length not 2 + 8n
    [30, 8, 0, 0],                 # runs past the header
    [1, 1, 1, 30],                 # kind at the end without length
])
def test_malformed_option_lengths(opts):
    with pytest.raises(ParseError) as e:
        TcpRepr.parse(_with_options(opts), SRC, DST)
    assert e.value.reason == "bad_option"


def test_sack_blocks_parsed():
    opts = [1, 1, 5, 18] + list(struct.pack("!IIII", 100, 200, 300, 400))
    seg = TcpRepr.parse(_with_options(opts), SRC, DST)
    assert seg.sack_blocks == ((100, 200), (300, 400))


def test_emit_limits_sack_blocks_to_option_space():
    blocks = tuple((i * 100, i * 100 + 50) for i in range(6))
    with_ts = TcpRepr(1, 2, 3, 4, ACK, 5, timestamp=(1, 1), sack_blocks=blocks)
    back = TcpRepr.parse(with_ts.emit(SRC, DST), SRC, DST)
    assert back.sack_blocks == blocks[:3] == blocks[:max_sack_blocks(True)]
    assert with_ts.header_len() == 20 + TS_OPTION_LEN + sack_option_len(3) == 60
    without = TcpRepr(1, 2, 3, 4, ACK, 5, sack_blocks=blocks)
    back = TcpRepr.parse(without.emit(SRC, DST), SRC, DST)
    assert back.sack_blocks == blocks[:4] == blocks[:max_sack_blocks(False)]


def test_seg_len_and_flags_str():
    assert TcpRepr(1, 2, 3, 4, SYN | FIN, 0, payload=b"ab").seg_len == 4
    assert TcpRepr(1, 2, 3, 4, ACK, 0).seg_len == 0
    assert flags_str(SYN | ACK) == "SYN|ACK"
    assert flags_str(0) == "-"
    assert "RST" in str(TcpRepr(1, 2, 3, 4, RST, 0))


_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_reprs = st.builds(
    TcpRepr, _u16, _u16, _u32, _u32, st.integers(0, 0xFF), _u16, _u16,
    mss=st.none() | _u16, wscale=st.none() | st.integers(0, 14), sack_permitted=st.booleans(),
    sack_blocks=st.lists(st.tuples(_u32, _u32), max_size=3).map(tuple),
    timestamp=st.none() | st.tuples(_u32, _u32), payload=st.binary(max_size=64))


@settings(derandomize=True, deadline=None, max_examples=300)
@given(_reprs)
def test_emit_parse_round_trip(seg):
    raw = seg.emit(SRC, DST)
    assert len(raw) == seg.buffer_len() and seg.header_len() % 4 == 0 and seg.header_len() <= 60
    back = TcpRepr.parse(raw, SRC, DST)
    # SACK blocks are a prefix of what was asked for, cut only when another block would not fit.
    assert back.sack_blocks == seg.sack_blocks[:len(back.sack_blocks)]
    if len(back.sack_blocks) < len(seg.sack_blocks):
        assert seg.header_len() + (8 if back.sack_blocks else 12) > 60
    assert back == TcpRepr(seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window,
                           seg.urgent, seg.mss, seg.wscale, seg.sack_permitted, back.sack_blocks,
                           seg.timestamp, seg.payload)


@settings(derandomize=True, deadline=None, max_examples=500)
@given(st.binary(max_size=80), st.booleans())
def test_fuzz_parse_raises_only_parse_error(data, verify):
    try:
        TcpRepr.parse(data, SRC, DST, verify=verify)
    except ParseError:
        pass


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.binary(min_size=0, max_size=40))
def test_fuzz_options_only_parse_error(opts):
    opts = opts + b"\x00" * (-len(opts) % 4)
    raw = _with_options(opts, b"data")
    try:
        seg = TcpRepr.parse(raw, SRC, DST)
    except ParseError as e:
        assert e.reason == "bad_option"
    else:
        assert seg.payload == b"data"
