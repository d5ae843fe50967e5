"""Clients that talk before PPP: the Answerer alone (sans-IO, fake clock), then in front of a real PPPLink."""

import random

import pytest

from test_link import Client, events_of, make_link
from pyslirp.ppp.answer import CALL, COMMAND, ESCAPED, HANGUP, ONLINE, WAITING, Answerer
from pyslirp.ppp.events import LinkDown, LinkUp
from pyslirp.ppp.fsm import State
from pyslirp.wire import hdlc
from pyslirp.wire import ppp as wppp

FRAME = hdlc.encode_frame(wppp.build_frame(wppp.PROTO_LCP, wppp.build_cp(1, 1, b"")))


def talk(a, text, now=0):
    passed = a.receive(text, now)
    return passed, a.take_output()


# -- the Answerer alone ----------------------------------------------------------------------------------------

def test_direct_cable_client_gets_clientserver():
    a = Answerer()
    assert talk(a, b"CLIENT") == (b"", b"CLIENTSERVER")
    assert a.state == ONLINE and not a.quiet
    passed, out = talk(a, FRAME, 10)
    assert passed == FRAME and out == b"" and a.started


def test_clientserver_also_when_split_or_with_a_line_end():
    a = Answerer()
    assert talk(a, b"CLI") == (b"", b"")
    assert talk(a, b"ENT\r") == (b"", b"CLIENTSERVER")


def test_modem_dialogue_as_chat_plays_it():
    a = Answerer(speed=57600)
    assert talk(a, b"AT\r") == (b"", b"AT\r\r\nOK\r\n")           # echo on, as a Hayes modem starts
    assert a.quiet and a.state == COMMAND
    assert talk(a, b"ATZ\r") == (b"", b"ATZ\r\r\nOK\r\n")
    assert talk(a, b"ATE0V1\r") == (b"", b"ATE0V1\r\r\nOK\r\n")     # echoed before E0 takes effect
    assert talk(a, b"AT&K0\r") == (b"", b"\r\nOK\r\n")
    assert talk(a, b"ATS0=0 L1 M0 X4\r") == (b"", b"\r\nOK\r\n")
    assert talk(a, b"ATDT5551234\r") == (b"", b"\r\nCONNECT 57600\r\n")
    assert a.state == ONLINE and not a.quiet
    assert talk(a, b"\x7e\xff\x7d\x23") == (b"\x7e\xff\x7d\x23", b"") and a.started


def test_numeric_and_quiet_result_codes():
    a = Answerer()
    assert talk(a, b"ATE0V0\r") == (b"", b"ATE0V0\r0\r")
    assert talk(a, b"ATD123\r") == (b"", b"1\r")
    a = Answerer()
    assert talk(a, b"ATQ1\r") == (b"", b"ATQ1\r")          # quiet: no result codes, the echo stays
    assert talk(a, b"ATE0DT1\r") == (b"", b"ATE0DT1\r") and a.state == ONLINE


def test_lf_line_ends_lower_case_and_repeat():
    a = Answerer()
    assert talk(a, b"ate0\n") == (b"", b"ate0\r\r\nOK\r\n")
    assert talk(a, b"A/\r") == (b"", b"\r\nOK\r\n")


def test_the_first_ppp_frame_passes_whole_and_at_once():
    a = Answerer()
    passed, out = talk(a, b"AT\r" + FRAME + FRAME)
    assert passed == FRAME + FRAME and out == b"AT\r\r\nOK\r\n"
    a = Answerer()
    assert talk(a, b"\x7e")[0] == b"\x7e"                      # a lone flag already starts PPP
    assert talk(a, b"AT\r")[0] == b"AT\r"                      # and then everything passes, untouched
    assert a.take_output() == b""


def test_noise_that_is_not_a_command_is_ignored():
    a = Answerer()
    assert talk(a, b"\x00\x13garbage\r\n~") == (b"~", b"")
    a = Answerer()
    assert talk(a, b"hello\r") == (b"", b"") and a.state == WAITING and not a.quiet


def test_chatter_is_bounded():
    a = Answerer()
    for _ in range(100):
        a.receive(b"x" * 100, 0)
    assert len(a._line) <= 256 + 100 and a.counters["dropped_lines"] > 0
    assert talk(a, b"\rAT\r") == (b"", b"AT\r\r\nOK\r\n")


