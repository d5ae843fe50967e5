"""The sans-IO DNS forwarder at explicit times: forward, answer, cache (TTL lowered, expiry, caps, RFC 2308
negative answers), spoofing defence, timeouts, bounds, coalescing, bad input, truncation; and a seeded fuzz."""

import random
import struct

import pytest

from pyslirp.net.dns import DnsForwarder
from pyslirp.wire import dns
from pyslirp.wire.dns import Message

C1 = ("10.0.0.2", 40001)
C2 = ("10.0.0.2", 40002)
ADDR = bytes([198, 18, 0, 7])


def make(**kw):
    kw.setdefault("rng", random.Random(1))
    return DnsForwarder(**kw)


def rr(rtype, ttl, rdata, owner=b"\xc0\x0c"):
    return owner + struct.pack("!HHIH", rtype, dns.CLASS_IN, ttl, len(rdata)) + rdata


def soa(ttl, minimum, owner=b"\xc0\x0c"):
    rdata = b"\x02ns\xc0\x0c" + b"\x0ahostmaster\xc0\x0c" + struct.pack("!IIIII", 1, 1200, 180, 1209600, minimum)
    return rr(dns.TYPE_SOA, ttl, rdata, owner)


def reply_to(query, answers=(), authority=(), rcode=dns.RCODE_NOERROR, flags=0, question=None):
    """An upstream reply to ``query`` (as forwarded): its ID and question, then the given records."""
    m = Message.parse(query)
    qsection = question if question is not None else query[dns.HEADER_LEN:m.question_end]
    opt = dns.opt_record(1232) if m.opt is not None else b""
    head = dns.HEADER.pack(m.id, dns.FLAG_QR | dns.FLAG_RD | dns.FLAG_RA | flags | rcode, 1 if qsection else 0,
                           len(answers), len(authority), 1 if opt else 0)
    return head + qsection + b"".join(answers) + b"".join(authority) + opt


def ask(fwd, client, msg_id, name, now, qtype=dns.TYPE_A, **kw):
    fwd.query(client, dns.build_query(msg_id, name, qtype, **kw), now)


def forwarded(fwd):
    (item,) = fwd.take_queries()
    return item


def replies(fwd):
    return [(client, Message.parse(data), data) for client, data in fwd.take_replies()]


def answer_ttls(m):
    return [r.ttl for r in m.answers]


# ----------------------------------------------------------------------------------------------

def test_forward_then_answer_relays_with_the_clients_id():
    fwd = make()
    query = dns.build_query(0x1111, "www.example.test")
    fwd.query(C1, query, 0)
    assert fwd.take_replies() == []
    upstream_id, sent = forwarded(fwd)
    assert sent == dns.with_id(query, upstream_id) and fwd.inflight == 1
    assert fwd.get_timer() == 5000
    upstream = reply_to(sent, [rr(dns.TYPE_A, 60, ADDR)])
    fwd.answer(upstream, 20)
    ((client, m, data),) = replies(fwd)
    assert client == C1 and m.id == 0x1111 and data == dns.with_id(upstream, 0x1111)
    assert fwd.inflight == 0 and fwd.get_timer() is None and fwd.cache_size == 1
    c = fwd.counters
    assert (c["queries"], c["forwarded"], c["answers"], c["cached"], c["cache_hits"]) == (1, 1, 1, 1, 0)


def test_upstream_ids_are_random_and_unique_in_flight():
    fwd = make(rng=random.Random(7))
    ids = []
    for i in range(40):
        ask(fwd, C1, 5, "n%d.test" % i, 0)
        ids.append(forwarded(fwd)[0])
    assert len(set(ids)) == 40
    assert ids != sorted(ids) and all(i != 5 for i in ids)


