"""In-dialog MESSAGE (RFC 3428) between two SIP parties the gateway joined itself (the
PBX refused the REFER of an attended transfer, DESIGN §3); calls to a SIP phone
registered over TCP reaching it through its registration connection (RFC 5626 style);
a call forked to every device of a number (several phones, phones and web clients).

The SIP phone is the project's own UserAgent registering with digest over TCP; its TCP
listener is closed once registered, so only the registration connection can reach it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from rtc.bridge import MediaBridge
from rtc.rtpleg import RtpLeg
from rtc.sources import TonePort
from sip.aio.useragent import InboundInvite, UAConfig, UserAgent
from sip.events import (
    Answered,
    Cancelled,
    Confirmed,
    MessageReceived,
    SessionEvent,
    Terminated,
)
from tests.audio import band_energy_ratio
from tests.e2e.client import JsonV1Client
from tests.e2e.conftest import free_port
from tests.e2e.test_calls import assert_tone
from tests.e2e.test_sip_media import RATE, audio_between, status_time
from tests.e2e.test_transfer import transfer

pytestmark = pytest.mark.e2e

T = TypeVar("T")


async def eventually(check: Callable[[], T], timeout: float = 5.0) -> T:
    """Poll `check` every 50 ms until it returns something true or `timeout` seconds have
    passed; its last result (the caller asserts on what it waited for)."""
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return result


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
        self.auto_answer = True  # else it only rings (180)

    def _on_invite(self, invite: InboundInvite) -> None:
        self.invites.append(invite)
        invite.defer_messages()  # answers MESSAGEs itself, with reply_code
        invite.set_event_handler(self._on_event)
        if self.auto_answer:
            invite.answer(_answer_sdp(self.rtp_port))
        else:
            invite.ringing()
        self.changed.set()

    async def _until(self, find: Callable[[], T | None], timeout: float) -> T:
        """What `find` finds, waiting for invites and events; TimeoutError after `timeout`."""

        async def wait() -> T:
            while (found := find()) is None:
                self.changed.clear()
                await self.changed.wait()
            return found

        return await asyncio.wait_for(wait(), timeout)

    async def wait_invite(self, timeout: float = 15.0) -> InboundInvite:
        return await self._until(lambda: self.invites[-1] if self.invites else None, timeout)

    def _on_event(self, event: SessionEvent) -> None:
        self.events.append(event)
        if isinstance(event, MessageReceived) and event.op:
            self.invites[-1].respond_message(event.op, self.reply_code)
        self.changed.set()

    async def wait_for(self, kind: type, timeout: float = 15.0) -> SessionEvent:
        return await self._until(
            lambda: next((e for e in self.events if isinstance(e, kind)), None), timeout
        )

    async def register(self, gateway, number: str, password: str) -> None:  # type: ignore[no-untyped-def]
        await self.ua.start()
        registrar = f"sip:127.0.0.1:{gateway.sip_port};transport=tcp"
        reg = self.ua.register(f"sip:{number}@127.0.0.1", registrar, (number, password))
        await eventually(lambda: reg.registered, 10.0)
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


async def test_call_forks_to_every_registered_phone_first_answer_wins(gateway, clients):  # type: ignore[no-untyped-def]
    ringing, answering = TcpPhone(), TcpPhone()
    ringing.auto_answer = answering.auto_answer = False
    try:
        await ringing.register(gateway, "1002", "bob-secret")
        await answering.register(gateway, "1002", "bob-secret")
        alice: JsonV1Client = await clients(gateway, name="alice")
        await alice.login("1001", "Alice")
        call = await alice.dial("1002", freq=1000.0)
        await ringing.wait_invite()
        invite = await answering.wait_invite()
        await call.wait_state("ringing", timeout=10)
        invite.answer(_answer_sdp(answering.rtp_port))
        await call.wait_state("active", timeout=20)
        assert await ringing.wait_for(Cancelled) == Cancelled()
        await call.hangup()
        assert await answering.wait_for(Terminated) == Terminated("bye")
    finally:
        await ringing.close()
        await answering.close()


async def test_call_forks_to_phone_and_web_client(gateway, clients):  # type: ignore[no-untyped-def]
    """Bob is logged in on the web and has a registered phone: both ring. The phone
    answers first: the web offer ends `notSelected`. The next call the web client takes:
    the phone gets CANCEL."""
    phone = TcpPhone()
    phone.auto_answer = False
    try:
        await phone.register(gateway, "1002", "bob-secret")
        alice: JsonV1Client = await clients(gateway, name="alice")
        await alice.login("1001", "Alice")
        bob: JsonV1Client = await clients(gateway, name="bob")
        await bob.login("1002", "Bob")

        first = await alice.dial("1002", freq=1000.0)
        offered = await bob.wait_incoming(timeout=15)
        invite = await phone.wait_invite()
        await offered.accept()
        invite.answer(_answer_sdp(phone.rtp_port))
        await first.wait_state("active", timeout=20)
        ended = await offered.wait_state("terminated", timeout=10)
        assert ended.get("reason") == "notSelected", ended
        await first.hangup()
        await first.wait_state("terminated", timeout=10)
        assert await phone.wait_for(Terminated) == Terminated("bye")

        phone.events.clear()
        second = await alice.dial("1002", freq=1000.0)
        offered = await bob.wait_incoming(timeout=15)
        await eventually(lambda: len(phone.invites) == 2)
        assert len(phone.invites) == 2
        await offered.accept()
        await offered.answer()
        await second.wait_state("active", timeout=20)
        assert await phone.wait_for(Cancelled) == Cancelled()
        await second.hangup()
        await second.wait_state("terminated", timeout=10)
    finally:
        await phone.close()


async def test_phone_calls_phone_through_the_gateway_with_messages(gateway):  # type: ignore[no-untyped-def]
    """1001 and 1002 are registered SIP phones (no web client logged in): 1001's call to
    1002 reaches 1002 through its registration connection; the gateway joins the two
    legs and relays MESSAGE both ways (body, Content-Type and the final status)."""
    caller, callee = TcpPhone(), TcpPhone()
    try:
        await caller.register(gateway, "1001", "alice-secret")
        await callee.register(gateway, "1002", "bob-secret")
        events: list[SessionEvent] = []
        outbound = caller.ua.invite(
            f"sip:1002@127.0.0.1:{gateway.sip_port};transport=tcp",
            from_user="1001",
            sdp=_answer_sdp(caller.rtp_port),
            on_event=events.append,
        )
        await callee.wait_for(Confirmed)
        await eventually(lambda: any(isinstance(e, Answered) for e in events))
        assert any(isinstance(e, Answered) for e in events), events

        results: list[int] = []
        outbound.message("text/plain;charset=utf-8", "Grüße".encode(), on_result=results.append)
        received = await callee.wait_for(MessageReceived)
        assert received == MessageReceived(
            "text/plain;charset=utf-8", "Grüße".encode(), received.op  # type: ignore[union-attr]
        )
        await eventually(lambda: results)
        assert results == [202]  # the callee's own answer, relayed

        callee.invites[-1].message("application/json", b'{"t":"hi"}', on_result=results.append)
        await eventually(lambda: len(results) == 2)
        assert results == [202, 200]
        assert MessageReceived("application/json", b'{"t":"hi"}') in events

        outbound.bye()
        assert await callee.wait_for(Terminated) == Terminated("bye")

        # the call is in the call records: direction "sip", 1001 -> 1002, answered
        from tests.e2e.test_login import call_records

        records = [r for r in await call_records(gateway, at_least=1) if r["direction"] == "sip"]
        assert len(records) == 1, records
        record = records[0]
        assert (record["remote_number"], record["local_number"]) == ("1001", "1002"), record
        assert record["answer_time"] is not None and record["end_time"] is not None, record
        assert (record["reason"], record["sip_code"]) == ("success", 200), record
        assert record["client_codec"] and record["far_codec"], record
    finally:
        await caller.close()
        await callee.close()


async def test_fork_relays_early_media_of_the_last_phone_ringing(gateway, clients):  # type: ignore[no-untyped-def]
    """Two phones ring; one is busy (486). The other, now the only one left, sends 183
    with a 1500 Hz tone: the caller hears that tone, not generated ringback, until the
    phone answers."""
    busy, early = TcpPhone(), TcpPhone()
    busy.auto_answer = early.auto_answer = False
    rtp: RtpLeg | None = None
    bridge: MediaBridge | None = None
    try:
        await busy.register(gateway, "1002", "bob-secret")
        await early.register(gateway, "1002", "bob-secret")
        alice: JsonV1Client = await clients(gateway, name="alice")
        await alice.login("1001", "Alice")
        call = await alice.dial("1002", freq=1000.0)
        (await busy.wait_invite()).reject(486)
        invite = await early.wait_invite()
        assert invite.sdp is not None
        base = free_port(tcp=False, span=10) & ~1
        rtp = await RtpLeg.open("127.0.0.1", base, base + 9)
        answer = rtp.create_answer(invite.sdp)
        bridge = MediaBridge(rtp)
        bridge.connect(TonePort(1500.0, rtp.sample_rate))
        await asyncio.sleep(0.5)
        invite.ringing(answer)  # 183 with SDP
        await call.wait_state("ringing", timeout=10)
        await asyncio.sleep(3.0)
        invite.answer(answer)
        await call.wait_state("active", timeout=10)
        ringing_at, active_at = status_time(call, "ringing"), status_time(call, "active")
        heard = audio_between(call, active_at - 2.0, active_at)
        assert_tone(heard, 1500.0, "the last ringing phone's early media")
        assert band_energy_ratio(heard, RATE, 440.0, 15.0) < 0.05, "ringback, not early media"
        assert active_at - ringing_at > 2.0
        await call.hangup()
        assert await early.wait_for(Terminated) == Terminated("bye")
    finally:
        if bridge is not None:
            await bridge.close()
        if rtp is not None:
            await rtp.close()
        await busy.close()
        await early.close()


async def test_message_to_a_web_users_call_is_taken_and_dropped_by_json_v1(gateway, sipp, clients):  # type: ignore[no-untyped-def]
    """json-v1 has no message vocabulary: a MESSAGE from the SIP far end of a web user's
    call gets 200 (pager mode), reaches the front end as a notification that json-v1 logs
    and drops; the client sees nothing unexpected and the call goes on."""
    far = sipp.scenario(
        "uas_message_to_web",
        "uas_message_to_web.xml",
        None,
        port=gateway.pbx_port,
        extra=["-rtp_echo"],
    )
    sipp.wait_bound(far, gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=1000.0)
    await call.wait_state("active", timeout=20)
    assert await far.wait(20) == 0, far.logs()[-3000:]  # the MESSAGE got its 200
    ended = await call.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "success", ended
    received = [item for _, direction, item in alice.log if direction == "<"]
    assert not [m for m in received if "Hello web" in str(m)], received
    assert "json-v1 cannot carry it" in gateway.log()


async def test_sip_call_forks_to_web_client_and_phone(gateway, sipp, clients):  # type: ignore[no-untyped-def]
    """A SIP call (sipp) to 1002, who is logged in on the web and has a registered phone:
    both ring. The phone answers first: the web offer ends `notSelected` and sipp talks
    to the phone (its BYE reaches the phone). The next call the web client answers:
    the phone gets CANCEL."""
    phone = TcpPhone()
    phone.auto_answer = False
    try:
        await phone.register(gateway, "1002", "bob-secret")
        bob: JsonV1Client = await clients(gateway, name="bob")
        await bob.login("1002", "Bob")

        uac = sipp.uac_echo(gateway.sip_target, "1002", port=gateway.pbx_port, duration_ms=2000)
        offered = await bob.wait_incoming(timeout=15)
        invite = await phone.wait_invite()
        await offered.accept()
        invite.answer(_answer_sdp(phone.rtp_port))
        ended = await offered.wait_state("terminated", timeout=10)
        assert ended.get("reason") == "notSelected", ended
        assert await uac.wait(20) == 0, uac.logs()[-3000:]
        assert await phone.wait_for(Terminated) == Terminated("bye")

        phone.events.clear()
        uac = sipp.uac_echo(gateway.sip_target, "1002", port=gateway.pbx_port, duration_ms=2000)
        offered = await bob.wait_incoming(timeout=15)
        await eventually(lambda: len(phone.invites) == 2)
        assert len(phone.invites) == 2
        await offered.accept()
        await offered.answer()
        await offered.wait_state("active", timeout=20)
        assert await phone.wait_for(Cancelled) == Cancelled()
        ended = await offered.wait_state("terminated", timeout=15)
        assert ended.get("reason") == "success", ended
        assert await uac.wait(20) == 0, uac.logs()[-3000:]
    finally:
        await phone.close()


async def test_call_to_a_phone_whose_connection_closed_fails_at_once(gateway, clients):  # type: ignore[no-untyped-def]
    """The phone's TCP registration connection is gone (its binding is not expired): the
    gateway does not dial the phone's ephemeral port; the call ends `notResponding` at once."""
    phone = TcpPhone()
    try:
        await phone.register(gateway, "1002", "bob-secret")
        await phone.ua._transport.close()  # the connection drops; no unREGISTER is sent
        alice: JsonV1Client = await clients(gateway, name="alice")
        await alice.login("1001", "Alice")
        started = asyncio.get_running_loop().time()
        call = await alice.dial("1002", freq=1000.0)
        ended = await call.wait_state("terminated", timeout=10)
        assert ended.get("reason") == "notResponding", ended
        assert asyncio.get_running_loop().time() - started < 5.0
        assert "flow to" in gateway.log() and "is closed" in gateway.log()
    finally:
        await phone.close()
