"""The DNS forwarder: the client's queries to local_ip:53 answered from a small cache or relayed upstream (sans-IO).

Theory of operation.  The stack hands each datagram the client sends to port 53 to :meth:`DnsForwarder.query`
with an opaque, hashable ``client`` key (the stack uses ``(address, port)``).  The forwarder answers it at once
from its cache, or joins it to an identical question already in flight, or forwards it: the query is copied
with a fresh random 16-bit ID (RFC 5452: IDs must be unpredictable) and queued for
:meth:`take_queries`.  The runtime sends those upstream and hands back what comes:

* :meth:`answer` with a reply as it came.  It is matched by ID *and* question (RFC 5452 lists both among the
  conditions a resolver checks before it accepts a reply: the ID, and a question section "equivalent to that
  of a question packet currently waiting for a response"); a reply whose question differs is dropped and
  counted (``dropped_question_mismatch``) and the query stays in flight, so a spoofed reply cannot displace
  the real one.
* :meth:`failed` when the runtime gave up: every client waiting on that query gets SERVFAIL.

Replies go to the clients through :meth:`take_replies`, each with the client's own ID and its own spelling of
the question name (the question is compared case-insensitively, RFC 4343; a reply copies the query's question,
RFC 1035 4.1.1).  A reply longer than the client can take over UDP (512 bytes without EDNS, else its OPT
payload size, at most ``max_udp_reply``; RFC 1035 4.2.1, RFC 6891 6.2.3) becomes a truncated reply (TC set,
question only) so that the client asks again over TCP.

The cache (RFC 1035 7.4, RFC 2308) is keyed by the question (name case-insensitively, type, class) and by the
query flags that change an answer: RD, CD, whether the client speaks EDNS (RFC 6891 7: to a requestor that sent
no OPT record the responder "MUST NOT include an OPT record in its response") and the DO bit (RFC 3225).  It holds:

* positive answers (NOERROR with records) for the smallest TTL in the answer section, at most ``max_ttl``;
* negative answers (NXDOMAIN, and NOERROR without answers, "NODATA") for the smaller of the SOA record's TTL
  and its MINIMUM field (RFC 2308 5), at most ``negative_ttl_cap``; without an SOA they are not cached
  (RFC 2308 5: they "SHOULD NOT be cached");
* nothing else: not SERVFAIL (RFC 2308 7.1 would allow up to 5 minutes; retrying soon serves a client better),
  not REFUSED/NOTIMP/FORMERR, not truncated replies (passed through so the client retries over TCP), not a
  TTL of 0 (RFC 1035 3.2.1: "Zero values are interpreted to mean that the RR can only be used for the
  transaction in progress, and should not be cached").

A cached answer is served with every TTL lowered by the whole seconds it spent in the cache (the TTL is
"the time interval that the resource record may be cached before the source of the information should again
be consulted", RFC 1035 3.2.1), and no longer once the entry's own TTL has run out.  Eviction is least
recently used, bounded by ``cache_entries`` and ``cache_bytes``.

Bad input from the client.  A datagram of under 12 bytes, or with QR set (a response sent to a server), is
dropped and counted.  A query whose header reads but whose body does not parse gets FORMERR with a bare header
(RFC 1035 4.1.1: "The name server was unable to interpret the query"); one with an OPCODE other than QUERY gets
NOTIMP; a query without a question gets FORMERR.  A retransmission (same client, same ID) of a query already in
flight is dropped: the one answer will come.

Bounds.  At most ``max_inflight`` upstream queries; a new question over that bound gets SERVFAIL at once
(counted ``overload``): a prompt failure lets the client's resolver move on, where a drop would make it wait
out its timeout.  At most ``max_waiters`` clients on one question (more: SERVFAIL, ``overload``).  The
reply and query queues hold at most ``max_queued`` items each (more: dropped, counted).

Time is the caller's integer milliseconds.  An in-flight query older than ``timeout_ms`` gets SERVFAIL and is
forgotten (``get_timer`` / ``handle_timer``); the runtime's own retries should end before that, so this is the
backstop.  All queries share one timeout, so the in-flight table, in insertion order, is in deadline order.

Counters (``counters``, a dict): ``queries``, ``cache_hits``, ``forwarded``, ``coalesced``, ``answers``
(upstream replies accepted), ``cached``, ``servfail``, ``formerr``, ``notimp``, ``truncated``, ``overload``,
``timeouts``, ``upstream_failed``, and ``dropped_<reason>`` for every datagram dropped.
"""

