"""The sans-IO HTTP CONNECT client against proxy responses written by hand (RFC 9110 9.3.6, RFC 9112 4).

Each response is also fed byte by byte and in random chunks: the client must decide the same way, and a tunnel's
first bytes (``leftover`` plus whatever was not fed after the decision) must be the same.
"""

import base64
import random

import pytest

from pyslirp.net import refusal
from pyslirp.proxy.events import ProxyEstablished, ProxyRefused
from pyslirp.proxy.http_connect import HEADER_MAX, HttpConnectClient


def run(client, server, chunking=None, rng=None):
    """Feed ``server`` to ``client`` until it decides; (sent, event), a tunnel's unfed rest added to leftover."""
    sent = client.data_to_send()
    pos = 0
    while client.next_event() is None and pos < len(server):
        n = len(server) if chunking is None else rng.randint(1, 64) if chunking == "random" else chunking
        client.receive_data(server[pos:pos + n])
        pos += n
        sent += client.data_to_send()
    event = client.next_event()
    if isinstance(event, ProxyEstablished):
        event = ProxyEstablished(event.leftover + server[pos:], event.bound)
    return sent, event


def decide(server, host="10.0.0.9", port=443, user="", password="", seed=3):
    """The event for ``server``, asserted equal fed whole, byte by byte and in random chunks."""
    def make():
        return HttpConnectClient(host, port, user, password)
    whole = run(make(), server)
    assert run(make(), server, 1) == whole
    rng = random.Random(seed)
    for _ in range(4):
        assert run(make(), server, "random", rng) == whole
    return whole[1]


# -- the request ---------------------------------------------------------------------------------------------------

def test_request_without_credentials():
    assert HttpConnectClient("example.org", 443).data_to_send() == (
        b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")


def test_request_with_basic_proxy_authorization():
    sent = HttpConnectClient("10.1.2.3", 22, "alice", "open sesame").data_to_send()
    token = base64.b64encode(b"alice:open sesame")
    assert sent == (b"CONNECT 10.1.2.3:22 HTTP/1.1\r\nHost: 10.1.2.3:22\r\n"
                    b"Proxy-Authorization: Basic " + token + b"\r\n\r\n")
    assert token == b"YWxpY2U6b3BlbiBzZXNhbWU="


def test_credentials_are_utf8():
    sent = HttpConnectClient("a.example", 1, "j\u00f6rg", "\u00e4").data_to_send()
    assert base64.b64encode("j\u00f6rg:\u00e4".encode("utf-8")) in sent


def test_ipv6_literal_goes_in_brackets():
    assert HttpConnectClient("2001:db8::1", 8443).data_to_send().startswith(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n"
                                                                            b"Host: [2001:db8::1]:8443\r\n")
    assert HttpConnectClient("[::1]", 80).data_to_send().startswith(b"CONNECT [::1]:80 ")


def test_international_name_goes_as_idna():
    assert HttpConnectClient("b\u00fccher.example", 80).data_to_send().startswith(
        b"CONNECT xn--bcher-kva.example:80 ")


@pytest.mark.parametrize("host", ["bad host", "evil\r\nX-Injected: 1", "a:b", "a/b", "a@b", "", "a\x00b"])
def test_hosts_that_would_break_the_request_line_are_refused(host):
    with pytest.raises(ValueError):
        HttpConnectClient(host, 80)


@pytest.mark.parametrize("port", [0, 65536, -1, "80", None])
def test_bad_ports(port):
    with pytest.raises(ValueError):
        HttpConnectClient("a.example", port)


def test_username_with_a_colon_is_refused():
    with pytest.raises(ValueError, match="must not contain ':'"):
        HttpConnectClient("a.example", 80, "a:b", "pw")


# -- success -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 Connection established\r\n\r\n",
    b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Dec 2025 09:00:00 GMT\r\nVia: 1.1 proxy\r\n\r\n",
    b"HTTP/1.1 200\r\n\r\n",
    b"HTTP/1.1 200 \r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 299 whatever\r\n\r\n",
    b"HTTP/1.1 200 Connection established\n\n",                 # bare LF (RFC 9112 2.2)
    b"HTTP/1.1 200 Connection established\nServer: x\r\n\n",
    b"HTTP/1.1 200 Connection established\r\nServer: x\n\r\n",
])
def test_2xx_establishes_the_tunnel(response):
    assert decide(response + b"SSH-2.0-OpenSSH_9.2\r\n") == ProxyEstablished(b"SSH-2.0-OpenSSH_9.2\r\n")


