"""verify_tcp_compliance against the real Core (every case passes) and against deliberately broken cores (the
cases that check what was broken fail, with a reason, and the others still pass)."""

from pyslirp.net import stack as stack_mod
from pyslirp.net.tcp import conn as conn_mod
from pyslirp.testing import compliance
from pyslirp.testing.compliance import CASES, default_core, verify_tcp_compliance

RFCS = ("RFC 9293", "RFC 5961", "RFC 6298", "RFC 7323", "RFC 2018")


def test_the_real_core_passes_every_case():
    report = verify_tcp_compliance(default_core)
    assert report.ok, str(report)
    assert len(report.results) == len(CASES) >= 20
    for rfc in RFCS:
        assert any(r.rfc.startswith(rfc) for r in report.results), rfc
    assert "0 failed" in str(report)


class NoChallengeAck(conn_mod.TcpConnection):
    """Skips RFC 5961's challenge ACK: an in-window RST or a SYN is silently ignored."""

    def _challenge_ack(self, now):
        pass


def test_a_core_without_challenge_acks_fails_the_rfc5961_cases(monkeypatch):
    monkeypatch.setattr(stack_mod, "TcpConnection", NoChallengeAck)
    report = verify_tcp_compliance(default_core)
    failed = {r.name: r.reason for r in report.failed}
    assert set(failed) >= {"rst_in_window_challenge_ack", "syn_in_established"}, str(report)
    assert "challenge ACK" in failed["rst_in_window_challenge_ack"]
    assert "expected ACK" in failed["rst_in_window_challenge_ack"]
    assert not report.ok
    # The other cases do not depend on it.
    assert "handshake" not in failed and "rto_backoff" not in failed


class NoBackoff(conn_mod.RttEstimator):
    def on_timeout(self):
        pass


def test_a_core_that_does_not_back_off_fails_the_rfc6298_backoff_case(monkeypatch):
    monkeypatch.setattr(conn_mod, "RttEstimator", NoBackoff)
    report = verify_tcp_compliance(default_core, cases=["rto_backoff", "handshake"])
    assert [(r.name, r.passed) for r in report.results] == [("handshake", True), ("rto_backoff", False)]
    assert "do not double" in report.failed[0].reason


def test_a_crashing_core_is_a_failed_case_not_an_exception():
    def factory():
        core = default_core()

        def boom(*args):
            raise RuntimeError("broken receive path")
        core.stack.receive_packet = boom
        return core
    report = verify_tcp_compliance(factory, cases=["handshake"])
    assert not report.ok
    assert report.failed[0].reason  # says what went wrong
    assert compliance.CaseFailed.__name__ in report.failed[0].reason or "RuntimeError" in report.failed[0].reason
