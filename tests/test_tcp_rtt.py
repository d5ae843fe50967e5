"""RFC 6298 RTT estimator."""

import pytest

from pyslirp.net.tcp.rtt import RttEstimator


def test_initial_rto_before_any_sample():
    est = RttEstimator(initial_rto=1000, min_rto=200, max_rto=60000)
    assert est.rto == 1000 and est.srtt is None


def test_first_and_second_sample_rfc6298_formulas():
    est = RttEstimator(initial_rto=1000, min_rto=1, max_rto=60000)
    est.sample(100)
    # 2.2: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 * RTTVAR.
    assert est.srtt == 100 and est.rttvar == 50 and est.rto == 300
    est.sample(200)
    # 2.3: RTTVAR = 3/4 * 50 + 1/4 * |100 - 200| = 62.5; SRTT = 7/8 * 100 + 1/8 * 200 = 112.5
    assert est.rttvar == pytest.approx(62.5) and est.srtt == pytest.approx(112.5)
    assert est.rto == 363     # ceil(112.5 + 250)


def test_min_and_max_bounds():
    est = RttEstimator(initial_rto=1000, min_rto=200, max_rto=5000)
    est.sample(10)
    assert est.rto == 200
    est.sample(100000)
    assert est.rto == 5000


def test_backoff_doubles_up_to_max_and_sample_collapses_it():
    est = RttEstimator(initial_rto=1000, min_rto=200, max_rto=60000)
    seen = []
    for _ in range(8):
        est.on_timeout()
        seen.append(est.rto)
    assert seen == [2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
    est.sample(100)
    assert est.backoff == 0 and est.rto == 300


def test_reset_after_syn_loss_only_without_samples():
    est = RttEstimator(initial_rto=1000, min_rto=200, max_rto=60000)
    est.on_timeout()
    est.reset_after_syn_loss()
    assert est.rto == 3000
    est2 = RttEstimator()
    est2.sample(50)
    before = est2.rto
    est2.reset_after_syn_loss()
    assert est2.rto == before


def test_many_samples_per_window_use_smaller_gains():
    a = RttEstimator(min_rto=1)
    b = RttEstimator(min_rto=1)
    for est in (a, b):
        est.sample(100)
    a.sample(300)
    b.sample(300, expected_samples=8)
    assert 100 < b.srtt < a.srtt
    assert b.rttvar < a.rttvar


def test_slack_is_the_least_variation_term():
    est = RttEstimator(initial_rto=1000, min_rto=200, max_rto=60000)
    est.slack = 500
    for _ in range(50):
        est.sample(1600)                # identical round trips: RTTVAR decays towards 0
    assert est.rttvar < 1 and est.rto == 2100           # SRTT + slack, not SRTT + 4 * RTTVAR
    est.slack = 0
    est.sample(1600)
    assert est.rto < 1610


def test_a_new_slack_applies_at_once_without_a_sample():
    est = RttEstimator(min_rto=200)
    est.slack = 800
    est.sample(300)
    for _ in range(30):
        est.sample(300)                 # RTTVAR decays: the slack is what is left of the variation term
    assert est.rto == 300 + 800
    est.slack = 2000                    # the line's segments grew: the next timer uses the new term
    assert est.rto == 300 + 2000
    est.on_timeout()
    assert est.rto == (300 + 2000) * 2
    before = RttEstimator(min_rto=200)
    before.slack = 5000                 # no sample yet: the initial RTO stands until the first one
    assert before.rto == 1000