def test_content_length_of_a_2xx_is_ignored():
    # RFC 9110 9.3.6: "A client MUST ignore any Content-Length or Transfer-Encoding header fields received in a
    # successful response to CONNECT."
    event = decide(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nhello world")
    assert event == ProxyEstablished(b"hello world")


def test_leftover_is_everything_after_the_empty_line_in_the_same_read():
    data = bytes(range(256)) * 256
    client = HttpConnectClient("10.0.0.9", 443)
    client.receive_data(b"HTTP/1.1 200 Connection established\r\n\r\n" + data)
    assert client.next_event() == ProxyEstablished(data)
    assert client.buffered == 0


def test_a_header_block_of_exactly_header_max_bytes_fits():
    head = b"HTTP/1.1 200 OK\r\n"
    filler = HEADER_MAX - len(head) - len(b"X: \r\n\r\n")
    response = head + b"X: " + b"a" * filler + b"\r\n\r\n"
    assert len(response) == HEADER_MAX
    assert decide(response + b"tail") == ProxyEstablished(b"tail")


# -- refusals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("status_line, outcome", [
    (b"HTTP/1.0 407 Proxy Authentication Required", refusal.RESET),
    (b"HTTP/1.0 401 Unauthorized", refusal.RESET),
    (b"HTTP/1.1 403 Access violation", refusal.ADMIN_PROHIBITED),
    (b"HTTP/1.1 403 Forbidden", refusal.ADMIN_PROHIBITED),
    (b"HTTP/1.1 500 Unable to connect", refusal.RESET),
    (b"HTTP/1.1 502 Bad Gateway", refusal.RESET),
    (b"HTTP/1.1 503 Service Unavailable", refusal.RESET),
    (b"HTTP/1.1 504 Gateway Timeout", refusal.RESET),
    (b"HTTP/1.1 405 Method Not Allowed", refusal.RESET),
    (b"HTTP/1.1 100 Continue", refusal.RESET),
    (b"HTTP/1.1 301 Moved Permanently", refusal.RESET),
    (b"HTTP/1.1 199", refusal.RESET),
    (b"HTTP/1.1 300", refusal.RESET),
])
def test_non_2xx_statuses_are_refusals_with_the_status_line(status_line, outcome):
    body = b"<html>the proxy's error page</html>"
    response = status_line + b"\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    event = decide(response)
    assert event == ProxyRefused("HTTP proxy: " + status_line.decode(), outcome, int(status_line[9:12]))


def test_407_reason_reads_as_documented():
    event = decide(b"HTTP/1.0 407 Proxy Authentication Required\r\n"
                   b"Proxy-Authenticate: Basic realm=\"Tinyproxy\"\r\n\r\n", user="alice", password="s3cret")
    assert event.reason == "HTTP proxy: HTTP/1.0 407 Proxy Authentication Required"
    assert event.outcome == refusal.RESET and event.code == 407


def test_the_password_shows_nowhere_but_in_the_request():
    client = HttpConnectClient("10.0.0.9", 443, "alice", "s3cret")
    sent, event = run(client, b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
    assert base64.b64encode(b"alice:s3cret") in sent
    texts = event.reason + repr(event) + repr(client)
    assert "s3cret" not in texts and base64.b64encode(b"alice:s3cret").decode() not in texts


def test_control_characters_in_the_status_line_are_escaped():
    event = decide(b"HTTP/1.1 502 Bad\x1b[31m Gateway\r\n\r\n")
    assert event.reason == "HTTP proxy: HTTP/1.1 502 Bad\\x1b[31m Gateway"


# -- garbage, truncation, bounds -----------------------------------------------------------------------------------

@pytest.mark.parametrize("response, detail", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "the response does not begin with HTTP/"),
    (b"\x05\x00", "the response does not begin with HTTP/"),
    (b"\r\nHTTP/1.1 200 OK\r\n\r\n", "the response does not begin with HTTP/"),
    (b"http/1.1 200 OK\r\n\r\n", "the response does not begin with HTTP/"),
    (b"HTTP/1.1 2OO OK\r\n\r\n", "malformed status line 'HTTP/1.1 2OO OK'"),
    (b"HTTP/1.1 200OK\r\n\r\n", "malformed status line"),
    (b"HTTP/x.1 200 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1  200 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/11 200 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed status line"),
])
def test_garbage_is_a_protocol_error(response, detail):
    event = decide(response)
    assert isinstance(event, ProxyRefused) and event.outcome == refusal.RESET and event.code is None
    assert event.reason.startswith("HTTP proxy protocol error: " + detail)


