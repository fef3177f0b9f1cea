"""In-dialog MESSAGE (RFC 3428) between two SIP parties the gateway joined itself (the
PBX refused the REFER of an attended transfer, DESIGN §3), and calls to a SIP phone
registered over TCP reaching it through its registration connection (RFC 5626 style).

The SIP phone is the project's own UserAgent registering with digest over TCP; its TCP
listener is closed once registered, so only the registration connection can reach it."""

from __future__ import annotations

import asyncio

import pytest

from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import Confirmed, MessageReceived, SessionEvent, Terminated
from tests.e2e.client import JsonV1Client
from tests.e2e.conftest import free_port
from tests.e2e.test_transfer import transfer

pytestmark = pytest.mark.e2e


def _answer_sdp(port: int) -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    ).encode()


class TcpPhone:
    """A SIP phone registered over TCP whose listener is then closed."""

    def __init__(self) -> None:
        self.ua = UserAgent(UAConfig(port=0), self._on_invite)
        self.invites: list[InboundInvite] = []
        self.events: list[SessionEvent] = []
        self.changed = asyncio.Event()
        self.rtp_port = free_port(tcp=False)
        self.reply_code = 202  # to a MESSAGE

    def _on_invite(self, invite: InboundInvite) -> None:
        self.invites.append(invite)
        invite.defer_messages()  # answers MESSAGEs itself, with reply_code
        invite.set_event_handler(self._on_event)
        invite.answer(_answer_sdp(self.rtp_port))

    def _on_event(self, event: SessionEvent) -> None:
        self.events.append(event)
        if isinstance(event, MessageReceived) and event.op:
            self.invites[-1].respond_message(event.op, self.reply_code)
        self.changed.set()

    async def wait_for(self, kind: type, timeout: float = 15.0) -> SessionEvent:
        async def wait() -> SessionEvent:
            while True:
                for event in self.events:
                    if isinstance(event, kind):
                        return event
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def register(self, gateway, number: str, password: str) -> None:  # type: ignore[no-untyped-def]
        await self.ua.start()
        registrar = f"sip:127.0.0.1:{gateway.sip_port};transport=tcp"
        reg = self.ua.register(f"sip:{number}@127.0.0.1", registrar, (number, password))
        for _ in range(200):
            if reg.registered:
                break
            await asyncio.sleep(0.05)
        assert reg.registered, (reg.state, reg.code)
        server = self.ua._transport._server
        assert server is not None
        server.close()  # from now on only the registration's connection reaches us

    async def close(self) -> None:
        await self.ua.close()


async def test_web_user_reaches_a_tcp_phone_through_its_registration_connection(
    gateway, clients
):  # type: ignore[no-untyped-def]
    phone = TcpPhone()
    try:
        await phone.register(gateway, "1002", "bob-secret")
        alice: JsonV1Client = await clients(gateway, name="alice")
        await alice.login("1001", "Alice")
        call = await alice.dial("1002", freq=1000.0)
        await call.wait_state("active", timeout=20)
        await phone.wait_for(Confirmed)
        await call.hangup()
        await call.wait_state("terminated", timeout=10)
        # The BYE came over the registration connection too.
        assert await phone.wait_for(Terminated) == Terminated("bye")
    finally:
        await phone.close()


async def test_message_between_two_joined_sip_parties(gateway, sipp, clients):  # type: ignore[no-untyped-def]
    """Alice transfers a sipp call (which refuses REFER) to a SIP phone: the gateway joins
    the two SIP legs, then relays MESSAGE both ways with Content-Type and body intact and
    the recipient's final response (202 from the phone) back to the sender."""
    far = sipp.scenario(
        "uas_refer_refuse_message",
        "uas_refer_refuse_message.xml",
        None,
        port=gateway.pbx_port,
        extra=["-rtp_echo"],
    )
    sipp.wait_bound(far, gateway.pbx_port)
    phone = TcpPhone()
    try:
        await phone.register(gateway, "1002", "bob-secret")
        alice: JsonV1Client = await clients(gateway, name="alice")
        await alice.login("1001", "Alice")
        to_sipp = await alice.dial("5555", freq=1000.0)
        await to_sipp.wait_state("active", timeout=20)
        to_phone = await alice.dial("1002", freq=1000.0)
        await to_phone.wait_state("active", timeout=20)

        await transfer(to_sipp, transferIdentifier=to_phone.identifier)
        for call in (to_sipp, to_phone):
            ended = await call.wait_state("terminated", timeout=15)
            assert ended.get("reason") == "redirected", ended

        message = await phone.wait_for(MessageReceived)
        assert isinstance(message, MessageReceived)
        assert message.content_type.replace(" ", "").lower() == "text/plain;charset=utf-8"
        assert message.body.strip() == b"Hello from sipp"
        results: list[int] = []
        phone.invites[-1].message(
            "text/plain", b"Hello sipp, this is 1002", on_result=results.append
        )
        # sipp checks the body and Content-Type, answers 200, then hangs up.
        assert await far.wait(30) == 0, far.logs()[-3000:]
        assert results == [200]
        assert await phone.wait_for(Terminated) == Terminated("bye")
    finally:
        await phone.close()
