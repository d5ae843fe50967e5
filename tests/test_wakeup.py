"""runtime.wakeup: one byte per burst of wake-ups, and no wake-up lost between a drain and the next sleep."""

import random
import select
import threading

from pyslirp.runtime.wakeup import Wakeup


def test_a_burst_of_wakeups_writes_one_byte_until_drained():
    w = Wakeup()
    try:
        for _ in range(100):
            w.wake()
        assert w._r.recv(4096) == b"x"
        w.drain()
        w.wake()
        assert select.select([w], [], [], 1.0)[0] == [w]
        w.drain()
        assert select.select([w], [], [], 0)[0] == []
    finally:
        w.close()


def test_every_handoff_wakes_the_sleeper():
    """A producer hands over a number, wakes, and waits for it to be seen: a lost wake-up stalls a round."""
    w = Wakeup()
    lock = threading.Lock()
    state = {"given": 0, "seen": 0}
    seen = threading.Condition(lock)
    rounds = 2000

    def sleeper():
        poller = select.poll()
        poller.register(w, select.POLLIN)
        while True:
            with lock:
                if state["given"] != state["seen"]:
                    state["seen"] = state["given"]
                    seen.notify_all()
                if state["seen"] >= rounds:
                    return
            if not poller.poll(5000):
                return                   # stalled: the producer's wait below fails the test
            w.drain()

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    rng = random.Random(5)
    try:
        for i in range(1, rounds + 1):
            with lock:
                state["given"] = i
            w.wake()
            if rng.random() < 0.3:
                w.wake()                 # a second hand-off before the sleeper ran
            with lock:
                assert seen.wait_for(lambda: state["seen"] >= i, timeout=5.0), "wake-up %d lost" % i
        t.join(5)
        assert not t.is_alive()
    finally:
        w.close()
