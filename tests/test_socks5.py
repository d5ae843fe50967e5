"""The sans-IO SOCKS5 client (RFC 1928, RFC 1929) against exchanges written by hand from the RFCs' formats.

Every server message below is spelled out in hex, field by field, as the RFCs draw them.  Each exchange is also
replayed byte by byte and in random chunks: the client must end the same way, having sent the same bytes.
"""

import random

import pytest

from pyslirp.net import refusal
from pyslirp.proxy.events import ProxyEstablished, ProxyRefused
from pyslirp.proxy.socks5 import REPLY_MAX, Socks5Client

H = bytes.fromhex

# Server messages.  Method selection: VER METHOD.  RFC 1929 status: VER STATUS.
# Reply: VER REP RSV ATYP BND.ADDR BND.PORT.
SEL_NO_AUTH = H("05 00")
SEL_USERPASS = H("05 02")
SEL_NONE_ACCEPTABLE = H("05 ff")
AUTH_OK = H("01 00")
AUTH_FAILED = H("01 01")
REPLY_OK_V4 = H("05 00 00 01 7f000001 d431")                              # bound 127.0.0.1:54321
REPLY_OK_V6 = H("05 00 00 04 20010db8000000000000000000000001 0050")     # bound [2001:db8::1]:80
REPLY_OK_NAME = H("05 00 00 03 0b 70726f78792e6c6f63616c 1f90")          # bound proxy.local:8080


def reply(code):
    return H("05") + bytes((code,)) + H("00 01 00000000 0000")


def run(client, server, chunking=None, rng=None):
    """Feed ``server`` (one bytes string: everything the proxy sends) to ``client``; returns (sent, event).

    chunking None: whole; 1: byte by byte; "random": random chunk sizes from ``rng``.  Feeding stops at the
    client's decision, as a caller would; what was not fed then is the tunnel's too, so a ``ProxyEstablished`` is
    returned with it appended to ``leftover`` (the tunnel's first bytes, whatever the chunking).
    """
    sent = client.data_to_send()
    pos = 0
    while client.next_event() is None and pos < len(server):
        if chunking is None:
            n = len(server)
        elif chunking == "random":
            n = rng.randint(1, 16)
        else:
            n = chunking
        client.receive_data(server[pos:pos + n])
        pos += n
        sent += client.data_to_send()
    event = client.next_event()
    if isinstance(event, ProxyEstablished):
        event = ProxyEstablished(event.leftover + server[pos:], event.bound)
    return sent, event


def all_chunkings(make, server, seed=1):
    """(sent, event) fed whole, byte by byte and in random chunks: asserted equal; returned once."""
    whole = run(make(), server)
    assert run(make(), server, 1) == whole
    rng = random.Random(seed)
    for _ in range(5):
        assert run(make(), server, "random", rng) == whole
    return whole


# -- what the client sends ----------------------------------------------------------------------------------------

def test_greeting_offers_no_auth_only_without_username():
    assert Socks5Client("10.1.2.3", 80).data_to_send() == H("05 01 00")
    assert Socks5Client("10.1.2.3", 80, "", "ignored").data_to_send() == H("05 01 00")


def test_greeting_offers_userpass_too_with_username():
    assert Socks5Client("10.1.2.3", 80, "alice", "s3cret").data_to_send() == H("05 02 00 02")


def test_connect_by_ipv4_literal():
    sent, event = all_chunkings(lambda: Socks5Client("192.0.2.7", 443), SEL_NO_AUTH + REPLY_OK_V4)
    # greeting, then VER CMD=CONNECT RSV ATYP=1 DST.ADDR DST.PORT
    assert sent == H("05 01 00") + H("05 01 00 01 c0000207 01bb")
    assert event == ProxyEstablished(b"", ("127.0.0.1", 54321))


def test_connect_by_domain_name():
    sent, event = all_chunkings(lambda: Socks5Client("example.org", 8080), SEL_NO_AUTH + REPLY_OK_V4)
    assert sent == H("05 01 00") + H("05 01 00 03 0b") + b"example.org" + H("1f90")
    assert isinstance(event, ProxyEstablished)


def test_connect_by_ipv6_literal():
    sent, _ = run(Socks5Client("2001:db8::5", 22), SEL_NO_AUTH + REPLY_OK_V4)
    assert sent[3:] == H("05 01 00 04 20010db8000000000000000000000005 0016")
    sent, _ = run(Socks5Client("[2001:db8::5]", 22), SEL_NO_AUTH + REPLY_OK_V4)
    assert sent[3:] == H("05 01 00 04 20010db8000000000000000000000005 0016")


