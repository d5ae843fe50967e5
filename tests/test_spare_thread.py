"""runtime.services.SpareThread: one thread per job, a spare started ahead, threads reused, two left over."""

import threading
import time

from pyslirp.runtime.services import SpareThread


def _threads_since(before):
    """Threads alive now that were not alive in ``before`` (a set from ``threading.enumerate()``): only the ones a
    test started, whatever threads earlier tests left ending in the background."""
    return sum(1 for t in threading.enumerate() if t not in before)


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def test_every_job_runs_on_its_own_thread_and_a_spare_waits_for_the_next():
    before = set(threading.enumerate())
    starter = SpareThread()
    seen = []
    release = threading.Event()
    lock = threading.Lock()

    def job():
        with lock:
            seen.append(threading.get_ident())
        starter.replenish()
        release.wait(5)

    try:
        for _ in range(20):
            starter.start(job)
        assert _wait(lambda: len(seen) == 20)
        assert len(set(seen)) == 20                     # all at once, each on a thread of its own
        assert _wait(lambda: _threads_since(before) == 21)   # the 20, and one spare
        release.set()
        # All but two spares end (the one started ahead, and one whose job is over).
        assert _wait(lambda: _threads_since(before) == 2)
        time.sleep(0.1)
        assert _threads_since(before) == 2
        # A spare takes the next job; no thread is started for it (another spare is idle).
        seen.clear()
        release.clear()
        spawned = []
        real_start = threading.Thread.start

        def counting_start(self):
            spawned.append((threading.current_thread().name, self.name))
            real_start(self)

        threading.Thread.start = counting_start
        try:
            starter.start(job)
            assert _wait(lambda: len(seen) == 1)
        finally:
            threading.Thread.start = real_start
        assert spawned == []
        release.set()
    finally:
        starter.close()
        release.set()
    assert _wait(lambda: _threads_since(before) == 0)


def test_close_ends_the_idle_spare_and_no_job_is_lost():
    before = set(threading.enumerate())
    starter = SpareThread()
    done = []
    def job(i):
        starter.replenish()
        done.append(i)

    for i in range(50):
        starter.start(lambda i=i: job(i))
    assert _wait(lambda: len(done) == 50)
    assert sorted(done) == list(range(50))
    starter.close()
    assert _wait(lambda: _threads_since(before) == 0)
    starter.start(lambda: done.append("after"))         # closed: a plain thread still runs it
    assert _wait(lambda: done[-1] == "after")


def test_jobs_one_after_another_reuse_the_threads_and_start_none():
    before = set(threading.enumerate())
    starter = SpareThread()
    seen = []
    spawned = []
    real_start = threading.Thread.start

    def counting_start(self):
        spawned.append(self.name)
        real_start(self)

    def job():
        seen.append(threading.get_ident())
        starter.replenish()

    def both_idle():
        with starter._cond:
            return starter._spares - len(starter._jobs) == 2

    try:
        for i in range(2):
            starter.start(job)
            assert _wait(lambda: len(seen) == 1 + i)
            assert _wait(both_idle)
        threading.Thread.start = counting_start
        try:
            for i in range(10):
                starter.start(job)
                assert _wait(lambda: len(seen) == 3 + i)
                assert _wait(both_idle)             # the job is over: its thread waits for the next one
                assert _threads_since(before) == 2
        finally:
            threading.Thread.start = real_start
        assert spawned == []                            # each job ran on a thread whose last job was over
        assert len(set(seen)) <= 3
    finally:
        starter.close()
    assert _wait(lambda: _threads_since(before) == 0)
