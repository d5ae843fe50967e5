"""NewReno window arithmetic (RFC 5681, RFC 6582) behind the Controller interface."""

from pyslirp.net.tcp.congestion import Controller, NewReno, initial_window

MSS = 1000


def test_initial_window_by_mss():
    assert initial_window(2200) == 4400
    assert initial_window(1460) == 4380
    assert initial_window(536) == 2144
    assert NewReno(MSS).window() == 4000


def test_slow_start_grows_by_at_most_one_mss_per_ack():
    cc = NewReno(MSS)
    cc.on_ack(500, 0, 4000)
    assert cc.window() == 4500
    cc.on_ack(3000, 0, 4000)          # a stretch ACK still adds only SMSS
    assert cc.window() == 5500


def test_congestion_avoidance_one_mss_per_window():
    cc = NewReno(MSS)
    cc.ssthresh = 4000
    cc.cwnd = 5000
    for _ in range(4):
        cc.on_ack(1000, 0, 5000)
    assert cc.window() == 5000        # 4000 bytes acked < cwnd
    cc.on_ack(1000, 0, 5000)
    assert cc.window() == 6000


def test_fast_recovery_sequence():
    cc = NewReno(MSS)
    cc.cwnd = 10000
    cc.on_recovery_start(flight=10000)
    assert cc.ssthresh == 5000 and cc.window() == 8000       # ssthresh + 3 * SMSS
    cc.on_dup_ack(10000)
    assert cc.window() == 9000                               # inflation
    cc.on_partial_ack(2500)
    assert cc.window() == 9000 - 2500 + 1000                 # deflate, add back SMSS
    cc.on_partial_ack(500)
    assert cc.window() == 7500 - 500
    cc.on_recovery_end(flight=3000)
    assert cc.window() == min(5000, 3000 + 1000)


def test_ssthresh_floor_is_two_segments():
    cc = NewReno(MSS)
    cc.on_recovery_start(flight=1500)
    assert cc.ssthresh == 2000


def test_rto_collapses_to_one_segment():
    cc = NewReno(MSS)
    cc.cwnd = 20000
    cc.on_rto(flight=12000)
    assert cc.window() == MSS and cc.ssthresh == 6000
    # Slow start again up to ssthresh, then linear growth.
    while cc.window() < cc.ssthresh:
        cc.on_ack(MSS, 0, cc.window())
    assert cc.window() == 6000
    cc.on_ack(MSS, 6000, 0)
    assert cc.window() == 6000


def test_idle_restart_and_bounds():
    cc = NewReno(MSS, max_window=50000)
    cc.cwnd = 40000
    cc.on_idle(0)
    assert cc.window() == 4000
    for _ in range(200):
        cc.on_ack(MSS, 0, 0)
    assert cc.window() == 50000
    for _ in range(10):
        cc.on_partial_ack(100000)
    assert cc.window() == MSS


def test_set_mss_rescales_initial_window_only_when_unused():
    cc = NewReno(536)
    cc.set_mss(1448)
    assert cc.window() == 3 * 1448
    cc.on_ack(1448, 0, 0)
    cc.set_mss(536)
    assert cc.window() == 4 * 1448


def test_flight_is_optional_and_defaults_to_cwnd():
    cc = NewReno(MSS)
    cc.cwnd = 10000
    cc.on_rto()
    assert cc.ssthresh == 5000 and cc.window() == MSS
    cc.cwnd = 8000
    cc.on_recovery_start()
    assert cc.ssthresh == 4000 and cc.window() == 7000
    cc.on_ack(1000, 0)
    cc.on_dup_ack()
    assert cc.window() == 8000


def test_base_controller_is_a_fixed_window():
    cc = Controller(MSS, max_window=9000)
    for call in (lambda: cc.on_ack(1000, 0, 0), lambda: cc.on_rto(5000),
                 lambda: cc.on_recovery_start(5000), lambda: cc.on_dup_ack(0)):
        call()
        assert cc.window() == 9000
