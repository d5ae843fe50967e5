"""SYN cookies (net/tcp/syncookie.py): round trip, expiry, rotation, tampering, the MSS table, timestamp bits."""

import random

import pytest

from pyslirp.net.flows import PROTO_TCP, FlowKey
from pyslirp.net.tcp import syncookie
from pyslirp.net.tcp.seq import seq_sub
from pyslirp.net.tcp.syncookie import (MSS_TABLE, TICK_MS, SynCookies, UnansweredSyns, mss_index, ts_decode,
                                      ts_encode)
from pyslirp.wire.ipv4 import ip_bytes

CLIENT = ip_bytes("10.0.0.2")
SERVER = ip_bytes("10.0.0.1")
FLOW = FlowKey(PROTO_TCP, CLIENT, 40000, SERVER, 22)
ISN = 0x12345678


def test_round_trip_returns_the_mss_rounded_down_to_the_table():
    c = SynCookies(random.Random(1))
    for mss, expected in ((1460, 1460), (1500, 1460), (1452, 1440), (1000, 536), (536, 536), (None, 536),
                          (300, 256), (100, 64), (10, 64), (1220, 1200)):
        iss, encoded = c.make(FLOW, ISN, mss, 5000)
        assert encoded == expected
        assert c.check(FLOW, ISN, iss, 5000) == expected
        assert c.check(FLOW, ISN, iss, 5100) == expected
    assert c.made == 10 and c.valid == 20 and c.invalid == 0


def test_mss_index_and_table():
    assert len(MSS_TABLE) == 8 and list(MSS_TABLE) == sorted(MSS_TABLE)
    for i, value in enumerate(MSS_TABLE):
        assert mss_index(value) == i
        assert mss_index(value + 1) == i
    assert mss_index(0) == 0 and mss_index(65535) == len(MSS_TABLE) - 1


def test_cookie_carries_the_tick_in_its_top_bits():
    c = SynCookies(random.Random(2))
    for tick in range(10):
        iss, _ = c.make(FLOW, ISN, 1460, tick * TICK_MS + 7)
        assert iss >> 29 == tick & 7 and (iss >> 26) & 7 == MSS_TABLE.index(1460)
        assert 0 <= iss <= 0xFFFFFFFF


def test_cookie_expires_with_its_secret():
    c = SynCookies(random.Random(3))
    iss, _ = c.make(FLOW, ISN, 1460, 0)
    # Valid through MAX_AGE further ticks, gone after.
    last_valid = (syncookie.MAX_AGE + 1) * TICK_MS - 1
    assert c.check(FLOW, ISN, iss, last_valid) == 1460
    c.make(FLOW, ISN + 1, 1460, last_valid + 1)          # a new tick's cookie rotates the old secret out
    assert c.check(FLOW, ISN, iss, last_valid + 1) is None
    assert c.invalid == 1


def test_cookie_expires_even_without_new_cookies():
    c = SynCookies(random.Random(3))
    iss, _ = c.make(FLOW, ISN, 1460, 0)
    assert c.active(0) and c.active((syncookie.MAX_AGE + 1) * TICK_MS - 1)
    late = (syncookie.MAX_AGE + 1) * TICK_MS
    assert not c.active(late)
    assert c.check(FLOW, ISN, iss, late) is None
    assert c.check(FLOW, ISN, iss, 8 * TICK_MS) is None  # same low tick bits, long after: still no secret


def test_each_tick_has_its_own_secret():
    c = SynCookies(random.Random(4))
    c.make(FLOW, ISN, 1460, 0)
    c.make(FLOW, ISN, 1460, TICK_MS)
    first, second = c._secrets[0], c._secrets[1]
    assert first != second and len(first) == 16
    for t in range(2, 9):
        c.make(FLOW, ISN, 1460, t * TICK_MS)
        assert len(c._secrets) <= syncookie.MAX_AGE + 1
    assert first not in c._secrets.values() and second not in c._secrets.values()


