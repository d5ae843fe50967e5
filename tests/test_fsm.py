"""The RFC 1661 automaton against the RFC's own section 4.1 table, pair by pair.

The table below is transcribed from RFC 1661 as printed (footnote letters
p, r and x kept) and parsed here, independently of the implementation's table.
"""

import random

import pytest

from pyslirp.ppp import fsm as F
from pyslirp.ppp.fsm import CONFACK, CONFNAK, CONFREJ, Event, Fsm, FsmCallbacks, State
from pyslirp.wire import ppp as wppp

RFC1661_4_1_LEFT = """
      | State
      |    0         1         2         3         4         5
Events| Initial   Starting  Closed    Stopped   Closing   Stopping
------+-----------------------------------------------------------
 Up   |    2     irc,scr/6     -         -         -         -
 Down |    -         -         0       tls/1       0         1
 Open |  tls/1       1     irc,scr/6     3r        5r        5r
 Close|    0       tlf/0       2         2         4         4
      |
  TO+ |    -         -         -         -       str/4     str/5
  TO- |    -         -         -         -       tlf/2     tlf/3
      |
 RCR+ |    -         -       sta/2 irc,scr,sca/8   4         5
 RCR- |    -         -       sta/2 irc,scr,scn/6   4         5
 RCA  |    -         -       sta/2     sta/3       4         5
 RCN  |    -         -       sta/2     sta/3       4         5
      |
 RTR  |    -         -       sta/2     sta/3     sta/4     sta/5
 RTA  |    -         -         2         3       tlf/2     tlf/3
      |
 RUC  |    -         -       scj/2     scj/3     scj/4     scj/5
 RXJ+ |    -         -         2         3         4         5
 RXJ- |    -         -       tlf/2     tlf/3     tlf/2     tlf/3
      |
 RXR  |    -         -         2         3         4         5
"""

RFC1661_4_1_RIGHT = """
      | State
      |    6         7         8           9
Events| Req-Sent  Ack-Rcvd  Ack-Sent    Opened
------+-----------------------------------------
 Up   |    -         -         -           -
 Down |    1         1         1         tld/1
 Open |    6         7         8           9r
 Close|irc,str/4 irc,str/4 irc,str/4 tld,irc,str/4
      |
  TO+ |  scr/6     scr/6     scr/8         -
  TO- |  tlf/3p    tlf/3p    tlf/3p        -
      |
 RCR+ |  sca/8   sca,tlu/9   sca/8   tld,scr,sca/8
 RCR- |  scn/6     scn/7     scn/6   tld,scr,scn/6
 RCA  |  irc/7     scr/6x  irc,tlu/9   tld,scr/6x
 RCN  |irc,scr/6   scr/6x  irc,scr/8   tld,scr/6x
      |
 RTR  |  sta/6     sta/6     sta/6   tld,zrc,sta/5
 RTA  |    6         6         8       tld,scr/6
      |
 RUC  |  scj/6     scj/7     scj/8       scj/9
 RXJ+ |    6         6         8           9
 RXJ- |  tlf/3     tlf/3     tlf/3   tld,irc,str/5
      |
 RXR  |    6         7         8         ser/9
"""


def parse_rfc_table(text, first_state):
    """{(state number, event name): (actions list, next state) or None for '-'}."""
    out = {}
    for line in text.splitlines():
        if "|" not in line:
            continue
        label, _, rest = line.partition("|")
        label = label.strip()
        if not label or label == "Events" or label.startswith("-"):
            continue
        cells = rest.split()
        for i, cell in enumerate(cells):
            state = first_state + i
            if cell == "-":
                out[(state, label)] = None
                continue
            if "/" in cell:
                actions, _, nxt = cell.partition("/")
                actions = actions.split(",")
            else:
                actions, nxt = [], cell
            nxt = int(nxt.rstrip("prx"))      # footnotes: passive, restart, crossed
            out[(state, label)] = (actions, nxt)
    return out


