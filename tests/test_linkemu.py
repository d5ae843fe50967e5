"""The link emulator: the sans-IO line on a fake clock, then the threaded shell over pipes and a pty."""

import os
import random
import subprocess
import sys
import time

import pytest

from pyslirp.testing.linkemu import (CATCHUP_MS, UNPACED_CHUNK, XOFF, XON, Endpoint, Impairments, LineDirection,
                                     LinkEmulator)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE_115200 = 11.52     # bytes per ms, 8N1


def payload(n, seed=1):
    return random.Random(seed).getrandbits(8 * n).to_bytes(n, "big")


def run(line, data, until, step=1, start=0):
    """Offer ``data`` to the line as the FIFO takes it; collect what crosses.  [(ms, bytes)]"""
    out = []
    now = start
    while now <= until:
        if data:
            n = line.send(data, now)
            data = data[n:]
        else:
            line.source_idle()
        got = line.receive(now)
        if got:
            out.append((now, got))
        now += step
    return out


def test_unimpaired_unpaced_line_delivers_at_once():
    line = LineDirection()
    assert line.room(0) == UNPACED_CHUNK
    assert line.send(b"hello", 5) == 5
    assert line.receive(5) == b"hello"
    assert line.next_deadline(5) is None


def test_latency_holds_bytes_until_due():
    line = LineDirection(Impairments(latency_ms=30))
    line.send(b"abc", 100)
    assert line.next_deadline(100) == 130
    assert line.receive(129) == b""
    assert line.receive(130) == b"abc"


def test_pacing_runs_at_the_baud_rate_and_the_fifo_bounds_what_is_taken():
    imp = Impairments(baud=115200, fifo=64)
    line = LineDirection(imp)
    assert line.room(0) == 64
    assert line.send(payload(1000), 0) == 64       # the FIFO is full: the rest stays with the sender
    assert line.room(0) == 0
    # 64 bytes take 64 / 11.52 = 5.56 ms: nothing before, all of them after.
    assert line.receive(5) == b""
    assert len(line.receive(6)) == 64
    data = payload(11520, seed=2)
    out = run(LineDirection(imp), data, until=1100)
    assert b"".join(d for _, d in out) == data
    last = out[-1][0]
    assert 999 <= last <= 1002, last                # one second for 11,520 bytes


def test_a_late_wake_up_is_made_up_for_but_only_up_to_the_catchup():
    imp = Impairments(baud=115200, fifo=64)
    line = LineDirection(imp)
    line.send(payload(64), 0)                       # backlogged: the sender had more
    assert line.backlogged
    # Woken 20 ms late: the line stayed busy, so 20 ms worth of bytes plus the FIFO are taken at once.
    room = line.room(25.56)
    assert room == int(64 + 20 * RATE_115200), room
    # A long stall is capped at CATCHUP_MS of line time.
    assert line.room(1000) == int(64 + CATCHUP_MS * RATE_115200)
    line.source_idle()
    assert line.room(1000) == 64                    # the sender had nothing: no catching up


def test_next_deadline_wakes_for_delivery_and_for_fifo_room():
    line = LineDirection(Impairments(baud=115200, fifo=64))
    line.send(payload(100), 0)
    t = line.next_deadline(0)
    assert 2.7 < t < 2.8                            # half the FIFO free: 32 bytes after 5.56 ms
    line.source_idle()
    assert line.next_deadline(0) == pytest.approx(64 / RATE_115200)     # the delivery


def test_bit_errors_are_seeded_and_near_the_rate():
    data = payload(60000, seed=3)
    imp = Impairments(ber=3e-4)
    outs = []
    for _ in range(2):
        line = LineDirection(imp, seed=9)
        line.send(data, 0)
        outs.append(line.receive(0))
    assert outs[0] == outs[1]                       # same seed, same errors
    got = outs[0]
    assert len(got) == len(data)
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(got, data) if a != b)
    assert flipped == line.counters["bits_flipped"]
    expected = 8 * len(data) * 3e-4                 # 144
    assert 0.7 * expected < flipped < 1.3 * expected
    other = LineDirection(imp, seed=10)
    other.send(data, 0)
    assert other.receive(0) != got


def test_byte_drops_remove_bytes_and_keep_the_order():
    data = bytes(range(256)) * 40
    line = LineDirection(Impairments(drop_rate=0.01), seed=4)
    line.send(data, 0)
    got = line.receive(0)
    dropped = line.counters["bytes_dropped"]
    assert 50 < dropped < 160 and len(got) == len(data) - dropped
    # What is left is a subsequence of the input.
    it = iter(data)
    assert all(b in it for b in got)