def test_escape_needs_silence_before_and_after():
    a = Answerer(guard_ms=1000)
    a.receive(b"ATD1\r", 0)
    a.take_output()
    assert a.take_events() == [CALL]
    a.receive(FRAME, 100)
    # "+++" inside the stream, without the silences, is data.
    assert a.receive(b"+++", 200) == b"+++" and a.get_timer() is None
    a.receive(FRAME, 300)
    # Silence, "+++", then more data before the guard time: still data.
    assert a.receive(b"+++", 2000) == b"+++" and a.get_timer() == 3000
    a.receive(FRAME, 2500)
    assert a.get_timer() is None
    # Silence, "+++" in pieces, silence: command mode with OK.
    a.receive(b"+", 5000)
    a.receive(b"++", 5100)
    assert a.get_timer() == 6100
    a.handle_timer(6099)
    assert a.started
    a.handle_timer(6100)
    assert a.take_events() == [ESCAPED] and a.take_output() == b"\r\nOK\r\n" and a.quiet
    # ATH hangs the session up; ATDT dials again.
    assert talk(a, b"ATH\r", 6500) == (b"", b"ATH\r\r\nOK\r\n")
    assert a.take_events() == [HANGUP]
    assert talk(a, b"ATDT555\r", 7000) == (b"", b"ATDT555\r\r\nCONNECT 115200\r\n")
    assert a.take_events() == [CALL]


def test_ato_resumes_and_dialing_again_hangs_up_first():
    a = Answerer(guard_ms=1000)
    a.receive(FRAME, 0)
    a.receive(b"+++", 2000)
    a.handle_timer(3000)
    a.take_output()
    assert talk(a, b"ATO\r", 3100) == (b"", b"ATO\r\r\nCONNECT 115200\r\n")
    assert a.started and a.take_events() == [ESCAPED]
    a.receive(b"+++", 5000)
    a.handle_timer(6000)
    a.take_events()
    a.receive(b"ATD1\r", 6100)
    assert a.take_events() == [HANGUP, CALL] and a.state == ONLINE


def test_random_chatter_never_raises_and_frames_always_pass():
    rng = random.Random(77)
    words = [b"AT", b"ATZ", b"ATD1", b"ATH", b"ATO", b"A/", b"CLIENT", b"+++", b"\r", b"\n", b"S0=", b"&K3", b"E0",
             b"V0", b"Q1", b"~", b"\x7d"]
    for _ in range(200):
        a = Answerer(guard_ms=rng.choice([1, 50, 1000]))
        now = 0
        for _ in range(30):
            chunk = b"".join(rng.choice(words) for _ in range(rng.randrange(1, 6)))
            if rng.random() < 0.2:
                chunk += bytes(rng.getrandbits(8) for _ in range(rng.randrange(10)))
            was_started = a.started
            passed = a.receive(chunk, now)
            if was_started:
                assert passed == chunk                 # PPP running: every byte passes, unchanged
            elif b"\x7e" in chunk:
                assert passed == chunk[chunk.index(b"\x7e"):] and a.started
            else:
                assert passed == b""
            now += rng.randrange(0, 2000)
            if a.get_timer() is not None and a.get_timer() <= now:
                a.handle_timer(now)
            a.take_output()
            a.take_events()
        out = a.receive(FRAME, now + 5000)
        assert out.endswith(FRAME)


# -- in front of the link ---------------------------------------------------------------------------------------

def test_direct_cable_then_ppp_brings_the_link_up():
    link = make_link()
    link.lower_up(0)
    link.take_output()
    link.receive_data(b"CLIENT", 100)
    out = link.take_output()
    assert out == [(True, b"CLIENTSERVER")]
    client = Client(link, now=200)
    client.start()
    assert link.is_up and events_of(client, LinkUp)


def test_modem_dial_then_ppp_and_nothing_of_ppp_while_in_command_mode():
    link = make_link()
    link.lower_up(0)
    link.take_output()
    link.receive_data(b"AT\r", 100)
    assert link.take_output() == [(True, b"AT\r\r\nOK\r\n")]
    # LCP's retransmissions while the client talks to its modem are held back.
    link.handle_timer(3000)
    assert link.take_output() == [] and link.counters["held_in_command_mode"] == 1
    link.receive_data(b"ATDT5551234\r", 3100)
    assert link.take_output() == [(True, b"ATDT5551234\r\r\nCONNECT 115200\r\n")]
    client = Client(link, now=3200)
    client.start()
    assert link.is_up and client.now == 3200


def test_escape_and_hangup_end_the_session_and_a_new_call_comes_up():
    link = make_link()
    link.lower_up(0)
    link.take_output()
    link.receive_data(b"ATD1\r", 10)
    link.take_output()
    client = Client(link, now=100)
    client.start()
    assert link.is_up
    # pppd's disconnect script: \d +++ \d, expect OK, ATH0, expect OK.
    client.auto = False
    client.collect()
    link.receive_data(b"+++", 5000)
    assert link.answer.get_timer() == 6000
    while link.get_timer() <= 6000:
        link.handle_timer(link.get_timer())
    assert (True, b"\r\nOK\r\n") in link.take_output() and link.answer.quiet
    link.receive_data(b"ATH0\r", 6100)
    out = link.take_output()
    assert out == [(True, b"ATH0\r\r\nOK\r\n")]         # no Terminate-Request: the line is "hung up"
    assert link.take_events() == [LinkDown("hangup")] and not link.is_up
    assert link.lcp.state == State.REQ_SENT
    # Listening again: a new call.
    link.receive_data(b"ATDT2\r", 7000)
    assert link.take_output() == [(True, b"ATDT2\r\r\nCONNECT 115200\r\n")]
    fresh = Client(link, now=7100)
    fresh.start()
    assert link.is_up and events_of(fresh, LinkUp)


