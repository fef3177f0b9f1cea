"""RFC 4475 torture messages through the transaction layer and the user agent core.

Valid-but-strange messages parse and get their proper answer; invalid ones get 400
(or 416/505 where the RFC names a more precise code) or are dropped; nothing raises.
Each message is also reframed from a TCP byte stream, whole and byte by byte.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from sipmessage import Request, Response

from sip.auth_server import DigestServer
from sip.core import CoreConfig, InviteReceived, UserAgentCore
from sip.effects import CancelTimer, StartTimer, TimerKey, Transmit
from sip.framing import FramingError, StreamFramer
from sip.invite_session import IncomingCall
from sip.messages import parse
from sip.peer import Peer
from sip.registrar import Registrar
from sip.timers import TimerSettings

from . import messages as m

UDP = Peer("UDP", "192.0.2.77", 5060)
TCP = Peer("TCP", "192.0.2.77", 40000)
ANSWER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A core with the built-in registrar (optionally digest-protected) and a fake clock."""

    def __init__(self, *, digest: bool = False) -> None:
        counter = itertools.count(1)
        self.clock = Clock()
        self.registrar = Registrar(self.clock)
        server = None
        if digest:
            server = DigestServer(
                "example.com",
                lambda user: "secret" if user == "j.user" else None,
                key=b"k" * 32,
                clock=self.clock,
                random_hex=lambda n: "ab" * n,
            )
        self.core = UserAgentCore(
            CoreConfig(host="192.0.2.1", port=5060, timers=TimerSettings()),
            lambda n: f"{next(counter):0{2 * n}x}",
            digest=server,
            registrar=self.registrar,
        )
        self.timers: dict[TimerKey, float] = {}
        self.sent: list[tuple[Peer, bytes]] = []
        self.calls: list[IncomingCall] = []
        self.other: list[Any] = []

    def apply(self, effects: list[Any]) -> None:
        for effect in effects:
            match effect:
                case Transmit(peer, data):
                    self.sent.append((peer, data))
                case StartTimer(key, delay):
                    self.timers[key] = self.clock.now + delay
                case CancelTimer(key):
                    self.timers.pop(key, None)
                case InviteReceived(call):
                    self.calls.append(call)
                case _:
                    self.other.append(effect)

    def receive(self, data: bytes, peer: Peer = UDP) -> None:
        self.apply(self.core.receive(data, peer))

    def advance(self, seconds: float) -> None:
        target = self.clock.now + seconds
        while True:
            due = sorted((at, key) for key, at in self.timers.items() if at <= target)
            if not due:
                break
            at, key = due[0]
            del self.timers[key]
            self.clock.now = at
            self.apply(self.core.timer_fired(key))
        self.clock.now = target

    def responses(self) -> list[Response]:
        """Our responses, parsed (stateful ones must parse; stateless 4xx/5xx copy the
        request's broken header lines verbatim and are only checked for shape)."""
        out = []
        for _, data in self.sent:
            if data.startswith(b"SIP/2.0 4") or data.startswith(b"SIP/2.0 5"):
                try:
                    message = parse(data)
                except ValueError:
                    assert data.endswith(b"Content-Length: 0\r\n\r\n")
                    continue
            else:
                message = parse(data)
            assert isinstance(message, Response)
            out.append(message)
        return out

    def codes(self) -> list[int]:
        return [int(data.split(b" ", 2)[1]) for _, data in self.sent]


# name -> (message, the final status codes allowed; () = must be dropped silently)
VALID: dict[str, tuple[bytes, tuple[int, ...]]] = {
    "wsinv": (m.WSINV, (481,)),  # To tag of a dialog we do not have
    "intmeth": (m.INTMETH, (501,)),
    "esc01": (m.ESC01, (100,)),  # a new call, delivered
    "escnull": (m.ESCNULL, (200,)),
    "esc02": (m.ESC02, (501,)),
    "lwsdisp": (m.LWSDISP, (200,)),
    "longreq": (m.LONGREQ, (100,)),
    "dblreq": (m.DBLREQ, (200,)),  # the REGISTER; the INVITE after it is ignored
    "semiuri": (m.SEMIURI, (200,)),
    "transports": (m.TRANSPORTS, (200,)),
    "mpart01": (m.MPART01, (405,)),  # MESSAGE outside a dialog is not served
    "unreason": (m.UNREASON, ()),  # responses to nothing we sent
    "noreason": (m.NOREASON, ()),
    "badbranch": (m.BADBRANCH, (200,)),
    "unksm2": (m.UNKSM2, (400,)),  # To/From of non-SIP schemes: the registrar refuses
    "bext01": (m.BEXT01, (420,)),
    "invut": (m.INVUT, (415,)),
    "zeromf": (m.ZEROMF, (200,)),  # OPTIONS for us with Max-Forwards 0: we are the target
    "cparam01": (m.CPARAM01, (200,)),
    "cparam02": (m.CPARAM02, (200,)),
    # RFC 4475 wants it bound; sipmessage cannot parse a URI with headers: refused.
    "regescrt": (m.REGESCRT, (200, 400)),
    "sdp01": (m.SDP01, (406,)),
    "inv2543": (m.INV2543, (100,)),
    "baddate": (m.BADDATE, (100, 400)),  # RFC: reject 400 or ignore the Date
}