import logging
import random
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from pyslirp.wire import dns
from pyslirp.wire.errors import ParseError

log = logging.getLogger("pyslirp.net.dns")

DEFAULT_MAX_INFLIGHT = 64
DEFAULT_CACHE_ENTRIES = 256
DEFAULT_CACHE_BYTES = 1 << 20
DEFAULT_TIMEOUT_MS = 5000           # glibc's default resolver timeout is 5 s (resolv.conf(5), "timeout")
DEFAULT_MAX_TTL = 3600
DEFAULT_NEGATIVE_TTL_CAP = 300      # a new name shows up within 5 minutes (RFC 2308 7.1 caps SERVFAIL alike)
DEFAULT_MAX_WAITERS = 8
DEFAULT_MAX_QUEUED = 256
DEFAULT_MAX_UDP_REPLY = 4096
ID_SPACE = 1 << 16
MAX_INFLIGHT_LIMIT = 4096           # leaves random IDs easy to find (and RFC 5452 guessing hard)

COUNTERS = ("queries", "cache_hits", "forwarded", "coalesced", "answers", "cached", "servfail", "formerr",
            "notimp", "truncated", "overload", "timeouts", "upstream_failed")


@dataclass(frozen=True)
class _Waiter:
    client: Any
    client_id: int
    qname: bytes            # the client's spelling of the question name
    udp_size: int           # the largest reply it takes over UDP
    query: bytes            # its query, header and question section (for an error reply)
    msg: dns.Message        # that query, parsed


class _Pending(object):
    __slots__ = ("upstream_id", "key", "question", "deadline", "waiters")

    def __init__(self, upstream_id, key, question, deadline, waiter):
        self.upstream_id = upstream_id
        self.key = key
        self.question = question
        self.deadline = deadline
        self.waiters = [waiter]


class _Entry(object):
    __slots__ = ("data", "msg", "stored_at", "expires_at")

    def __init__(self, data, msg, stored_at, expires_at):
        self.data = data
        self.msg = msg
        self.stored_at = stored_at
        self.expires_at = expires_at


