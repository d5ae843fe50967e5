"""pyslirp.testing.fuzz: seeded random inputs into the real Core are only counted drops; an exception escaping a
broken core is reported, not raised."""

from pyslirp.testing.compliance import default_core
from pyslirp.testing.fuzz import fuzz_core


def test_the_real_core_only_counts_drops():
    report = fuzz_core(4000, seed=3)
    assert report.ok, report.exceptions
    assert report.link_up and report.ping
    assert report.drops.get("ip_bad_checksum", 0) > 0 and report.drops.get("tcp_bad_checksum", 0) > 0
    assert sum(report.drops.values()) > 1000


def test_the_same_seed_gives_the_same_run():
    a, b = fuzz_core(500, seed=5), fuzz_core(500, seed=5)
    assert a.drops == b.drops and a.relinks == b.relinks


def test_an_exception_out_of_the_core_is_a_finding():
    def broken():
        core = default_core()
        real = core.stack.receive_packet

        def receive_packet(packet, now):
            if len(packet) > 20 and packet[9] == 1:         # ICMP
                raise KeyError("boom")
            return real(packet, now)
        core.stack.receive_packet = receive_packet
        return core
    report = fuzz_core(3000, seed=3, core_factory=broken)
    assert not report.ok
    assert report.exceptions and report.exceptions[0][1] == "KeyError: 'boom'"
    assert report.exceptions[0][0] in ("frame", "ip")