RFC_TABLE = {}
RFC_TABLE.update(parse_rfc_table(RFC1661_4_1_LEFT, 0))
RFC_TABLE.update(parse_rfc_table(RFC1661_4_1_RIGHT, 6))

SEND_CODES = {"scr": wppp.CONFIGURE_REQUEST, "sca": wppp.CONFIGURE_ACK, "str": wppp.TERMINATE_REQUEST,
              "sta": wppp.TERMINATE_ACK, "scj": wppp.CODE_REJECT}


class Recorder(FsmCallbacks):
    def __init__(self):
        self.calls = []
        self.verdict = CONFACK

    def resetci(self):
        self.calls.append("resetci")

    def addci(self):
        return b"\x01\x04\x05\xdc"

    def reqci(self, data, reject_if_disagree):
        self.calls.append(("reqci", reject_if_disagree))
        if self.verdict == CONFACK:
            return CONFACK, data
        return self.verdict, b"\x05\x06\x00\x00\x00\x01"

    def up(self):
        self.calls.append("up")

    def down(self):
        self.calls.append("down")

    def starting(self):
        self.calls.append("starting")

    def finished(self):
        self.calls.append("finished")

    def ser(self, code, ident, data):
        self.calls.append(("ser", code, ident))


def make_fsm(state=State.INITIAL, **kw):
    sent = []
    cb = Recorder()
    fsm = Fsm("TEST", cb, sent.append, max_configure=10, max_terminate=2, max_failure=5, restart_ms=3000,
              **kw)
    fsm.state = state
    fsm.trace = []
    return fsm, cb, sent


def codes(sent):
    return [wppp.parse_cp(p)[0] for p in sent]


def test_table_covers_sixteen_events_and_ten_states():
    assert len(RFC_TABLE) == 16 * 10
    assert set(label for _, label in RFC_TABLE) == set(e.value for e in Event)
    assert len([v for v in RFC_TABLE.values() if v is None]) == 40


PAIRS = sorted(RFC_TABLE, key=lambda k: (k[1], k[0]))


@pytest.mark.parametrize("state_no,event_name", PAIRS)
def test_every_state_event_pair_follows_rfc1661(state_no, event_name):
    state = State(state_no)
    event = Event(event_name)
    fsm, cb, sent = make_fsm(state)
    fsm.restart_count = 1 if event == Event.TO_PLUS else 0
    fsm.reqid = 9
    fsm.timer = 5000 if state in F.TIMER_STATES else None
    fsm.event(event, 4000, ident=77, code=wppp.ECHO_REQUEST if event == Event.RXR else None, data=b"")
    expected = RFC_TABLE[(state_no, event_name)]
    if expected is None:
        assert fsm.state == state
        assert fsm.trace == [] and sent == [] and cb.calls == []
        assert fsm.counters.get("illegal_event") == 1
        return
    actions, nxt = expected
    assert fsm.state == State(nxt)
    assert sorted(fsm.trace) == sorted(actions)
    # The actions really happened: packets in the order of the send actions ...
    sends = [a for a in fsm.trace if a in SEND_CODES or a == "scn"]
    want_codes = [SEND_CODES.get(a, CONFNAK) for a in sends]
    assert codes(sent) == want_codes
    # ... hooks called ...
    hooks = {"tlu": "up", "tld": "down", "tls": "starting", "tlf": "finished"}
    assert [c for c in cb.calls if c in hooks.values()] == [hooks[a] for a in fsm.trace if a in hooks]
    assert ("ser" in actions) == any(isinstance(c, tuple) and c[0] == "ser" for c in cb.calls)
    # ... the restart timer runs exactly in the timed states, armed afresh when a
    # request went out or the counter was zeroed.
    if State(nxt) in F.TIMER_STATES:
        assert fsm.timer is not None
        if {"scr", "str", "zrc"} & set(actions):
            assert fsm.timer == 4000 + 3000
    else:
        assert fsm.timer is None
    # ... and the restart counter follows irc/zrc and one decrement per request.
    if "irc" in actions:
        start = 2 if "str" in actions else 10
        assert fsm.restart_count == start - len([a for a in actions if a in ("scr", "str")]) or nxt == 9
    if "zrc" in actions:
        assert fsm.restart_count == 0
    for a in ("sta",):
        if a in actions:
            assert wppp.parse_cp(sent[[x for x in fsm.trace if x in SEND_CODES or x == "scn"].index(a)])[1] == 77