def test_cache_hit_lowers_ttls_by_the_age_and_keeps_the_clients_id_and_spelling():
    fwd = make()
    ask(fwd, C1, 1, "www.example.test", 0)
    uid, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_CNAME, 300, b"\x01a\xc0\x0c"), rr(dns.TYPE_A, 60, ADDR)]), 0)
    fwd.take_replies()
    ask(fwd, C2, 0x2222, "WWW.Example.TEST", 10999)
    ((client, m, data),) = replies(fwd)
    assert fwd.take_queries() == []
    assert client == C2 and m.id == 0x2222 and answer_ttls(m) == [290, 50]
    assert m.question.name == b"\x03WWW\x07Example\x04TEST\x00"
    assert fwd.counters["cache_hits"] == 1 and fwd.counters["forwarded"] == 1


def test_entry_expires_after_the_smallest_answer_ttl():
    fwd = make()
    ask(fwd, C1, 1, "x.test", 0)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 300, ADDR), rr(dns.TYPE_A, 30, ADDR)]), 0)
    fwd.take_replies()
    ask(fwd, C1, 2, "x.test", 29999)
    ((_, m, _),) = replies(fwd)
    assert answer_ttls(m) == [271, 1]
    ask(fwd, C1, 3, "x.test", 30000)
    assert fwd.take_replies() == [] and len(fwd.take_queries()) == 1 and fwd.cache_size == 0


def test_max_ttl_caps_the_cache_lifetime_and_ttl_zero_is_not_cached():
    fwd = make(max_ttl=100)
    ask(fwd, C1, 1, "long.test", 0)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 86400, ADDR)]), 0)
    ask(fwd, C1, 2, "long.test", 99999)
    assert len(fwd.take_replies()) == 2 and fwd.take_queries() == []
    ask(fwd, C1, 3, "long.test", 100000)
    assert len(fwd.take_queries()) == 1
    ask(fwd, C1, 4, "zero.test", 0)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 0, ADDR)]), 0)
    ask(fwd, C1, 5, "zero.test", 1)
    assert len(fwd.take_queries()) == 1 and fwd.counters["cached"] == 1


@pytest.mark.parametrize("rcode,cap,soa_ttl,minimum,lifetime", [
    (dns.RCODE_NXDOMAIN, 300, 900, 60, 60),         # RFC 2308 5: min(SOA TTL, MINIMUM)
    (dns.RCODE_NXDOMAIN, 300, 45, 600, 45),
    (dns.RCODE_NXDOMAIN, 30, 900, 600, 30),         # capped
    (dns.RCODE_NOERROR, 300, 900, 120, 120),        # NODATA
])
def test_negative_answers_are_cached_per_rfc_2308(rcode, cap, soa_ttl, minimum, lifetime):
    fwd = make(negative_ttl_cap=cap)
    ask(fwd, C1, 1, "nx.zone.test", 0)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, authority=[soa(soa_ttl, minimum)], rcode=rcode), 0)
    fwd.take_replies()
    ask(fwd, C2, 2, "nx.zone.test", lifetime * 1000 - 1)
    ((_, m, _),) = replies(fwd)
    assert m.rcode == rcode and m.id == 2 and m.authority[0].ttl == soa_ttl - (lifetime - 1)
    ask(fwd, C2, 3, "nx.zone.test", lifetime * 1000)
    assert fwd.take_replies() == [] and len(fwd.take_queries()) == 1


def test_cname_to_nodata_is_bounded_by_the_soa():
    fwd = make()
    ask(fwd, C1, 1, "alias.test", 0, dns.TYPE_AAAA)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_CNAME, 3000, b"\x01b\xc0\x0c")], [soa(900, 20)]), 0)
    ask(fwd, C1, 2, "alias.test", 19999, dns.TYPE_AAAA)
    ask(fwd, C1, 3, "alias.test", 20000, dns.TYPE_AAAA)
    assert len(fwd.take_replies()) == 2 and len(fwd.take_queries()) == 1