class DnsForwarder(object):
    def __init__(self, rng=None, max_inflight=DEFAULT_MAX_INFLIGHT, cache_entries=DEFAULT_CACHE_ENTRIES,
                 cache_bytes=DEFAULT_CACHE_BYTES, timeout_ms=DEFAULT_TIMEOUT_MS, max_ttl=DEFAULT_MAX_TTL,
                 negative_ttl_cap=DEFAULT_NEGATIVE_TTL_CAP, max_waiters=DEFAULT_MAX_WAITERS,
                 max_queued=DEFAULT_MAX_QUEUED, max_udp_reply=DEFAULT_MAX_UDP_REPLY):
        if not 1 <= max_inflight <= MAX_INFLIGHT_LIMIT:
            raise ValueError("max_inflight must be 1..%d" % MAX_INFLIGHT_LIMIT)
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self.rng = rng if rng is not None else random.SystemRandom()
        self.max_inflight = max_inflight
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self.timeout_ms = timeout_ms
        self.max_ttl = max_ttl
        self.negative_ttl_cap = negative_ttl_cap
        self.max_waiters = max_waiters
        self.max_queued = max_queued
        self.max_udp_reply = max(dns.UDP_LIMIT, max_udp_reply)
        self._inflight = OrderedDict()      # upstream id -> _Pending, oldest (earliest deadline) first
        self._by_key = {}                   # cache key -> _Pending (coalescing)
        self._cache = OrderedDict()         # cache key -> _Entry, least recently used first
        self._cache_used = 0
        self._replies = deque()
        self._queries = deque()
        self.counters = dict.fromkeys(COUNTERS, 0)

    # -- input -----------------------------------------------------------------------------------

    def query(self, client, payload, now):
        """One datagram from ``client`` to port 53."""
        payload = bytes(payload)
        self.counters["queries"] += 1
        if len(payload) < dns.HEADER_LEN:
            self._drop("too_short", "%d bytes" % len(payload))
            return
        flags = dns.HEADER.unpack_from(payload)[1]
        if flags & dns.FLAG_QR:
            self._drop("not_a_query")
            return
        try:
            msg = dns.Message.parse(payload)
        except ParseError as exc:
            log.debug("malformed query from %r: %s", client, exc)
            self.counters["formerr"] += 1
            self._reply(client, dns.error_reply(payload, dns.RCODE_FORMERR))
            return
        if msg.opcode != dns.OPCODE_QUERY:
            self.counters["notimp"] += 1
            self._reply(client, dns.error_reply(payload, dns.RCODE_NOTIMP, msg))
            return
        question = msg.question
        if question is None:
            self.counters["formerr"] += 1
            self._reply(client, dns.error_reply(payload, dns.RCODE_FORMERR, msg))
            return
        waiter = _Waiter(client, msg.id, question.name, min(msg.udp_size, self.max_udp_reply),
                         payload[:msg.question_end], msg)
        key = self._key(msg)
        entry = self._cache.get(key)
        if entry is not None:
            if now < entry.expires_at:
                self._cache.move_to_end(key)
                self.counters["cache_hits"] += 1
                self._deliver(waiter, entry.data, entry.msg, (now - entry.stored_at) // 1000)
                return
            self._evict(key)
        pending = self._by_key.get(key)
        if pending is not None:
            for other in pending.waiters:
                if other.client == client and other.client_id == msg.id:
                    self._drop("retransmission")
                    return
            if len(pending.waiters) >= self.max_waiters:
                self._fail_one(waiter, "overload")
                return
            pending.waiters.append(waiter)
            self.counters["coalesced"] += 1
            return
        if len(self._inflight) >= self.max_inflight:
            self._fail_one(waiter, "overload")
            return
        if len(self._queries) >= self.max_queued:
            self._fail_one(waiter, "overload")
            return
        upstream_id = self._fresh_id()
        pending = _Pending(upstream_id, key, question, now + self.timeout_ms, waiter)
        self._inflight[upstream_id] = pending
        self._by_key[key] = pending
        self._queries.append((upstream_id, dns.with_id(payload, upstream_id)))
        self.counters["forwarded"] += 1

    def answer(self, payload, now):
        """A reply from upstream, as it came."""
        payload = bytes(payload)
        upstream_id = dns.peek_id(payload)
        if upstream_id is None:
            self._drop("answer_too_short", "%d bytes" % len(payload))
            return
        pending = self._inflight.get(upstream_id)
        if pending is None:
            self._drop("unknown_id", "id %d" % upstream_id)
            return
        try:
            msg = dns.Message.parse(payload)
        except ParseError as exc:
            self._malformed_answer(pending, payload, exc)
            return
        if not msg.qr or msg.opcode != dns.OPCODE_QUERY:
            self._drop("not_an_answer", "id %d" % upstream_id)
            return
        question = msg.question
        if question is None:
            if msg.rcode in (dns.RCODE_NOERROR, dns.RCODE_NXDOMAIN):
                self._drop("question_mismatch", "no question in a reply with rcode %d" % msg.rcode)
                return
            # Some servers leave the question out of FORMERR/NOTIMP/REFUSED replies: a failure all the same.
            self._finish(pending)
            self.counters["upstream_failed"] += 1
            self._fail_all(pending)
            return
        if question.key() != pending.question.key():
            self._drop("question_mismatch", "%s/%d for %s/%d" % (
                dns.name_text(question.name), question.qtype, dns.name_text(pending.question.name),
                pending.question.qtype))
            return
        self._finish(pending)
        self.counters["answers"] += 1
        for waiter in pending.waiters:
            self._deliver(waiter, payload, msg, 0)
        ttl = self._cache_ttl(msg)
        if ttl:
            self._store(pending.key, payload, msg, now, ttl)

    def failed(self, upstream_id, now):
        """The runtime got no answer for ``upstream_id``: SERVFAIL to whoever waits on it."""
        pending = self._inflight.get(upstream_id)
        if pending is None:
            return
        self._finish(pending)
        self.counters["upstream_failed"] += 1
        self._fail_all(pending)

    # -- timers ------------------------------------------------------------------------------------

    def get_timer(self):
        """The earliest in-flight deadline (ms), or None."""
        for pending in self._inflight.values():
            return pending.deadline
        return None

    def handle_timer(self, now):
        while self._inflight:
            pending = next(iter(self._inflight.values()))
            if pending.deadline > now:
                break
            self._finish(pending)
            self.counters["timeouts"] += 1
            log.debug("no answer for %s/%d within %d ms", dns.name_text(pending.question.name),
                      pending.question.qtype, self.timeout_ms)
            self._fail_all(pending)

    # -- output ------------------------------------------------------------------------------------

    def take_replies(self):
        """``[(client, payload)]`` toward the clients."""
        out = list(self._replies)
        self._replies.clear()
        return out

    def take_queries(self):
        """``[(upstream_id, payload)]`` to send upstream."""
        out = list(self._queries)
        self._queries.clear()
        return out

    @property
    def inflight(self):
        return len(self._inflight)

    @property
    def cache_size(self):
        return len(self._cache)

    def clear_cache(self):
        self._cache.clear()
        self._cache_used = 0

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _key(msg):
        return msg.question.key() + (msg.rd, msg.cd, msg.opt is not None, msg.do)

    def _fresh_id(self):
        # At most MAX_INFLIGHT_LIMIT of 65536 IDs are taken, so this ends after a try or two.
        while True:
            candidate = self.rng.randrange(ID_SPACE)
            if candidate not in self._inflight:
                return candidate

    def _finish(self, pending):
        del self._inflight[pending.upstream_id]
        if self._by_key.get(pending.key) is pending:
            del self._by_key[pending.key]

    def _malformed_answer(self, pending, payload, exc):
        # The records did not parse; if the question did and it is ours, the query has failed for sure.
        try:
            msg = dns.Message.parse(payload, sections=False)
        except ParseError:
            msg = None
        if msg is None or msg.question is None or msg.question.key() != pending.question.key():
            self._drop("malformed_answer", str(exc))
            return
        log.debug("malformed answer for %s: %s", dns.name_text(pending.question.name), exc)
        self._finish(pending)
        self.counters["upstream_failed"] += 1
        self._fail_all(pending)

    def _cache_ttl(self, msg):
        """Seconds to keep ``msg``, or 0 not to cache it."""
        if msg.tc:
            return 0
        rcode = msg.rcode
        if rcode == dns.RCODE_NOERROR and msg.answers:
            ttl = min(msg.answer_ttl(), self.max_ttl)
            negative = msg.negative_ttl()
            if negative is not None:
                # A CNAME chain ending in NODATA (RFC 2308 2.2): the SOA bounds the whole answer.
                ttl = min(ttl, negative, self.negative_ttl_cap)
            return max(0, ttl)
        if rcode in (dns.RCODE_NOERROR, dns.RCODE_NXDOMAIN):
            negative = msg.negative_ttl()
            if negative is None:
                return 0
            return max(0, min(negative, self.negative_ttl_cap))
        return 0

    def _store(self, key, payload, msg, now, ttl):
        size = len(payload)
        if size > self.cache_bytes // 4 or self.cache_entries <= 0:
            return
        self._evict(key)
        while self._cache and (len(self._cache) >= self.cache_entries or self._cache_used + size > self.cache_bytes):
            self._evict(next(iter(self._cache)))
        self._cache[key] = _Entry(payload, msg, now, now + ttl * 1000)
        self._cache_used += size
        self.counters["cached"] += 1

    def _evict(self, key):
        entry = self._cache.pop(key, None)
        if entry is not None:
            self._cache_used -= len(entry.data)

    def _deliver(self, waiter, data, msg, age):
        reply = dns.patch(data, msg, waiter.client_id, age, waiter.qname)
        if len(reply) > waiter.udp_size:
            self.counters["truncated"] += 1
            reply = dns.truncated_reply(data, msg, waiter.client_id, waiter.qname)
        self._reply(waiter.client, reply)

    def _fail_one(self, waiter, reason):
        self.counters[reason] += 1
        self.counters["servfail"] += 1
        self._reply(waiter.client, dns.error_reply(waiter.query, dns.RCODE_SERVFAIL, waiter.msg))

    def _fail_all(self, pending):
        for waiter in pending.waiters:
            self.counters["servfail"] += 1
            self._reply(waiter.client, dns.error_reply(waiter.query, dns.RCODE_SERVFAIL, waiter.msg))

    def _reply(self, client, payload):
        if len(self._replies) >= self.max_queued:
            self._drop("reply_queue_full")
            return
        self._replies.append((client, payload))

    def _drop(self, reason, detail=""):
        name = "dropped_" + reason
        self.counters[name] = self.counters.get(name, 0) + 1
        log.debug("dns: dropped %s%s%s", reason, ": " if detail else "", detail)