def test_something_that_only_looks_like_an_address_goes_as_a_name():
    sent, _ = run(Socks5Client("1.2.3.4.5", 1), SEL_NO_AUTH)
    assert sent[3:] == H("05 01 00 03 09") + b"1.2.3.4.5" + H("0001")


def test_domain_name_of_255_bytes_fits_256_does_not():
    name = ".".join(["a" * 63] * 4)[:255]
    sent, _ = run(Socks5Client(name, 80), SEL_NO_AUTH)
    assert sent[3:8] == H("05 01 00 03 ff") and sent[8:8 + 255] == name.encode()
    with pytest.raises(ValueError, match="256 bytes, at most 255"):
        Socks5Client(name + "b", 80)


@pytest.mark.parametrize("host, port", [("", 80), ("a", 0), ("a", 65536), ("a", "80"), (None, 80), ("a", True)])
def test_invalid_targets_raise_value_error(host, port):
    with pytest.raises(ValueError):
        Socks5Client(host, port)


def test_credentials_over_255_bytes_raise_without_showing_the_password():
    with pytest.raises(ValueError, match="username is 256 bytes"):
        Socks5Client("a", 1, "u" * 256, "pw")
    with pytest.raises(ValueError) as info:
        Socks5Client("a", 1, "u", "P" * 300)
    assert "password is 300 bytes" in str(info.value) and "PPP" not in str(info.value)


# -- authentication ------------------------------------------------------------------------------------------------

def test_username_password_exchange():
    sent, event = all_chunkings(lambda: Socks5Client("10.0.0.9", 25, "alice", "s3cret"),
                                SEL_USERPASS + AUTH_OK + REPLY_OK_V4 + b"220 mail\r\n")
    # RFC 1929 2: VER=1 ULEN UNAME PLEN PASSWD, then the CONNECT request
    assert sent == (H("05 02 00 02") + H("01 05") + b"alice" + H("06") + b"s3cret"
                    + H("05 01 00 01 0a000009 0019"))
    assert event == ProxyEstablished(b"220 mail\r\n", ("127.0.0.1", 54321))


def test_utf8_credentials_are_sent_as_utf8():
    sent, _ = run(Socks5Client("10.0.0.9", 25, "j\u00f6rg", "p\u00e4ss"), SEL_USERPASS)
    assert sent[4:] == H("01 05") + "j\u00f6rg".encode() + H("05") + "p\u00e4ss".encode()


def test_empty_password_is_sent_as_zero_length():
    sent, _ = run(Socks5Client("10.0.0.9", 25, "bob", ""), SEL_USERPASS)
    assert sent[4:] == H("01 03") + b"bob" + H("00")


def test_server_may_pick_no_auth_although_userpass_was_offered():
    sent, event = run(Socks5Client("10.0.0.9", 25, "alice", "s3cret"), SEL_NO_AUTH + REPLY_OK_V4)
    assert sent == H("05 02 00 02") + H("05 01 00 01 0a000009 0019")
    assert b"s3cret" not in sent
    assert isinstance(event, ProxyEstablished)


def test_authentication_failure_is_a_reset_without_the_password():
    sent, event = all_chunkings(lambda: Socks5Client("10.0.0.9", 25, "alice", "s3cret"),
                                SEL_USERPASS + AUTH_FAILED)
    assert sent.endswith(b"s3cret")           # it went to the proxy, once
    assert event == ProxyRefused("SOCKS5 authentication failed: the proxy rejected username 'alice' "
                                 "(status 0x01)", refusal.RESET)
    client = Socks5Client("10.0.0.9", 25, "alice", "s3cret")
    run(client, SEL_USERPASS + AUTH_FAILED)
    assert "s3cret" not in repr(event) + repr(client) + repr(client.next_event())


def test_no_acceptable_methods():
    _, event = all_chunkings(lambda: Socks5Client("10.0.0.9", 25), SEL_NONE_ACCEPTABLE)
    assert event == ProxyRefused("SOCKS5 authentication failed: the proxy accepts none of the offered methods "
                                 "(no authentication)", refusal.RESET)
    _, event = run(Socks5Client("10.0.0.9", 25, "u", "p"), SEL_NONE_ACCEPTABLE)
    assert "(no authentication, username/password)" in event.reason


