"""IPv4, ICMP and UDP headers: known-good packets, round trips, every parse error, fuzzing.

The vectors are real packets captured on a Linux loopback interface:

* PING_REQUEST / PING_REPLY: an ICMP echo request to 127.0.0.1 and the kernel's echo reply (ident 0x1234, seq 1,
  40 bytes of data 0x10..0x37).
* DNS_QUERY: a DNS query for example.com/A (id 0xabcd) from 127.0.0.1:40000 to 127.0.0.1:53.  Loopback offloads the
  UDP checksum (the capture held only the pseudo-header sum, 0xfe38); the final value 0xe9f0 here was checked with
  Wireshark ("Checksum: 0xe9f0 [correct]").
* PORT_UNREACHABLE: the kernel's ICMP port unreachable for that query (it quotes the query as sent, with the
  offloaded checksum field).
* RFC_1071_EXAMPLE_HEADER: the IPv4 header whose checksum 0xb861 is the classic worked example.
"""

import random
import struct
from binascii import unhexlify

import pytest
from hypothesis import given, settings, strategies as st

from pyslirp.wire import icmp, ipv4
from pyslirp.wire.errors import ParseError
from pyslirp.wire.icmp import IcmpRepr
from pyslirp.wire.ipv4 import Ipv4Repr
from pyslirp.wire.udp import UdpRepr