def test_plus_signs_inside_a_session_do_not_escape():
    link = make_link()
    link.lower_up(0)
    client = Client(link, now=100)
    client.start()
    client.send(wppp.PROTO_IP, b"\x45" + b"+++" * 10)
    client.now += 50
    client.send(wppp.PROTO_IP, b"\x45" + bytes(19))
    assert link.is_up and link.answer.started and link.answer.get_timer() is None


def test_answer_none_passes_chatter_to_the_deframer_and_answers_nothing():
    link = make_link(answer="none")
    link.lower_up(0)
    link.take_output()
    link.receive_data(b"AT\r", 0)
    link.receive_data(b"CLIENT", 0)
    assert link.take_output() == [] and link.answer is None
    assert link.deframer.noise_bytes == 8          # the CR is a control character the default ACCM drops


@pytest.mark.parametrize("chunks", [1, 7, 1000])
def test_the_session_does_not_depend_on_how_the_first_frame_is_cut(chunks):
    reference = make_link(answer="none")
    reference.lower_up(0)
    c = Client(reference)
    c.start()
    stream = b"ATZ\rATDT1\r" + b"".join(c.raw_in)
    link = make_link()
    link.lower_up(0)
    step = max(1, len(stream) // chunks)
    for i in range(0, len(stream), step):
        link.receive_data(stream[i:i + step], 0)
    assert link.lcp.state == reference.lcp.state == State.OPENED
    assert link.deframer.frames == reference.deframer.frames


def test_after_a_session_the_next_caller_is_answered_again():
    link = make_link()
    link.lower_up(0)
    link.receive_data(b"CLIENT", 10)
    client = Client(link, now=100)
    client.start()
    assert link.is_up and link.answer.started
    # The client ends the session and hangs up; the next one dials a modem at once.
    client.send_cp(wppp.PROTO_LCP, 5, 9, b"bye")
    client.collect()
    assert link.lcp.state == State.STOPPING and link.answer.state == WAITING
    link.receive_data(b"AT\r", 300)
    assert link.take_output() == [(True, b"AT\r\r\nOK\r\n")]
    link.receive_data(b"ATDT1\r", 400)
    # The new call restarts LCP at once (no waiting out Stopping): CONNECT, then our Configure-Request.
    (u1, reply), (u2, frame) = link.take_output()
    assert reply == b"ATDT1\r\r\nCONNECT 115200\r\n" and frame.startswith(b"\x7e\xff\x7d\x23\xc0\x21\x7d\x21")
    assert link.lcp.state == State.REQ_SENT
    fresh = Client(link, now=500)
    fresh.start()
    assert link.is_up and fresh.now == 500


def test_a_disconnect_script_after_the_session_gets_its_oks():
    link = make_link()
    link.lower_up(0)
    link.receive_data(b"ATD1\r", 10)
    client = Client(link, now=100)
    client.start()
    client.send_cp(wppp.PROTO_LCP, 5, 9, b"bye")
    client.collect()
    link.take_events()
    # chat '' '\d+++\d\c' OK ATH0 OK, 1 s after the Terminate-Ack.
    link.receive_data(b"+++", client.now + 1100)
    assert link.answer.get_timer() == client.now + 2100
    link.handle_timer(client.now + 2100)
    assert (True, b"\r\nOK\r\n") in link.take_output()
    link.receive_data(b"ATH0\r", client.now + 2200)
    assert link.take_output() == [(True, b"ATH0\r\r\nOK\r\n")]
    assert link.lcp.state == State.REQ_SENT and link.answer.quiet


def test_whole_and_byte_by_byte_give_the_same_dialogue():
    rng = random.Random(2025)
    words = [b"AT", b"ATZ", b"ATE0", b"ATE1", b"ATV0", b"ATDT555", b"ATH", b"A/", b"CLIENT", b"\r", b"\n", b"&K0",
             b"S7=60", b"S0?", b"junk", b" "]
    for _ in range(300):
        stream = b"".join(rng.choice(words) for _ in range(rng.randrange(1, 25)))
        if rng.random() < 0.5:
            stream += FRAME + bytes(rng.getrandbits(8) for _ in range(rng.randrange(20)))
        whole = Answerer()
        got_whole = (whole.receive(stream, 0), whole.take_output(), whole.take_events(), whole.state)
        bytewise = Answerer()
        passed = b"".join(bytewise.receive(stream[i:i + 1], 0) for i in range(len(stream)))
        got_bytes = (passed, bytewise.take_output(), bytewise.take_events(), bytewise.state)
        assert got_whole == got_bytes, stream