def test_server_chooses_a_method_not_offered():
    _, event = run(Socks5Client("10.0.0.9", 25), SEL_USERPASS)
    assert event == ProxyRefused("SOCKS5 protocol error: the proxy chose method 0x02, which was not offered",
                                 refusal.RESET)
    _, event = run(Socks5Client("10.0.0.9", 25, "u", "p"), H("05 01"))     # GSSAPI
    assert event.reason.startswith("SOCKS5 protocol error") and "0x01" in event.reason


# -- reply codes ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, outcome, text", [
    (0x01, refusal.RESET, "general SOCKS server failure"),
    (0x02, refusal.ADMIN_PROHIBITED, "connection not allowed by ruleset"),
    (0x03, refusal.NET_UNREACHABLE, "network unreachable"),
    (0x04, refusal.HOST_UNREACHABLE, "host unreachable"),
    (0x05, refusal.RESET, "connection refused"),
    (0x06, refusal.RESET, "TTL expired"),
    (0x07, refusal.RESET, "command not supported"),
    (0x08, refusal.RESET, "address type not supported"),
    (0x09, refusal.RESET, "unassigned code"),
    (0xFF, refusal.RESET, "unassigned code"),
])
def test_failure_reply_codes(code, outcome, text):
    _, event = all_chunkings(lambda: Socks5Client("10.0.0.9", 25), SEL_NO_AUTH + reply(code))
    assert event == ProxyRefused("SOCKS5 reply %02x: %s" % (code, text), outcome, code)


def test_reply_code_05_reason_reads_as_documented():
    _, event = run(Socks5Client("10.0.0.9", 25), SEL_NO_AUTH + reply(5))
    assert event.reason == "SOCKS5 reply 05: connection refused"


def test_failure_code_decides_without_the_rest_of_the_reply():
    # RFC 1928 6: the server terminates the connection shortly after a failure reply; a short one is enough.
    client = Socks5Client("10.0.0.9", 25)
    run(client, SEL_NO_AUTH)
    client.receive_data(H("05 04"))
    assert client.next_event() == ProxyRefused("SOCKS5 reply 04: host unreachable", refusal.HOST_UNREACHABLE, 4)


def test_success_reply_code_00():
    _, event = all_chunkings(lambda: Socks5Client("10.0.0.9", 25), SEL_NO_AUTH + reply(0))
    assert event == ProxyEstablished(b"", ("0.0.0.0", 0))


# -- reply addresses and leftover bytes ----------------------------------------------------------------------------

@pytest.mark.parametrize("server_reply, bound", [
    (REPLY_OK_V4, ("127.0.0.1", 54321)),
    (REPLY_OK_V6, ("2001:db8::1", 80)),
    (REPLY_OK_NAME, ("proxy.local", 8080)),
    (H("05 00 00 03 00 0050"), ("", 80)),
])
def test_reply_address_types(server_reply, bound):
    _, event = all_chunkings(lambda: Socks5Client("10.0.0.9", 25), SEL_NO_AUTH + server_reply + b"tail")
    assert event == ProxyEstablished(b"tail", bound)


def test_control_characters_in_a_bound_name_are_escaped():
    _, event = run(Socks5Client("10.0.0.9", 25), SEL_NO_AUTH + H("05 00 00 03 03 610a62 0050"))
    assert event.bound == ("a\\x0ab", 80)


def test_leftover_is_every_byte_after_the_reply_in_the_same_read():
    data = bytes(range(256)) * 64                   # the destination's first 16 KiB
    client = Socks5Client("10.0.0.9", 25)
    run(client, SEL_NO_AUTH)
    client.receive_data(REPLY_OK_NAME + data)
    assert client.next_event() == ProxyEstablished(data, ("proxy.local", 8080))
    assert client.data_to_send() == b"" and client.buffered == 0


def test_finished_client_takes_no_more_input():
    client = Socks5Client("10.0.0.9", 25)
    run(client, SEL_NO_AUTH + REPLY_OK_V4)
    with pytest.raises(RuntimeError):
        client.receive_data(b"x")
    assert client.next_event() == client.next_event()


# -- garbage, truncation, bounds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("server, detail", [
    (H("04 00"), "method selection version 0x04"),
    (b"HTTP/1.1 400 Bad Request\r\n", "method selection version 0x48"),
    (SEL_NO_AUTH + H("04 00 00 01 00000000 0000"), "reply version 0x04"),
    (SEL_NO_AUTH + H("05 00 01 01 00000000 0000"), "reply reserved byte 0x01"),
    (SEL_NO_AUTH + H("05 00 00 02 00000000 0000"), "reply address type 0x02"),
    (SEL_NO_AUTH + H("05 00 00 00"), "reply address type 0x00"),
])
def test_garbage_replies_are_protocol_errors(server, detail):
    _, event = all_chunkings(lambda: Socks5Client("10.0.0.9", 25), server)
    assert isinstance(event, ProxyRefused) and event.outcome == refusal.RESET and event.code is None
    assert event.reason.startswith("SOCKS5 protocol error: " + detail)