@pytest.mark.parametrize("rcode,authority,flags", [
    (dns.RCODE_NXDOMAIN, [], 0),                    # no SOA: "SHOULD NOT be cached"
    (dns.RCODE_NOERROR, [], 0),                     # NODATA (or a referral) without SOA
    (dns.RCODE_SERVFAIL, [], 0),
    (dns.RCODE_REFUSED, [soa(900, 900)], 0),
    (dns.RCODE_NOERROR, [], dns.FLAG_TC),           # truncated: passed through, never cached
])
def test_uncacheable_replies_are_relayed_and_not_cached(rcode, authority, flags):
    fwd = make()
    ask(fwd, C1, 9, "big.test", 0, dns.TYPE_TXT)
    _, sent = forwarded(fwd)
    upstream = reply_to(sent, authority=authority, rcode=rcode, flags=flags)
    fwd.answer(upstream, 0)
    ((_, m, data),) = replies(fwd)
    assert data == dns.with_id(upstream, 9) and m.rcode == rcode and m.tc == bool(flags)
    assert fwd.cache_size == 0
    ask(fwd, C1, 10, "big.test", 1, dns.TYPE_TXT)
    assert len(fwd.take_queries()) == 1


def test_a_reply_with_another_question_is_dropped_and_the_real_one_still_accepted():
    fwd = make()
    ask(fwd, C1, 1, "bank.test", 0)
    uid, sent = forwarded(fwd)
    forged_q = dns.encode_name("evil.test") + struct.pack("!HH", dns.TYPE_A, dns.CLASS_IN)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 60, b"\x06\x06\x06\x06")], question=forged_q), 0)
    forged_type = dns.encode_name("bank.test") + struct.pack("!HH", dns.TYPE_MX, dns.CLASS_IN)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 60, b"\x06\x06\x06\x06")], question=forged_type), 0)
    no_question = reply_to(sent, [rr(dns.TYPE_A, 60, b"\x06\x06\x06\x06", owner=b"\x00")], question=b"")
    fwd.answer(no_question, 0)
    assert fwd.take_replies() == [] and fwd.inflight == 1 and fwd.cache_size == 0
    assert fwd.counters["dropped_question_mismatch"] == 3
    fwd.answer(dns.with_id(reply_to(sent, [rr(dns.TYPE_A, 60, ADDR)]), uid ^ 1), 0)          # wrong ID
    assert fwd.counters["dropped_unknown_id"] == 1 and fwd.inflight == 1
    # The question compares case-insensitively.
    real_q = dns.encode_name("BANK.test") + struct.pack("!HH", dns.TYPE_A, dns.CLASS_IN)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 60, ADDR)], question=real_q), 1)
    ((_, m, data),) = replies(fwd)
    assert m.id == 1 and m.answers[0].rdlength == 4 and data.endswith(ADDR)


def test_timeout_gives_servfail_and_forgets_the_query():
    fwd = make(timeout_ms=5000)
    ask(fwd, C1, 0x77, "slow.test", 1000, edns_size=1232)
    uid, sent = forwarded(fwd)
    assert fwd.get_timer() == 6000
    fwd.handle_timer(5999)
    assert fwd.take_replies() == [] and fwd.inflight == 1
    fwd.handle_timer(6000)
    ((client, m, _),) = replies(fwd)
    assert client == C1 and m.id == 0x77 and m.rcode == dns.RCODE_SERVFAIL and m.qr
    assert m.question.name == dns.encode_name("slow.test") and m.opt is not None
    assert fwd.inflight == 0 and fwd.get_timer() is None and fwd.counters["timeouts"] == 1
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 60, ADDR)]), 6001)
    assert fwd.take_replies() == [] and fwd.counters["dropped_unknown_id"] == 1


def test_timers_fire_in_order():
    fwd = make(timeout_ms=100)
    for i, t in enumerate((0, 10, 20)):
        ask(fwd, C1, i, "t%d.test" % i, t)
    fwd.take_queries()
    fwd.handle_timer(110)
    assert [m.id for _, m, _ in replies(fwd)] == [0, 1] and fwd.get_timer() == 120


