"""Two UserAgents on loopback calling each other over UDP and TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from sipmessage import AuthChallenge, AuthParameters, Request

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.auth import check_credentials
from sip.events import (
    Answered,
    Cancelled,
    Confirmed,
    Provisional,
    Rejected,
    SessionEvent,
    Terminated,
)
from sip.messages import encode, make_response, parse

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
)
ANSWER = OFFER.replace(b"4000", b"4002")
FAST = dict(t1=0.05, t2=0.4, t4=0.5)


class Recorder:
    """Collects session events and lets a test wait for one of a given type."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: SessionEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, kind: type, timeout: float = 5.0) -> SessionEvent:
        async def _wait() -> SessionEvent:
            while True:
                for event in self.events:
                    if isinstance(event, kind):
                        return event
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(_wait(), timeout)


class Callee:
    def __init__(self, behaviour: Callable[[InboundInvite], None] | None = None) -> None:
        self.invites: list[InboundInvite] = []
        self.recorder = Recorder()
        self.behaviour = behaviour
        self._arrived = asyncio.Event()

    def __call__(self, invite: InboundInvite) -> None:
        invite.set_event_handler(self.recorder)
        self.invites.append(invite)
        self._arrived.set()
        if self.behaviour:
            self.behaviour(invite)

    async def next_invite(self) -> InboundInvite:
        await asyncio.wait_for(self._arrived.wait(), 5)
        return self.invites[-1]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[UserAgent, UserAgent, Callee]]:
    callee = Callee()
    a = UserAgent(UAConfig(port=0, user_agent="ua-a", **FAST), lambda inv: inv.reject(603))
    b = UserAgent(UAConfig(port=0, user_agent="ua-b", **FAST), callee)
    await a.start()
    await b.start()
    yield a, b, callee
    await a.close()
    await b.close()


def target(ua: UserAgent, transport: str, user: str = "1234") -> str:
    suffix = ";transport=tcp" if transport == "tcp" else ""
    return f"sip:{user}@127.0.0.1:{ua.port}{suffix}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_call_ringing_answer_bye(pair: tuple[UserAgent, UserAgent, Callee], transport: str):
    a, b, callee = pair
    caller = Recorder()
    call = a.invite(
        target(b, transport), from_user="alice", from_display="Alice A", sdp=OFFER, on_event=caller
    )
    inbound = await callee.next_invite()
    assert inbound.request_user == "1234"
    assert inbound.caller_user == "alice"
    assert inbound.caller_display == "Alice A"
    assert inbound.sdp == OFFER
    assert inbound.call_id == call.call_id
    assert inbound.source[0] == "127.0.0.1"

    inbound.ringing()
    ringing = await caller.wait_for(Provisional)
    assert ringing == Provisional(180, "Ringing", None)

    inbound.answer(ANSWER)
    answered = await caller.wait_for(Answered)
    assert answered == Answered(ANSWER)
    await callee.recorder.wait_for(Confirmed)

    call.bye()
    assert await callee.recorder.wait_for(Terminated) == Terminated("bye")
    await asyncio.sleep(0.2)
    assert not any(isinstance(e, Terminated) for e in caller.events)
    assert callee.recorder.events == [Confirmed(), Terminated("bye")]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_callee_hangs_up(pair: tuple[UserAgent, UserAgent, Callee], transport: str):
    a, b, callee = pair
    caller = Recorder()
    a.invite(target(b, transport), from_user="alice", sdp=OFFER, on_event=caller)
    inbound = await callee.next_invite()
    inbound.answer(ANSWER)
    await callee.recorder.wait_for(Confirmed)
    inbound.bye()
    assert await caller.wait_for(Terminated) == Terminated("bye")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_cancel_before_answer(pair: tuple[UserAgent, UserAgent, Callee], transport: str):
    a, b, callee = pair
    caller = Recorder()
    call = a.invite(target(b, transport), from_user="alice", sdp=OFFER, on_event=caller)
    inbound = await callee.next_invite()
    inbound.ringing(ANSWER)
    assert await caller.wait_for(Provisional) == Provisional(183, "Session Progress", ANSWER)
    call.cancel()
    assert await callee.recorder.wait_for(Cancelled) == Cancelled()
    assert await caller.wait_for(Rejected) == Rejected(487, "Request Terminated")