def test_not_http_is_refused_at_the_first_wrong_byte():
    client = HttpConnectClient("10.0.0.9", 443)
    client.receive_data(b"HT")
    assert client.next_event() is None
    client.receive_data(b"X")
    assert isinstance(client.next_event(), ProxyRefused)


def test_oversized_header_is_refused_once_header_max_bytes_arrived():
    client = HttpConnectClient("10.0.0.9", 443)
    client.receive_data(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Padding: " + b"p" * 100 + b"\r\n"
    while client.next_event() is None:
        assert client.buffered < HEADER_MAX
        client.receive_data(line)
    event = client.next_event()
    assert event == ProxyRefused("HTTP proxy protocol error: response header longer than %d bytes" % HEADER_MAX,
                                 refusal.RESET)


def test_oversized_header_decides_the_same_whole_and_byte_by_byte():
    response = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3000 + b"\r\n"
    assert len(response) > HEADER_MAX
    event = decide(response)
    assert event.reason == "HTTP proxy protocol error: response header longer than %d bytes" % HEADER_MAX


def test_one_enormous_read_is_not_kept():
    client = HttpConnectClient("10.0.0.9", 443)
    client.receive_data(b"HTTP/1.1 200 OK\r\n" + b"a" * (4 * HEADER_MAX))
    assert isinstance(client.next_event(), ProxyRefused) and client.buffered == 0


@pytest.mark.parametrize("partial", [b"", b"HTTP/1.1", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nA: b\r\n\r"])
def test_end_of_file_before_the_header_block_ended(partial):
    client = HttpConnectClient("10.0.0.9", 443)
    if partial:
        client.receive_data(partial)
    assert client.next_event() is None
    client.receive_data(b"")
    assert client.next_event() == ProxyRefused(
        "HTTP proxy protocol error: the proxy closed the connection before the end of its response header",
        refusal.RESET)
    with pytest.raises(RuntimeError):
        client.receive_data(b"more")


# -- seeded fuzz ---------------------------------------------------------------------------------------------------

_RESPONSES = [
    b"HTTP/1.1 200 Connection established\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\n",
    b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
    b"HTTP/1.1 403 Forbidden\n\n",
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
]


def _fuzz_case(rng):
    if rng.random() < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
    data = bytearray(rng.choice(_RESPONSES))
    if rng.random() < 0.2:
        cut = data.index(b"\n") + 1
        # Sometimes around the limit: the block then ends just inside or just outside HEADER_MAX.
        size = rng.randint(HEADER_MAX - 200, HEADER_MAX + 50) if rng.random() < 0.3 else rng.randint(0, 300)
        data[cut:cut] = b"X-Long: " + b"z" * size + b"\r\n"
    data += bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    if rng.random() < 0.7:
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data))
            data[pos] = rng.choice([rng.randrange(256), 0x0A, 0x0D, 0x20, 0x3A])
    if rng.random() < 0.3:
        del data[rng.randrange(len(data) + 1):]
    return bytes(data)


@pytest.mark.parametrize("seed", range(6))
def test_fuzz_random_responses_end_refused_established_or_waiting(seed):
    rng = random.Random(seed)
    for _ in range(300):
        server = _fuzz_case(rng)

        def make():
            return HttpConnectClient("10.0.0.9", 443, "alice", "Zq9-secret")

        whole = run(make(), server)
        assert run(make(), server, 1 if len(server) < 2000 else 37) == whole, server[:200]
        client = make()
        client.data_to_send()
        step = rng.choice([1, 7, 512])
        for i in range(0, len(server), step):
            if client.next_event() is not None:
                break
            client.receive_data(server[i:i + step])
            assert client.buffered < HEADER_MAX
            assert client.data_to_send() == b""
        event = client.next_event()
        assert type(event) is type(whole[1])
        if event is None:
            client.receive_data(b"")
            event = client.next_event()
        assert isinstance(event, (ProxyEstablished, ProxyRefused))
        if isinstance(event, ProxyRefused):
            assert event.outcome in refusal.OUTCOMES and event.reason.startswith("HTTP proxy")
            assert "Zq9-secret" not in event.reason + repr(event) + repr(client)