PING_REQUEST = unhexlify(
    "45000044f44740004001486f7f0000017f000001080026f812340001"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637")
PING_REPLY = unhexlify(
    "45000044f44800004001886e7f0000017f00000100002ef812340001"
    "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637")
DNS_QUERY = unhexlify(
    "45000039e7304000401155817f0000017f0000019c4000350025e9f0"
    "abcd01000001000000000000076578616d706c6503636f6d0000010001")
PORT_UNREACHABLE = unhexlify(
    "45c00055f2720000400189737f0000017f0000010303e6ed00000000"
    "45000039e7304000401155817f0000017f0000019c4000350025fe38"
    "abcd01000001000000000000076578616d706c6503636f6d0000010001")
RFC_1071_EXAMPLE_HEADER = unhexlify("450000730000400040110000c0a80001c0a800c7")
LOOPBACK = b"\x7f\x00\x00\x01"
ECHO_DATA = bytes(range(0x10, 0x38))
DNS_PAYLOAD = unhexlify("abcd01000001000000000000076578616d706c6503636f6d0000010001")
VECTORS = [PING_REQUEST, PING_REPLY, DNS_QUERY, PORT_UNREACHABLE]


def reference_checksum(data):
    """A deliberately naive RFC 1071 checksum, independent of pyslirp.wire.checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def set_u16(buf, offset, value):
    b = bytearray(buf)
    struct.pack_into("!H", b, offset, value)
    return bytes(b)


def fix_ip_checksum(packet):
    hlen = (packet[0] & 0x0F) * 4
    packet = set_u16(packet, 10, 0)
    return set_u16(packet, 10, reference_checksum(packet[:hlen]))


# -- known answers -----------------------------------------------------------------------------------------------

def test_header_checksum_known_answer():
    header = Ipv4Repr(src=unhexlify("c0a80001"), dst=unhexlify("c0a800c7"), protocol=17, payload=b"\x00" * 95,
                      ttl=64, ident=0, dont_fragment=True).emit_header()
    assert header[10:12] == b"\xb8\x61"
    assert header[:10] + header[12:] == RFC_1071_EXAMPLE_HEADER[:10] + RFC_1071_EXAMPLE_HEADER[12:]


def test_ping_request_fields():
    ip = Ipv4Repr.parse(PING_REQUEST)
    assert (ip.src, ip.dst, ip.protocol, ip.ttl, ip.ident) == (LOOPBACK, LOOPBACK, ipv4.PROTO_ICMP, 64, 0xF447)
    assert ip.dont_fragment and not ip.more_fragments and ip.frag_offset == 0 and not ip.is_fragment
    assert ip.options == b"" and ip.header_len == 20 and ip.total_len == len(PING_REQUEST)
    msg = IcmpRepr.parse(ip.payload)
    assert (msg.type, msg.code) == (icmp.TYPE_ECHO_REQUEST, 0)
    assert (msg.echo_ident, msg.echo_seq) == (0x1234, 1)
    assert msg.payload == ECHO_DATA
    assert not msg.is_error


def test_ping_reply_is_what_we_would_build():
    # The kernel's reply, rebuilt from values: same bytes (so our ICMP and IP checksums agree with Linux's).
    reply = IcmpRepr.echo(0x1234, 1, ECHO_DATA, reply=True)
    ip = Ipv4Repr(LOOPBACK, LOOPBACK, ipv4.PROTO_ICMP, reply.emit(), ttl=64, ident=0xF448)
    assert ip.emit() == PING_REPLY
    request = IcmpRepr.parse(Ipv4Repr.parse(PING_REQUEST).payload)
    assert IcmpRepr.echo(request.echo_ident, request.echo_seq, request.payload).emit() == \
        Ipv4Repr.parse(PING_REQUEST).payload


def test_dns_query_fields():
    ip = Ipv4Repr.parse(DNS_QUERY)
    assert ip.protocol == ipv4.PROTO_UDP and ip.ident == 0xE730 and ip.dont_fragment
    dgram = UdpRepr.parse(ip.payload, ip.src, ip.dst)
    assert (dgram.src_port, dgram.dst_port) == (40000, 53)
    assert dgram.payload == DNS_PAYLOAD
    assert dgram.emit(ip.src, ip.dst) == ip.payload
    # The pseudo-header is part of the sum: other addresses, other checksum.
    with pytest.raises(ParseError) as e:
        UdpRepr.parse(ip.payload, b"\x0a\x00\x00\x02", ip.dst)
    assert e.value.reason == "bad_checksum"


def test_port_unreachable_fields():
    ip = Ipv4Repr.parse(PORT_UNREACHABLE)
    assert ip.tos == 0xC0 and not ip.dont_fragment
    msg = IcmpRepr.parse(ip.payload)
    assert (msg.type, msg.code) == (icmp.TYPE_DEST_UNREACHABLE, icmp.CODE_PORT_UNREACHABLE)
    assert msg.is_error and msg.rest == b"\x00" * 4
    quoted = Ipv4Repr.parse(msg.payload, verify=True)
    assert quoted.protocol == ipv4.PROTO_UDP and quoted.ident == 0xE730
    rebuilt = IcmpRepr.dest_unreachable(icmp.CODE_PORT_UNREACHABLE, msg.payload)
    assert rebuilt.emit() == ip.payload


@pytest.mark.parametrize("packet", VECTORS)
def test_vectors_round_trip(packet):
    ip = Ipv4Repr.parse(packet)
    assert ip.emit() == packet
    assert ip.buffer_len() == len(packet)


@pytest.mark.parametrize("packet", VECTORS)
def test_vectors_checksums_match_reference(packet):
    assert reference_checksum(packet[:20]) == 0
    ip = Ipv4Repr.parse(packet)
    if ip.protocol == ipv4.PROTO_ICMP:
        assert reference_checksum(ip.payload) == 0
    else:
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, ip.protocol, len(ip.payload))
        assert reference_checksum(pseudo + ip.payload) == 0


# -- IPv4 details ------------------------------------------------------------------------------------------------

def test_link_padding_is_trimmed():
    ip = Ipv4Repr.parse(DNS_QUERY + b"\x00\x00\xff")
    assert ip.emit() == DNS_QUERY


def test_options_are_skipped_and_kept():
    # IHL 6 with a Router Alert option (RFC 2113: 0x94 0x04 0x00 0x00).
    base = Ipv4Repr.parse(DNS_QUERY)
    with_opt = Ipv4Repr(base.src, base.dst, base.protocol, base.payload, ident=7, options=b"\x94\x04\x00\x00")
    packet = with_opt.emit()
    assert packet[0] == 0x46 and len(packet) == len(DNS_QUERY) + 4
    assert reference_checksum(packet[:24]) == 0
    parsed = Ipv4Repr.parse(packet)
    assert parsed.options == b"\x94\x04\x00\x00" and parsed.payload == base.payload and parsed.header_len == 24
    assert UdpRepr.parse(parsed.payload, parsed.src, parsed.dst).payload == DNS_PAYLOAD


def test_odd_options_are_padded_with_eol():
    ip = Ipv4Repr(LOOPBACK, LOOPBACK, 6, b"x", options=b"\x01")   # one NOP
    packet = ip.emit()
    assert packet[0] == 0x46 and packet[20:24] == b"\x01\x00\x00\x00"
    assert Ipv4Repr.parse(packet).options == b"\x01\x00\x00\x00"


def test_fragment_fields_round_trip():
    ip = Ipv4Repr(LOOPBACK, LOOPBACK, 17, b"y" * 16, ident=0xBEEF, more_fragments=True, frag_offset=1480)
    packet = ip.emit()
    assert struct.unpack_from("!H", packet, 6)[0] == 0x2000 | (1480 // 8)
    back = Ipv4Repr.parse(packet)
    assert back == ip and back.is_fragment


def test_emit_refuses_impossible_values():
    with pytest.raises(ValueError):
        Ipv4Repr(LOOPBACK, LOOPBACK, 17, b"z" * 65516).emit()
    with pytest.raises(ValueError):
        Ipv4Repr(LOOPBACK, LOOPBACK, 17, b"", frag_offset=3).emit()
    with pytest.raises(ValueError):
        Ipv4Repr(LOOPBACK, LOOPBACK, 17, b"", options=b"\x01" * 44).emit()


def test_address_helpers():
    assert ipv4.ip_bytes("10.0.0.1") == b"\x0a\x00\x00\x01"
    assert ipv4.ip_bytes(b"\x0a\x00\x00\x02") == b"\x0a\x00\x00\x02"
    assert ipv4.ip_str(b"\xc0\xa8\x00\xc7") == "192.168.0.199"
    with pytest.raises(ValueError):
        ipv4.ip_bytes("10.0.0")
    assert ipv4.is_unicast(b"\x0a\x00\x00\x02")
    for addr in ("0.0.0.0", "127.0.0.1", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255"):
        assert not ipv4.is_unicast(ipv4.ip_bytes(addr)), addr
    # Only multicast and class E (with the limited broadcast) name no single host; loopback and 0/8 do.
    for addr in ("224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255"):
        assert ipv4.is_multicast_or_broadcast(ipv4.ip_bytes(addr)), addr
    for addr in ("0.0.0.0", "127.0.0.1", "10.0.0.2", "223.255.255.255"):
        assert not ipv4.is_multicast_or_broadcast(ipv4.ip_bytes(addr)), addr


# -- every parse error -------------------------------------------------------------------------------------------

IP_ERRORS = [
    ("too_short", lambda p: p[:19]),
    ("bad_version", lambda p: fix_ip_checksum(bytes([0x65]) + p[1:])),
    ("bad_ihl", lambda p: fix_ip_checksum(bytes([0x44]) + p[1:])),
    ("truncated", lambda p: fix_ip_checksum(bytes([0x4F]) + p[1:])[:40]),          # header of 60 > 40 bytes
    ("truncated", lambda p: p[:-1]),                                                # total length > buffer
    ("bad_length", lambda p: fix_ip_checksum(set_u16(p, 2, 19))),
    ("bad_checksum", lambda p: set_u16(p, 10, struct.unpack_from("!H", p, 10)[0] ^ 0x0100)),
    ("bad_checksum", lambda p: p[:12] + b"\x7f\x00\x00\x02" + p[16:]),              # a flipped address
    ("bad_fragment", lambda p: fix_ip_checksum(set_u16(p, 6, 0x1FFF))),             # offset 65528 + data
]


@pytest.mark.parametrize("reason,mutate", IP_ERRORS)
def test_ipv4_parse_errors(reason, mutate):
    with pytest.raises(ParseError) as e:
        Ipv4Repr.parse(mutate(DNS_QUERY))
    assert e.value.reason == reason


def test_ipv4_checksum_can_be_skipped():
    bad = set_u16(DNS_QUERY, 10, 0)
    assert Ipv4Repr.parse(bad, verify=False).payload == Ipv4Repr.parse(DNS_QUERY).payload


def test_icmp_parse_errors():
    payload = Ipv4Repr.parse(PING_REQUEST).payload
    with pytest.raises(ParseError) as e:
        IcmpRepr.parse(payload[:7])
    assert e.value.reason == "too_short"
    corrupt = payload[:20] + bytes([payload[20] ^ 1]) + payload[21:]
    with pytest.raises(ParseError) as e:
        IcmpRepr.parse(corrupt)
    assert e.value.reason == "bad_checksum"
    assert IcmpRepr.parse(corrupt, verify=False).payload[12] == payload[20] ^ 1


def test_udp_parse_errors():
    ip = Ipv4Repr.parse(DNS_QUERY)
    data = ip.payload
    cases = [
        ("too_short", data[:7]),
        ("bad_length", set_u16(data, 4, 7)),
        ("truncated", set_u16(data, 4, len(data) + 1)),
        ("bad_checksum", data[:-1] + b"\x02"),
    ]
    for reason, bad in cases:
        with pytest.raises(ParseError) as e:
            UdpRepr.parse(bad, ip.src, ip.dst)
        assert e.value.reason == reason, reason


def test_udp_length_field_trims_and_zero_checksum_means_none():
    ip = Ipv4Repr.parse(DNS_QUERY)
    no_sum = set_u16(ip.payload, 6, 0)
    assert UdpRepr.parse(no_sum, ip.src, ip.dst).payload == DNS_PAYLOAD
    # A shorter length field: the datagram ends there (checksum off, since the sum covered the whole).
    short = set_u16(no_sum, 4, 8 + 2)
    assert UdpRepr.parse(short, ip.src, ip.dst).payload == DNS_PAYLOAD[:2]


def test_udp_zero_checksum_is_sent_as_ffff():
    # Choose the last two payload bytes so that the computed sum is 0: it must go out as 0xFFFF (RFC 768).
    src, dst = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
    body = b"hello, world"
    length = 8 + len(body) + 2
    partial = src + dst + struct.pack("!BBHHHHH", 0, 17, length, 53, 1234, length, 0) + body
    word = reference_checksum(partial)          # adding this word makes the sum 0xFFFF
    dgram = UdpRepr(53, 1234, body + struct.pack("!H", word))
    wire = dgram.emit(src, dst)
    assert wire[6:8] == b"\xff\xff"
    assert UdpRepr.parse(wire, src, dst) == dgram


# -- ICMP helpers -------------------------------------------------------------------------------------------------

def test_icmp_error_builders_trim_the_quote():
    big = Ipv4Repr(LOOPBACK, LOOPBACK, 17, b"q" * 1400).emit()
    msg = IcmpRepr.dest_unreachable(icmp.CODE_FRAG_NEEDED, big, next_hop_mtu=576)
    assert len(msg.payload) == icmp.MAX_QUOTE and msg.rest == b"\x00\x00\x02\x40"
    assert 20 + len(msg.emit()) == 576
    tx = IcmpRepr.time_exceeded(icmp.CODE_REASSEMBLY_EXCEEDED, big[:28])
    assert IcmpRepr.parse(tx.emit()) == tx and tx.is_error
    with pytest.raises(ValueError):
        IcmpRepr(0, 0, b"\x00", b"").emit()


def test_unknown_icmp_types_count_as_errors():
    assert IcmpRepr(42, 0).is_error
    assert not IcmpRepr(icmp.TYPE_TIMESTAMP, 0).is_error


# -- property tests -----------------------------------------------------------------------------------------------

addresses = st.binary(min_size=4, max_size=4)


@settings(derandomize=True, deadline=None, max_examples=300)
@given(src=addresses, dst=addresses, protocol=st.integers(0, 255), payload=st.binary(max_size=300),
       ttl=st.integers(0, 255), ident=st.integers(0, 0xFFFF), tos=st.integers(0, 255), df=st.booleans(),
       mf=st.booleans(), offset=st.integers(0, 1000).map(lambda n: n * 8),
       options=st.binary(max_size=40).map(lambda b: b[:len(b) & ~3]))
def test_ipv4_round_trip(src, dst, protocol, payload, ttl, ident, tos, df, mf, offset, options):
    ip = Ipv4Repr(src, dst, protocol, payload, ttl, ident, tos, df, mf, offset, options)
    packet = ip.emit()
    assert reference_checksum(packet[:ip.header_len]) == 0
    assert Ipv4Repr.parse(packet) == ip


@settings(derandomize=True, deadline=None, max_examples=300)
@given(src=addresses, dst=addresses, sport=st.integers(0, 0xFFFF), dport=st.integers(0, 0xFFFF),
       payload=st.binary(max_size=600))
def test_udp_round_trip(src, dst, sport, dport, payload):
    dgram = UdpRepr(sport, dport, payload)
    wire = dgram.emit(src, dst)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, len(wire))
    assert reference_checksum(pseudo + wire) == 0
    assert UdpRepr.parse(wire, src, dst) == dgram


@settings(derandomize=True, deadline=None, max_examples=300)
@given(type_=st.integers(0, 255), code=st.integers(0, 255), rest=st.binary(min_size=4, max_size=4),
       payload=st.binary(max_size=600))
def test_icmp_round_trip(type_, code, rest, payload):
    msg = IcmpRepr(type_, code, rest, payload)
    wire = msg.emit()
    assert reference_checksum(wire) == 0
    assert IcmpRepr.parse(wire) == msg


def _parse_all(data):
    """Parse as IPv4 and, if that works, the transport inside: only ParseError may escape."""
    try:
        ip = Ipv4Repr.parse(data)
    except ParseError:
        return
    for parse in (lambda: IcmpRepr.parse(ip.payload), lambda: UdpRepr.parse(ip.payload, ip.src, ip.dst)):
        try:
            parse()
        except ParseError:
            pass


@settings(derandomize=True, deadline=None, max_examples=1000)
@given(data=st.binary(max_size=120))
def test_fuzz_random_bytes_only_raise_parse_error(data):
    _parse_all(data)
    _parse_all(b"\x45" + data)
    for parser in (IcmpRepr.parse, lambda d: UdpRepr.parse(d, LOOPBACK, LOOPBACK)):
        try:
            parser(data)
        except ParseError:
            pass


def test_fuzz_mutated_vectors_only_raise_parse_error():
    rng = random.Random(1234)
    seen = set()
    for _ in range(4000):
        packet = bytearray(rng.choice(VECTORS))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            if op < 0.6 and packet:
                packet[rng.randrange(len(packet))] = rng.randrange(256)
            elif op < 0.8:
                del packet[rng.randrange(len(packet) + 1):]
            else:
                packet += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.5 and len(packet) >= 20:
            packet = bytearray(fix_ip_checksum(bytes(packet)))   # get past the header checksum too
        try:
            ip = Ipv4Repr.parse(bytes(packet))
        except ParseError as e:
            seen.add(e.reason)
            continue
        for parse in (lambda: IcmpRepr.parse(ip.payload), lambda: UdpRepr.parse(ip.payload, ip.src, ip.dst)):
            try:
                parse()
            except ParseError as e:
                seen.add(e.reason)
    # The mutations reached the interesting checks, not only the first one.
    assert {"bad_checksum", "truncated", "bad_version"} <= seen


def test_fuzz_truncations_of_every_vector():
    for packet in VECTORS:
        for n in range(len(packet)):
            with pytest.raises(ParseError):
                Ipv4Repr.parse(packet[:n])
        # And every single-bit flip in the header is caught (version/IHL/length checks or the checksum).
        for bit in range(160):
            flipped = bytearray(packet)
            flipped[bit // 8] ^= 0x80 >> (bit % 8)
            with pytest.raises(ParseError):
                Ipv4Repr.parse(bytes(flipped))
