"""Wrap-safe 32-bit sequence number arithmetic (RFC 9293 section 3.4).

Sequence numbers live on a circle of 2**32.  ``a`` is "less than" ``b`` when
the signed distance from ``a`` to ``b`` is positive, which is meaningful as
long as the two are within 2**31 of each other (RFC 1982 serial number
arithmetic, the usual TCP convention).  Never compare sequence numbers with
plain ``<``: use these helpers.
"""

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
_HALF = 1 << 31


def seq_add(a, n):
    """a + n on the circle."""
    return (a + n) & SEQ_MASK


def seq_sub(a, b):
    """The signed distance a - b, in [-2**31, 2**31)."""
    return ((a - b + _HALF) & SEQ_MASK) - _HALF


def seq_lt(a, b):
    return seq_sub(a, b) < 0


def seq_le(a, b):
    return seq_sub(a, b) <= 0


def seq_gt(a, b):
    return seq_sub(a, b) > 0


def seq_ge(a, b):
    return seq_sub(a, b) >= 0


def seq_max(a, b):
    return a if seq_ge(a, b) else b


def seq_min(a, b):
    return a if seq_le(a, b) else b


def seq_in(x, start, end):
    """start <= x < end on the circle (an empty range when end == start)."""
    return seq_le(start, x) and seq_lt(x, end)
