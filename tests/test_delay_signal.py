"""The delay signal: round trips the TCP connections measure, from the stack to the writer's pacer.

The stack keeps the smallest RTT sample of a small segment (``IPStack.take_delay_signal``); the stack thread
hands it to the writer at every flush (``Runtime._flush`` -> ``SerialWriter.set_delay_signal``), and on a paced
line a rising minimum slows the pace, which comes back to the Core as the line's rate.  Everything on a fake
clock: no thread is started.
"""

from test_latency import Client, make_stack, parse
from pyslirp.runtime.endpoints import Endpoint
from pyslirp.runtime.serialio import LinePacer, SerialWriter
from pyslirp.runtime.stackloop import Runtime
from pyslirp.wire import tcp

RATE = 11520                    # bytes/s: 115200 bit/s 8N1


def connected(port=40001, now=0):
    stack = make_stack()
    client = Client(stack, port, now=now)
    return stack, client


def deliver_all(stack, client, now, ack=True):
    segs = [parse(p) for _, p in stack.take_packets(-1)]
    for seg in segs:
        client.deliver(seg, now, ack=ack)
    return segs


def test_the_handshake_is_the_first_sample():
    stack = make_stack()
    assert stack.take_delay_signal() is None
    Client(stack, 40001, now=0)         # SYN-ACK out at 0, the client's ACK at 0
    assert stack.take_delay_signal() == 0
    assert stack.take_delay_signal() is None        # taken


def test_small_segments_give_the_smallest_round_trip_since_the_last_take():
    stack, client = connected()
    stack.take_delay_signal()
    stack.service_data(client.conn_id, b"x" * 10, 1000)
    deliver_all(stack, client, 1030)     # acknowledged 30 ms later
    assert stack.take_delay_signal() == 30
    # Two exchanges between takes: the smaller counts.
    stack.service_data(client.conn_id, b"y" * 64, 2000)
    deliver_all(stack, client, 2080)
    stack.service_data(client.conn_id, b"z" * 5, 3000)
    deliver_all(stack, client, 3045)
    assert stack.take_delay_signal() == 45
    assert stack.take_delay_signal() is None


def test_bulk_segments_are_no_delay_signal():
    # A full segment's own line time (and the client's delayed ACK of its first half) is not a queue.
    stack, client = connected()
    stack.take_delay_signal()
    stack.service_data(client.conn_id, b"b" * 1000, 1000)
    segs = deliver_all(stack, client, 1400)
    assert segs and max(len(s.payload) for s in segs) > 64
    assert client.conn.snd_una == client.conn.snd_max     # acknowledged: a sample was taken...
    assert stack.take_delay_signal() is None               # ...but it is not a delay signal


def test_a_round_trip_that_shared_the_way_back_with_the_clients_upload_is_no_delay_signal():
    # The ACK of our small segment waited behind the client's own bulk upload: that queue is the client's.
    stack, client = connected()
    upload = Client(stack, 40002, now=0)
    stack.take_delay_signal()
    stack.service_data(client.conn_id, b"x" * 10, 1000)
    segs = [parse(p) for _, p in stack.take_packets(-1)]
    upload.send(tcp.ACK, payload=b"u" * 536, now=1200)     # bulk from the client meanwhile
    for seg in segs:
        client.deliver(seg, 1400)
    assert client.conn.snd_una == client.conn.snd_max
    assert stack.take_delay_signal() is None
    # Bulk that arrived before the segment left does not count against it.
    stack.service_data(client.conn_id, b"y" * 10, 2000)
    deliver_all(stack, client, 2040)
    assert stack.take_delay_signal() == 40


class SignalCore(object):
    """A Core whose stack measured the round trips in ``rtts`` (one per flush, None: none)."""

    wants_room = True       # output always waits for room: every "room" report flushes

    def __init__(self, rtts):
        self.rtts = list(rtts)
        self.rates = []

    def take_serial_output(self, budget, now=None, allow_one_over=False):
        return []

    def take_events(self):
        return []

    def set_line_rate(self, rate):
        self.rates.append(rate)

    def take_delay_signal(self):
        return self.rtts.pop(0) if self.rtts else None


class Clock(object):
    def __init__(self):
        self.ms = 0

    def __call__(self):
        return self.ms / 1000.0


def paced_runtime(core, clock):
    runtime = Runtime(None, None, core=core, endpoint=object(), line_budget=65536, baudrate=115200)
    runtime.writer = SerialWriter(Endpoint(), lambda item: None, lambda reason: None, clock=clock,
                                  pacer=LinePacer(RATE))
    return runtime


def test_a_rising_minimum_round_trip_slows_a_paced_line_and_the_core_hears_the_new_rate():
    # The base: 20 ms; then every flush the stack reports 20 ms plus a standing queue of a second.
    core = SignalCore([20] + [1020] * 40)
    clock = Clock()
    runtime = paced_runtime(core, clock)
    runtime._flush(0)
    assert runtime.writer.rate == RATE and core.rates == [RATE]
    for i in range(1, 41):
        clock.ms = i * LinePacer.ADJUST_MS
        runtime._flush(clock.ms)
    pacer = runtime.writer.pacer
    assert pacer.queue_delay == 1000
    assert runtime.writer.rate < RATE / 2
    assert runtime.writer.rate >= RATE * LinePacer.FLOOR
    # The Core was told the slower line (it sizes segments and windows to it).
    assert core.rates[-1] < RATE / 2 and core.rates == sorted(core.rates, reverse=True)


def test_no_queue_no_change_and_flushes_without_a_sample_change_nothing():
    core = SignalCore([20, None, 25, None, 22] * 8)
    clock = Clock()
    runtime = paced_runtime(core, clock)
    for i in range(40):
        clock.ms = i * LinePacer.ADJUST_MS
        runtime._flush(clock.ms)
    assert runtime.writer.rate == RATE and runtime.writer.pacer.queue_delay <= 5
    assert core.rates == [RATE]


def test_a_measured_line_ignores_the_signal():
    # Where the backlog can be seen (our own pty, a UART) the DrainMeter measures the line: no pacer.
    core = SignalCore([20] + [5000] * 10)
    clock = Clock()
    runtime = Runtime(None, None, core=core, endpoint=object(), line_budget=65536, baudrate=115200)
    runtime.writer = SerialWriter(Endpoint(), lambda item: None, lambda reason: None, clock=clock,
                                  meter=runtime._new_meter())
    before = runtime.writer.rate
    for i in range(11):
        clock.ms = i * LinePacer.ADJUST_MS
        runtime._flush(clock.ms)
    assert runtime.writer.rate == before and not core.rtts


def test_the_core_passes_the_stacks_signal_through():
    from test_core import Client as PPPClient, real_core
    client = PPPClient(real_core())
    client.bring_up()
    core = client.core
    assert core.take_delay_signal() is None
    client.send_tcp(tcp.TcpRepr(40000, 22, 1000, 0, tcp.SYN, 65535, mss=1460))
    (connect,) = [e for e in client.events if type(e).__name__ == "ServiceConnect"]
    core.service_connected(connect.conn_id, client.now)
    client.pump()
    (urgent, synack), = client.tcp_segments()
    client.now += 25
    client.send_tcp(tcp.TcpRepr(40000, 22, 1001, synack.seq + 1, tcp.ACK, 65535))
    assert core.take_delay_signal() == 25
    assert core.take_delay_signal() is None