INVALID: dict[str, tuple[bytes, tuple[int, ...]]] = {
    "badinv01": (m.BADINV01, (400,)),
    "clerr": (m.CLERR, (400,)),
    "ncl": (m.NCL, (400,)),
    "scalar02": (m.SCALAR02, (400,)),
    "scalarlg": (m.SCALARLG, ()),
    "quotbal": (m.QUOTBAL, (400,)),
    "ltgtruri": (m.LTGTRURI, (400,)),
    "lwsruri": (m.LWSRURI, (400,)),
    "lwsstart": (m.LWSSTART, (400,)),
    "trws": (m.TRWS, (400,)),
    "escruri": (m.ESCRURI, (400,)),
    "regbadct": (m.REGBADCT, (400,)),
    "badaspec": (m.BADASPEC, (400,)),
    "baddn": (m.BADDN, (400,)),
    "badvers": (m.BADVERS, (505,)),
    "mismatch01": (m.MISMATCH01, (400,)),
    "mismatch02": (m.MISMATCH02, (400,)),
    "bigcode": (m.BIGCODE, ()),
    "insuf": (m.INSUF, ()),  # no From/To/Call-ID: no response can be built
    "unkscm": (m.UNKSCM, (416,)),
    "novelsc": (m.NOVELSC, (416,)),
    "multi01": (m.MULTI01, (400,)),
    "mcl01": (m.MCL01, (400,)),
    "bcast": (m.BCAST, ()),
}

ALL = {**VALID, **INVALID}


def _final_codes(h: Harness) -> list[int]:
    return [code for code in h.codes() if code >= 200 or code == 100]


@pytest.mark.parametrize("name", sorted(ALL))
def test_udp_datagram(name: str):
    data, allowed = ALL[name]
    h = Harness()
    h.receive(data)
    codes = _final_codes(h)
    if not allowed:
        assert h.sent == [] and h.calls == []
        return
    assert len(codes) == 1 and codes[0] in allowed, codes
    for response in h.responses():
        # Responses go back where the datagram came from, mirroring the mandatory headers.
        assert response.via and response.call_id and response.cseq
    assert all(peer == UDP for peer, _ in h.sent)
    if codes[0] == 100:
        assert len(h.calls) == 1
    else:
        assert h.calls == []
    # A retransmission is absorbed or re-answered identically, never handled twice.
    before = len(h.sent)
    h.receive(data)
    assert len(h.calls) <= 1
    assert all(d == h.sent[before - 1][1] for _, d in h.sent[before:])
    h.advance(64)  # every timer the message started runs out without error


@pytest.mark.parametrize("name", sorted(ALL))
def test_tcp_stream_whole_and_byte_by_byte(name: str):
    data, _ = ALL[name]
    for chunks in ([data + m.LWSDISP], [bytes([b]) for b in data + m.LWSDISP]):
        framer = StreamFramer()
        h = Harness()
        try:
            for chunk in chunks:
                for message in framer.feed(chunk):
                    h.receive(message, TCP)
        except FramingError:
            assert name in ("ncl", "clerr", "mcl01"), name
            continue
        h.responses()  # all parse
        if name not in ("clerr", "inv2543"):  # no Content-Length: on a stream the body
            # becomes the next "message" (inv2543), or it never ends (clerr).
            # The well-formed OPTIONS after the message is framed and answered.
            assert any(r.call_id.startswith("lwsdisp") for r in h.responses()), name


@pytest.mark.parametrize("name", ["esc01", "inv2543"])
def test_strange_invites_can_be_answered_and_confirmed(name: str):
    data, _ = VALID[name]
    h = Harness()
    h.receive(data)
    (call,) = h.calls
    assert call.sdp == m.SDP
    h.apply(h.core.answer(call.session_id, ANSWER))
    ok = h.responses()[-1]
    assert ok.code == 200 and ok.body == ANSWER
    assert ok.to_address.parameters.get("tag")
    request = parse(data)
    assert isinstance(request, Request)
    assert [(v.host, v.parameters.get("branch")) for v in ok.via] == [
        (v.host, v.parameters.get("branch")) for v in request.via
    ]
    assert ok.via[0].parameters["received"] == UDP.host
    if name == "inv2543":
        assert ok.headers.getlist("Record-Route") == request.headers.getlist("Record-Route")
    # The ACK (RFC 2543 style for inv2543: same Via, no branch) confirms the call.
    ack = (
        b"ACK sip:UserB@example.com SIP/2.0\r\n"
        if name == "inv2543"
        else b"ACK sip:sips%3Auser%40example.com@example.net SIP/2.0\r\n"
    )
    lines = [f"Via: {v}" for v in parse(data).headers.getlist("Via")]
    lines += [f"From: {request.headers['From']}", f"To: {ok.headers['To']}"]
    lines += [f"Call-ID: {request.call_id}", f"CSeq: {request.cseq.sequence} ACK"]
    ack += ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
    h.receive(ack)
    updates = [e for e in h.other if type(e).__name__ == "SessionUpdate"]
    assert [type(u.event).__name__ for u in updates] == ["Confirmed"]


