"""The sans-I/O user agent core with a fake clock and deterministic randomness."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sipmessage import Request, Response

from sip import events
from sip.core import CoreConfig, InviteReceived, SessionUpdate, UserAgentCore
from sip.effects import CancelTimer, StartTimer, TimerKey, Transmit
from sip.invite_session import IncomingCall
from sip.messages import parse
from sip.peer import Peer
from sip.timers import TimerSettings

PHONE = Peer("UDP", "127.0.0.1", 5080)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


class CoreHarness:
    def __init__(self) -> None:
        counter = itertools.count(1)
        self.core = UserAgentCore(
            CoreConfig(host="127.0.0.1", port=5070, user_agent="test-ua", timers=TimerSettings()),
            lambda n: f"{next(counter):0{2 * n}x}",
        )
        self.now = 0.0
        self.timers: dict[TimerKey, float] = {}
        self.sent: list[tuple[float, Peer, bytes]] = []
        self.updates: list[tuple[str, events.SessionEvent]] = []
        self.calls: list[IncomingCall] = []

    def apply(self, effects: list[Any]) -> None:
        for effect in effects:
            match effect:
                case Transmit(peer, data):
                    self.sent.append((round(self.now, 6), peer, data))
                case StartTimer(key, delay):
                    self.timers[key] = self.now + delay
                case CancelTimer(key):
                    self.timers.pop(key, None)
                case SessionUpdate(sid, event):
                    self.updates.append((sid, event))
                case InviteReceived(call):
                    self.calls.append(call)

    def receive(self, data: bytes, peer: Peer = PHONE) -> None:
        self.apply(self.core.receive(data, peer))

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            due = [(at, key) for key, at in self.timers.items() if at <= target + 1e-9]
            if not due:
                break
            at, key = min(due)
            del self.timers[key]
            self.now = at
            self.apply(self.core.timer_fired(key))
        self.now = target

    def messages(self) -> list[Request | Response]:
        return [parse(data) for _, _, data in self.sent]

    def last(self) -> Any:
        return parse(self.sent[-1][2])

    def events(self) -> list[events.SessionEvent]:
        return [event for _, event in self.updates]


def respond_to(
    request: Request,
    code: int,
    phrase: str,
    *,
    tag: str = "remote1",
    body: bytes = b"",
    contact: str = "<sip:bob@127.0.0.1:5080>",
) -> bytes:
    lines = [f"SIP/2.0 {code} {phrase}"]
    lines += [f"Via: {v}" for v in request.headers.getlist("Via")]
    lines.append(f"From: {request.headers['From']}")
    to = request.headers["To"] + (f";tag={tag}" if code > 100 else "")
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {request.call_id}")
    lines.append(f"CSeq: {request.headers['CSeq']}")
    if 100 < code < 300:
        lines.append(f"Contact: {contact}")
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- UAC ----------------------------------------------------------------------------------


def start_call(h: CoreHarness, target: str = "sip:1234@127.0.0.1:5080") -> tuple[str, Request]:
    sid, effects = h.core.invite(target, from_user="alice", from_display="Alice", sdp=SDP)
    h.apply(effects)
    invite = h.last()
    assert isinstance(invite, Request)
    return sid, invite


def test_invite_headers():
    h = CoreHarness()
    sid, invite = start_call(h)
    assert invite.method == "INVITE"
    assert str(invite.uri) == "sip:1234@127.0.0.1:5080"
    assert invite.max_forwards == 70
    via = invite.via[0]
    assert via.transport == "UDP" and via.port == 5070
    assert via.parameters["branch"].startswith("z9hG4bK") and "rport" in via.parameters
    assert invite.headers["Contact"] == "<sip:alice@127.0.0.1:5070>"
    assert invite.headers["User-Agent"] == "test-ua"
    assert invite.headers["Content-Type"] == "application/sdp"
    assert invite.body == SDP
    assert invite.from_address.name == "Alice"
    assert len(invite.from_address.parameters["tag"] or "") >= 8
    assert len(invite.call_id) >= 16 and invite.call_id == sid
    assert h.sent[-1][1] == PHONE


def test_invite_over_tcp_has_tcp_contact_and_no_retransmissions():
    h = CoreHarness()
    _, invite = start_call(h, "sip:1234@127.0.0.1:5080;transport=tcp")
    assert invite.via[0].transport == "TCP"
    assert invite.headers["Contact"] == "<sip:alice@127.0.0.1:5070;transport=tcp>"
    assert h.sent[-1][1] == Peer("TCP", "127.0.0.1", 5080)
    h.advance(10)
    assert len(h.sent) == 1


def test_2xx_is_acked_by_the_dialog_and_reacked_on_retransmission():
    h = CoreHarness()
    sid, invite = start_call(h)
    h.receive(respond_to(invite, 100, "Trying"))
    h.receive(respond_to(invite, 180, "Ringing"))
    ok = respond_to(invite, 200, "OK", body=SDP, contact="<sip:bob@127.0.0.1:5090>")
    h.receive(ok)
    assert h.events() == [events.Provisional(180, "Ringing", None), events.Answered(SDP)]
    ack = h.last()
    assert ack.method == "ACK"
    assert ack.cseq.sequence == invite.cseq.sequence
    assert ack.via[0].parameters["branch"] != invite.via[0].parameters["branch"]
    assert str(ack.uri) == "sip:bob@127.0.0.1:5090"
    assert h.sent[-1][1] == Peer("UDP", "127.0.0.1", 5090)
    h.receive(ok)  # lost ACK: the 2xx comes again
    assert h.sent[-1][2] == h.sent[-2][2]
    h.advance(40)  # after Timer M the 2xx no longer matches a transaction...
    h.receive(ok)
    assert h.last().method == "ACK"  # ...but is still re-ACKed by the dialog
    assert len(h.events()) == 2


def test_bye_from_uac():
    h = CoreHarness()
    sid, invite = start_call(h)
    h.receive(respond_to(invite, 200, "OK"))
    h.apply(h.core.bye(sid))
    bye = h.last()
    assert bye.method == "BYE" and bye.cseq.sequence == invite.cseq.sequence + 1
    h.receive(respond_to(bye, 200, "OK"))
    h.apply(h.core.bye(sid))  # no-op once ended
    assert h.last().method == "BYE" and len([m for m in h.messages() if m.method == "BYE"]) == 1


def test_cancel_waits_for_provisional_then_487():
    h = CoreHarness()
    sid, invite = start_call(h)
    h.apply(h.core.cancel(sid))
    assert h.last().method == "INVITE"
    h.receive(respond_to(invite, 100, "Trying"))
    assert h.last().method == "INVITE"  # 100 does not count (RFC 3261 §9.1 needs a 1xx)
    h.receive(respond_to(invite, 180, "Ringing"))
    cancel = h.last()
    assert cancel.method == "CANCEL"
    assert cancel.via[0].parameters["branch"] == invite.via[0].parameters["branch"]
    assert cancel.cseq.sequence == invite.cseq.sequence
    assert cancel.headers["To"] == invite.headers["To"]
    h.receive(respond_to(cancel, 200, "OK"))
    h.receive(respond_to(invite, 487, "Request Terminated"))
    assert h.last().method == "ACK"
    assert h.events() == [events.Rejected(487, "Request Terminated")]


def test_200_after_cancel_is_acked_and_byed():
    h = CoreHarness()
    sid, invite = start_call(h)
    h.receive(respond_to(invite, 180, "Ringing"))
    h.apply(h.core.cancel(sid))
    h.receive(respond_to(invite, 200, "OK"))
    methods = [m.method for m in h.messages() if isinstance(m, Request)]
    assert methods == ["INVITE", "CANCEL", "ACK", "BYE"]
    assert h.events()[-1] == events.Rejected(487, "Request Terminated")
    assert not any(isinstance(e, events.Answered) for e in h.events())


def test_timer_b_gives_408():
    h = CoreHarness()
    start_call(h)
    h.advance(32)
    assert h.events() == [events.Rejected(408, "Request Timeout")]


def test_transport_error_gives_503():
    h = CoreHarness()
    start_call(h)
    h.apply(h.core.transport_error(PHONE))
    assert h.events() == [events.Rejected(503, "Service Unavailable")]


def test_digest_retry_once_with_same_call_id():
    h = CoreHarness()
    sid, effects = h.core.invite(
        "sip:1234@127.0.0.1:5080", from_user="alice", sdp=SDP, credentials=("alice", "pw")
    )
    h.apply(effects)
    invite = h.last()
    challenge = respond_to(invite, 407, "Proxy Authentication Required").replace(
        b"Content-Length",
        b'Proxy-Authenticate: Digest realm="r", nonce="n", qop="auth"\r\nContent-Length',
    )
    h.receive(challenge)
    retry = h.last()
    assert retry.method == "INVITE"
    assert retry.call_id == invite.call_id
    assert retry.cseq.sequence == invite.cseq.sequence + 1
    assert retry.from_address == invite.from_address
    assert retry.headers["Proxy-Authorization"].startswith('Digest username="alice"')
    h.receive(
        respond_to(retry, 407, "Proxy Authentication Required").replace(
            b"Content-Length", b'Proxy-Authenticate: Digest realm="r", nonce="n2"\r\nContent-Length'
        )
    )
    assert h.events() == [events.Rejected(407, "Proxy Authentication Required")]


# -- UAS ----------------------------------------------------------------------------------

INVITE = (
    b"INVITE sip:5555@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKphone1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Bob" <sip:bob@127.0.0.1:5080>;tag=phone\r\n'
    b"To: <sip:5555@127.0.0.1:5070>\r\n"
    b"Call-ID: incoming-1\r\n"
    b"CSeq: 10 INVITE\r\n"
    b"Contact: <sip:bob@127.0.0.1:5080>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def in_dialog(method: str, cseq: int, to_tag: str, branch: str) -> bytes:
    return (
        f"{method} sip:5555@127.0.0.1:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Bob" <sip:bob@127.0.0.1:5080>;tag=phone\r\n'
        f"To: <sip:5555@127.0.0.1:5070>;tag={to_tag}\r\n"
        "Call-ID: incoming-1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def incoming(h: CoreHarness) -> IncomingCall:
    h.receive(INVITE)
    trying = h.last()
    assert trying.code == 100 and trying.to_address.parameters.get("tag") is None
    assert trying.via[0].parameters["received"] == "127.0.0.1"
    assert trying.via[0].parameters["rport"] == "5080"
    (call,) = h.calls
    assert (call.request_user, call.caller_user, call.caller_display) == ("5555", "bob", "Bob")
    assert call.sdp == SDP and call.call_id == "incoming-1" and call.source == PHONE
    return call


def test_retransmitted_invite_is_absorbed():
    h = CoreHarness()
    call = incoming(h)
    h.apply(h.core.ringing(call.session_id))
    h.receive(INVITE)
    assert len(h.calls) == 1
    assert [m.code for m in h.messages()] == [100, 180, 180]
    ringing = h.last()
    assert ringing.headers["Contact"] == "<sip:5555@127.0.0.1:5070>"
    assert ringing.headers["Server"] == "test-ua"


def test_2xx_retransmitted_until_ack():
    h = CoreHarness()
    call = incoming(h)
    h.apply(h.core.answer(call.session_id, SDP))
    ok = h.last()
    assert ok.code == 200 and ok.body == SDP and ok.headers["Content-Type"] == "application/sdp"
    tag = ok.to_address.parameters["tag"]
    h.advance(8)
    assert [t for t, _, d in h.sent if d.startswith(b"SIP/2.0 200")] == [0, 0.5, 1.5, 3.5, 7.5]
    h.receive(in_dialog("ACK", 10, tag, "z9hG4bKack1"))
    assert h.events() == [events.Confirmed()]
    h.advance(60)
    assert len([1 for _, _, d in h.sent if d.startswith(b"SIP/2.0 200")]) == 5
    h.receive(in_dialog("BYE", 11, tag, "z9hG4bKbye1"))
    assert h.last().code == 200
    assert h.events() == [events.Confirmed(), events.Terminated("bye")]


def test_no_ack_terminates_with_timeout_and_bye():
    h = CoreHarness()
    call = incoming(h)
    h.apply(h.core.answer(call.session_id, SDP))
    h.advance(31.9)
    times = [t for t, _, d in h.sent if d.startswith(b"SIP/2.0 200")]
    assert times == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    h.advance(0.1)
    assert h.events() == [events.Terminated("timeout")]
    bye = h.last()
    assert bye.method == "BYE" and str(bye.uri) == "sip:bob@127.0.0.1:5080"


def test_incoming_cancel():
    h = CoreHarness()
    call = incoming(h)
    h.apply(h.core.ringing(call.session_id))
    cancel = INVITE.split(b"\r\n\r\n")[0].replace(b"INVITE", b"CANCEL") + b"\r\n\r\n"
    cancel = cancel.replace(b"Content-Length: " + str(len(SDP)).encode(), b"Content-Length: 0")
    h.receive(cancel)
    codes = [(m.code, m.cseq.method) for m in h.messages()[-2:]]
    assert codes == [(200, "CANCEL"), (487, "INVITE")]
    assert h.events() == [events.Cancelled()]
    h.apply(h.core.answer(call.session_id, SDP))  # too late: ignored
    assert h.last().code == 487


def test_reject_and_unknown_cancel():
    h = CoreHarness()
    call = incoming(h)
    with pytest.raises(ValueError):
        h.core.reject(call.session_id, 200)
    h.apply(h.core.reject(call.session_id, 486))
    assert h.last().code == 486
    unknown = in_dialog("CANCEL", 1, "x", "z9hG4bKnomatch").replace(b";tag=x", b"")
    h.receive(unknown)
    assert h.last().code == 481


def test_reinvite_answered_with_current_sdp():
    h = CoreHarness()
    call = incoming(h)
    h.apply(h.core.answer(call.session_id, SDP))
    tag = h.last().to_address.parameters["tag"]
    h.receive(in_dialog("ACK", 10, tag, "z9hG4bKack1"))
    h.receive(in_dialog("INVITE", 11, tag, "z9hG4bKre1"))
    assert h.last().code == 200 and h.last().body == SDP
    h.receive(in_dialog("INFO", 11, tag, "z9hG4bKinfo"))
    assert h.last().code == 500  # CSeq did not increase


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (in_dialog("BYE", 5, "unknown", "z9hG4bKb1"), 481),
        (in_dialog("NOTIFY", 5, "unknown", "z9hG4bKb2"), 481),
        (INVITE.replace(b"CSeq: 10 INVITE", b"CSeq: ten INVITE"), 400),
        (INVITE.replace(b"To: <sip", b"To: <<bad"), 400),
        (
            INVITE.replace(b"Require", b"X").replace(
                b"Max-Forwards", b"Require: foo\r\nMax-Forwards"
            ),
            420,
        ),
    ],
)
def test_error_responses(data: bytes, expected: int):
    h = CoreHarness()
    h.receive(data)
    assert h.sent[-1][2].startswith(f"SIP/2.0 {expected} ".encode())
    assert h.calls == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"\xff\xfe\r\n\r\n",
        b"SIP/2.0 200 OK\r\nbroken\r\n\r\n",
        b"ACK x SIP/2.0\r\n\r\n",
    ],
)
def test_garbage_is_dropped(data: bytes):
    h = CoreHarness()
    h.receive(data)
    assert h.sent == [] and h.calls == []


def test_malformed_contact_does_not_break_answer():
    h = CoreHarness()
    h.receive(INVITE.replace(b"Contact: <sip:bob@127.0.0.1:5080>", b"Contact: <<<"))
    (call,) = h.calls
    h.apply(h.core.answer(call.session_id, SDP))
    assert h.last().code == 200
    h.apply(h.core.bye(call.session_id))
    bye = h.last()
    assert bye.method == "BYE" and str(bye.uri) == "sip:bob@127.0.0.1:5080"  # From URI fallback


def test_merged_request_gets_482():
    h = CoreHarness()
    incoming(h)
    h.receive(INVITE.replace(b"z9hG4bKphone1", b"z9hG4bKphone2"))
    assert h.last().code == 482
    assert len(h.calls) == 1


def test_unanswered_bye_reports_timeout_once():
    h = CoreHarness()
    sid, invite = start_call(h)
    h.receive(respond_to(invite, 200, "OK"))
    h.apply(h.core.bye(sid))
    h.advance(32)
    assert h.events() == [events.Answered(None), events.Terminated("timeout")]
    h.advance(100)
    assert sid not in h.core.sessions


def test_uas_timeout_bye_unanswered_reports_once():
    h = CoreHarness()
    call = incoming(h)
    h.apply(h.core.answer(call.session_id, SDP))
    h.advance(100)
    assert h.events() == [events.Terminated("timeout")]
