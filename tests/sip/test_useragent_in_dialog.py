"""Two UserAgents on loopback: hold/resume re-INVITEs both ways, glare, INFO, MESSAGE, REFER."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sip.aio.useragent import InboundInvite, OutboundInvite, UAConfig, UserAgent
from sip.events import Confirmed, InfoReceived, MessageReceived, Referred, Terminated

from .test_useragent import ANSWER, FAST, OFFER, Callee, Recorder, target

HOLD = OFFER + b"a=sendonly\r\n"
HELD = ANSWER + b"a=recvonly\r\n"


class Results:
    """Collects callback results (re-INVITE outcomes, REFER progress codes)."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self._changed = asyncio.Event()

    def add(self, *args: object) -> None:
        self.items.append(args if len(args) > 1 else args[0])
        self._changed.set()

    async def wait_len(self, n: int, timeout: float = 5.0) -> list[object]:
        async def _wait() -> list[object]:
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()
            return self.items

        return await asyncio.wait_for(_wait(), timeout)


@pytest.fixture
async def call(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[OutboundInvite, Recorder, InboundInvite, Callee]]:
    callee = Callee()
    a = UserAgent(UAConfig(port=0, **FAST), lambda inv: inv.reject(603))
    b = UserAgent(UAConfig(port=0, **FAST), callee)
    await a.start()
    await b.start()
    caller = Recorder()
    transport = getattr(request, "param", "udp")
    outbound = a.invite(target(b, transport), from_user="alice", sdp=OFFER, on_event=caller)
    inbound = await callee.next_invite()
    inbound.answer(ANSWER)
    await callee.recorder.wait_for(Confirmed)
    yield outbound, caller, inbound, callee
    await a.close()
    await b.close()


@pytest.mark.parametrize("call", ["udp", "tcp"], indirect=True)
async def test_hold_and_resume_both_ways(call):  # type: ignore[no-untyped-def]
    outbound, caller, inbound, callee = call
    offers: list[bytes] = []

    def answer(offer: bytes) -> bytes:
        offers.append(offer)
        return HELD if b"sendonly" in offer else ANSWER

    inbound.set_reoffer_handler(answer)
    results = Results()
    outbound.reinvite(HOLD, results.add)
    assert await results.wait_len(1) == [(200, HELD)]
    outbound.reinvite(OFFER, results.add)
    assert (await results.wait_len(2))[1] == (200, ANSWER)
    assert offers == [HOLD, OFFER]
    # The other direction: the callee holds; no handler on the caller's side, so it
    # answers with its current SDP (the last offer it made).
    inbound.reinvite(HOLD, results.add)
    assert (await results.wait_len(3))[2] == (200, OFFER)
    # The caller refuses an offer through its handler: 488, the call stays up.
    outbound.set_reoffer_handler(lambda offer: None)
    inbound.reinvite(OFFER, results.add)
    assert (await results.wait_len(4))[3] == (488, None)
    outbound.bye()
    assert await callee.recorder.wait_for(Terminated) == Terminated("bye")


async def test_late_offer_reinvite_asks_the_handler_for_our_offer(call):  # type: ignore[no-untyped-def]
    """A re-INVITE without SDP reaches the re-offer handler as None; what it returns is
    the offer in the 2xx (here the callee's own, not the last answer it gave)."""
    outbound, caller, inbound, callee = call
    offers: list[bytes | None] = []

    def answer(offer: bytes | None) -> bytes:
        offers.append(offer)
        return HOLD if offer is None else HELD

    inbound.set_reoffer_handler(answer)
    results = Results()
    outbound.reinvite(HOLD, results.add)
    assert await results.wait_len(1) == [(200, HELD)]
    outbound.reinvite(b"", results.add)  # no SDP: asks the callee for an offer
    assert (await results.wait_len(2))[1] == (200, HOLD)
    assert offers == [HOLD, None]
    outbound.bye()
    assert await callee.recorder.wait_for(Terminated) == Terminated("bye")


async def test_glare_both_sides_succeed(call):  # type: ignore[no-untyped-def]
    outbound, caller, inbound, callee = call
    results = Results()
    outbound.reinvite(HOLD, lambda code, sdp: results.add("a", code))
    inbound.reinvite(HOLD, lambda code, sdp: results.add("b", code))
    items = await results.wait_len(2, timeout=10)
    assert sorted(items) == [("a", 200), ("b", 200)]  # type: ignore[type-var]


async def test_info_and_message_both_ways(call):  # type: ignore[no-untyped-def]
    outbound, caller, inbound, callee = call
    outbound.info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")
    event = await callee.recorder.wait_for(InfoReceived)
    assert event == InfoReceived("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n")
    inbound.message("text/plain", b"hi")
    assert await caller.wait_for(MessageReceived) == MessageReceived("text/plain", b"hi")


async def test_attended_transfer_refer_with_replaces(call):  # type: ignore[no-untyped-def]
    outbound, caller, inbound, callee = call
    assert outbound.local_tag and outbound.remote_tag
    assert outbound.local_tag == inbound.remote_tag and outbound.remote_tag == inbound.local_tag
    progress = Results()
    replaces = inbound.dialog_replaces
    outbound.refer("sip:2000@127.0.0.1:5999", replaces=replaces, on_progress=progress.add)
    referred = await callee.recorder.wait_for(Referred)
    assert referred == Referred("sip:2000@127.0.0.1:5999", replaces)
    assert await progress.wait_len(1) == [100]
    inbound.notify_refer(180, "Ringing")
    inbound.notify_refer(200, "OK")
    assert await progress.wait_len(3) == [100, 180, 200]


async def test_deferred_message_gets_the_owners_answer(call):  # type: ignore[no-untyped-def]
    outbound, caller, inbound, callee = call
    inbound.defer_messages()
    results = Results()
    outbound.message("text/plain;charset=utf-8", "héllo".encode(), on_result=results.add)
    event = await callee.recorder.wait_for(MessageReceived)
    assert event.content_type == "text/plain;charset=utf-8" and event.body == "héllo".encode()
    assert results.items == []
    inbound.respond_message(event.op, 415)
    assert await results.wait_len(1) == [415]
    inbound.message("text/plain", b"back", on_result=results.add)
    assert (await results.wait_len(2))[1] == 200  # not deferred that way: 200 at once