def test_xonxoff_noise_inserts_only_flow_control_bytes():
    data = b"\x41" * 10000
    line = LineDirection(Impairments(xonxoff_rate=0.01), seed=5)
    line.send(data, 0)
    got = line.receive(0)
    inserted = line.counters["bytes_inserted"]
    assert 50 < inserted < 160
    assert len(got) == len(data) + inserted
    assert got.replace(bytes([XON]), b"").replace(bytes([XOFF]), b"") == data
    assert got.count(bytes([XON])) > 0 and got.count(bytes([XOFF])) > 0


def test_scheduled_cut_loses_what_is_sent_and_what_is_in_flight():
    line = LineDirection(Impairments(latency_ms=50, cuts=((100, 200),)))
    line.send(b"before", 0)
    assert line.receive(50) == b"before"
    line.send(b"in flight", 80)                     # due at 130, inside the cut
    line.send(b"during", 150)
    assert line.is_cut(150) and not line.is_cut(300)
    assert line.receive(260) == b""
    line.send(b"after", 300)
    assert line.receive(350) == b"after"
    assert line.counters["lost_to_cut"] == len(b"in flight") + len(b"during")


def test_manual_cut_and_restore():
    line = LineDirection(Impairments(baud=115200))
    line.send(b"x" * 64, 0)
    line.cut(True, 1)
    assert line.receive(10) == b""
    line.source_idle()
    assert line.counters["lost_to_cut"] == 64
    # While cut the sender is still drained at the line's pace.
    assert line.send(b"y" * 64, 10) == 64
    assert line.room(10) == 0
    line.cut(False, 20)
    line.send(b"z" * 10, 20)
    assert line.receive(30) == b"z" * 10


# ---------------------------------------------------------------- threaded shell

def _pipe_endpoint():
    """An endpoint on two pipes; returns (endpoint, fd to write what it sends, fd to read what it gets)."""
    r1, w1 = os.pipe()      # test -> emulator
    r2, w2 = os.pipe()      # emulator -> test
    return Endpoint(r1, w2, owned=[r1, w2]), w1, r2


def _read_exactly(fd, n, timeout):
    os.set_blocking(fd, False)
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, n - len(buf))
        except BlockingIOError:
            time.sleep(0.005)
            continue
        if not chunk:
            break
        buf += chunk
    return buf


def test_emulator_relays_both_ways_between_pipes_at_the_baud_rate():
    a, a_in, a_out = _pipe_endpoint()
    b, b_in, b_out = _pipe_endpoint()
    emu = LinkEmulator(a, b, Impairments(baud=115200)).start()
    try:
        data = payload(5760, seed=6)                # half a second at 115200
        t0 = time.monotonic()
        os.write(a_in, data)
        os.write(b_in, b"pong")
        assert _read_exactly(a_out, 4, 5) == b"pong"
        assert _read_exactly(b_out, len(data), 10) == data
        elapsed = time.monotonic() - t0
        assert elapsed >= 0.45, elapsed             # paced, not copied at once
        assert emu.counters["a>b"]["delivered"] == len(data)
    finally:
        emu.stop()
        for fd in (a_in, a_out, b_in, b_out):
            os.close(fd)
        a.close()
        b.close()
    assert emu.error is None


def test_emulator_reports_a_hang_up():
    a, a_in, a_out = _pipe_endpoint()
    b, b_in, b_out = _pipe_endpoint()
    emu = LinkEmulator(a, b).start()
    os.close(a_in)
    assert emu.wait(5)
    emu.stop()
    for fd in (a_out, b_in, b_out):
        os.close(fd)
    a.close()
    b.close()


def test_command_line_between_a_child_and_a_pty():
    # The emulator runs `cat` on one side and creates a pty on the other: what is written to the pty comes back.
    proc = subprocess.Popen([sys.executable, "-m", "pyslirp.testing.linkemu", "--baud", "115200",
                             "--duration", "20", "exec:cat", "pty"],
                            cwd=ROOT, stderr=subprocess.PIPE)
    try:
        line = proc.stderr.readline().decode()
        assert line.startswith("linkemu: pty /dev/pts/"), line
        path = line.split()[-1]
        import tty
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            os.write(fd, b"through the line")
            assert _read_exactly(fd, 16, 10) == b"through the line"
        finally:
            os.close(fd)
    finally:
        proc.terminate()
        proc.wait(10)


def test_command_line_rejects_bad_rates():
    res = subprocess.run([sys.executable, "-m", "pyslirp.testing.linkemu", "--ber", "2", "pty", "pty"],
                         cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    assert res.returncode == 2
    err = res.stderr.decode()
    assert "--ber must be between 0 and 1" in err and "Traceback" not in err