def test_failed_gives_servfail_to_every_waiter():
    fwd = make()
    ask(fwd, C1, 1, "down.test", 0)
    ask(fwd, C2, 2, "down.test", 1)
    uid, _ = forwarded(fwd)
    fwd.failed(uid, 5)
    out = replies(fwd)
    assert [(c, m.id, m.rcode) for c, m, _ in out] == [(C1, 1, dns.RCODE_SERVFAIL), (C2, 2, dns.RCODE_SERVFAIL)]
    assert fwd.inflight == 0 and fwd.counters["upstream_failed"] == 1 and fwd.counters["servfail"] == 2
    fwd.failed(uid, 6)                     # twice, or unknown: nothing
    assert fwd.take_replies() == []


def test_inflight_bound_answers_servfail_at_once():
    fwd = make(max_inflight=2)
    for i in range(3):
        ask(fwd, C1, 10 + i, "q%d.test" % i, 0)
    assert len(fwd.take_queries()) == 2 and fwd.inflight == 2
    ((_, m, _),) = replies(fwd)
    assert m.id == 12 and m.rcode == dns.RCODE_SERVFAIL and fwd.counters["overload"] == 1
    # A question already in flight still joins it.
    ask(fwd, C2, 20, "q0.test", 1)
    assert fwd.take_replies() == [] and fwd.counters["coalesced"] == 1


def test_identical_questions_are_coalesced_and_retransmissions_dropped():
    fwd = make(max_waiters=2)
    ask(fwd, C1, 1, "same.test", 0)
    ask(fwd, C2, 2, "SAME.test", 1)
    ask(fwd, C1, 1, "same.test", 2)                  # the client's retransmission
    ask(fwd, ("10.0.0.2", 40003), 3, "same.test", 3)  # over max_waiters
    ask(fwd, C1, 4, "same.test", 4, dns.TYPE_AAAA)    # another question
    ask(fwd, C1, 5, "same.test", 5, rd=False)         # other flags: another query
    assert len(fwd.take_queries()) == 3
    ((_, m, _),) = replies(fwd)
    assert m.id == 3 and m.rcode == dns.RCODE_SERVFAIL
    assert fwd.counters["coalesced"] == 1 and fwd.counters["dropped_retransmission"] == 1


def test_coalesced_waiters_each_get_their_id_and_spelling():
    fwd = make()
    ask(fwd, C1, 1, "same.test", 0)
    ask(fwd, C2, 2, "SAME.test", 1)
    uid, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 60, ADDR)]), 2)
    out = replies(fwd)
    assert [(c, m.id, m.question.name) for c, m, _ in out] == [
        (C1, 1, b"\x04same\x04test\x00"), (C2, 2, b"\x04SAME\x04test\x00")]
    assert fwd.counters["answers"] == 1


def test_edns_and_do_keep_separate_cache_entries():
    fwd = make()
    ask(fwd, C1, 1, "e.test", 0, edns_size=1232)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 60, ADDR)]), 0)
    ask(fwd, C1, 2, "e.test", 1)                                   # no EDNS: must not get an OPT back
    ask(fwd, C1, 3, "e.test", 1, edns_size=1232, do=True)          # DO: maybe signatures
    ask(fwd, C1, 4, "e.test", 1, edns_size=4000)                   # EDNS, another size: a hit
    assert len(fwd.take_queries()) == 2
    ((_, m, _), (_, hit, _)) = replies(fwd)
    assert hit.id == 4 and hit.opt is not None


