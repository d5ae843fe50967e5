"""DNS messages: known answers captured from dnsmasq 2.90, compression, every parse error, rewriting, fuzzing.

The replies below were captured from dnsmasq on 127.0.0.1 (queries with ID 0x1234):

* A_REPLY: www.Example.test/A from ``--address=/example.test/198.18.0.7 --local-ttl=60``; the answer's owner is
  a compression pointer to the question (c00c), and the question keeps the query's letter case.
* CNAME_REPLY, MX_REPLY: ``--cname=alias.test,www.example.test`` and ``--mx-host=mx.test,mail.example.test,10``.
* NX_EDNS_REPLY: nope.test/A under ``--local=/test/`` asked with EDNS (UDP size 1232): NXDOMAIN with an OPT.
* TC_REPLY: big.test/TXT (three 250-byte strings) asked without EDNS: dnsmasq's truncated reply, no records.
* BIG_EDNS_REPLY: the same asked with EDNS 1232: 802 bytes, the whole TXT record.
* NX_SOA_REPLY, NODATA_SOA_REPLY: dnsmasq authoritative for zone.test (``--auth-zone=zone.test --auth-ttl=900``):
  nx.zone.test/A (NXDOMAIN) and h.zone.test/AAAA (NOERROR, no answers), each with the zone's SOA.
"""

import random
import struct
from binascii import unhexlify

import pytest
from hypothesis import given, settings, strategies as st

from pyslirp.wire import dns
from pyslirp.wire.dns import Message
from pyslirp.wire.errors import ParseError

FUZZ = settings(derandomize=True, deadline=None, max_examples=400)

A_QUERY = unhexlify("12340100000100000000000003777777074578616d706c6504746573740000010001")
A_REPLY = unhexlify("12348580000100010000000003777777074578616d706c6504746573740000010001"
                    "c00c000100010000003c0004c6120007")
CNAME_REPLY = unhexlify("12348580000100010000000005616c69617304746573740000010001"
                        "c00c000500010000003c001203777777076578616d706c65047465737400")
MX_REPLY = unhexlify("123485800001000100000000026d78047465737400000f0001"
                     "c00c000f00010000003c0015000a046d61696c076578616d706c65047465737400")
NX_EDNS_QUERY = unhexlify("123401000001000000000001046e6f70650474657374000001000100002904d0000000000000")
NX_EDNS_REPLY = unhexlify("123481830001000000000001046e6f70650474657374000001000100002904d0000000000000")
TC_REPLY = unhexlify("1234878000010000000000000362696704746573740000100001")
BIG_EDNS_REPLY = unhexlify(
    "1234858000010001000000010362696704746573740000100001c00c001000010000003c02f1"
    + "fa" + "78" * 250 + "fa" + "79" * 250 + "fa" + "7a" * 250 + "00002904d0000000000000")
NX_SOA_REPLY = unhexlify(
    "123485030001000000010000026e78047a6f6e6504746573740000010001"
    "047a6f6e6504746573740000060001000003840038026e73047a6f6e650474657374000a686f73746d6173746572"
    "047a6f6e6504746573740078a3f175000004b0000000b40012750000000384")
NODATA_SOA_REPLY = unhexlify(
    "1234850000010000000100000168047a6f6e65047465737400001c0001"
    "047a6f6e6504746573740000060001000003840038026e73047a6f6e650474657374000a686f73746d6173746572"
    "047a6f6e6504746573740078a3f175000004b0000000b40012750000000384")
# The query for example.com/A (ID 0xabcd) captured on loopback in tests/test_wire_ip.py.
EXAMPLE_COM_QUERY = unhexlify("abcd01000001000000000000076578616d706c6503636f6d0000010001")

VECTORS = [A_QUERY, A_REPLY, CNAME_REPLY, MX_REPLY, NX_EDNS_QUERY, NX_EDNS_REPLY, TC_REPLY, BIG_EDNS_REPLY,
           NX_SOA_REPLY, NODATA_SOA_REPLY, EXAMPLE_COM_QUERY]

WWW_EXAMPLE_TEST = b"\x03www\x07Example\x04test\x00"


