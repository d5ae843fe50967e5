"""net/ratelimit.py: the token bucket (burst, refill, time going backwards, integer arithmetic) and the
power-of-two log throttle."""

import logging
import random

import pytest

from pyslirp.net import icmp as icmp_policy
from pyslirp.net.ratelimit import MILLI, TokenBucket, every_power_of_two


def test_starts_full_and_allows_exactly_the_burst():
    bucket = TokenBucket(rate=5, burst=4, now=1000)
    assert [bucket.allow(1000) for _ in range(6)] == [True] * 4 + [False] * 2
    assert (bucket.allowed, bucket.denied) == (4, 2)


def test_refills_at_the_rate_to_the_millisecond():
    bucket = TokenBucket(rate=3, burst=2, now=0)
    assert bucket.allow(0) and bucket.allow(0) and not bucket.allow(0)
    assert not bucket.allow(333)                   # 999 milli-tokens
    assert bucket.allow(334)                       # 1002: one token, 2 milli-tokens left
    assert bucket.tokens == 2
    assert not bucket.allow(665)                   # 2 + 331 * 3 = 995
    assert not bucket.allow(666)                   # 998: the remainder carried over, nothing rounded
    assert bucket.allow(667) and bucket.tokens == 1


def test_refill_is_capped_at_the_burst():
    bucket = TokenBucket(rate=10, burst=3, now=0)
    assert [bucket.allow(0) for _ in range(3)] == [True] * 3
    assert [bucket.allow(10 ** 9) for _ in range(5)] == [True] * 3 + [False] * 2
    assert bucket.tokens == 0


def test_long_run_average_is_the_rate():
    # Asked every millisecond, a full bucket of 7/s with a burst of 2 says yes at t=0 and t=1 (the burst),
    # then exactly 7 times per second: 7 + 9999 * 7 = 70000 milli-tokens by t=10000.
    bucket = TokenBucket(rate=7, burst=2, now=0)
    allowed = [t for t in range(0, 10001) if bucket.allow(t)]
    assert len(allowed) == 2 + 70 and allowed[:2] == [0, 1] and allowed[-1] == 10000


def test_time_going_backwards_adds_nothing_and_is_never_credited_twice():
    bucket = TokenBucket(rate=1, burst=1, now=5000)
    assert bucket.allow(5000) and not bucket.allow(5000)
    assert not bucket.allow(0)                     # the clock stepped back: no refill
    assert bucket.last == 5000                     # the reference point stays
    assert not bucket.allow(5999)                  # the interval 0..5000 is not credited again
    assert bucket.allow(6000)
    assert bucket.tokens == 0


def test_arithmetic_stays_in_integers():
    rng = random.Random(7)
    bucket = TokenBucket(rate=13, burst=5, now=0)
    now = 0
    for _ in range(2000):
        now += rng.choice([0, 1, 7, 76, 77, 1000, -3])
        bucket.allow(now)
        assert type(bucket.tokens) is int and 0 <= bucket.tokens <= 5 * MILLI
    big = TokenBucket(rate=10, burst=20, now=2 ** 62)
    assert [big.allow(2 ** 62) for _ in range(20)] == [True] * 20
    assert not big.allow(2 ** 62 + 99) and big.allow(2 ** 62 + 100)
    assert type(big.tokens) is int
    assert TokenBucket(rate=2.0, burst=3.0).capacity == 3000


@pytest.mark.parametrize("rate, burst", [(0, 1), (1, 0), (-1, 5), (0.5, 1), (1, 1.5)])
def test_rejects_rates_and_bursts_that_are_not_positive_whole_numbers(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_wait_ms_says_when_allow_will_say_yes_and_takes_nothing():
    b = TokenBucket(3, 2)                       # a token every 333.3 ms
    assert b.wait_ms(0) == 0 and b.allow(0) and b.allow(0)
    assert b.wait_ms(0) == 334 and b.wait_ms(100) == 234 and b.tokens == 0
    assert not b.allow(333) and b.allow(334)
    rng = random.Random(5)
    for _ in range(200):
        b = TokenBucket(rng.randint(1, 50), rng.randint(1, 5))
        now = 0
        for _ in range(20):
            now += rng.randint(0, 100)
            wait = b.wait_ms(now)
            if wait:
                assert not b.allow(now + wait - 1)
            assert b.allow(now + wait)
            now += wait


def test_icmp_policy_uses_the_shared_bucket():
    assert icmp_policy.TokenBucket is TokenBucket


def test_every_power_of_two_logs_the_1st_2nd_4th_8th_occurrence():
    assert [n for n in range(0, 1100) if every_power_of_two(n)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert not every_power_of_two(-4)
    assert every_power_of_two(1 << 70) and not every_power_of_two((1 << 70) + 1)


def test_tcp_drops_are_logged_at_powers_of_two(caplog):
    from test_tcp_harness import RST, Conn
    h = Conn()
    with caplog.at_level(logging.DEBUG, logger="pyslirp.net.tcp"):
        for i in range(20):
            h.send(RST, seq=h.cseq + 70000 + i, at=10)
    lines = [r.getMessage() for r in caplog.records if "rst_out_of_window" in r.getMessage()]
    assert h.conn.counters["rst_out_of_window"] == 20
    assert [line.split("#")[1].split(")")[0] for line in lines] == ["1", "2", "4", "8", "16"]