def test_illegal_event_is_logged_and_counted_not_raised():
    fsm, cb, sent = make_fsm(State.INITIAL)
    for _ in range(3):
        fsm.event(Event.RCA, 0)
    assert fsm.counters["illegal_event"] == 3 and fsm.state == State.INITIAL


# -- the same transitions driven by real packets ---------------------------------


def cp(code, ident, data=b""):
    return wppp.build_cp(code, ident, data)


REQ = b"\x05\x06\x12\x34\x56\x78"


@pytest.mark.parametrize("state_no", [2, 3, 4, 5, 6, 7, 8, 9])
@pytest.mark.parametrize("verdict,label", [(CONFACK, "RCR+"), (CONFNAK, "RCR-"), (CONFREJ, "RCR-")])
def test_configure_request_packet_runs_rcr_row(state_no, verdict, label):
    fsm, cb, sent = make_fsm(State(state_no))
    cb.verdict = verdict
    fsm.input(cp(1, 42, REQ), 100)
    actions, nxt = RFC_TABLE[(state_no, label)]
    if "sca" not in RFC_TABLE[(state_no, "RCR+")][0]:
        # Closed/Closing/Stopping: never answered; reqci not consulted
        actions, nxt = RFC_TABLE[(state_no, "RCR+")]
        assert not any(isinstance(c, tuple) for c in cb.calls)
    assert fsm.state == State(nxt)
    assert sorted(fsm.trace) == sorted(actions)
    answers = [wppp.parse_cp(p) for p in sent if wppp.parse_cp(p)[0] in (2, 3, 4)]
    if "sca" in actions:
        assert answers == [(CONFACK, 42, REQ)]
    elif "scn" in actions:
        assert answers == [(verdict, 42, b"\x05\x06\x00\x00\x00\x01")]
    else:
        assert answers == []
    if "tld" in actions:
        # tld runs before reqci judges the new request (pppd order)
        assert cb.calls.index("down") < [i for i, c in enumerate(cb.calls) if isinstance(c, tuple)][0]


@pytest.mark.parametrize("state_no", [6, 7, 8, 9])
@pytest.mark.parametrize("code,label", [(2, "RCA"), (3, "RCN"), (4, "RCN")])
def test_answer_packets_run_rca_rcn_rows_only_for_our_request(state_no, code, label):
    fsm, cb, sent = make_fsm(State(state_no))
    fsm.reqid = 33
    fsm.seen_ack = False
    # A stale identifier is silently discarded: no event at all.
    fsm.input(cp(code, 32, b"\x01\x04\x05\xdc"), 100)
    assert fsm.state == State(state_no) and fsm.trace == [] and sent == []
    assert fsm.counters["stale_answer"] == 1
    fsm.input(cp(code, 33, b"\x01\x04\x05\xdc"), 100)
    actions, nxt = RFC_TABLE[(state_no, label)]
    assert fsm.state == State(nxt) and sorted(fsm.trace) == sorted(actions)
    # A second answer to the same request is ignored too.
    if "scr" not in actions:
        before = list(fsm.trace)
        fsm.input(cp(code, 33, b"\x01\x04\x05\xdc"), 100)
        assert fsm.trace == before