def test_replies_too_long_for_the_client_become_truncated():
    fwd = make()
    big = [rr(dns.TYPE_TXT, 60, b"\xff" + b"x" * 255)] * 3      # about 800 bytes, as over TCP
    ask(fwd, C1, 1, "big.test", 0, dns.TYPE_TXT)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, big), 0)
    ((_, m, data),) = replies(fwd)
    assert m.tc and m.id == 1 and m.answers == () and len(data) <= 512 and m.question.qtype == dns.TYPE_TXT
    # ... but it was a whole answer: cached, and a client that takes more gets all of it.
    assert fwd.cache_size == 1 and fwd.counters["truncated"] == 1
    ask(fwd, C1, 2, "big.test", 0, dns.TYPE_TXT, edns_size=1232)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, big), 0)
    ask(fwd, C2, 3, "big.test", 1, dns.TYPE_TXT, edns_size=600)
    ((_, full, _), (_, small, _)) = replies(fwd)
    assert not full.tc and len(full.answers) == 3 and small.tc and small.opt is not None


def test_max_udp_reply_caps_what_the_client_asks_for():
    fwd = make(max_udp_reply=700)
    ask(fwd, C1, 1, "big.test", 0, dns.TYPE_TXT, edns_size=65000)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_TXT, 60, b"\xff" + b"x" * 255) * 3]), 0)
    ((_, m, _),) = replies(fwd)
    assert m.tc


def test_bad_queries():
    fwd = make()
    fwd.query(C1, b"\x01\x02\x03", 0)                                       # too short: dropped
    fwd.query(C1, dns.with_id(reply_to(dns.build_query(5, "a.test")), 5), 0)    # a response: dropped
    fwd.query(C1, b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc", 0)   # body unreadable
    notify = dns.build_query(6, "a.test")
    notify = notify[:2] + struct.pack("!H", 4 << dns.OPCODE_SHIFT) + notify[4:]
    fwd.query(C1, notify, 0)
    fwd.query(C1, dns.HEADER.pack(7, dns.FLAG_RD, 0, 0, 0, 0), 0)           # no question
    out = replies(fwd)
    assert [(m.id, m.rcode, m.qdcount) for _, m, _ in out] == [
        (0xabcd, dns.RCODE_FORMERR, 0), (6, dns.RCODE_NOTIMP, 1), (7, dns.RCODE_FORMERR, 0)]
    assert all(m.qr for _, m, _ in out)
    c = fwd.counters
    assert (c["dropped_too_short"], c["dropped_not_a_query"], c["formerr"], c["notimp"]) == (1, 1, 2, 1)
    assert fwd.take_queries() == [] and c["queries"] == 5


def test_malformed_answer_with_our_question_fails_at_once_otherwise_dropped():
    fwd = make()
    ask(fwd, C1, 1, "m.test", 0)
    uid, sent = forwarded(fwd)
    good = reply_to(sent, [rr(dns.TYPE_A, 60, ADDR)])
    fwd.answer(good[:14], 0)                           # even the question is cut
    assert fwd.take_replies() == [] and fwd.counters["dropped_malformed_answer"] == 1
    fwd.answer(good[:-2], 0)                           # the record is cut
    ((_, m, _),) = replies(fwd)
    assert m.rcode == dns.RCODE_SERVFAIL and fwd.inflight == 0
    fwd.answer(b"\x00", 0)
    assert fwd.counters["dropped_answer_too_short"] == 1


def test_an_error_reply_without_question_is_a_failure():
    fwd = make()
    ask(fwd, C1, 1, "r.test", 0)
    uid, sent = forwarded(fwd)
    fwd.answer(dns.HEADER.pack(uid, dns.FLAG_QR | dns.RCODE_REFUSED, 0, 0, 0, 0), 0)
    ((_, m, _),) = replies(fwd)
    assert m.rcode == dns.RCODE_SERVFAIL and m.question.name == dns.encode_name("r.test")
    # A query echoed back (QR clear) is not an answer.
    ask(fwd, C1, 2, "s.test", 0)
    uid, sent = forwarded(fwd)
    fwd.answer(sent, 0)
    assert fwd.take_replies() == [] and fwd.counters["dropped_not_an_answer"] == 1


def test_lru_eviction_by_entries_and_bytes():
    fwd = make(cache_entries=2)
    for name in ("a.test", "b.test"):
        ask(fwd, C1, 1, name, 0)
        _, sent = forwarded(fwd)
        fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 600, ADDR)]), 0)
    ask(fwd, C1, 2, "a.test", 1)                       # a is now the most recently used
    ask(fwd, C1, 3, "c.test", 2)
    _, sent = forwarded(fwd)
    fwd.answer(reply_to(sent, [rr(dns.TYPE_A, 600, ADDR)]), 2)
    assert fwd.cache_size == 2
    ask(fwd, C1, 4, "a.test", 3)
    assert fwd.take_queries() == []
    ask(fwd, C1, 5, "b.test", 3)
    assert len(fwd.take_queries()) == 1
    small = make(cache_bytes=400)                      # each entry is ~40 bytes, at most 100 per entry
    for i in range(30):
        ask(small, C1, 1, "n%d.test" % i, 0)
        _, sent = forwarded(small)
        small.answer(reply_to(sent, [rr(dns.TYPE_A, 600, ADDR)]), 0)
    assert 5 <= small.cache_size <= 10 and small._cache_used <= 400


