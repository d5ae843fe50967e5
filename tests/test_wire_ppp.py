"""PPP frame, control packet and option layouts (RFC 1661 sections 2, 5, 6; RFC 1662 section 3)."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from pyslirp.wire import ppp
from pyslirp.wire.errors import ParseError
from pyslirp.wire.ppp import (PROTO_CCP, PROTO_CHAP, PROTO_IP, PROTO_IPCP, PROTO_IPV6, PROTO_IPV6CP,
                              PROTO_LCP, PROTO_PAP, PROTO_VJC, PROTO_VJUC, build_cp, build_frame,
                              build_options, parse_cp, parse_frame, parse_options)

FUZZ = settings(derandomize=True, deadline=None, max_examples=300)

# A real LCP Configure-Request (MRU 1500, ACCM 0, PFC, ACFC, PAP) after deframing, FCS stripped.
REAL_LCP = bytes.fromhex("ff03c02101010016010405dc020600000000070208020304c023")

valid_protocols = st.integers(0, 0xFFFF).filter(ppp.valid_protocol)


def test_protocol_numbers():
    assert (PROTO_IP, PROTO_IPCP, PROTO_LCP, PROTO_PAP, PROTO_CHAP) == (0x0021, 0x8021, 0xC021, 0xC023, 0xC223)
    assert (PROTO_IPV6, PROTO_IPV6CP, PROTO_CCP, PROTO_VJC, PROTO_VJUC) == (0x0057, 0x8057, 0x80FD, 0x002D,
                                                                           0x002F)
    for proto in (PROTO_IP, PROTO_IPCP, PROTO_LCP, PROTO_PAP, PROTO_CHAP, PROTO_IPV6, PROTO_CCP):
        assert ppp.valid_protocol(proto)
    assert not ppp.valid_protocol(0x0020)   # even
    assert not ppp.valid_protocol(0x0121)   # odd high octet
    assert not ppp.valid_protocol(0x10021)  # beyond 16 bits
    assert ppp.protocol_name(PROTO_LCP) == "LCP" and ppp.protocol_name(0x4021) == "0x4021"


def test_parse_real_lcp_frame():
    protocol, info = parse_frame(REAL_LCP)
    assert protocol == PROTO_LCP
    code, ident, data = parse_cp(info)
    assert (code, ident) == (ppp.CONFIGURE_REQUEST, 1)
    assert parse_options(data) == [(1, b"\x05\xdc"), (2, b"\x00\x00\x00\x00"), (7, b""), (8, b""),
                                   (3, b"\xc0\x23")]
    # And building it back gives the identical octets.
    assert build_frame(PROTO_LCP, build_cp(code, ident, build_options(parse_options(data)))) == REAL_LCP


@pytest.mark.parametrize("wire,protocol,info", [
    (b"\xff\x03\x00\x21abc", 0x0021, b"abc"),     # full form
    (b"\x00\x21abc", 0x0021, b"abc"),             # ACFC
    (b"\xff\x03\x21abc", 0x0021, b"abc"),         # PFC
    (b"\x21abc", 0x0021, b"abc"),                 # ACFC + PFC
    (b"\x80\x21", 0x8021, b""),                   # ACFC, no information
    (b"\xff\x03\xc0\x21\x09", 0xC021, b"\x09"),
    (b"\x57", 0x0057, b""),                       # PFC single octet, nothing else
])
def test_parse_frame_forms(wire, protocol, info):
    assert parse_frame(wire) == (protocol, info)
    assert parse_frame(bytearray(wire)) == (protocol, info)


@pytest.mark.parametrize("wire,reason", [
    (b"", "too_short"),
    (b"\xff\x03", "too_short"),
    (b"\xff", "bad_address"),
    (b"\xff\x05\x00\x21", "bad_address"),
    (b"\xff\xff\x00\x21", "bad_address"),
    (b"\x00", "too_short"),
    (b"\xff\x03\xc0", "too_short"),
    (b"\x00\x20abc", "bad_protocol"),
    (b"\xff\x03\xc0\x20", "bad_protocol"),
])
def test_parse_frame_errors(wire, reason):
    with pytest.raises(ParseError) as err:
        parse_frame(wire)
    assert err.value.reason == reason


def test_build_frame_compression():
    assert build_frame(PROTO_IP, b"xy") == b"\xff\x03\x00\x21xy"
    assert build_frame(PROTO_IP, b"xy", acfc=True) == b"\x00\x21xy"
    assert build_frame(PROTO_IP, b"xy", pfc=True) == b"\xff\x03\x21xy"
    assert build_frame(PROTO_IP, b"xy", acfc=True, pfc=True) == b"\x21xy"
    # PFC only applies to protocols below 0x100 (RFC 1661 6.5).
    assert build_frame(PROTO_IPCP, b"", acfc=True, pfc=True) == b"\x80\x21"
    # 0x00FF compressed to one octet would read as an Address field: never compressed.
    assert build_frame(0x00FF, b"", acfc=True, pfc=True) == b"\x00\xff"


def test_build_frame_never_compresses_lcp():
    # RFC 1661 6.5 and 6.6: LCP packets always carry Address/Control and a two-octet protocol.
    assert build_frame(PROTO_LCP, b"\x09\x01\x00\x04", acfc=True, pfc=True) == b"\xff\x03\xc0\x21\x09\x01\x00\x04"


def test_build_frame_rejects_invalid_protocols():
    for bad in (0x0020, 0x0121, 0x10021, -1):
        with pytest.raises(ValueError):
            build_frame(bad, b"")


@FUZZ
@given(valid_protocols, st.binary(max_size=64), st.booleans(), st.booleans())
def test_frame_roundtrip(protocol, info, acfc, pfc):
    frame = build_frame(protocol, info, acfc=acfc, pfc=pfc)
    assert parse_frame(frame) == (protocol, info)
    expect_acfc = acfc and protocol != PROTO_LCP
    expect_pfc = pfc and protocol < 0xFF
    assert len(frame) == len(info) + (0 if expect_acfc else 2) + (1 if expect_pfc else 2)


def test_parse_cp_and_padding():
    packet = build_cp(ppp.ECHO_REQUEST, 0x42, b"\x01\x02\x03\x04data")
    assert packet[:4] == b"\x09\x42\x00\x0c"
    assert parse_cp(packet) == (9, 0x42, b"\x01\x02\x03\x04data")
    # RFC 1661 5: octets beyond Length are padding and ignored.
    assert parse_cp(packet + b"\x00\x00\xff") == (9, 0x42, b"\x01\x02\x03\x04data")
    assert parse_cp(build_cp(ppp.TERMINATE_ACK, 7)) == (6, 7, b"")
    assert build_cp(1, 0x1FF, b"")[:2] == b"\x01\xff"


@pytest.mark.parametrize("packet,reason", [
    (b"", "too_short"),
    (b"\x01\x01\x00", "too_short"),
    (b"\x01\x01\x00\x03", "bad_length"),
    (b"\x01\x01\x00\x00abc", "bad_length"),
    (b"\x01\x01\x00\x09abcd", "bad_length"),
])
def test_parse_cp_errors(packet, reason):
    with pytest.raises(ParseError) as err:
        parse_cp(packet)
    assert err.value.reason == reason


def test_build_cp_too_long():
    with pytest.raises(ValueError):
        build_cp(1, 1, b"x" * 0xFFFC)
    assert len(build_cp(1, 1, b"x" * 0xFFFB)) == 0xFFFF


def test_options():
    data = build_options([(1, b"\x05\xdc"), (7, b""), (5, b"\x01\x02\x03\x04")])
    assert data == b"\x01\x04\x05\xdc\x07\x02\x05\x06\x01\x02\x03\x04"
    assert parse_options(data) == [(1, b"\x05\xdc"), (7, b""), (5, b"\x01\x02\x03\x04")]
    assert parse_options(b"") == []
    with pytest.raises(ValueError):
        build_options([(1, b"x" * 254)])
    assert len(build_options([(1, b"x" * 253)])) == 255


@pytest.mark.parametrize("data", [
    b"\x01",                      # truncated header
    b"\x01\x01",                  # length < 2
    b"\x01\x00",                  # length 0 (would loop forever if accepted)
    b"\x01\x04\x05",              # overruns
    b"\x07\x02\x01\x05\x00\x00",  # second option overruns
])
def test_option_errors(data):
    with pytest.raises(ParseError) as err:
        parse_options(data)
    assert err.value.reason == "bad_option"


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=30)), max_size=10))
def test_options_roundtrip(options):
    assert parse_options(build_options(options)) == options


@FUZZ
@given(st.binary(max_size=80))
def test_parsers_raise_only_parse_error(data):
    for parser in (parse_frame, parse_cp, parse_options):
        try:
            parser(data)
        except ParseError:
            pass


def test_parsers_fuzz_seeded_structured():
    # Mutations of valid packets: either parse or raise ParseError, never anything else,
    # and whatever parses re-builds to the same meaning.
    rng = random.Random(5)
    base = build_cp(1, 1, build_options([(1, b"\x05\xdc"), (2, b"\x00" * 4), (5, b"abcd")]))
    parsed = 0
    for _ in range(3000):
        pkt = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            if op < 0.5 and pkt:
                pkt[rng.randrange(len(pkt))] = rng.getrandbits(8)
            elif op < 0.75:
                del pkt[rng.randrange(len(pkt) + 1):]
            else:
                pkt += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4)))
        try:
            code, ident, data = parse_cp(bytes(pkt))
            options = parse_options(data)
        except ParseError:
            continue
        parsed += 1
        assert build_cp(code, ident, build_options(options)) == bytes(pkt[:4 + len(data)])
    assert parsed > 100
