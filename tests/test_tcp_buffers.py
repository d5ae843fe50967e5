"""Send buffer, reassembly queue and SACK scoreboard."""

from hypothesis import given, settings, strategies as st

from pyslirp.net.tcp.buffers import Reassembler, SackScoreboard, SendBuffer


def test_send_buffer_is_bounded():
    buf = SendBuffer(10)
    assert buf.append(b"abcdef") == 6
    assert buf.append(b"ghijklmn") == 4
    assert buf.free == 0 and len(buf) == 10
    assert buf.append(b"x") == 0
    assert buf.peek(2, 3) == b"cde"
    buf.drop(4)
    assert buf.peek(0, 100) == b"efghij" and buf.free == 4


def test_reassembler_merges_overlaps_and_neighbours():
    r = Reassembler()
    assert r.add(10, b"KLM")
    assert r.add(20, b"UV")
    assert r.ranges() == [(10, 13), (20, 22)] and len(r) == 5
    assert r.add(13, b"NOPQRST")          # fills exactly the gap: one range
    assert r.ranges() == [(10, 22)] and len(r) == 12
    assert r.add(8, b"IJKLMNOPQRSTUVWX")  # covers everything, extends both ends
    assert r.ranges() == [(8, 24)]
    assert r.pop_front() == b""           # gap at the front
    r.advance(8)
    assert r.pop_front() == b"IJKLMNOPQRSTUVWX"
    assert not r and len(r) == 0


def test_reassembler_existing_data_kept_on_overlap_and_tail_fast_path():
    r = Reassembler()
    r.add(5, b"abc")
    r.add(6, b"XYZW")                    # overlaps the tail, extends by two bytes
    r.advance(5)
    assert r.pop_front() == b"abcZW"


def test_reassembler_advance_trims_partially_covered_range():
    r = Reassembler()
    r.add(4, b"efgh")
    r.add(10, b"kl")
    r.advance(6)                          # rcv_nxt moved past "ef"
    assert r.ranges() == [(0, 2), (4, 6)]
    assert r.pop_front() == b"gh"
    assert r.ranges() == [(2, 4)]


def test_reassembler_bounded_number_of_ranges():
    r = Reassembler(max_ranges=3)
    assert r.add(10, b"a") and r.add(20, b"b") and r.add(30, b"c")
    assert not r.add(40, b"d")           # would be a fourth range
    assert r.add(11, b"x")               # merging is always fine
    assert r.ranges() == [(10, 12), (20, 21), (30, 31)]


def test_reassembler_recency_order_for_sack():
    r = Reassembler()
    r.add(30, b"c")
    r.add(10, b"a")
    r.add(20, b"b")
    assert r.ranges_by_recency() == [(20, 21), (10, 11), (30, 31)]
    r.add(31, b"d")                       # extending a range makes it the most recent
    assert r.ranges_by_recency()[0] == (30, 32)
    r.advance(5)
    assert r.ranges_by_recency()[0] == (25, 27)


@settings(derandomize=True, deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 200), st.integers(1, 40)), max_size=30),
       st.integers(0, 250))
def test_reassembler_matches_a_byte_model(adds, cut):
    stream = bytes((i * 7 + 3) & 0xFF for i in range(300))
    r = Reassembler(max_ranges=1000)
    have = set()
    for off, n in adds:
        r.add(off, stream[off:off + n])
        have.update(range(off, min(off + n, len(stream))))
    # Ranges are disjoint, sorted, non-adjacent, and hold exactly the bytes given.
    spans = r.ranges()
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert e1 < s2
    assert {i for s, e in spans for i in range(s, e)} == have
    assert len(r) == len(have)
    r.advance(cut)
    front = r.pop_front()
    expect = bytearray()
    i = cut
    while i in have:
        expect.append(stream[i])
        i += 1
    assert front == bytes(expect)


def test_scoreboard_merge_skip_and_next_start():
    sb = SackScoreboard()
    sb.add(3000, 4000)
    sb.add(1000, 2000)
    sb.add(2000, 2500)                    # adjacent: merged
    assert sb.ranges() == [(1000, 2500), (3000, 4000)]
    assert sb.skip(0) == 0 and sb.skip(1200) == 2500 and sb.skip(3000) == 4000
    assert sb.next_start(0) == 1000 and sb.next_start(2500) == 3000 and sb.next_start(3000) is None
    assert sb.sacked_bytes() == 2500 and sb.highest() == 4000
    sb.add(0, 10)                         # offsets at or below SND.UNA are ignored
    assert sb.ranges()[0] == (1000, 2500)


def test_scoreboard_advance_and_reneging():
    sb = SackScoreboard()
    sb.add(1000, 2000)
    sb.add(3000, 4000)
    assert sb.advance(500) is False
    assert sb.ranges() == [(500, 1500), (2500, 3500)]
    assert sb.advance(1500) is False      # cumulative ACK jumped over the first range
    assert sb.ranges() == [(1000, 2000)]
    assert sb.advance(1000) is True       # ACK stops exactly where SACKed data begins: reneged
    assert not sb
