"""The link comes up as soon as the client speaks, however long pyslirp had been waiting (fake clock).

pyslirp sends its LCP Configure-Requests from the moment the line is ready; a client that opens the line later
never saw them.  Its own Configure-Request must then bring ours forward at once instead of leaving it to the
3-second Restart timer -- in Req-Sent, with the restart counter running out, and in Stopped alike -- and a client
that did see ours must not be bothered by the early retransmission.
"""

import pytest

from test_link import IPCP, LCP, Client, events_of, make_link
from pyslirp.ppp.events import LinkDown, LinkUp
from pyslirp.ppp.fsm import State


def waiting_link(wait_ms, **kw):
    """A link whose requests since lower_up(0) went nowhere, ``wait_ms`` later."""
    link = make_link(**kw)
    link.lower_up(0)
    now = 0
    while True:
        link.take_output()                      # nobody on the line
        t = link.get_timer()
        if t is None or t > wait_ms:
            break
        now = t
        link.handle_timer(t)
    link.take_output()
    return link


@pytest.mark.parametrize("wait_ms", [0, 1500, 2999, 13500, 28500, 29999, 45000, 3600 * 1000])
def test_link_up_without_waiting_for_the_restart_timer(wait_ms):
    link = waiting_link(wait_ms)
    client = Client(link, now=wait_ms)
    client.start()                              # its Configure-Request, and everything that follows at once
    assert link.is_up, (wait_ms, link.lcp.state)
    assert [e.__class__ for e in client.events] == [LinkUp]
    # Nothing waited for a timer: the whole session was negotiated at the client's first instant.
    assert client.now == wait_ms
    if link.lcp.state == State.OPENED and wait_ms < 30000:
        assert link.lcp_counters["early_requests"] == 1
    # And the session is an ordinary one afterwards: no renegotiation, no extra Configure-Requests.
    client.advance(wait_ms + 60000)
    assert link.is_up and events_of(client, LinkDown) == []


def test_our_request_is_retransmitted_with_the_same_identifier():
    link = make_link()
    link.lower_up(0)
    assert len(link.take_output()) == 1         # our first request, lost
    client = Client(link, now=1200)
    client.auto = False
    client.send_lcp_request()
    frames = client.collect()
    codes = [(p, info[0], info[1]) for p, info in frames]
    ours = [c for c in codes if c[1] == 1]
    assert ours and codes.index(ours[0]) < codes.index([c for c in codes if c[1] == 2][0])   # ours, then the Ack
    assert ours[0][2] == link.lcp.fsm.reqid == 1
    # The timer restarted with it: the next retransmission is a full interval later.
    assert link.get_timer() == 1200 + 3000


def test_a_client_that_saw_our_request_opens_once():
    # The requests cross on the line: the client answers ours and sends its own, which arrives first.
    link = make_link()
    link.lower_up(0)
    client = Client(link)
    client.auto = False
    (proto, info), = client.collect()
    client.send_lcp_request()                   # arrives before its Ack of ours: we retransmit ours
    client.auto = True
    client.handle(proto, info)                  # now it acks our (first) request
    client.run()
    assert link.is_up and [e.__class__ for e in client.events] == [LinkUp]
    # The client acknowledged our request twice (the original and its retransmission): the second Ack was stale.
    assert link.lcp_counters.get("stale_answer", 0) == 1
    assert link.lcp.state == State.OPENED and link.ipcp.state == State.OPENED


def test_later_requests_and_other_states_are_untouched():
    link = make_link()
    link.lower_up(0)
    link.take_output()
    client = Client(link, now=500)
    client.start()
    assert link.is_up and link.lcp_counters["early_requests"] == 1
    # A peer renegotiating an Opened link is the RFC 1661 table's business, as always.
    client.events.clear()
    client.lcp_acked = False
    client.ipcp_acked = client.ipcp_acked_theirs = False
    client.deframer.accm = 0xFFFFFFFF
    client.send_lcp_request()
    client.run()
    assert [e.__class__ for e in client.events] == [LinkDown, LinkUp]
    assert link.lcp_counters["early_requests"] == 1
    # IPCP is not affected (it only starts once both sides are talking).
    assert link.ipcp_counters.get("early_requests", 0) == 0
    assert client.of(IPCP, 1)
    assert client.of(LCP, 1)