def header(msg_id=0x1234, flags=0, qd=0, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", msg_id, flags, qd, an, ns, ar)


def rr(owner, rtype, ttl, rdata, rclass=1):
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


# ----------------------------------------------------------------------------------------------
# Known answers

def test_a_reply_fields():
    m = Message.parse(A_REPLY)
    assert (m.id, m.qr, m.opcode, m.tc, m.rd, m.rcode) == (0x1234, True, 0, False, True, 0)
    assert m.flags & dns.FLAG_AA and m.flags & dns.FLAG_RA
    assert (m.qdcount, m.ancount, m.nscount, m.arcount) == (1, 1, 0, 0)
    q = m.question
    assert (q.name, q.qtype, q.qclass, q.offset) == (WWW_EXAMPLE_TEST, dns.TYPE_A, dns.CLASS_IN, 12)
    assert q.key() == (b"\x03www\x07example\x04test\x00", 1, 1)
    assert m.question_end == 12 + len(WWW_EXAMPLE_TEST) + 4
    (a,) = m.answers
    assert (a.section, a.rtype, a.rclass, a.ttl, a.rdlength) == (dns.ANSWER, dns.TYPE_A, 1, 60, 4)
    assert A_REPLY[a.start:a.start + 2] == b"\xc0\x0c"           # the owner is a pointer to the question
    assert A_REPLY[a.ttl_offset:a.ttl_offset + 4] == b"\x00\x00\x00\x3c"
    assert A_REPLY[a.rdata_offset:a.end] == bytes([198, 18, 0, 7])
    assert a.end == m.end == len(A_REPLY)
    assert m.opt is None and m.udp_size == 512 and not m.do
    assert m.answer_ttl() == 60 and m.negative_ttl() is None


def test_query_fields_and_build_query_matches_a_captured_query():
    m = Message.parse(A_QUERY)
    assert not m.qr and m.rd and m.records() == () and m.question.name == WWW_EXAMPLE_TEST
    assert dns.build_query(0xabcd, "example.com") == EXAMPLE_COM_QUERY
    assert dns.build_query(0xabcd, "example.com.") == EXAMPLE_COM_QUERY
    assert dns.build_query(0x1234, "nope.test", edns_size=1232) == NX_EDNS_QUERY
    assert dns.build_query(0x1234, WWW_EXAMPLE_TEST) == A_QUERY


def test_cname_and_mx_rdata_names_are_not_followed_but_the_records_parse():
    m = Message.parse(CNAME_REPLY)
    (c,) = m.answers
    assert c.rtype == dns.TYPE_CNAME and c.ttl == 60
    assert dns.read_name(CNAME_REPLY, c.rdata_offset) == (b"\x03www\x07example\x04test\x00", c.end)
    m = Message.parse(MX_REPLY)
    (mx,) = m.answers
    assert mx.rtype == dns.TYPE_MX and MX_REPLY[mx.rdata_offset:mx.rdata_offset + 2] == b"\x00\x0a"


def test_edns_opt_record():
    q = Message.parse(NX_EDNS_QUERY)
    assert q.opt is not None and q.udp_size == 1232 and q.opt.rclass == 1232 and not q.do
    r = Message.parse(NX_EDNS_REPLY)
    assert r.rcode == dns.RCODE_NXDOMAIN and r.opt is r.additional[0] and r.opt.rtype == dns.TYPE_OPT
    assert r.answer_ttl() is None and r.negative_ttl() is None     # no SOA: not to be cached


def test_extended_rcode_and_do_bit_and_small_udp_size():
    opt = dns.opt_record(udp_size=100, ext_rcode=1, do=True)      # BADVERS = 16 = (1 << 4) | 0
    m = Message.parse(header(flags=dns.FLAG_QR, ar=1) + opt)
    assert m.rcode == 16 and m.do and m.udp_size == 512            # RFC 6891 6.2.3: below 512 counts as 512


def test_negative_answers_read_the_soa_minimum():
    for data, rcode in ((NX_SOA_REPLY, dns.RCODE_NXDOMAIN), (NODATA_SOA_REPLY, dns.RCODE_NOERROR)):
        m = Message.parse(data)
        assert m.rcode == rcode and m.answers == ()
        (soa,) = m.authority
        assert (soa.rtype, soa.ttl, soa.soa_minimum) == (dns.TYPE_SOA, 900, 900)
        assert m.negative_ttl() == 900


def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum_and_soa_names_may_be_compressed():
    question = dns.encode_name("x.zone.test") + struct.pack("!HH", 1, 1)
    zone_at = 12 + 2                                   # "zone.test" inside the question name
    # MNAME and RNAME are pointers into the question; the SOA owner too.
    soa_rdata = struct.pack("!H", 0xC000 | zone_at) * 2 + struct.pack("!IIIII", 1, 2, 3, 4, 30)
    data = (header(flags=dns.FLAG_QR | dns.RCODE_NXDOMAIN, qd=1, ns=1) + question
            + rr(struct.pack("!H", 0xC000 | zone_at), dns.TYPE_SOA, 7200, soa_rdata))
    assert Message.parse(data).negative_ttl() == 30
    data = data[:-4 - len(soa_rdata) - 6] + struct.pack("!HHIH", dns.TYPE_SOA, 1, 20, len(soa_rdata)) + soa_rdata
    assert Message.parse(data).negative_ttl() == 20


def test_ttl_with_the_high_bit_set_reads_as_zero():
    data = header(flags=dns.FLAG_QR, an=1) + rr(b"\x00", dns.TYPE_A, 0x80000001, b"\x01\x02\x03\x04")
    assert Message.parse(data).answers[0].ttl == 0                 # RFC 2181 8


def test_sections_false_reads_only_the_question():
    m = Message.parse(NX_SOA_REPLY, sections=False)
    assert m.question.name == b"\x02nx\x04zone\x04test\x00" and m.authority == () and m.nscount == 1
    # ... and so does not notice damage past it.
    assert Message.parse(NX_SOA_REPLY[:-5], sections=False).question is not None


# ----------------------------------------------------------------------------------------------
# Names

H = b"\x00" * 12      # names live after a message header; pointers count from its start


def test_read_name_follows_pointers_backwards():
    data = H + b"\x04test\x00" + b"\x07example\xc0\x0c" + b"\x03www\xc0\x12"
    assert dns.read_name(data, 28) == (b"\x03www\x07example\x04test\x00", 34)
    assert dns.read_name(data, 18) == (b"\x07example\x04test\x00", 28)
    assert dns.skip_name(data, 28) == 34


@pytest.mark.parametrize("data,offset,reason", [
    (H + b"\xc0\x0c", 12, "pointer_loop"),                            # a pointer to itself
    (H + b"\x01a\xc0\x0c", 12, "pointer_loop"),                        # a label, then back to it
    (H + b"\x01a\xc0\x10\x01b\xc0\x0c", 16, "pointer_loop"),           # two names pointing at each other
    (H + b"\x01a\xc0\x10\x01b\x00", 12, "pointer_loop"),               # forward
    (H + b"\x00\xc0\x40", 13, "bad_pointer"),                          # past the end
    (H + b"\x00\xc0\x0b", 13, "bad_pointer"),                          # into the header
    (H + b"\x03ab", 12, "truncated"),
    (H + b"\x03abc", 12, "truncated"),                                 # no root label
    (H + b"\xc0", 12, "truncated"),
    (H + b"\x41abc\x00", 12, "bad_label"),                             # 01 label type
    (H + b"\x81abc\x00", 12, "bad_label"),                             # 10 label type
    (H, 12, "truncated"),
])
def test_read_name_errors(data, offset, reason):
    with pytest.raises(ParseError) as e:
        dns.read_name(data, offset)
    assert e.value.reason == reason
    if reason != "pointer_loop" or data[offset] == 0xC0:
        # skip_name does not follow pointers, so it sees only the loops that start with a bad pointer.
        with pytest.raises(ParseError) as e:
            dns.skip_name(data, offset)
        assert e.value.reason == reason


def test_names_are_limited_to_255_octets():
    ok = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"        # exactly 255 octets
    assert len(ok) == 255 and dns.read_name(H + ok, 12)[0] == ok and dns.skip_name(H + ok, 12) == 12 + 255
    long = (b"\x3f" + b"a" * 63) * 3 + b"\x3e" + b"b" * 62 + b"\x00"
    for f in (dns.read_name, dns.skip_name):
        with pytest.raises(ParseError) as e:
            f(H + long, 12)
        assert e.value.reason == "name_too_long"
    # ... counting the labels reached through pointers too.
    tail = (b"\x3f" + b"a" * 63) * 3 + b"\x00"
    data = H + tail + b"\x3f" + b"c" * 63 + b"\xc0\x0c"
    with pytest.raises(ParseError) as e:
        dns.read_name(data, 12 + len(tail))
    assert e.value.reason == "name_too_long"


def test_encode_name_and_name_text():
    assert dns.encode_name("www.example.test") == b"\x03www\x07example\x04test\x00"
    assert dns.encode_name(".") == b"\x00"
    assert dns.name_text(WWW_EXAMPLE_TEST) == "www.Example.test."
    assert dns.name_text(b"\x00") == "."
    assert dns.name_text(b"\x03a.b\x02\x00\xff\x00") == "a\\046b.\\000\\255."
    for bad in ("a..b", "x" * 64 + ".test", ".".join(["abcdefgh"] * 29)):
        with pytest.raises(ValueError):
            dns.encode_name(bad)


# ----------------------------------------------------------------------------------------------
# Message errors

@pytest.mark.parametrize("data,reason", [
    (b"\x12\x34" + b"\x00" * 9, "too_short"),
    (header(qd=2) + (dns.encode_name("a") + b"\x00\x01\x00\x01") * 2, "bad_qdcount"),   # RFC 9619
    (header(qd=1) + b"\x01a\x00\x00\x01", "truncated"),
    (header(qd=1) + b"\x01a", "truncated"),
    (A_REPLY[:-1], "truncated"),                                      # RDATA cut short
    (header(an=1000) + b"\x00" * 40, "truncated"),                     # counts the bytes cannot hold
    (A_REPLY[:-16] + b"\xc0\x24" + A_REPLY[-14:], "pointer_loop"),     # owner pointing forward
    (A_REPLY[:-16] + b"\xc0\xff" + A_REPLY[-14:], "bad_pointer"),      # owner pointing past the end
    (header(flags=dns.FLAG_QR, ar=2) + dns.opt_record() * 2, "bad_opt"),
    (header(flags=dns.FLAG_QR, ar=1) + b"\x01x\x00" + dns.opt_record()[1:], "bad_opt"),
    (header(flags=dns.FLAG_QR, ns=1) + rr(b"\x00", dns.TYPE_SOA, 60, b"\x00\x00" + b"\x00" * 19), "bad_rdata"),
])
def test_message_errors(data, reason):
    with pytest.raises(ParseError) as e:
        Message.parse(data)
    assert e.value.reason == reason


def test_trailing_bytes_after_the_last_record_are_ignored():
    m = Message.parse(A_REPLY + b"junk")
    assert m.end == len(A_REPLY) and m.answers[0].ttl == 60


# ----------------------------------------------------------------------------------------------
# Rewriting

def test_patch_sets_the_id_and_lowers_every_ttl_but_the_opts():
    m = Message.parse(BIG_EDNS_REPLY)
    out = dns.patch(BIG_EDNS_REPLY, m, 0xBEEF, age=15)
    r = Message.parse(out)
    assert r.id == 0xBEEF and r.answers[0].ttl == 45 and r.opt.ttl == m.opt.ttl
    assert len(out) == len(BIG_EDNS_REPLY) and out[2:] != BIG_EDNS_REPLY[2:]
    assert out[r.answers[0].rdata_offset:r.answers[0].end] == BIG_EDNS_REPLY[m.answers[0].rdata_offset:m.answers[0].end]
    assert Message.parse(dns.patch(BIG_EDNS_REPLY, m, 1, age=600)).answers[0].ttl == 0
    assert dns.patch(BIG_EDNS_REPLY, m, 0x1234) == BIG_EDNS_REPLY


def test_patch_lowers_the_soa_ttl_of_a_negative_answer():
    m = Message.parse(NX_SOA_REPLY)
    r = Message.parse(dns.patch(NX_SOA_REPLY, m, 7, age=100))
    assert r.authority[0].ttl == 800 and r.authority[0].soa_minimum == 900 and r.negative_ttl() == 800


def test_patch_respells_the_question_name_and_the_answer_pointing_to_it():
    m = Message.parse(A_REPLY)
    out = dns.patch(A_REPLY, m, 9, qname=b"\x03WWW\x07example\x04TEST\x00")
    assert out == b"\x00\x09" + A_REPLY[2:12] + b"\x03WWW\x07example\x04TEST\x00" + A_REPLY[30:]
    assert dns.read_name(out, Message.parse(out).answers[0].start)[0] == b"\x03WWW\x07example\x04TEST\x00"
    # A different name is never spliced in.
    assert dns.patch(A_REPLY, m, 9, qname=b"\x03wwx\x07example\x04test\x00")[2:] == A_REPLY[2:]


def test_truncated_reply_keeps_the_question_and_the_opt():
    m = Message.parse(BIG_EDNS_REPLY)
    out = dns.truncated_reply(BIG_EDNS_REPLY, m, 0x4321, qname=b"\x03BIG\x04test\x00")
    r = Message.parse(out)
    assert r.id == 0x4321 and r.tc and r.qr and r.rcode == 0 and r.answers == () and r.authority == ()
    assert r.question.name == b"\x03BIG\x04test\x00" and r.opt is not None and r.opt.rclass == 1232
    assert out == b"\x43\x21" + struct.pack("!H", m.flags | dns.FLAG_TC) + b"\x00\x01\x00\x00\x00\x00\x00\x01" \
        + b"\x03BIG\x04test\x00" + BIG_EDNS_REPLY[22:26] + dns.opt_record(1232)
    # Without EDNS it is byte for byte what dnsmasq itself sends.
    no_opt = BIG_EDNS_REPLY[:10] + b"\x00\x00" + BIG_EDNS_REPLY[12:-11]
    plain = Message.parse(no_opt)
    assert plain.opt is None and plain.answers[0].rtype == dns.TYPE_TXT
    assert dns.truncated_reply(no_opt, plain, 0x1234) == TC_REPLY


def test_error_replies():
    q = Message.parse(A_QUERY)
    out = dns.error_reply(A_QUERY, dns.RCODE_SERVFAIL, q)
    r = Message.parse(out)
    assert (r.id, r.qr, r.rd, r.rcode, r.opt) == (0x1234, True, True, dns.RCODE_SERVFAIL, None)
    assert out[12:] == A_QUERY[12:]
    q = Message.parse(NX_EDNS_QUERY)
    r = Message.parse(dns.error_reply(NX_EDNS_QUERY, dns.RCODE_SERVFAIL, q))
    assert r.rcode == dns.RCODE_SERVFAIL and r.opt is not None and r.opt.rclass == dns.EDNS_UDP_SIZE
    bare = dns.error_reply(b"\x55\x66\x29\x00garbage!", dns.RCODE_FORMERR)
    flags = dns.FLAG_QR | (5 << dns.OPCODE_SHIFT) | dns.FLAG_RD | dns.FLAG_RA | dns.RCODE_FORMERR
    assert bare == b"\x55\x66" + struct.pack("!H", flags) + b"\x00" * 8


def test_tcp_framing_whole_and_byte_by_byte():
    stream = b"".join(dns.tcp_frame(v) for v in VECTORS)
    assert dns.split_tcp_frames(stream) == (VECTORS, b"")
    got, rest = [], b""
    for i in range(len(stream)):
        more, rest = dns.split_tcp_frames(rest + stream[i:i + 1])
        got += more
    assert got == VECTORS and rest == b""
    assert dns.split_tcp_frames(b"\x00\x05abc") == ([], b"\x00\x05abc")
    assert dns.split_tcp_frames(b"\x00\x00\x00") == ([b""], b"\x00")


# ----------------------------------------------------------------------------------------------
# Fuzzing: only ParseError escapes, and whatever parses can be rewritten and parsed again

def _check(data):
    try:
        m = Message.parse(data)
    except ParseError:
        return None
    age = len(data) % 700
    out = dns.patch(data, m, 0xFFFF, age=age, qname=m.question.name.upper() if m.question else None)
    r = Message.parse(out)
    assert [x.ttl for x in r.records() if x.rtype != dns.TYPE_OPT] == \
        [max(0, x.ttl - age) for x in m.records() if x.rtype != dns.TYPE_OPT]
    assert Message.parse(dns.truncated_reply(data, m, 1)).tc
    if not m.qr:
        assert Message.parse(dns.error_reply(data, dns.RCODE_SERVFAIL, m)).rcode == dns.RCODE_SERVFAIL
    return m


@pytest.mark.parametrize("seed", range(6))
def test_fuzz_mutated_vectors(seed):
    rng = random.Random(seed)
    parsed = 0
    for _ in range(3000):
        data = bytearray(rng.choice(VECTORS))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            if op < 0.5 and data:
                data[rng.randrange(len(data))] = rng.choice([0, 0xC0, 0x3F, 0xFF, rng.randrange(256)])
            elif op < 0.7:
                del data[rng.randrange(len(data) + 1):]
            elif op < 0.85:
                pos = rng.randrange(len(data) + 1)
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            elif len(data) > 13:
                pos = rng.randrange(12, len(data) - 1)      # a random pointer
                data[pos:pos + 2] = struct.pack("!H", 0xC000 | rng.randrange(len(data) + 4))
        if _check(bytes(data)) is not None:
            parsed += 1
    assert parsed > 100         # the mutations are not all fatal: rewriting got exercised


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _check(data)


@FUZZ
@given(st.binary(min_size=12, max_size=12), st.binary(max_size=300))
def test_fuzz_after_a_plausible_header(head, body):
    # Small counts make it past the header far more often than random bytes do.
    counts = struct.unpack("!4H", head[4:])
    head = head[:4] + struct.pack("!4H", *(c % 3 for c in counts))
    _check(head + body)