def test_cookies_depend_on_every_part_of_the_syn():
    c = SynCookies(random.Random(5))
    iss, _ = c.make(FLOW, ISN, 1460, 1000)
    others = [
        FLOW._replace(client_port=40001), FLOW._replace(server_port=23),
        FLOW._replace(client_addr=ip_bytes("10.0.0.3")), FLOW._replace(server_addr=ip_bytes("198.51.100.1")),
    ]
    for other in others:
        assert c.check(other, ISN, iss, 1000) is None
    assert c.check(FLOW, ISN + 1, iss, 1000) is None
    for bit in range(32):
        assert c.check(FLOW, ISN, iss ^ (1 << bit), 1000) is None
    assert c.invalid == len(others) + 1 + 32 and c.valid == 0


def test_another_secret_does_not_validate():
    a = SynCookies(random.Random(6))
    b = SynCookies(random.Random(7))
    iss, _ = a.make(FLOW, ISN, 1460, 0)
    b.make(FLOW, ISN, 1460, 0)
    assert b.check(FLOW, ISN, iss, 0) is None
    again = SynCookies(random.Random(6))
    assert again.make(FLOW, ISN, 1460, 0)[0] == iss       # the secret comes from the rng only


def test_blind_guesses_fail():
    c = SynCookies(random.Random(8))
    c.make(FLOW, ISN, 1460, 0)
    guesser = random.Random(9)
    hits = sum(1 for _ in range(20000) if c.check(FLOW, ISN, guesser.getrandbits(32), 0) is not None)
    assert hits == 0 and c.invalid == 20000


def test_no_check_before_any_cookie():
    c = SynCookies(random.Random(10))
    assert not c.active(0)
    assert c.check(FLOW, ISN, 0, 0) is None


def test_max_age_must_fit_the_tick_bits():
    with pytest.raises(ValueError):
        SynCookies(random.Random(1), max_age=7)


# -- timestamp bits ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("wscale,sack", [(None, False), (None, True), (0, False), (7, True), (14, True)])
def test_ts_bits_round_trip(wscale, sack):
    for base in (0, 63, 64, 1000, 0xFFFFFFFF, 0x80000000, 12345678):
        value = ts_encode(base, wscale, sack)
        assert 0 <= value <= 0xFFFFFFFF
        assert ts_decode(value) == (wscale, sack)
        # Never above the clock it stands for (later TSvals must not go backwards), and close to it.
        assert -128 < seq_sub(value, base) <= 0


def test_ts_wscale_is_clamped_and_garbage_rejected():
    assert ts_decode(ts_encode(1000, 20, False)) == (14, False)
    assert ts_decode(None) is None
    assert ts_decode(0) is None                          # no marker: not one of ours
    assert ts_decode(0x20 | 0x0E) == (14, False)
    assert ts_decode(0x20 | 0x0F) == (None, False)
    assert ts_decode(0x20 | 0x10 | 0x03) == (3, True)


# -- unanswered SYNs -----------------------------------------------------------------------------------------------

def test_an_unanswered_syn_is_recognised_when_it_comes_back():
    u = UnansweredSyns(random.Random(1), slots=1024)
    assert not u.again(FLOW, ISN)                        # first seen: remembered
    assert not u.again(FLOW, ISN + 1) and not u.again(FLOW._replace(client_port=40001), ISN)
    assert u.again(FLOW, ISN) and u.again(FLOW, ISN)
    assert u.recognised == 2


def test_a_flood_makes_the_table_forget_but_never_grow():
    u = UnansweredSyns(random.Random(2), slots=1024)
    size = len(u._slots)
    u.again(FLOW, ISN)
    for port in range(20000):
        u.again(FLOW._replace(client_port=port % 65536 + 1 if port != 40000 else 1), port * 31)
    assert len(u._slots) == size == 1024
    assert not u.again(FLOW, ISN)                        # long overwritten (and now remembered again)
    for port in range(50):                               # a short flood: most of the table survives
        u.again(FLOW._replace(client_port=port + 1), port)
    assert u.again(FLOW, ISN)
