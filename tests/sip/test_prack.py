"""RFC 3262 reliable provisional responses (PRACK) with a fake clock, both sides."""

from __future__ import annotations

from sipmessage import Request, Response

from sip import events
from sip.messages import parse
from sip.prack import is_reliable, parse_rack

from .test_core import INVITE, SDP, CoreHarness, respond_to, start_call
from .test_in_dialog import Harness, request

ANSWER = SDP.replace(b"4000", b"4200")


def reliable(data: bytes, rseq: int) -> bytes:
    return data.replace(
        b"Content-Length", f"Require: 100rel\r\nRSeq: {rseq}\r\nContent-Length".encode(), 1
    )


def requests(h: CoreHarness, method: str) -> list[Request]:
    return [m for m in h.messages() if isinstance(m, Request) and m.method == method]


def responses(h: CoreHarness) -> list[Response]:
    return [m for m in h.messages() if isinstance(m, Response)]


def test_parsers():
    assert parse_rack("7 10 INVITE") == (7, 10, "INVITE")
    assert parse_rack("7 INVITE") is None and parse_rack("x 1 INVITE") is None


# -- UAC --------------------------------------------------------------------------------


def test_invite_offers_100rel_and_timer():
    h = CoreHarness()
    _, invite = start_call(h)
    assert invite.headers["Supported"] == "100rel, timer"
    assert invite.headers["Session-Expires"] == "1800"
    assert invite.headers["Min-SE"] == "90"


def test_reliable_183_is_pracked_once_and_dialog_cseq_continues():
    h = CoreHarness()
    sid, invite = start_call(h)
    progress = reliable(respond_to(invite, 183, "Session Progress", body=ANSWER), 5)
    assert is_reliable(_parse(progress)) == 5
    h.receive(progress)
    (prack,) = requests(h, "PRACK")
    assert prack.headers["RAck"] == "5 1 INVITE"
    assert prack.cseq.sequence == 2
    assert prack.to_address.parameters["tag"] == "remote1"
    assert str(prack.uri) == "sip:bob@127.0.0.1:5080"
    assert h.events() == [events.Provisional(183, "Session Progress", ANSWER)]
    # A retransmission (same RSeq) is neither PRACKed nor delivered again.
    h.receive(progress)
    assert len(requests(h, "PRACK")) == 1 and len(h.events()) == 1
    # Out of order (RSeq 7 before 6) is dropped; 6 then gets its PRACK.
    h.receive(reliable(respond_to(invite, 180, "Ringing"), 7))
    assert len(requests(h, "PRACK")) == 1
    h.receive(reliable(respond_to(invite, 180, "Ringing"), 6))
    assert requests(h, "PRACK")[-1].headers["RAck"] == "6 1 INVITE"
    assert requests(h, "PRACK")[-1].cseq.sequence == 3
    h.receive(respond_to(requests(h, "PRACK")[-1], 200, "OK"))
    h.receive(respond_to(invite, 200, "OK", body=ANSWER))
    (ack,) = requests(h, "ACK")
    assert ack.cseq.sequence == 1
    h.apply(h.core.bye(sid))
    (bye,) = requests(h, "BYE")
    assert bye.cseq.sequence == 4  # after both PRACKs of the early dialog


def _parse(data: bytes) -> Response:
    message = parse(data)
    assert isinstance(message, Response)
    return message


def test_unreliable_1xx_is_not_pracked():
    h = CoreHarness()
    _, invite = start_call(h)
    h.receive(respond_to(invite, 180, "Ringing"))
    assert requests(h, "PRACK") == []
    assert h.events() == [events.Provisional(180, "Ringing", None)]


# -- UAS --------------------------------------------------------------------------------


def invite_with(header: str) -> bytes:
    return INVITE.replace(b"Max-Forwards", header.encode() + b"\r\nMax-Forwards", 1)


class Uas:
    def __init__(self, header: str = "Supported: 100rel") -> None:
        self.h = Harness()
        self.h.receive(invite_with(header))
        (call,) = self.h.calls
        self.sid = call.session_id

    def prack(self, rack: str, cseq: int = 11, branch: str = "z9hG4bKprack1") -> None:
        tag = self.h.core.session_tags(self.sid)[0]
        data = request("PRACK", cseq, from_tag="phone", to_tag=tag, branch=branch, extra=rack)
        self.h.receive(data)


def test_uas_reliable_183_retransmitted_until_prack_then_answer():
    t = Uas()
    h = t.h
    h.apply(h.core.ringing(t.sid, ANSWER))
    progress = h.last()
    assert progress.code == 183 and progress.headers["Require"] == "100rel"
    rseq = int(progress.headers["RSeq"])
    assert progress.body == ANSWER
    h.advance(0.5 + 1.0 + 0.1)  # T1, then 2*T1
    assert [m.code for m in h.responses()] == [100, 183, 183, 183]
    assert h.sent[-1][0] == 1.5
    # answer() before the PRACK of an SDP 1xx waits (RFC 3262 §3).
    h.apply(h.core.answer(t.sid, ANSWER))
    assert h.last().code == 183
    t.prack(f"RAck: {rseq + 1} 10 INVITE", branch="z9hG4bKbad")
    assert h.last().code == 481
    t.prack(f"RAck: {rseq} 10 INVITE")
    codes = [m.code for m in h.responses()]
    assert codes[-2:] == [200, 200]
    prack_ok, invite_ok = h.responses()[-2:]
    assert prack_ok.cseq.method == "PRACK" and invite_ok.cseq.method == "INVITE"
    sent = len(h.sent)
    h.advance(2.1)  # no more 183 retransmissions (the 2xx is retransmitted instead)
    assert all(m.code == 200 for m in h.responses()[sent:])


def test_uas_required_100rel_makes_180_reliable_and_gives_up_after_64_t1():
    t = Uas("Require: 100rel")
    h = t.h
    h.apply(h.core.ringing(t.sid))
    ringing = h.last()
    assert ringing.code == 180 and ringing.headers["RSeq"]
    h.advance(40)
    codes = [m.code for m in h.responses()]
    assert codes.count(180) == 6 + 1  # 0, .5, 1.5, 3.5, 7.5, 15.5, 31.5
    assert codes[-1] == 500
    assert h.events() == [events.Terminated("timeout")]


def test_uas_second_reliable_1xx_waits_for_the_first_prack():
    t = Uas("Require: 100rel")
    h = t.h
    h.apply(h.core.ringing(t.sid))
    first = int(h.last().headers["RSeq"])
    h.apply(h.core.ringing(t.sid, ANSWER))
    assert [m.code for m in h.responses()] == [100, 180]
    t.prack(f"RAck: {first} 10 INVITE")
    assert h.last().code == 183 and int(h.last().headers["RSeq"]) == first + 1


def test_uas_supported_only_sends_plain_180_unreliably():
    t = Uas()
    h = t.h
    h.apply(h.core.ringing(t.sid))
    assert h.last().headers.get("RSeq") is None
    h.advance(5)
    assert [m.code for m in h.responses()] == [100, 180]


def test_uas_prack_off_rejects_required_100rel():
    from sip.core import CoreConfig, UserAgentCore

    h = Harness()
    h.core = UserAgentCore(CoreConfig(port=5070, prack=False), lambda n: "ab" * n)
    h.receive(invite_with("Require: 100rel"))
    assert h.last().code == 420 and h.last().headers["Unsupported"] == "100rel"
