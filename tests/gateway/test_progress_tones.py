"""Call progress tones the core plays to a browser: the busy or congestion tone of an
outgoing call that failed so ([media] failure_tone_seconds), before `terminated`, and
the call-waiting tone over a connected call while another is offered to its client
([media] call_waiting_tone).

The SIP dialogs and the browser legs are stand-ins (the browser leg records what the
bridge writes to it, so the tone is checked as audio); the RTP legs are real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from gateway.call import CallState, Reason
from gateway.commands import CallOffered, CallStatus, ClientEvent, Party, Terminate
from gateway.config import parse_config
from gateway.core import ClientCall, Core, Registration, SipIncoming
from rtc.ports import FrameQueue, PortClosed
from rtc.rtpleg import RtpLeg
from rtc.sources import TonePort
from rtc.tones import TONES, Cadence
from sip import events as sip_events
from tests.audio import SineSource, band_energy_ratio, on_off_runs

RATE = 8000
FRAME = RATE // 50


class FakeLeg:
    """Stands in for a call's WebRtcLeg: records what is written to it, with the loop
    time of each frame; `connection_state` as aiortc reports it."""

    def __init__(self, sample_rate: int = RATE, connection_state: str = "connected") -> None:
        self.sample_rate = sample_rate
        self.connection_state = connection_state
        self.frames: list[tuple[float, npt.NDArray[np.int16]]] = []
        self.closed = False
        self._incoming = FrameQueue(10)

    async def read(self) -> npt.NDArray[np.int16]:
        return await self._incoming.get()

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        if self.closed:
            raise PortClosed
        self.frames.append((asyncio.get_running_loop().time(), frame))

    def say(self, frame: npt.NDArray[np.int16]) -> None:
        """What the browser sends: read() returns it."""
        self._incoming.put(frame)

    async def create_offer(self, **kwargs: Any) -> str:
        return "v=0\r\n"

    async def close(self) -> None:
        self.closed = True
        self._incoming.close()

    def audio(self, since: float = 0.0, until: float = float("inf")) -> npt.NDArray[np.int16]:
        parts = [f for t, f in self.frames if since <= t < until]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)


@dataclass
class Dialog:
    """Stands in for the SIP session of a call: what the core calls on it."""

    call_id: str = "far-1"
    cancels: int = 0
    byes: int = 0
    rejects: list[int] = field(default_factory=list)
    answered: int = 0

    def cancel(self) -> None:
        self.cancels += 1

    def bye(self) -> None:
        self.byes += 1

    def reject(self, code: int, phrase: str = "") -> None:
        self.rejects.append(code)

    def answer(self, sdp: bytes) -> None:
        self.answered += 1

    def ringing(self) -> None:
        pass

    def set_reoffer_handler(self, handler: Any) -> None:
        pass


@dataclass
class Client:
    """A registration and what its front end was told, with the loop time of each."""

    core: Core
    reg: Registration
    events: list[tuple[float, ClientEvent]] = field(default_factory=list)

    def statuses(self, call_id: str) -> list[CallStatus]:
        return [e for _, e in self.events if isinstance(e, CallStatus) and e.call_id == call_id]

    def when(self, call_id: str, state: CallState) -> float:
        return next(
            t
            for t, e in self.events
            if isinstance(e, CallStatus) and e.call_id == call_id and e.state is state
        )


def make_client(**media: Any) -> Client:
    config = parse_config({"media": media, "records": {"enabled": False}}, "test.toml")
    core = Core(config, None)
    events: list[tuple[float, ClientEvent]] = []

    def sink(event: ClientEvent) -> None:
        events.append((asyncio.get_running_loop().time(), event))

    reg = Registration("reg-1", "1001", "Alice", "", sink=sink)
    core.registrations[reg.identifier] = reg
    return Client(core, reg, events)


@dataclass
class Outgoing:
    client: Client
    call: ClientCall
    leg: FakeLeg
    dialog: Dialog
    rtp: RtpLeg


def active_call(client: Client) -> tuple[ClientCall, FakeLeg]:
    """A call of ``client`` in progress: its WebRTC leg hears a 1 kHz far end."""
    active = ClientCall(
        "a", client.reg, outgoing=True, remote=Party("9001"), state=CallState.ACTIVE
    )
    leg = FakeLeg()
    active.webrtc, active.local, active.answered = cast(Any, leg), TonePort(1000, RATE), True
    client.reg.calls[active.call_id] = active
    client.core._bridge_client_leg(active)
    return active, leg


async def dial(client: Client, *, connection_state: str = "connected") -> Outgoing:
    """An outgoing call to SIP as the core has it once the INVITE is out: the browser leg
    answered, the RTP leg offered, the far end not answered yet."""
    reg = client.reg
    call = ClientCall("c1", reg, outgoing=True, remote=Party("5555"), state=CallState.DIALING)
    leg, dialog, rtp = FakeLeg(connection_state=connection_state), Dialog(), await RtpLeg.open()
    call.webrtc, call.invite, call.rtp = cast(Any, leg), cast(Any, dialog), rtp
    call.sip_owner = [call]
    rtp.create_offer()
    reg.calls[call.call_id] = call
    return Outgoing(client, call, leg, dialog, rtp)


@pytest.fixture
async def closing() -> AsyncIterator[list[Client]]:
    """Cores closed after the test: every call ended, every spawned task done."""
    clients: list[Client] = []
    yield clients
    for client in clients:
        await client.core.close()


# -- busy and congestion before `terminated` ---------------------------------------------


@pytest.mark.parametrize(
    ("code", "alerted", "reason", "frequencies", "cadence"),
    [
        (486, False, Reason.BUSY, (480, 620), 0.5),
        (600, True, Reason.BUSY, (480, 620), 0.5),
        (503, False, Reason.CONGESTION, (480, 620), 0.25),
        (480, False, Reason.CONGESTION, (480, 620), 0.25),
    ],
    ids=["486", "600", "503", "480-before-alerting"],
)
async def test_failure_tone_then_terminated_with_the_reason(
    closing: list[Client],
    code: int,
    alerted: bool,
    reason: Reason,
    frequencies: tuple[int, ...],
    cadence: float,
) -> None:
    """The far end refuses: the SIP side is finished at once (no CANCEL or BYE, the RTP
    port released), the client sees `terminating` and hears the US tone of the reason
    (480+620 Hz, 0.5 s on/off for busy, 0.25 s for congestion) on its leg; `terminated`
    with the reason comes after failure_tone_seconds, then the leg is closed."""
    client = make_client(failure_tone_seconds=1.2)
    closing.append(client)
    out = await dial(client)
    out.call.alerted = alerted
    loop = asyncio.get_running_loop()
    failed = loop.time()
    client.core._on_outbound_sip(out.call, sip_events.Rejected(code, "No"))

    assert [s.state for s in client.statuses("c1")] == [CallState.TERMINATING]
    assert client.statuses("c1")[0].reason is None  # json-v1: not a refused request
    assert out.call.call_id in client.reg.calls
    await asyncio.sleep(0.05)
    assert out.rtp._closed and out.dialog.cancels == out.dialog.byes == 0

    await asyncio.sleep(1.0)
    assert out.call.state is CallState.TERMINATING and not out.leg.closed
    tone = out.leg.audio()
    # on, off, on... from the failure; the last run may be cut short
    measured = on_off_runs(tone, RATE)
    assert measured[0][0] and [on for on, _ in measured] == [
        i % 2 == 0 for i in range(len(measured))
    ]
    for _, seconds in measured[:-1]:
        assert seconds == pytest.approx(cadence, abs=0.021)
    burst = tone[80 : round(cadence * RATE) - 80]
    for f in frequencies:
        assert band_energy_ratio(burst, RATE, f, 10) > 0.45

    await asyncio.sleep(0.4)
    statuses = client.statuses("c1")
    assert [s.state for s in statuses] == [CallState.TERMINATING, CallState.TERMINATED]
    assert statuses[-1].reason is reason
    assert client.when("c1", CallState.TERMINATED) - failed == pytest.approx(1.2, abs=0.1)
    assert out.call.call_id not in client.reg.calls
    assert out.leg.closed and out.call.bridge is not None and not out.call.bridge._tasks


@pytest.mark.parametrize(
    ("code", "alerted", "reason"),
    [
        (486, False, Reason.BUSY),
        (480, True, Reason.NOT_RESPONDING),
        (404, False, Reason.DIAL_STRING),
        (603, False, Reason.REJECTED),
    ],
)
async def test_terminated_at_once_without_the_setting_or_a_tone(
    closing: list[Client], code: int, alerted: bool, reason: Reason
) -> None:
    """failure_tone_seconds = 0 (the default) keeps `terminated` immediate; so does a
    reason that has no tone (480 after alerting is no answer, not congestion)."""
    seconds = 0.0 if reason is Reason.BUSY else 1.0
    client = make_client(failure_tone_seconds=seconds)
    closing.append(client)
    out = await dial(client)
    out.call.alerted = alerted
    client.core._on_outbound_sip(out.call, sip_events.Rejected(code, "No"))
    statuses = client.statuses("c1")
    assert [(s.state, s.reason) for s in statuses] == [(CallState.TERMINATED, reason)]
    await asyncio.sleep(0.1)
    assert out.leg.closed and not out.leg.frames


def test_default_is_no_tone() -> None:
    media = parse_config({}, "test.toml").media
    assert media.failure_tone_seconds == 0 and media.call_waiting_tone is False


async def test_hang_up_during_the_tone_ends_it_with_the_original_reason(
    closing: list[Client],
) -> None:
    """The client's terminate while the busy tone plays: `terminated` at once, with
    `busy` (the call had failed; it was not this client who ended it), and nothing
    more later."""
    client = make_client(failure_tone_seconds=0.6)
    closing.append(client)
    out = await dial(client)
    client.core._on_outbound_sip(out.call, sip_events.Rejected(486, "Busy Here"))
    await asyncio.sleep(0.2)
    assert out.leg.frames
    await client.core.handle(client.reg, Terminate("c1", Reason.USER_TERMINATED))
    statuses = client.statuses("c1")
    assert [(s.state, s.reason) for s in statuses] == [
        (CallState.TERMINATING, None),
        (CallState.TERMINATED, Reason.BUSY),
    ]
    await asyncio.sleep(0.05)
    written = len(out.leg.frames)
    assert out.leg.closed
    await asyncio.sleep(0.6)
    assert len(client.statuses("c1")) == 2 and len(out.leg.frames) == written
    assert out.dialog.cancels == out.dialog.byes == 0


async def test_requests_other_than_terminate_are_refused_during_the_tone(
    closing: list[Client],
) -> None:
    client = make_client(failure_tone_seconds=0.5)
    closing.append(client)
    out = await dial(client)
    client.core._on_outbound_sip(out.call, sip_events.Rejected(486, "Busy Here"))
    client.core._hold(out.call, True)
    assert client.statuses("c1")[-1] == CallStatus(
        "c1", CallState.TERMINATING, Reason.ERROR, Party("5555")
    )


async def test_lost_connection_during_the_tone_releases_everything(
    closing: list[Client],
) -> None:
    """The WebSocket closes while the tone plays: the call ends at once (nobody hears
    the rest, and no restore brings back a failed call), its leg, bridge and ports are
    released, its timer cancelled; the registration itself waits for a restore."""
    client = make_client(failure_tone_seconds=5.0)
    closing.append(client)
    out = await dial(client)
    client.core._on_outbound_sip(out.call, sip_events.Rejected(503, "Busy Everywhere"))
    await asyncio.sleep(0.1)
    bridge = out.call.bridge
    assert bridge is not None and bridge._tasks
    client.core.detach(client.reg)
    assert out.call.state is CallState.TERMINATED and not client.reg.calls
    assert out.call.tone_end is not None and out.call.tone_end.cancelled()
    await asyncio.sleep(0.05)
    assert out.leg.closed and out.rtp._closed and not bridge._tasks
    assert not client.core._tasks
    assert client.reg.identifier in client.core.registrations


@pytest.mark.parametrize(("state", "tone"), [("new", True), ("failed", False)])
async def test_a_leg_not_up_yet_still_gets_the_tone_a_failed_one_not(
    closing: list[Client], state: str, tone: bool
) -> None:
    """A refusal quicker than ICE and DTLS: the tone is timed from the failure all the
    same (the leg carries what it can once its media is up); a leg that failed ends the
    call at once."""
    client = make_client(failure_tone_seconds=0.3)
    closing.append(client)
    out = await dial(client, connection_state=state)
    client.core._on_outbound_sip(out.call, sip_events.Rejected(486, "Busy Here"))
    first = client.statuses("c1")[0].state
    assert first is (CallState.TERMINATING if tone else CallState.TERMINATED)
    await asyncio.sleep(0.45)
    assert client.statuses("c1")[-1].reason is Reason.BUSY
    assert bool(out.leg.frames) is tone


async def test_web_callee_declining_busy_gives_the_caller_the_busy_tone(
    closing: list[Client],
) -> None:
    """A web-to-web call: the only callee declines as busy; the caller hears the busy
    tone before its `terminated` `busy`."""
    client = make_client(failure_tone_seconds=0.3)
    closing.append(client)
    core = client.core
    callee_reg = Registration("reg-2", "1002", "Bob", "", sink=lambda event: None)
    core.registrations[callee_reg.identifier] = callee_reg
    caller = ClientCall(
        "c1", client.reg, outgoing=True, remote=Party("1002"), state=CallState.RINGING
    )
    caller.webrtc = cast(Any, FakeLeg())
    client.reg.calls[caller.call_id] = caller
    callee = ClientCall(
        "c2", callee_reg, outgoing=False, remote=client.reg.party, state=CallState.RINGING
    )
    callee.caller, caller.forks = caller, [callee]
    callee_reg.calls[callee.call_id] = callee

    core._client_terminate(callee, Reason.BUSY)
    assert client.statuses("c1")[-1].state is CallState.TERMINATING
    await asyncio.sleep(0.15)
    assert cast(FakeLeg, caller.webrtc).frames
    await asyncio.sleep(0.3)
    assert client.statuses("c1")[-1] == CallStatus(
        "c1", CallState.TERMINATED, Reason.BUSY, Party("1002")
    )


# -- call waiting --------------------------------------------------------------------------


@dataclass
class Waiting:
    client: Client
    active: ClientCall
    leg: FakeLeg
    incoming: SipIncoming
    offered: ClientCall


@pytest.fixture
async def waiting(closing: list[Client], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Waiting]:
    """Alice is in a call with the 1 kHz test number; a SIP call is offered to her."""
    # A denser cadence than the US one (0.3 s every 10 s), so that the end of the
    # tone shows in a short test: the US one itself is checked in tests/rtc.
    monkeypatch.setitem(TONES["call-waiting"], "us", Cadence((440,), (0.1, 0.1)))
    client = make_client(call_waiting_tone=True)
    closing.append(client)
    core = client.core
    monkeypatch.setattr(core, "_new_client_leg", lambda call: FakeLeg())
    active, leg = active_call(client)

    rtp = await RtpLeg.open()
    incoming = SipIncoming(cast(Any, Dialog("in-1")), rtp=rtp, rtp_answer=b"v=0\r\n")
    offered = ClientCall("b", client.reg, False, Party("5555"), CallState.OFFERED, sip_in=incoming)
    incoming.forks.append(offered)
    client.reg.calls[offered.call_id] = offered
    await asyncio.sleep(0.3)  # the call before the offer: no tone
    yield Waiting(client, active, leg, incoming, offered)
    await rtp.close()


def tone_share(audio: npt.NDArray[np.int16]) -> float:
    return band_energy_ratio(audio, RATE, 440, 15)


async def offer(w: Waiting) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await w.client.core._offer_client(w.offered)
    assert any(isinstance(e, CallOffered) for _, e in w.client.events)
    await asyncio.sleep(0.6)
    return start


def check_waiting(w: Waiting, start: float, end: float) -> None:
    """Between `start` and `end` the client heard the far end's 1 kHz with the 440 Hz
    tone mixed in (0.1 s on, 0.1 s off), not instead of it."""
    audio = w.leg.audio(start + 0.05, end)
    assert len(audio) >= 0.4 * RATE
    assert tone_share(audio) > 0.03 and band_energy_ratio(audio, RATE, 1000, 15) > 0.5
    for block in audio[: len(audio) // 400 * 400].reshape(-1, 400):  # 50 ms each
        assert band_energy_ratio(block, RATE, 1000, 40) > 0.3  # the far end goes on


def check_quiet(w: Waiting, start: float) -> None:
    audio = w.leg.audio(start + 0.05)
    assert len(audio) >= 0.4 * RATE
    assert tone_share(audio) < 0.01 and band_energy_ratio(audio, RATE, 1000, 15) > 0.95


async def test_call_waiting_tone_until_answered(waiting: Waiting) -> None:
    w = waiting
    core = w.client.core
    assert tone_share(w.leg.audio()) < 0.01
    start = await offer(w)
    check_waiting(w, start, start + 0.6)

    core._accept(w.offered)  # still alerting: the tone goes on
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    await asyncio.sleep(0.5)
    check_waiting(w, accepted, accepted + 0.5)

    core._answer(w.offered)
    answered = loop.time()
    assert w.offered.state is CallState.ACTIVE
    await asyncio.sleep(0.6)
    check_quiet(w, answered)
    assert w.active.bridge is not None and w.active.bridge._overlay_for(w.leg) is None


@pytest.mark.parametrize("how", ["declined", "cancelled", "timed out", "answered elsewhere"])
async def test_call_waiting_tone_stops_when_the_offer_ends(waiting: Waiting, how: str) -> None:
    w = waiting
    core = w.client.core
    start = await offer(w)
    check_waiting(w, start, start + 0.6)
    loop = asyncio.get_running_loop()
    ended = loop.time()
    if how == "declined":
        await core.handle(w.client.reg, Terminate("b", Reason.BUSY))
        assert cast(Dialog, w.incoming.invite).rejects == [486]
    elif how == "cancelled":
        core._on_inbound_sip(w.incoming, sip_events.Cancelled())
    elif how == "timed out":
        core._no_answer_sip(w.incoming)
    else:
        core._end(w.offered, Reason.NOT_SELECTED, release=False)
    assert w.offered.state is CallState.TERMINATED
    await asyncio.sleep(0.6)
    check_quiet(w, ended)


async def test_call_waiting_tone_follows_hold_and_is_off_by_default(
    waiting: Waiting, closing: list[Client]
) -> None:
    """Held by its client, the call hears nothing and so no tone; retrieved while the
    other call is still offered, the tone is back. The far party never hears it: it is
    only mixed toward the browser."""
    w = waiting
    core = w.client.core
    start = await offer(w)
    check_waiting(w, start, start + 0.6)
    core._apply_hold(w.active, True)
    bridge = w.active.bridge
    assert bridge is not None and not bridge._tasks and not bridge._relays
    core._apply_hold(w.active, False)
    loop = asyncio.get_running_loop()
    retrieved = loop.time()
    await asyncio.sleep(0.6)
    check_waiting(w, retrieved, retrieved + 0.6)
    assert bridge._overlay_for(w.leg) is not None
    assert bridge.far is not None and bridge._overlay_for(bridge.far) is None


async def test_no_call_waiting_tone_unless_configured(closing: list[Client]) -> None:
    client = make_client()
    closing.append(client)
    core = client.core
    active, leg = active_call(client)
    offered = ClientCall("b", client.reg, False, Party("5555"), CallState.OFFERED)
    client.reg.calls[offered.call_id] = offered
    client.reg.sink(CallOffered("b", Party("5555"), client.reg.party))
    core._sync_call_waiting(client.reg, offered)
    core._bridge_client_leg(active)
    await asyncio.sleep(0.5)
    assert active.bridge is not None and active.bridge._overlay_for(leg) is None
    # measured on the far end's audio, which does arrive: not on silence
    audio = leg.audio()
    assert len(audio) >= 0.4 * RATE
    assert tone_share(audio) < 0.01 and band_energy_ratio(audio, RATE, 1000, 15) > 0.95


async def test_call_waiting_tone_to_a_web_callee(
    closing: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Web-to-web: the caller's bridge carries both clients' audio; a call offered to the
    callee's client mixes the tone into what the callee's leg gets (the bridge's far port),
    and the caller, who hears the callee talk, hears none of it."""
    monkeypatch.setitem(TONES["call-waiting"], "us", Cadence((440,), (0.1, 0.1)))
    client = make_client(call_waiting_tone=True)
    closing.append(client)
    core = client.core
    monkeypatch.setattr(core, "_new_client_leg", lambda call: FakeLeg())
    callee_reg = Registration("reg-2", "1002", "Bob", "", sink=lambda event: None)
    core.registrations[callee_reg.identifier] = callee_reg
    caller = ClientCall(
        "a", client.reg, outgoing=True, remote=Party("1002"), state=CallState.ACTIVE
    )
    callee = ClientCall(
        "b", callee_reg, outgoing=False, remote=client.reg.party, state=CallState.ACTIVE
    )
    caller_leg, callee_leg = FakeLeg(), FakeLeg()
    caller.webrtc, callee.webrtc = cast(Any, caller_leg), cast(Any, callee_leg)
    caller.winner, caller.forks, caller.answered = callee, [callee], True
    callee.caller, callee.answered = caller, True
    client.reg.calls[caller.call_id] = caller
    callee_reg.calls[callee.call_id] = callee
    core._bridge_client_leg(caller)
    voice = SineSource(1000, RATE, 0.25)

    async def talk() -> None:  # the callee, at 50 frames a second
        while True:
            callee_leg.say(voice.frame(FRAME))
            await asyncio.sleep(0.02)

    talking = asyncio.ensure_future(talk())
    offered = ClientCall("c", callee_reg, False, Party("5555"), CallState.OFFERED)
    callee_reg.calls[offered.call_id] = offered
    loop = asyncio.get_running_loop()
    start = loop.time()
    await core._offer_client(offered)
    await asyncio.sleep(0.5)
    talking.cancel()
    assert tone_share(callee_leg.audio(start)) > 0.9  # the tone (the caller is silent)
    heard = caller_leg.audio(start)
    assert len(heard) >= 0.4 * RATE and band_energy_ratio(heard, RATE, 1000, 15) > 0.99
    assert tone_share(heard) < 0.001
    bridge = caller.bridge
    assert bridge is not None and bridge._overlay_for(callee_leg) == ("call-waiting", "us")
    assert bridge._overlay_for(caller_leg) is None

    core._end(offered, Reason.SUCCESS, release=False)  # the caller of it gave up
    assert bridge._overlay_for(callee_leg) is None
