"""Re-offers from the SIP side, as the core follows them: the far party's hold (also the
RFC 2543 way, c= 0.0.0.0) and the late-offer re-INVITE, whose answer comes in the ACK
(RemoteAnswer), on a client's call and on two joined SIP legs.

The SIP dialogs are stand-ins; the RTP legs are real (on ports the system picks)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from gateway.call import CallState, Reason
from gateway.commands import CallStatus
from gateway.config import parse_config
from gateway.core import ClientCall, Core, Junction, Registration, SipIncoming
from rtc.bridge import MediaBridge
from rtc.rtpleg import RtpLeg
from sip import events as sip_events


def sdp(
    port: int, *, c: str = "127.0.0.1", direction: str | None = "sendrecv", v: int = 1
) -> bytes:
    """A PBX's SDP with PCMU; `direction` None leaves a= direction out."""
    ip = "IP6" if ":" in c else "IP4"
    lines = [
        "v=0",
        f"o=pbx 1 {v} IN IP4 127.0.0.1",
        "s=-",
        f"c=IN {ip} {c}",
        "t=0 0",
        f"m=audio {port} RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    ]
    if direction is not None:
        lines.append(f"a={direction}")
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Dialog:
    """Stands in for the SIP session of a call: what the core calls on it."""

    call_id: str = "far-1"
    byes: int = 0

    def bye(self) -> None:
        self.byes += 1


@dataclass
class Fixture:
    core: Core
    call: ClientCall
    rtp: RtpLeg
    dialog: Dialog
    statuses: list[CallStatus] = field(default_factory=list)

    def states(self) -> list[CallState]:
        return [s.state for s in self.statuses]


@pytest.fixture
def pbx_ports() -> Iterator[list[int]]:
    """Two bound UDP ports standing for the PBX's media (nothing else may own them)."""
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        socks.append(sock)
    yield [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()


def _core() -> Core:
    config = {"media": {"timeout": 1}, "records": {"enabled": False}}
    return Core(parse_config(config, "test.toml"), None)


@pytest.fixture
async def outbound(pbx_ports: list[int]) -> AsyncIterator[Fixture]:
    """An answered call a client placed to SIP; the PBX offered (the leg answered)."""
    rtp = await RtpLeg.open()
    statuses: list[CallStatus] = []
    reg = Registration("id", "1001", "Alice", "", sink=cast(Any, statuses.append))
    call = ClientCall("c1", reg, outgoing=True, remote=reg.party, state=CallState.ACTIVE)
    dialog = Dialog()
    call.invite, call.rtp, call.answered = cast(Any, dialog), rtp, True
    reg.calls[call.call_id] = call
    rtp.create_answer(sdp(pbx_ports[0]))
    yield Fixture(_core(), call, rtp, dialog, statuses)
    await rtp.close()


# -- the far party's hold ----------------------------------------------------------------


@pytest.mark.parametrize(
    "held",
    [
        sdp(0, c="0.0.0.0", direction=None, v=2),
        sdp(0, c="0.0.0.0", direction="sendrecv", v=2),
        sdp(0, c="::", direction=None, v=2),
    ],
    ids=["no-direction", "sendrecv", "ipv6"],
)
async def test_rfc2543_hold_is_a_hold_and_no_media_failure(
    outbound: Fixture, pbx_ports: list[int], held: bytes
) -> None:
    """RFC 3264 §8.4: c= 0.0.0.0 is a hold whatever the direction says. The client sees
    `holding`, the silence of the hold does not end the call; the resume ends it."""
    f = outbound
    held = held.replace(b"m=audio 0 ", f"m=audio {pbx_ports[0]} ".encode())
    assert f.core._far_reoffer(f.call, held) is not None
    assert f.call.remote_hold and f.states()[-1] is CallState.HOLDING
    f.core._far_media_timeout(f.call)  # the leg's timeout fired: a held call stays
    assert f.call.state is CallState.HOLDING and f.dialog.byes == 0

    assert f.core._far_reoffer(f.call, sdp(pbx_ports[0], v=3)) is not None
    assert not f.call.remote_hold and f.states()[-1] is CallState.ACTIVE


async def test_media_timeout_counts_from_the_resume_of_an_rfc2543_hold(
    outbound: Fixture, pbx_ports: list[int]
) -> None:
    """Nothing comes during the hold nor after the resume: the call ends `media` one
    timeout after the resume, not at once (the hold was longer) nor never (the leg's
    timeout fired unheeded during the hold)."""
    f = outbound
    loop = asyncio.get_running_loop()
    f.rtp.media_timeout = 0.3
    f.rtp.on_timeout = lambda: f.core._far_media_timeout(f.call)
    f.rtp.restart_media_timeout()
    f.core._far_reoffer(f.call, sdp(pbx_ports[0], c="0.0.0.0", direction=None, v=2))
    await asyncio.sleep(0.6)
    assert f.call.state is CallState.HOLDING
    f.core._far_reoffer(f.call, sdp(pbx_ports[0], v=3))
    resumed = loop.time()
    await asyncio.sleep(0.1)
    assert f.call.state is CallState.ACTIVE
    while f.call.state is not CallState.TERMINATED and loop.time() - resumed < 3.0:
        await asyncio.sleep(0.05)
    assert f.statuses[-1].reason is Reason.MEDIA
    assert loop.time() - resumed >= 0.3


async def test_direction_hold_still_a_hold(outbound: Fixture, pbx_ports: list[int]) -> None:
    f = outbound
    answer = f.core._far_reoffer(f.call, sdp(pbx_ports[0], direction="sendonly", v=2))
    assert answer is not None and b"a=recvonly" in answer
    assert f.states()[-1] is CallState.HOLDING


# -- late offer: a re-INVITE without SDP -------------------------------------------------


async def test_late_offer_reinvite_offers_what_we_want_and_takes_the_ack_answer(
    outbound: Fixture, pbx_ports: list[int]
) -> None:
    """The PBX held us (our answer a=recvonly), then resumes with a re-INVITE without
    SDP and, in the ACK, answers from another port: our offer is a=sendrecv, not the old
    a=recvonly, and the leg and the client follow the answer."""
    f = outbound
    f.core._far_reoffer(f.call, sdp(pbx_ports[0], direction="sendonly", v=2))
    assert f.rtp.direction == "recvonly" and f.states()[-1] is CallState.HOLDING

    offer = f.core._far_reoffer(f.call, None)
    assert offer is not None and b"a=sendrecv" in offer and b"a=recvonly" not in offer
    f.core._on_outbound_sip(f.call, sip_events.RemoteAnswer(sdp(pbx_ports[1], v=3)))
    assert f.rtp.remote_address == ("127.0.0.1", pbx_ports[1])
    assert f.rtp.direction == "sendrecv"
    assert not f.call.remote_hold and f.states()[-1] is CallState.ACTIVE


async def test_late_offer_while_we_hold_offers_sendonly(
    outbound: Fixture, pbx_ports: list[int]
) -> None:
    f = outbound
    f.call.local_hold = True
    offer = f.core._far_reoffer(f.call, None)
    assert offer is not None and b"a=sendonly" in offer
    f.core._on_outbound_sip(
        f.call, sip_events.RemoteAnswer(sdp(pbx_ports[0], direction="recvonly", v=2))
    )
    assert f.rtp.direction == "sendonly" and not f.call.remote_hold


async def test_late_offer_answer_holding_the_rfc2543_way(
    outbound: Fixture, pbx_ports: list[int]
) -> None:
    f = outbound
    f.core._far_reoffer(f.call, None)
    f.core._on_outbound_sip(f.call, sip_events.RemoteAnswer(sdp(pbx_ports[0], c="0.0.0.0", v=2)))
    assert f.call.remote_hold and f.states()[-1] is CallState.HOLDING


async def test_unusable_late_answer_ends_the_call(outbound: Fixture) -> None:
    f = outbound
    f.core._far_reoffer(f.call, None)
    bad = sdp(4000).replace(b"RTP/AVP 0", b"RTP/AVP 96").replace(b"0 PCMU", b"96 FOO")
    f.core._on_outbound_sip(f.call, sip_events.RemoteAnswer(bad))
    assert f.statuses[-1].state is CallState.TERMINATED
    assert f.statuses[-1].reason is Reason.MEDIA
    assert f.dialog.byes == 1


async def test_late_answer_on_a_call_from_sip(outbound: Fixture, pbx_ports: list[int]) -> None:
    """The same for a call the SIP side placed (its events come through SipIncoming)."""
    f = outbound
    call = f.call
    incoming = SipIncoming(invite=cast(Any, f.dialog), rtp=f.rtp, winner=call)
    call.invite, call.rtp, call.outgoing, call.sip_in = None, None, False, incoming
    f.core._far_reoffer(call, sdp(pbx_ports[0], direction="inactive", v=2))
    assert f.states()[-1] is CallState.HOLDING
    offer = f.core._far_reoffer(call, None)
    assert offer is not None and b"a=sendrecv" in offer
    f.core._on_inbound_sip(incoming, sip_events.RemoteAnswer(sdp(pbx_ports[1], v=3)))
    assert f.rtp.remote_address == ("127.0.0.1", pbx_ports[1])
    assert f.rtp.direction == "sendrecv" and f.states()[-1] is CallState.ACTIVE


# -- two joined SIP legs -----------------------------------------------------------------


@pytest.fixture
async def junction(pbx_ports: list[int]) -> AsyncIterator[tuple[Core, Junction]]:
    rtps = [await RtpLeg.open(), await RtpLeg.open()]
    for rtp, port in zip(rtps, pbx_ports, strict=True):
        rtp.create_answer(sdp(port))
    sessions = [Dialog("a"), Dialog("b")]
    joined = Junction(cast(Any, sessions), rtps, MediaBridge(rtps[0]))
    yield _core(), joined
    if joined.media_check is not None:
        joined.media_check.cancel()
    await joined.bridge.close()
    for rtp in rtps:
        await rtp.close()


async def test_junction_rfc2543_hold_keeps_the_silent_call_up(
    junction: tuple[Core, Junction], pbx_ports: list[int]
) -> None:
    """One phone holds with c= 0.0.0.0 and nobody sends: held, not a media failure."""
    core, joined = junction
    held = sdp(pbx_ports[0], c="0.0.0.0", direction=None, v=2)
    assert core._junction_reoffer(joined, joined.rtps[0], held) is not None
    core._check_junction_media(joined)  # no RTP since the join, long ago
    assert joined.held and not joined.ended
    assert [cast(Dialog, s).byes for s in joined.sessions] == [0, 0]

    core._junction_reoffer(joined, joined.rtps[0], sdp(pbx_ports[0], v=3))
    core._check_junction_media(joined)
    assert not joined.held and not joined.ended  # silence counts from the resume


async def test_junction_late_offer_answer_in_the_ack(
    junction: tuple[Core, Junction], pbx_ports: list[int]
) -> None:
    core, joined = junction
    rtp = joined.rtps[1]
    core._junction_reoffer(joined, rtp, sdp(pbx_ports[1], direction="sendonly", v=2))
    assert rtp.direction == "recvonly"
    offer = core._junction_reoffer(joined, rtp, None)
    assert offer is not None and b"a=sendrecv" in offer
    session = cast(Any, joined.sessions[1])
    core._junction_session_event(
        joined, session, sip_events.RemoteAnswer(sdp(pbx_ports[0], c="0.0.0.0", v=3))
    )
    assert joined.far_held == [False, True]
    core._junction_session_event(joined, session, sip_events.RemoteAnswer(sdp(pbx_ports[0], v=4)))
    assert rtp.remote_address == ("127.0.0.1", pbx_ports[0]) and rtp.direction == "sendrecv"
    assert joined.far_held == [False, False]


async def test_junction_unusable_late_answer_ends_both(
    junction: tuple[Core, Junction],
) -> None:
    core, joined = junction
    core._junction_reoffer(joined, joined.rtps[0], None)
    bad = sdp(4000).replace(b"m=audio", b"m=video")
    core._junction_session_event(
        joined, cast(Any, joined.sessions[0]), sip_events.RemoteAnswer(bad)
    )
    assert joined.ended
    assert [cast(Dialog, s).byes for s in joined.sessions] == [1, 1]
    await asyncio.sleep(0)  # the legs' close, spawned by the end