async def test_cancel_waits_for_provisional(pair: tuple[UserAgent, UserAgent, Callee]):
    a, b, callee = pair
    caller = Recorder()
    call = a.invite(target(b, "udp"), from_user="alice", sdp=OFFER, on_event=caller)
    # Cancelled before anything but 100 Trying arrived: the CANCEL waits for the 180.
    call.cancel()
    inbound = await callee.next_invite()
    await asyncio.sleep(0.1)
    assert callee.recorder.events == []
    inbound.ringing()
    assert await callee.recorder.wait_for(Cancelled) == Cancelled()
    assert await caller.wait_for(Rejected) == Rejected(487, "Request Terminated")
    assert not any(isinstance(e, Provisional) for e in caller.events)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_reject_busy(pair: tuple[UserAgent, UserAgent, Callee], transport: str):
    a, b, callee = pair
    caller = Recorder()
    a.invite(target(b, transport), from_user="alice", sdp=OFFER, on_event=caller)
    inbound = await callee.next_invite()
    inbound.reject(486)
    assert await caller.wait_for(Rejected) == Rejected(486, "Busy Here")


async def test_no_ack_times_out_and_sends_bye(pair: tuple[UserAgent, UserAgent, Callee]):
    """A callee whose ACKs are lost: Terminated("timeout") after 64*T1, and a BYE."""
    a, b, callee = pair
    caller = Recorder()
    original = b._core.receive

    def drop_acks(data: bytes, peer):  # type: ignore[no-untyped-def]
        if data.startswith(b"ACK "):
            return []
        return original(data, peer)

    b._core.receive = drop_acks  # type: ignore[method-assign]
    a.invite(target(b, "udp"), from_user="alice", sdp=OFFER, on_event=caller)
    inbound = await callee.next_invite()
    inbound.answer(ANSWER)
    await caller.wait_for(Answered)
    assert await callee.recorder.wait_for(Terminated, timeout=10) == Terminated("timeout")
    assert await caller.wait_for(Terminated, timeout=5) == Terminated("bye")


async def test_timer_b_rejects_408():
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    port = silent[0].get_extra_info("sockname")[1]
    ua = UserAgent(UAConfig(port=0, t1=0.02, t2=0.1, t4=0.1), lambda inv: None)
    await ua.start()
    try:
        caller = Recorder()
        ua.invite(f"sip:x@127.0.0.1:{port}", from_user="a", sdp=OFFER, on_event=caller)
        assert await caller.wait_for(Rejected, timeout=5) == Rejected(408, "Request Timeout")
    finally:
        await ua.close()
        silent[0].close()


async def test_options_and_unknown_methods(pair: tuple[UserAgent, UserAgent, Callee]):
    _, b, _ = pair
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            received.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]

    def request(method: str, extra: str = "") -> bytes:
        return (
            f"{method} sip:1234@127.0.0.1:{b.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{method}1;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:x@127.0.0.1>;tag=1\r\n"
            f"To: <sip:1234@127.0.0.1>{extra}\r\nCall-ID: c-{method}\r\n"
            f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        ).encode()

    try:
        transport.sendto(request("OPTIONS"), ("127.0.0.1", b.port))
        reply = parse(await asyncio.wait_for(received.get(), 2))
        assert reply.code == 200 and "INVITE" in (reply.headers.get("Allow") or "")
        transport.sendto(request("FOO"), ("127.0.0.1", b.port))
        assert parse(await asyncio.wait_for(received.get(), 2)).code == 501
        transport.sendto(request("SUBSCRIBE"), ("127.0.0.1", b.port))
        assert parse(await asyncio.wait_for(received.get(), 2)).code == 405
        transport.sendto(request("BYE", ";tag=nope"), ("127.0.0.1", b.port))
        assert parse(await asyncio.wait_for(received.get(), 2)).code == 481
        transport.sendto(
            b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:"
            + str(port).encode()
            + b";branch=z9hG4bKbad\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
            b"Call-ID: bad\r\nCSeq: one INVITE\r\n\r\n",
            ("127.0.0.1", b.port),
        )
        bad = await asyncio.wait_for(received.get(), 2)
        assert bad.startswith(b"SIP/2.0 400 Bad Request\r\n")
        assert b"Call-ID: bad\r\n" in bad
    finally:
        transport.close()


