"""runtime.services.SpareThread: one thread per job, one spare started ahead, nothing left over."""

import threading
import time

from pyslirp.runtime.services import SpareThread


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def test_every_job_runs_on_its_own_thread_and_a_spare_waits_for_the_next():
    before = threading.active_count()
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
        assert _wait(lambda: threading.active_count() == before + 21)   # the 20, and one spare
        release.set()
        assert _wait(lambda: threading.active_count() == before + 1)    # only the spare is left
        # The spare takes the next job; the stack side starts no thread for it.
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
        assert [who for who, _ in spawned] == ["service-spare"]     # the next spare, started by the job's thread
        release.set()
    finally:
        starter.close()
        release.set()
    assert _wait(lambda: threading.active_count() == before)


def test_close_ends_the_idle_spare_and_no_job_is_lost():
    before = threading.active_count()
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
    assert _wait(lambda: threading.active_count() == before)
    starter.start(lambda: done.append("after"))         # closed: a plain thread still runs it
    assert _wait(lambda: done[-1] == "after")
