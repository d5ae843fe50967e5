import random

from pyslirp.timers import TimerQueue


def test_empty():
    q = TimerQueue()
    assert q.next_deadline() is None
    assert q.pop_due(10 ** 9) == []


def test_order_and_due():
    q = TimerQueue()
    q.schedule("b", 200)
    q.schedule("a", 100)
    q.schedule("c", 300)
    assert q.next_deadline() == 100
    assert q.pop_due(99) == []
    assert q.pop_due(200) == ["a", "b"]
    assert q.next_deadline() == 300
    assert len(q) == 1


def test_rearm_later_does_not_grow_heap():
    q = TimerQueue()
    q.schedule("rto", 1000)
    for t in range(1, 10000):
        q.schedule("rto", 1000 + t)
    assert len(q._heap) == 1
    assert q.next_deadline() == 10999
    assert q.pop_due(10998) == []
    assert q.pop_due(10999) == ["rto"]


def test_rearm_earlier_and_cancel():
    q = TimerQueue()
    q.schedule("k", 500)
    q.schedule("k", 100)
    assert q.next_deadline() == 100
    assert q.pop_due(1000) == ["k"]
    q.schedule("x", 50)
    q.cancel("x")
    q.schedule("y", 60)
    q.schedule("y", None)
    assert q.next_deadline() is None
    assert q.pop_due(1000) == []


def test_random_against_model():
    rng = random.Random(1)
    q = TimerQueue()
    model = {}
    now = 0
    for _ in range(20000):
        op = rng.random()
        key = rng.randrange(50)
        if op < 0.6:
            t = now + rng.randrange(1, 1000)
            q.schedule(key, t)
            model[key] = t
        elif op < 0.7:
            q.cancel(key)
            model.pop(key, None)
        else:
            now += rng.randrange(0, 300)
            due = q.pop_due(now)
            want = sorted((t, k) for k, t in model.items() if t <= now)
            assert sorted(due) == sorted(k for _, k in want)
            assert [model[k] for k in due] == sorted(model[k] for k in due)
            for k in due:
                del model[k]
        assert q.next_deadline() == (min(model.values()) if model else None)


def test_earliest():
    from pyslirp.timers import earliest
    assert earliest() is None
    assert earliest(None, None) is None
    assert earliest(None, 5, 3) == 3
    assert earliest(7) == 7