class ChallengingUAS(asyncio.DatagramProtocol):
    """Answers INVITE with a 401 digest challenge, then 200 once the credentials check."""

    realm = "gateway.test"
    nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093"

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.invites: list[Request] = []
        self.authorized = asyncio.Event()
        self.bye = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        message = parse(data)
        assert isinstance(message, Request)
        assert self.transport is not None
        if message.method == "INVITE":
            self.invites.append(message)
            credentials = message.authorization
            if credentials is None:
                response = make_response(message, 401, to_tag="uas1")
                response.www_authenticate = AuthChallenge(
                    "Digest",
                    AuthParameters(realm=self.realm, nonce=self.nonce, qop="auth", algorithm="MD5"),
                )
            elif check_credentials(
                credentials, method="INVITE", password="secret", realm=self.realm, nonce=self.nonce
            ):
                self.authorized.set()
                response = make_response(
                    message, 200, to_tag="uas2", body=ANSWER, content_type="application/sdp"
                )
                response.headers.set("Contact", f"<sip:uas@127.0.0.1:{self.port}>")
            else:
                response = make_response(message, 403, to_tag="uas3")
            self.transport.sendto(encode(response), addr)
        elif message.method == "BYE":
            self.transport.sendto(encode(make_response(message, 200)), addr)
            self.bye.set()

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


async def test_digest_retry():
    loop = asyncio.get_running_loop()
    _, uas = await loop.create_datagram_endpoint(ChallengingUAS, local_addr=("127.0.0.1", 0))
    ua = UserAgent(UAConfig(port=0, **FAST), lambda inv: None)
    await ua.start()
    try:
        caller = Recorder()
        call = ua.invite(
            f"sip:1234@127.0.0.1:{uas.port}",
            from_user="alice",
            sdp=OFFER,
            credentials=("alice", "secret"),
            on_event=caller,
        )
        assert await caller.wait_for(Answered) == Answered(ANSWER)
        first, second = uas.invites
        assert first.call_id == second.call_id
        assert second.cseq.sequence == first.cseq.sequence + 1
        assert first.via[0].parameters["branch"] != second.via[0].parameters["branch"]
        header = second.headers["Authorization"]
        assert "qop=auth" in header and "nc=00000001" in header
        call.bye()
        await asyncio.wait_for(uas.bye.wait(), 2)
    finally:
        await ua.close()
        assert uas.transport is not None
        uas.transport.close()


async def test_digest_wrong_password_rejected_once():
    loop = asyncio.get_running_loop()
    _, uas = await loop.create_datagram_endpoint(ChallengingUAS, local_addr=("127.0.0.1", 0))
    ua = UserAgent(UAConfig(port=0, **FAST), lambda inv: None)
    await ua.start()
    try:
        caller = Recorder()
        ua.invite(
            f"sip:1234@127.0.0.1:{uas.port}",
            from_user="alice",
            sdp=OFFER,
            credentials=("alice", "wrong"),
            on_event=caller,
        )
        assert await caller.wait_for(Rejected) == Rejected(403, "Forbidden")
        assert len(uas.invites) == 2
    finally:
        await ua.close()
        assert uas.transport is not None
        uas.transport.close()


@pytest.mark.parametrize("bad", ["not a uri", "tel:+1234", "sip:"])
async def test_bad_target_is_rejected_not_raised(bad: str):
    ua = UserAgent(UAConfig(port=0), lambda inv: None)
    await ua.start()
    try:
        caller = Recorder()
        call = ua.invite(bad, from_user="a", sdp=None, on_event=caller)
        assert await caller.wait_for(Rejected) == Rejected(416, "Unsupported URI Scheme")
        call.cancel()
        call.bye()
    finally:
        await ua.close()