@pytest.mark.parametrize("state_no", [2, 3, 4, 5, 6, 7, 8, 9])
def test_terminate_and_unknown_code_packets(state_no):
    for pkt, label in ((cp(5, 9), "RTR"), (cp(6, 9), "RTA"), (cp(0x42, 9, b"xyz"), "RUC")):
        fsm, cb, sent = make_fsm(State(state_no))
        fsm.input(pkt, 0)
        actions, nxt = RFC_TABLE[(state_no, label)]
        assert fsm.state == State(nxt) and sorted(fsm.trace) == sorted(actions), label
        if label == "RUC":
            # RFC 1661 5.6: the Code-Reject carries a copy of the rejected packet.
            assert wppp.parse_cp(sent[-1])[0] == 7 and wppp.parse_cp(sent[-1])[2] == pkt


@pytest.mark.parametrize("state_no", [2, 3, 4, 5, 6, 7, 8, 9])
def test_code_reject_catastrophic_or_not(state_no):
    fsm, _, _ = make_fsm(State(state_no))
    fsm.input(cp(7, 1, cp(1, 5, REQ)), 0)       # our Configure-Request code rejected
    actions, nxt = RFC_TABLE[(state_no, "RXJ-")]
    assert fsm.state == State(nxt) and sorted(fsm.trace) == sorted(actions)
    fsm, _, _ = make_fsm(State(state_no))
    fsm.input(cp(7, 1, cp(9, 5, b"\0\0\0\0")), 0)   # our Echo-Request rejected
    actions, nxt = RFC_TABLE[(state_no, "RXJ+")]
    assert fsm.state == State(nxt) and sorted(fsm.trace) == sorted(actions)


def test_code_reject_copy_truncated_to_peer_mru():
    fsm, _, sent = make_fsm(State.OPENED)
    fsm.mru = 100
    fsm.input(cp(0x30, 3, bytes(500)), 0)
    code, _, data = wppp.parse_cp(sent[-1])
    assert code == 7 and len(sent[-1]) == 100 and data == cp(0x30, 3, bytes(500))[:96]


def test_packets_ignored_while_lower_layer_down():
    for state in (State.INITIAL, State.STARTING):
        fsm, cb, sent = make_fsm(state)
        fsm.input(cp(1, 1, REQ), 0)
        assert fsm.state == state and sent == [] and fsm.counters["not_up"] == 1


def test_malformed_packets_are_dropped_and_counted():
    fsm, cb, sent = make_fsm(State.REQ_SENT)
    fsm.input(b"\x01\x01\x00", 0)
    fsm.input(b"\x01\x01\x00\x09\x01", 0)            # length beyond the data
    fsm.input(cp(1, 1, b"\x01\x09\x05"), 0)           # option overruns
    assert sent == [] and fsm.state == State.REQ_SENT
    assert fsm.counters["bad_packet"] == 2 and fsm.counters["bad_options"] == 1


# -- timers and counters ----------------------------------------------------------


def run_until(fsm, now, limit):
    while fsm.get_timer() is not None and fsm.get_timer() <= limit:
        now = fsm.get_timer()
        fsm.handle_timer(now)
    return now


def test_max_configure_requests_then_stopped():
    fsm, cb, sent = make_fsm()
    fsm.open(0)
    fsm.up(0)
    assert codes(sent) == [1]
    # Nothing before the restart interval.
    fsm.handle_timer(2999)
    assert len(sent) == 1
    fsm.handle_timer(3000)
    assert len(sent) == 2
    run_until(fsm, 3000, 10 ** 6)
    assert codes(sent) == [1] * 10
    assert fsm.state == State.STOPPED and cb.calls[-1] == "finished"
    assert fsm.get_timer() is None
    # retransmissions keep the identifier (RFC 1661 5.1 "MAY remain unchanged")
    assert len(set(wppp.parse_cp(p)[1] for p in sent)) == 1


def test_passive_stopped_state_restarts_on_peer_request():
    fsm, cb, sent = make_fsm(State.STOPPED)
    fsm.input(cp(1, 5, REQ), 50)
    assert fsm.state == State.ACK_SENT
    assert codes(sent) == [1, 2]
    assert "resetci" in cb.calls


