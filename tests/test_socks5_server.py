"""The sans-IO SOCKS5 server of ``pyslirp.py client -D`` (RFC 1928)."""

import random
import struct

import pytest

from pyslirp.proxy import socks5_server as S


def connect_request(atyp, address, port):
    if atyp == S.ATYP_DOMAIN:
        address = bytes([len(address)]) + address
    return bytes([5, S.CMD_CONNECT, 0, atyp]) + address + struct.pack("!H", port)


def test_no_auth_connect_ipv4():
    s = S.Socks5Server()
    assert s.receive(b"\x05\x02\x00\x02") == b"\x05\x00"
    assert s.state == S.REQUEST
    assert s.receive(connect_request(S.ATYP_IPV4, bytes([10, 0, 0, 1]), 22)) == b""
    assert s.state == S.REQUESTED and s.target == ("10.0.0.1", 22)
    assert s.reply(None) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert s.state == S.ESTABLISHED


def test_byte_by_byte_and_pipelined_data():
    whole = b"\x05\x01\x00" + connect_request(S.ATYP_DOMAIN, b"192.0.2.7", 80) + b"GET / HTTP/1.0\r\n"
    s = S.Socks5Server()
    out = b"".join(s.receive(whole[i:i + 1]) for i in range(len(whole)))
    assert out == b"\x05\x00"
    assert s.target == ("192.0.2.7", 80) and s.early == b"GET / HTTP/1.0\r\n"


@pytest.mark.parametrize("reason,code,rep", [
    ("rst", -1, S.REP_CONNECTION_REFUSED),
    ("unreachable", 0, S.REP_NET_UNREACHABLE),
    ("unreachable", 1, S.REP_HOST_UNREACHABLE),
    ("unreachable", 13, S.REP_NOT_ALLOWED),
    ("timeout", -1, S.REP_HOST_UNREACHABLE),
    ("unresolved", -1, S.REP_HOST_UNREACHABLE),
    ("link down", -1, S.REP_GENERAL_FAILURE),
])
def test_refusals_map_to_reply_codes(reason, code, rep):
    s = S.Socks5Server()
    s.receive(b"\x05\x01\x00" + connect_request(S.ATYP_IPV4, bytes(4), 1))
    answer = s.reply(reason, code)
    assert answer[:2] == bytes([5, rep]) and len(answer) == 10
    assert s.state == S.CLOSED


def test_unsupported_requests():
    cases = [
        (b"\x05\x01\x02", b"\x05\xff"),                                          # only user/password offered
        (b"\x05\x01\x00" + bytes([5, 2, 0, 1]) + bytes(6), b"\x05\x00" + b"\x05\x07"),    # BIND
        (b"\x05\x01\x00" + connect_request(S.ATYP_IPV6, bytes(16), 1), b"\x05\x00" + b"\x05\x08"),
        (b"\x05\x01\x00" + connect_request(S.ATYP_DOMAIN, b"", 1), b"\x05\x00" + b"\x05\x04"),
        (b"\x05\x01\x00" + bytes([5, 1, 0, 9]), b"\x05\x00" + b"\x05\x08"),         # unknown ATYP
    ]
    for data, prefix in cases:
        s = S.Socks5Server()
        out = s.receive(data)
        assert out.startswith(prefix), (data, out)
        assert s.state == S.CLOSED and s.error
    s = S.Socks5Server()
    assert s.receive(b"\x04\x01") == b"" and s.state == S.CLOSED      # SOCKS4: closed without an answer


def test_fuzz_never_raises_and_stays_bounded():
    rng = random.Random(1928)
    for _ in range(3000):
        s = S.Socks5Server()
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        if rng.random() < 0.5:
            data = b"\x05\x01\x00\x05" + data
        pos = 0
        while pos < len(data):
            n = rng.randrange(1, 8)
            s.receive(data[pos:pos + n])
            pos += n
            assert s.buffered <= S.MAX_REQUEST
        assert s.state in (S.GREETING, S.REQUEST, S.REQUESTED, S.CLOSED)


def test_a_name_is_left_for_the_owner_to_resolve():
    s = S.Socks5Server()
    s.receive(b"\x05\x01\x00" + connect_request(S.ATYP_DOMAIN, b"files.example", 443))
    assert s.state == S.REQUESTED and s.target == ("files.example", 443)
