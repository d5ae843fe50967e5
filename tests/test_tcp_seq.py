"""Wrap-safe sequence arithmetic across the 2**32 wrap."""

from hypothesis import given, settings, strategies as st

from pyslirp.net.tcp.seq import (seq_add, seq_ge, seq_gt, seq_in, seq_le, seq_lt, seq_max, seq_min,
                                 seq_sub)

TOP = 0xFFFFFFFF


def test_add_wraps():
    assert seq_add(TOP, 1) == 0
    assert seq_add(TOP - 5, 10) == 4
    assert seq_add(3, -5) == TOP - 1


def test_sub_is_signed_distance_across_the_wrap():
    assert seq_sub(4, TOP - 5) == 10
    assert seq_sub(TOP - 5, 4) == -10
    assert seq_sub(0, TOP) == 1
    assert seq_sub(7, 7) == 0


def test_comparisons_across_the_wrap():
    a, b = TOP - 10, 20          # b is "after" a although numerically smaller
    assert seq_lt(a, b) and seq_le(a, b) and not seq_gt(a, b) and not seq_ge(a, b)
    assert seq_gt(b, a) and seq_ge(b, a)
    assert seq_le(a, a) and seq_ge(a, a) and not seq_lt(a, a)
    assert seq_max(a, b) == b and seq_min(a, b) == a


def test_seq_in_window_across_the_wrap():
    start, end = TOP - 100, 100
    assert seq_in(TOP, start, end) and seq_in(0, start, end) and seq_in(start, start, end)
    assert not seq_in(end, start, end) and not seq_in(start - 1, start, end)
    assert not seq_in(5, 5, 5)        # empty window


_u32 = st.integers(0, TOP)
_dist = st.integers(-(1 << 31) + 1, (1 << 31) - 1)


@settings(derandomize=True, deadline=None, max_examples=500)
@given(_u32, _dist)
def test_properties(a, d):
    b = seq_add(a, d)
    assert seq_sub(b, a) == d
    assert seq_lt(a, b) == (d > 0)
    assert seq_gt(a, b) == (d < 0)
    assert seq_le(a, b) == (d >= 0)
    assert seq_add(b, -d) == a