def test_close_sends_max_terminate_requests():
    fsm, cb, sent = make_fsm(State.OPENED)
    fsm.close(1000, "bye")
    assert fsm.state == State.CLOSING and codes(sent) == [5]
    assert wppp.parse_cp(sent[0])[2] == b"bye"
    assert fsm.get_timer() == 4000
    run_until(fsm, 1000, 10 ** 6)
    assert codes(sent) == [5, 5]
    assert fsm.state == State.CLOSED and cb.calls[-1] == "finished"


def test_terminate_ack_ends_closing_early():
    fsm, cb, sent = make_fsm(State.OPENED)
    fsm.close(0)
    fsm.input(cp(6, 1), 10)
    assert fsm.state == State.CLOSED and fsm.get_timer() is None


def test_stopping_after_peer_terminate_waits_one_interval():
    fsm, cb, sent = make_fsm(State.OPENED)
    fsm.input(cp(5, 3), 1000)
    assert fsm.state == State.STOPPING and codes(sent) == [6]
    fsm.handle_timer(3999)
    assert fsm.state == State.STOPPING
    fsm.handle_timer(4000)
    assert fsm.state == State.STOPPED and codes(sent) == [6]


def test_nak_loops_turn_into_reject_after_max_failure():
    fsm, cb, sent = make_fsm(State.REQ_SENT)
    cb.verdict = CONFNAK
    for i in range(7):
        fsm.input(cp(1, i, REQ), 0)
    flags = [c[1] for c in cb.calls if isinstance(c, tuple) and c[0] == "reqci"]
    assert flags == [False] * 5 + [True, True]
    cb.verdict = CONFACK
    fsm.input(cp(1, 8, REQ), 0)
    assert fsm.nak_loops == 0


def test_new_identifier_for_each_new_request():
    fsm, cb, sent = make_fsm()
    fsm.open(0)
    fsm.up(0)
    first = wppp.parse_cp(sent[-1])[1]
    fsm.input(cp(3, first, b"\x01\x04\x05\x00"), 10)   # Nak -> new request
    second = wppp.parse_cp(sent[-1])[1]
    assert codes(sent) == [1, 1] and second != first
    # the old id is now stale
    fsm.input(cp(2, first, b"\x01\x04\x05\xdc"), 10)
    assert fsm.state == State.REQ_SENT
    fsm.input(cp(2, second, b"\x01\x04\x05\xdc"), 10)
    assert fsm.state == State.ACK_RCVD


def test_full_negotiation_between_two_automata():
    """Two automata wired back to back (random delivery order) both reach Opened."""
    rng = random.Random(7)
    for trial in range(20):
        qa, qb = [], []
        a = Fsm("A", FsmCallbacks(), qb.append)
        b = Fsm("B", FsmCallbacks(), qa.append)
        for f in (a, b):
            f.open(0)
            f.up(0)
        for _ in range(100):
            if not qa and not qb:
                break
            q, f = rng.choice([(qa, a), (qb, b)]) if qa and qb else ((qa, a) if qa else (qb, b))
            f.input(q.pop(0), 0)
        assert a.state == State.OPENED and b.state == State.OPENED, trial


def test_peer_triggered_logs_are_rate_limited(caplog):
    import logging
    fsm, cb, sent = make_fsm(State.OPENED)
    with caplog.at_level(logging.DEBUG, logger="pyslirp.ppp"):
        for i in range(200):
            fsm.input(cp(0x50, i & 0xFF, b"x"), 0)
            fsm.input(b"\x01", 0)
    assert fsm.counters["unknown_code"] == 200 and fsm.counters["bad_packet"] == 200
    assert len(sent) == 200                      # every unknown code still gets its Code-Reject
    assert 0 < len(caplog.records) <= 2 * 9      # 1st, 2nd, 4th ... 128th of each