def test_garbage_auth_status():
    _, event = run(Socks5Client("10.0.0.9", 25, "u", "p"), SEL_USERPASS + H("05 00"))
    assert event.reason == "SOCKS5 protocol error: authentication status version 0x05, expected 0x01"


@pytest.mark.parametrize("server, user, waiting", [
    (b"", "", "its method selection"),
    (H("05"), "", "its method selection"),
    (SEL_USERPASS + H("01"), "u", "its authentication status"),
    (SEL_NO_AUTH, "", "its reply to CONNECT"),
    (SEL_NO_AUTH + REPLY_OK_NAME[:-1], "", "its reply to CONNECT"),
])
def test_end_of_file_before_an_answer(server, user, waiting):
    client = Socks5Client("10.0.0.9", 25, user, "p")
    _, event = run(client, server)
    assert event is None
    client.receive_data(b"")
    assert client.next_event() == ProxyRefused(
        "SOCKS5 protocol error: the proxy closed the connection before " + waiting, refusal.RESET)
    assert client.data_to_send() == b""


def test_nothing_is_queued_after_a_decision():
    client = Socks5Client("10.0.0.9", 25, "u", "p")
    assert client.data_to_send() == H("05 02 00 02")
    client.receive_data(SEL_NONE_ACCEPTABLE)
    assert client.data_to_send() == b""
    client = Socks5Client("10.0.0.9", 25)
    client.data_to_send()
    client.receive_data(SEL_NO_AUTH)
    client.data_to_send()
    client.receive_data(reply(5))
    assert client.data_to_send() == b"" and client.next_event().code == 5


def test_buffer_never_exceeds_the_longest_reply():
    client = Socks5Client("10.0.0.9", 25)
    run(client, SEL_NO_AUTH)
    longest = H("05 00 00 03 ff") + b"n" * 255 + H("0050")
    assert len(longest) == REPLY_MAX == 262
    for i, byte in enumerate(longest):
        assert client.next_event() is None
        client.receive_data(bytes((byte,)))
        assert client.buffered <= REPLY_MAX
    assert client.next_event() == ProxyEstablished(b"", ("n" * 255, 80))


# -- seeded fuzz ---------------------------------------------------------------------------------------------------

def _fuzz_case(rng, user):
    """A random server transcript: a valid exchange, then maybe a few bytes overwritten, maybe cut short; or noise."""
    if rng.random() < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    userpass = user and rng.random() < 0.7
    data = bytearray(SEL_USERPASS if userpass else SEL_NO_AUTH)
    if userpass:
        data += rng.choice([AUTH_OK, AUTH_OK, AUTH_FAILED])
    name_len = rng.randrange(256)
    data += rng.choice([REPLY_OK_V4, REPLY_OK_V6, REPLY_OK_NAME, reply(rng.randrange(256)),
                        H("05 00 00 03") + bytes((name_len,)) + b"x" * name_len + H("0050")])
    data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if rng.random() < 0.7:
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    if rng.random() < 0.3:
        del data[rng.randrange(len(data) + 1):]
    return bytes(data)


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_random_replies_end_refused_established_or_waiting(seed):
    rng = random.Random(seed)
    for _ in range(400):
        user = rng.choice(["", "alice"])
        server = _fuzz_case(rng, user)
        host = rng.choice(["10.0.0.9", "example.org", "::1"])

        def make():
            return Socks5Client(host, 25, user, "Zq9-secret")

        whole = run(make(), server)
        assert run(make(), server, 1) == whole, server.hex()
        client = make()
        client.data_to_send()
        for i in range(len(server)):
            if client.next_event() is not None:
                break
            client.receive_data(server[i:i + 1])
            client.data_to_send()
            assert client.buffered <= REPLY_MAX
        event = client.next_event()
        assert type(event) is type(whole[1])
        if event is None:                           # waiting for more: the end of the connection decides
            client.receive_data(b"")
            event = client.next_event()
        assert isinstance(event, (ProxyEstablished, ProxyRefused))
        if isinstance(event, ProxyRefused):
            assert event.outcome in refusal.OUTCOMES and event.reason.startswith("SOCKS5 ")
            assert "Zq9-secret" not in event.reason + repr(event) + repr(client)