def test_reply_queue_is_bounded():
    fwd = make(max_queued=3)
    for i in range(5):
        fwd.query(C1, b"\x00" * 12 + b"\x05", 0)      # FORMERR each
    assert len(fwd.take_replies()) == 3 and fwd.counters["dropped_reply_queue_full"] == 2


def test_constructor_checks():
    with pytest.raises(ValueError):
        DnsForwarder(max_inflight=0)
    with pytest.raises(ValueError):
        DnsForwarder(max_inflight=70000)
    with pytest.raises(ValueError):
        DnsForwarder(timeout_ms=0)
    assert isinstance(DnsForwarder().rng, random.SystemRandom)


# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_fuzz_sequences_of_queries_answers_and_timers(seed):
    rng = random.Random(seed)
    fwd = make(rng=random.Random(seed), max_inflight=8, cache_entries=6, max_waiters=3, max_queued=20,
               timeout_ms=3000)
    names = ["n%d.test" % i for i in range(12)]
    sent = []
    now = 0
    for _ in range(3000):
        now += rng.choice([0, 0, 1, 10, 100, 2000])
        op = rng.random()
        if op < 0.4:
            q = dns.build_query(rng.randrange(65536), rng.choice(names), rng.choice([1, 28]),
                                edns_size=rng.choice([None, 1232]))
            if rng.random() < 0.1:
                q = bytearray(q)
                q[rng.randrange(len(q))] = rng.randrange(256)
                q = bytes(q)
            fwd.query(rng.choice([C1, C2]), q, now)
        elif op < 0.75 and sent:
            uid, query = rng.choice(sent)
            kind = rng.random()
            if kind < 0.5:
                data = reply_to(query, [rr(dns.TYPE_A, rng.choice([0, 1, 60]), ADDR)])
            elif kind < 0.7:
                data = reply_to(query, authority=[soa(rng.choice([0, 5, 900]), 1)], rcode=dns.RCODE_NXDOMAIN)
            else:
                data = bytearray(reply_to(query, [rr(dns.TYPE_A, 60, ADDR)]))
                data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data[:rng.randrange(len(data) + 1)])
            fwd.answer(data, now)
        elif op < 0.85 and sent:
            fwd.failed(rng.choice(sent)[0], now)
        else:
            fwd.handle_timer(now)
            t = fwd.get_timer()
            assert t is None or t > now
        sent.extend(fwd.take_queries())
        sent = sent[-12:]
        assert fwd.inflight <= 8 and fwd.cache_size <= 6
        out = fwd.take_replies()
        assert len(out) <= 20
        for client, data in out:
            m = Message.parse(data)
            assert client in (C1, C2) and m.qr
    fwd.handle_timer(now + 10 ** 6)
    assert fwd.inflight == 0 and fwd.get_timer() is None
    c = fwd.counters
    assert c["answers"] > 150 and c["cache_hits"] > 30 and c["coalesced"] > 20 and c["timeouts"] > 0