def test_inv2543_cancel_matches_the_invite_without_branch():
    h = Harness()
    h.receive(m.INV2543)
    (call,) = h.calls
    request = parse(m.INV2543)
    cancel = m.msg(
        "CANCEL sip:UserB@example.com SIP/2.0",
        "Via: SIP/2.0/UDP iftgw.example.com",
        f"From: {request.headers['From']}",
        f"To: {request.headers['To']}",
        f"Call-ID: {request.call_id}",
        "CSeq: 56 CANCEL",
    )
    h.receive(cancel)
    assert h.codes()[-2:] == [200, 487]


def test_unreason_and_noreason_parse_with_their_phrases():
    unreason = parse(m.UNREASON)
    assert isinstance(unreason, Response) and unreason.code == 200
    assert unreason.phrase.startswith("= 2**3 * 5**2")
    noreason = parse(m.NOREASON)
    assert isinstance(noreason, Response) and noreason.code == 100 and noreason.phrase == ""


def test_wsinv_header_values_survive_the_whitespace():
    request = parse(m.WSINV)
    assert isinstance(request, Request)
    assert request.max_forwards == 68
    assert request.cseq.sequence == 9 and request.cseq.method == "INVITE"
    assert [v.host for v in request.via] == [
        "192.0.2.2",
        "spindle.example.com",
        "192.168.255.111",
    ]
    assert request.via[1].parameters["branch"] == "z9hG4bK9ikj8"
    assert request.from_address.parameters["tag"] == "98asjd8"
    assert request.to_address.parameters["tag"] == "1918181833n"
    assert request.body == m.SDP


def test_dblreq_extra_octets_are_discarded():
    request = parse(m.DBLREQ)
    assert isinstance(request, Request) and request.method == "REGISTER" and request.body == b""


def test_registrar_cases():
    h = Harness()
    h.receive(m.CPARAM01)
    h.advance(40)  # both carry the same branch: let the first transaction end
    h.receive(m.CPARAM02)
    # cparam01's ;unknownparam is a Contact header parameter, not part of the URI;
    # cparam02's is a URI parameter: two different bindings.
    assert sorted(h.registrar.lookup("watson")) == [
        "sip:+19725552222@gw1.example.net",
        "sip:+19725552222@gw1.example.net;unknownparam",
    ]


def test_bext01_names_the_unsupported_extension():
    h = Harness()
    h.receive(m.BEXT01)
    (response,) = h.responses()
    assert response.headers["Unsupported"] == "nothingSupportedHere"


def test_invut_and_sdp01_say_what_we_accept():
    for data in (m.INVUT, m.SDP01):
        h = Harness()
        h.receive(data)
        assert h.responses()[-1].headers["Accept"] == "application/sdp"


def test_regaut01_unknown_scheme_gets_a_digest_challenge():
    h = Harness(digest=True)
    h.receive(m.REGAUT01, TCP)
    (response,) = h.responses()
    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Digest ")
    assert h.registrar.lookup("j.user") == []


def test_insuf_over_udp_is_dropped_but_does_not_disturb_the_next_request():
    h = Harness()
    h.receive(m.INSUF)
    h.receive(m.LWSDISP)
    assert h.codes() == [200]


def test_multipart_invite_hands_over_the_sdp_part():
    body = (
        b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + m.SDP + b"\r\n"
        b"--b1\r\nContent-Type: application/isup;version=itu-t92+\r\n\r\n\x01\x02\r\n--b1--\r\n"
    )
    data = m.msg(
        "INVITE sip:user@example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKmp1",
        "From: <sip:caller@example.net>;tag=1",
        "To: <sip:user@example.com>",
        "Call-ID: multipart-sdp",
        "CSeq: 1 INVITE",
        "Max-Forwards: 70",
        "Contact: <sip:caller@192.0.2.9>",
        "Content-Type: multipart/mixed;boundary=b1",
        body=body,
    )
    h = Harness()
    h.receive(data)
    (call,) = h.calls
    assert call.sdp == m.SDP


def test_invite_with_max_forwards_zero_gets_483():
    data = m.LWSSTART.replace(b"INVITE  sip:user@example.com  SIP/2.0", b"INVITE sip:u@h SIP/2.0")
    data = data.replace(b"Max-Forwards: 8", b"Max-Forwards: 0")
    h = Harness()
    h.receive(data)
    assert h.codes() == [483] and h.calls == []
