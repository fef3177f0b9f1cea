"""RFC 3261 §17 transaction machines, stepped with a fake clock (T1=0.5, T2=4, T4=5)."""

from __future__ import annotations

import pytest
from sipmessage import Request, Response

from sip.messages import parse
from sip.timers import TimerName, TimerSettings
from sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    State,
)

from .fakeclock import Harness

SETTINGS = TimerSettings(t1=0.5, t2=4.0, t4=5.0)

INVITE = (
    b"INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKinv1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:proxy.example;lr>\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a1\r\n"
    b"To: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: call-1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OPTIONS = (
    b"OPTIONS sip:bob@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKopt1\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=a1\r\n"
    b"To: <sip:bob@127.0.0.1>\r\n"
    b"Call-ID: call-2\r\n"
    b"CSeq: 7 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def response(code: int, phrase: str, cseq: str = "1 INVITE", branch: str = "z9hG4bKinv1") -> bytes:
    tag = ";tag=b1" if code > 100 else ""
    return (
        f"SIP/2.0 {code} {phrase}\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch};rport=5080\r\n"
        f"From: <sip:alice@127.0.0.1>;tag=a1\r\n"
        f"To: <sip:bob@127.0.0.1>{tag}\r\n"
        f"Call-ID: call-1\r\n"
        f"CSeq: {cseq}\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


def req(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    return message


def resp(data: bytes) -> Response:
    message = parse(data)
    assert isinstance(message, Response)
    return message


def ack_for(request: Request, code: int, phrase: str) -> Request:
    ack = Request("ACK", request.uri)
    for name in ("Via", "From", "Call-ID"):
        ack.headers.set(name, request.headers[name])
    ack.headers.set("To", resp(response(code, phrase)).headers["To"])
    ack.headers.set("CSeq", "1 ACK")
    return ack


# -- INVITE client (Figure 5 + RFC 6026) ------------------------------------------------


def invite_client(reliable: bool = False) -> Harness:
    h = Harness(InviteClientTransaction(req(INVITE), SETTINGS, reliable))
    h.apply(h.machine.start())
    return h


def test_invite_client_timer_a_doubles_and_timer_b_times_out():
    h = invite_client()
    assert h.timers == {TimerName.A: 0.5, TimerName.B: 32.0}
    h.advance(31.9)
    # Timer A: 0.5, 1, 2, 4, 8, 16 (no T2 cap for INVITE).
    assert h.send_times == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(data == INVITE for _, data in h.sent)
    assert not h.timed_out
    h.advance(0.1)
    assert h.timed_out and h.terminated
    assert h.machine.state is State.TERMINATED
    assert h.timers == {}


def test_invite_client_reliable_has_no_timer_a():
    h = invite_client(reliable=True)
    assert set(h.timers) == {TimerName.B}
    h.advance(32)
    assert h.send_times == [0]
    assert h.timed_out


@pytest.mark.parametrize(
    "steps",
    [
        # (message, state after, delivered count)
        [
            (response(100, "Trying"), State.PROCEEDING, 1),
            (response(180, "Ringing"), State.PROCEEDING, 2),
        ],
        [(response(180, "Ringing"), State.PROCEEDING, 1), (response(200, "OK"), State.ACCEPTED, 2)],
        [(response(200, "OK"), State.ACCEPTED, 1), (response(200, "OK"), State.ACCEPTED, 2)],
        [
            (response(486, "Busy Here"), State.COMPLETED, 1),
            (response(486, "Busy Here"), State.COMPLETED, 1),
        ],
    ],
)
def test_invite_client_response_table(steps: list[tuple[bytes, State, int]]):
    h = invite_client()
    for data, state, delivered in steps:
        h.apply(h.machine.receive(resp(data)))
        assert h.machine.state is state
        assert len(h.delivered) == delivered


def test_invite_client_provisional_stops_retransmission():
    h = invite_client()
    h.apply(h.machine.receive(resp(response(180, "Ringing"))))
    assert h.timers == {}
    h.advance(100)
    assert h.send_times == [0]
    assert not h.timed_out


def test_invite_client_non2xx_acked_and_timer_d():
    h = invite_client()
    h.apply(h.machine.receive(resp(response(486, "Busy Here"))))
    assert h.machine.state is State.COMPLETED
    ack = req(h.sent[-1][1])
    assert ack.method == "ACK"
    assert ack.headers["Via"] == "SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKinv1;rport"
    assert ack.headers["To"] == "<sip:bob@127.0.0.1>;tag=b1"
    assert str(ack.cseq) == "1 ACK"
    assert str(ack.uri) == "sip:bob@127.0.0.1:5070"
    assert ack.headers.getlist("Route") == ["<sip:proxy.example;lr>"]
    # A retransmitted final response is answered with the same ACK, not delivered.
    h.apply(h.machine.receive(resp(response(486, "Busy Here"))))
    assert h.sent[-1] == (0, h.sent[-2][1])
    assert len(h.delivered) == 1
    assert h.timers == {TimerName.D: 32.0}
    h.advance(31.9)
    assert not h.terminated
    h.advance(0.2)
    assert h.terminated and not h.timed_out


def test_invite_client_reliable_timer_d_is_zero():
    h = invite_client(reliable=True)
    h.apply(h.machine.receive(resp(response(404, "Not Found"))))
    assert h.terminated


def test_invite_client_accepted_timer_m():
    h = invite_client()
    h.apply(h.machine.receive(resp(response(200, "OK"))))
    assert h.timers == {TimerName.M: 32.0}
    h.apply(h.machine.receive(resp(response(200, "OK"))))
    assert len(h.delivered) == 2  # retransmitted 2xx reaches the TU to be re-ACKed
    assert h.send_times == [0]  # the transaction never ACKs a 2xx
    h.advance(32)
    assert h.terminated


def test_invite_client_transport_error():
    h = invite_client()
    h.apply(h.machine.transport_error())
    assert h.terminated and h.timers == {}


# -- non-INVITE client (Figure 6) -------------------------------------------------------


def options_client(reliable: bool = False) -> Harness:
    h = Harness(NonInviteClientTransaction(req(OPTIONS), SETTINGS, reliable))
    h.apply(h.machine.start())
    return h


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f():
    h = options_client()
    assert h.timers == {TimerName.E: 0.5, TimerName.F: 32.0}
    h.advance(31.9)
    assert h.send_times == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    h.advance(0.1)
    assert h.timed_out and h.terminated and h.timers == {}


def test_non_invite_client_proceeding_retransmits_every_t2():
    h = options_client()
    h.advance(0.6)
    h.apply(h.machine.receive(resp(response(100, "Trying", "7 OPTIONS", "z9hG4bKopt1"))))
    assert h.machine.state is State.PROCEEDING
    h.advance(10)
    assert h.send_times == [0, 0.5, 1.5, 5.5, 9.5]


def test_non_invite_client_final_and_timer_k():
    h = options_client()
    h.apply(h.machine.receive(resp(response(200, "OK", "7 OPTIONS", "z9hG4bKopt1"))))
    assert h.machine.state is State.COMPLETED
    assert h.timers == {TimerName.K: 5.0}
    h.apply(h.machine.receive(resp(response(200, "OK", "7 OPTIONS", "z9hG4bKopt1"))))
    assert len(h.delivered) == 1  # absorbed
    h.advance(5)
    assert h.terminated and not h.timed_out
    assert h.send_times == [0]


def test_non_invite_client_reliable():
    h = options_client(reliable=True)
    assert set(h.timers) == {TimerName.F}
    h.apply(h.machine.receive(resp(response(200, "OK", "7 OPTIONS", "z9hG4bKopt1"))))
    assert h.terminated  # Timer K is zero


# -- INVITE server (Figure 7 + RFC 6026) ------------------------------------------------


def invite_server(reliable: bool = False) -> Harness:
    return Harness(InviteServerTransaction(req(INVITE), SETTINGS, reliable))


def test_invite_server_retransmitted_invite_gets_last_provisional():
    h = invite_server()
    assert h.machine.state is State.PROCEEDING
    h.apply(h.machine.receive(req(INVITE)))
    assert h.sent == []  # nothing to repeat yet
    h.apply(h.machine.respond(resp(response(100, "Trying"))))
    h.apply(h.machine.respond(resp(response(180, "Ringing"))))
    h.apply(h.machine.receive(req(INVITE)))
    assert [resp(data).code for _, data in h.sent] == [100, 180, 180]


def test_invite_server_timer_g_and_h():
    h = invite_server()
    h.apply(h.machine.respond(resp(response(486, "Busy Here"))))
    assert h.machine.state is State.COMPLETED
    assert h.timers == {TimerName.G: 0.5, TimerName.H: 32.0}
    h.advance(31.9)
    assert h.send_times == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    h.apply(h.machine.receive(req(INVITE)))  # retransmitted INVITE -> the final again
    assert len(h.sent) == 12
    h.advance(0.1)
    assert h.timed_out and h.terminated


def test_invite_server_ack_confirms_and_timer_i():
    h = invite_server()
    h.apply(h.machine.respond(resp(response(486, "Busy Here"))))
    h.advance(0.6)
    h.apply(h.machine.receive(ack_for(req(INVITE), 486, "Busy Here")))
    assert h.machine.state is State.CONFIRMED
    assert h.timers == {TimerName.I: pytest.approx(5.6)}
    h.apply(h.machine.receive(ack_for(req(INVITE), 486, "Busy Here")))  # absorbed
    assert h.delivered == []
    h.advance(5)
    assert h.terminated and not h.timed_out
    assert h.send_times == [0, 0.5]


def test_invite_server_reliable_no_timer_g_and_zero_timer_i():
    h = invite_server(reliable=True)
    h.apply(h.machine.respond(resp(response(603, "Decline"))))
    assert set(h.timers) == {TimerName.H}
    h.apply(h.machine.receive(ack_for(req(INVITE), 603, "Decline")))
    assert h.terminated


def test_invite_server_2xx_accepted_and_timer_l():
    h = invite_server()
    h.apply(h.machine.respond(resp(response(200, "OK"))))
    assert h.machine.state is State.ACCEPTED
    assert h.timers == {TimerName.L: 32.0}
    h.apply(h.machine.receive(req(INVITE)))  # absorbed, the TU retransmits 2xx itself
    assert len(h.sent) == 1
    h.apply(h.machine.respond(resp(response(200, "OK"))))  # TU retransmission passes
    assert len(h.sent) == 2
    ack = ack_for(req(INVITE), 200, "OK")
    h.apply(h.machine.receive(ack))
    assert h.delivered == [ack]
    h.advance(32)
    assert h.terminated


# -- non-INVITE server (Figure 8) -------------------------------------------------------


def options_server(reliable: bool = False) -> Harness:
    return Harness(NonInviteServerTransaction(req(OPTIONS), SETTINGS, reliable))


def test_non_invite_server_table():
    h = options_server()
    assert h.machine.state is State.TRYING
    h.apply(h.machine.receive(req(OPTIONS)))
    assert h.sent == []  # Trying: retransmissions are dropped
    h.apply(h.machine.respond(resp(response(100, "Trying", "7 OPTIONS", "z9hG4bKopt1"))))
    assert h.machine.state is State.PROCEEDING
    h.apply(h.machine.receive(req(OPTIONS)))
    assert len(h.sent) == 2
    h.apply(h.machine.respond(resp(response(200, "OK", "7 OPTIONS", "z9hG4bKopt1"))))
    assert h.machine.state is State.COMPLETED
    assert h.timers == {TimerName.J: 32.0}
    h.apply(h.machine.receive(req(OPTIONS)))
    assert [resp(data).code for _, data in h.sent] == [100, 100, 200, 200]
    h.apply(h.machine.respond(resp(response(500, "Oops", "7 OPTIONS", "z9hG4bKopt1"))))
    assert len(h.sent) == 4  # a second final is ignored
    h.advance(31.9)
    assert not h.terminated
    h.advance(0.1)
    assert h.terminated


def test_non_invite_server_reliable_timer_j_zero():
    h = options_server(reliable=True)
    h.apply(h.machine.respond(resp(response(200, "OK", "7 OPTIONS", "z9hG4bKopt1"))))
    assert h.terminated


def test_timer_settings_table():
    s = TimerSettings(t1=0.5, t2=4.0, t4=5.0)
    table = {
        TimerName.A: (0.5, 0.5),
        TimerName.B: (32, 32),
        TimerName.D: (32, 0),
        TimerName.E: (0.5, 0.5),
        TimerName.F: (32, 32),
        TimerName.G: (0.5, 0.5),
        TimerName.H: (32, 32),
        TimerName.I: (5, 0),
        TimerName.J: (32, 0),
        TimerName.K: (5, 0),
    }
    for name, (unreliable, reliable) in table.items():
        assert s.initial(name, reliable=False) == unreliable, name
        assert s.initial(name, reliable=True) == reliable, name
    assert s.backoff(TimerName.E, 4.0) == 4.0
    assert s.backoff(TimerName.A, 4.0) == 8.0
