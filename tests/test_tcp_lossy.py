"""Property: over a seeded lossy, duplicating, reordering, corrupting link, every byte arrives in order
in both directions and both ends close cleanly.

The client is the test-only active peer from test_tcp_harness; the service side reads (optionally
slowly, to force zero windows), writes its own stream and shuts down when done.
"""

import pytest
from hypothesis import given, settings, strategies as st

from test_tcp_harness import TcpConfig, TcpState, pattern, run_link
from pyslirp.net.tcp.events import CLOSED, ESTABLISHED, PEER_FIN, RESET, TIMED_OUT

VARIANTS = {
    "default": dict(),
    "heavy_loss": dict(loss=0.25, dup=0.1),
    "no_sack": dict(sack=False, loss=0.15),
    "no_timestamps_reordering": dict(ts=False, jitter=150),
    "no_wscale_small_client_window": dict(wscale=None, rcvwnd=3000),
    "slow_reader_small_buffers": dict(read_rate=600, config=TcpConfig(rcvbuf=4000, sndbuf=3000)),
    "big_buffers_scaled": dict(read_rate=5000, rcvwnd=150000, wscale=4,
                               config=TcpConfig(rcvbuf=120000, sndbuf=200000)),
    "sequence_wrap": dict(client_iss=0xFFFFFF00, our_iss=0xFFFFFFF0, loss=0.2),
    "plain_tcp_small_mss": dict(config=TcpConfig(nagle=False, sack=False, timestamps=False,
                                                 window_scaling=False), peer_mss=536),
    "tiny_link_mtu": dict(mss_limit=300),
    "corruption": dict(corrupt=0.15, loss=0.05),
    "slow_client_reader": dict(peer_read_rate=300, rcvwnd=2896, wscale=None),
}


def _check(seed, variant, up_len=40000, down_len=60000):
    up = pattern(up_len, seed)
    down = pattern(down_len, seed + 1)
    conn, peer, got, events, now, parse_errors = run_link(seed, up, down, **VARIANTS[variant])
    assert conn is not None
    assert got == up, (len(got), len(up))
    assert bytes(peer.received) == down, (len(peer.received), len(down))
    assert peer.fin_received and peer.fin_acked
    assert events[0] == ESTABLISHED and events[-1] == CLOSED
    assert events.count(PEER_FIN) == 1 and RESET not in events and TIMED_OUT not in events
    assert conn.state is TcpState.CLOSED
    assert peer.resets == 0
    return conn, parse_errors


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@settings(derandomize=True, deadline=None, max_examples=6)
@given(seed=st.integers(0, 2 ** 32 - 1))
def test_lossy_link_delivers_everything_both_ways(variant, seed):
    _check(seed, variant)


def test_lossy_link_exercises_recovery_machinery():
    # Across a handful of seeds the interesting paths really run (else the property proves little).
    totals = dict(retransmits=0, fast=0, rto=0, ooo=0, dup=0, probes=0, parse_errors=0)
    for seed in range(6):
        for variant in ("heavy_loss", "slow_reader_small_buffers", "corruption", "slow_client_reader"):
            conn, parse_errors = _check(seed, variant)
            totals["retransmits"] += conn.retransmits
            totals["fast"] += conn.fast_retransmits
            totals["rto"] += conn.rto_count
            totals["ooo"] += conn.ooo_segments
            totals["dup"] += conn.dup_acks
            totals["probes"] += conn.window_probes
            totals["parse_errors"] += parse_errors
    assert all(v > 0 for v in totals.values()), totals


def test_large_transfer_over_clean_link_is_efficient():
    up = pattern(300000, 1)
    down = pattern(300000, 2)
    conn, peer, got, events, now, _ = run_link(1, up, down, loss=0, dup=0, corrupt=0, jitter=0,
                                               rcvwnd=65535, wscale=2)
    assert got == up and bytes(peer.received) == down
    assert conn.retransmits == 0 and conn.bytes_out == len(down) and conn.bytes_in == len(up)
    # Segments are full-sized: no silly windows.
    assert conn.segs_out < 2 * (len(down) // 1448 + len(up) // 1448)
