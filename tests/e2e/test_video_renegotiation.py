"""Video turned on during a call (json-v1 §10: renegotiation may come from either side).

- A web client adding video to a call with a SIP video phone: see test_sip_video.py.
- Two web clients: one adds video, the gateway re-offers it to the other; frames both ways.
- A phone escalates to video by re-INVITE (sipp for the signaling; the test sends and
  receives that phone's VP8 RTP itself, encoded with aiortc's libvpx encoder): the gateway
  accepts m=video, re-offers video to the web client, and frames cross both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import re
import time

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RtpPacket

from rtc.webrtcvideo import offer_has_video
from tests.e2e.client import JsonV1Client
from tests.e2e.conftest import HOST, free_port
from tests.e2e.test_sip_video import MIN_FRAMES

pytestmark = pytest.mark.e2e


async def _alice_calls_bob(gateway, clients):
    """Web client alice (1001) calls web client bob (1002), who accepts (ringing)."""
    alice: JsonV1Client = await clients(gateway, name="alice")
    bob: JsonV1Client = await clients(gateway, name="bob")
    await alice.login("1001", "Alice")
    await bob.login("1002", "Bob")
    call = await alice.dial("1002", freq=1000.0)
    incoming = await bob.wait_incoming()
    await incoming.accept()
    return call, incoming


async def test_web_client_adds_video_to_a_web_call(gateway, clients):
    call, incoming = await _alice_calls_bob(gateway, clients)
    await incoming.answer()
    assert incoming.offer is not None and not offer_has_video(incoming.offer)
    await call.wait_state("active", timeout=20)

    adding = asyncio.create_task(call.add_video())
    reoffer = await incoming.accept_reoffer(2)  # the gateway passes the video on to Bob
    assert offer_has_video(reoffer), reoffer
    assert offer_has_video(await adding)
    await call.wait_video(MIN_FRAMES, timeout=30)
    await incoming.wait_video(MIN_FRAMES, timeout=30)
    # audio still crosses after the renegotiation
    await call.wait_audio(1.0, since=time.monotonic())
    await incoming.wait_audio(1.0, since=time.monotonic())
    await call.hangup()
    await incoming.wait_state("terminated", timeout=10)


class _VideoPhoneMedia(asyncio.DatagramProtocol):
    """The video side of the sipp phone: receives the gateway's RTP on the port its
    re-INVITE offered, and sends VP8 RTP from that same port."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223:  # RTP, not RTCP
            self.packets.append(RtpPacket.parse(data))

    async def send_vp8(self, target: tuple[str, int], seconds: float, fps: int = 15) -> int:
        """A moving bar, VP8-encoded by libvpx, packetized as RTP PT 96; frames sent."""
        assert self.transport is not None
        encoder = Vp8Encoder()
        sequence, frames = 1000, int(seconds * fps)
        for n in range(frames):
            image = np.full((240, 320, 3), 60, dtype=np.uint8)
            x = (n * 8) % 240
            image[:, x : x + 80] = (230, 230, 40)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = n * 90000 // fps
            frame.time_base = fractions.Fraction(1, 90000)
            payloads, timestamp = encoder.encode(frame, force_keyframe=n % fps == 0)
            for i, payload in enumerate(payloads):
                packet = RtpPacket(
                    payload_type=96,
                    sequence_number=sequence & 0xFFFF,
                    timestamp=timestamp,
                    ssrc=0x1234ABCD,
                    marker=i == len(payloads) - 1,
                    payload=payload,
                )
                sequence += 1
                self.transport.sendto(packet.serialize(), target)
            await asyncio.sleep(1 / fps)
        return frames


@pytest.fixture
async def phone_video():
    """The sipp phone's video side, bound to a free even port (its `port`)."""
    media = _VideoPhoneMedia()
    port = free_port(tcp=False, span=2) & ~1
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: media, local_addr=(HOST, port)
    )
    media.port = port
    yield media
    transport.close()


def _escalating_caller(sipp, gateway, media: _VideoPhoneMedia, scenario: str = "uac_add_video"):
    """sipp calling 1001 audio-only, then adding video on `media`'s port (uac_add_video;
    uac_video_on_off then turns it off and on again)."""
    return sipp.scenario(
        scenario,
        f"{scenario}.xml",
        gateway.sip_target,
        port=gateway.pbx_port,
        number="1001",
        extra=["-rtp_echo", "-key", "vport", str(media.port)],
    )


async def _web_phone_answers(page) -> None:
    """The web phone answers the incoming call from its banner; CONNECTED."""
    from tests.e2e.webphone_helpers import wait_call

    banner = page.get_by_role("alertdialog", name="Incoming call")
    await banner.wait_for(timeout=15000)
    await banner.get_by_role("button", name="Answer", exact=True).click()
    await wait_call(page, "CONNECTED")


async def _gateway_video_port(caller, vport: int, timeout: float = 10.0) -> int:
    """The gateway's video port, from its 200 to the re-INVITE (sipp's message log)."""
    deadline = time.monotonic() + timeout
    while True:
        ports = [int(p) for p in re.findall(r"m=video (\d+)", caller.logs())]
        found = [p for p in ports if p not in (0, vport)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, caller.logs()[-3000:]
        await asyncio.sleep(0.1)


async def test_phone_adds_video_by_reinvite(gateway, sipp, clients, phone_video):
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    caller = _escalating_caller(sipp, gateway, phone_video)
    call = await alice.wait_incoming(timeout=15)
    await call.accept()
    await call.answer()
    assert call.offer is not None and not offer_has_video(call.offer)
    await call.wait_state("active", timeout=20)

    reoffer = await call.accept_reoffer(2, timeout=15)
    assert offer_has_video(reoffer) and "VP8/90000" in reoffer, reoffer
    gateway_port = await _gateway_video_port(caller, phone_video.port)
    sent = await phone_video.send_vp8((HOST, gateway_port), seconds=4.0)
    await call.wait_video(10, timeout=10)  # the phone's frames, decoded by the client
    assert call.video_frames <= sent
    # the client's video reached the phone: VP8 RTP (PT 96 as the phone offered)
    vp8 = [p for p in phone_video.packets if p.payload_type == 96]
    assert len(vp8) >= 30 and sum(p.marker for p in vp8) >= 10, len(vp8)
    assert len({p.ssrc for p in vp8}) == 1
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await caller.wait(15) == 0, caller.logs()[-3000:]


def _video_direction(sdp: str) -> str:
    video = sdp[sdp.index("m=video") :]
    found = re.search(r"a=(sendrecv|sendonly|recvonly|inactive)", video)
    assert found is not None, video
    return found.group(1)


async def test_phone_turns_video_off_and_on_again(gateway, sipp, clients, phone_video):
    """The phone escalates to video, then re-INVITEs with m=video port 0 (video off): the
    gateway re-offers the client its video inactive, so it stops showing the last picture;
    when the phone turns video on again the client gets a sendrecv re-offer and the
    phone's frames play again. Audio crosses throughout (sipp checks each 200)."""
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    caller = _escalating_caller(sipp, gateway, phone_video, "uac_video_on_off")
    call = await alice.wait_incoming(timeout=15)
    await call.accept()
    await call.answer()
    await call.wait_state("active", timeout=20)

    on = await call.accept_reoffer(2, timeout=15)
    assert _video_direction(on) == "sendrecv", on
    gateway_port = await _gateway_video_port(caller, phone_video.port)
    await phone_video.send_vp8((HOST, gateway_port), seconds=1.5)
    await call.wait_video(5, timeout=10)

    off = await call.accept_reoffer(3, timeout=15)
    assert offer_has_video(off) and _video_direction(off) == "inactive", off
    video = next(t for t in call.pc.getTransceivers() if t.kind == "video")
    assert video.currentDirection == "inactive"
    await call.wait_audio(1.0, since=time.monotonic())

    again = await call.accept_reoffer(4, timeout=15)
    assert _video_direction(again) == "sendrecv" and "VP8/90000" in again, again
    assert video.currentDirection == "sendrecv"
    frames = call.video_frames
    await phone_video.send_vp8((HOST, gateway_port), seconds=2.0)
    await call.wait_video(frames + 5, timeout=10)
    await call.wait_audio(1.0, since=time.monotonic())
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await caller.wait(15) == 0, caller.logs()[-3000:]


async def test_chromium_web_phone_hides_the_video_the_phone_turns_off(
    gateway, sipp, e2e_dir, phone_video
):
    """The web phone in Chromium: the phone's video shows when it escalates, the video
    stage hides when the phone turns video off (no frozen last picture), and shows the
    phone's pictures again when it turns video back on."""
    from tests.e2e.webphone_helpers import (
        assert_no_problems,
        launch,
        open_phone,
        phone_login,
        wait_call,
    )

    playing = """() => { const v = document.querySelector('#remote-video');
        return !document.querySelector('#video-stage').hidden && v && v.videoWidth > 0; }"""
    async with launch(e2e_dir) as browser:
        page = await browser.page("alice")
        await open_phone(page, gateway.http_url)
        await phone_login(page, "1001")
        caller = _escalating_caller(sipp, gateway, phone_video, "uac_video_on_off")
        await _web_phone_answers(page)
        gateway_port = await _gateway_video_port(caller, phone_video.port)
        sending = asyncio.create_task(phone_video.send_vp8((HOST, gateway_port), seconds=14.0))
        try:
            await page.wait_for_function(playing, timeout=15000)
            await page.wait_for_function(
                "() => document.querySelector('#video-stage').hidden", timeout=15000
            )
            await page.wait_for_function(playing, timeout=15000)
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        media = await page.evaluate(
            "() => window.phoneEvents.filter(e => e.type === 'media').map(e => e.video)"
        )
        assert media[-3:] == [True, False, True], media
        await page.get_by_role("button", name="Hang up – call with").click()
        await wait_call(page, "DISCONNECTED", timeout=15000)
        await assert_no_problems(page)
        assert await caller.wait(15) == 0, caller.logs()[-3000:]


async def test_chromium_web_phone_shows_a_phone_s_video_then_sends_its_camera(
    gateway, sipp, e2e_dir, phone_video
):
    """The web phone in Chromium answers an audio call; the phone escalates to video:
    the library answers the gateway's re-offer and the phone's pictures play (no camera
    yet). Pressing the call's Video button sends the camera: its VP8 reaches the phone."""
    from tests.e2e.webphone_helpers import launch, open_phone, phone_login, wait_call

    async with launch(e2e_dir) as browser:
        page = await browser.page("alice")
        await open_phone(page, gateway.http_url)
        await phone_login(page, "1001")
        caller = _escalating_caller(sipp, gateway, phone_video)
        await _web_phone_answers(page)
        gateway_port = await _gateway_video_port(caller, phone_video.port)
        sending = asyncio.create_task(phone_video.send_vp8((HOST, gateway_port), seconds=6.0))
        await page.wait_for_function(
            """() => { const v = document.querySelector('#remote-video');
               return v && v.videoWidth > 0 && v.srcObject && !v.paused; }""",
            timeout=15000,
        )
        assert await page.locator("#video-stage").is_visible()
        assert not phone_video.packets, "video sent to the phone before the camera was on"
        await page.get_by_role("button", name="Video – call with").click()
        deadline = time.monotonic() + 15
        while sum(p.marker for p in phone_video.packets if p.payload_type == 96) < 10:
            assert time.monotonic() < deadline, f"{len(phone_video.packets)} camera packets"
            await asyncio.sleep(0.1)
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        await page.get_by_role("button", name="Hang up – call with").click()
        await wait_call(page, "DISCONNECTED", timeout=15000)
        assert await caller.wait(15) == 0, caller.logs()[-3000:]


async def _echo_call(gateway, clients):
    """Web client alice (1001) in an active call with the echo number (9000), its echo
    heard (so ICE has completed on both sides)."""
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("9000", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await call.wait_audio(0.5, since=time.monotonic())
    assert call.pc.localDescription is not None
    return call


async def _refused(call, sdp: str):
    """Send `sdp` as a re-offer of `call`; the status refusing it (one with a reason)."""
    refusals = len([m for m in call.statuses if m.get("reason")])
    await call.send("offer", operation="media", sdp=sdp)

    def refusal():
        found = [m for m in call.statuses if m.get("reason")]
        return found[refusals] if len(found) > refusals else None

    return await call._until(refusal, 10.0, "a refusal")


async def test_ice_restart_by_the_client_keeps_the_call(gateway, clients):
    """The client restarts ICE (new ufrag/pwd, as after a network change): the gateway
    answers with new credentials of its own, the new checks nominate a pair, audio keeps
    crossing, and a later renegotiation (adding video) is answered."""
    from tests.e2e.test_hold import check_tone_after

    call = await _echo_call(gateway, clients)
    first = re.search(r"a=ice-ufrag:(\S+)", call.answers[0])
    answer = await call.restart_ice()
    again = re.search(r"a=ice-ufrag:(\S+)", answer)
    assert first and again and first.group(1) != again.group(1), answer
    await check_tone_after(call, 1000.0, "echo after the ICE restart")
    answer = await call.add_video()
    assert offer_has_video(answer)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)


# The restart's checks may take 3 s here instead of 30 (the suite's time is counted).
@pytest.mark.parametrize("gateway", ["\n[media]\nice_restart_timeout = 3\n"], indirect=True)
async def test_ice_restart_that_is_not_one_ends_only_that_call(gateway, clients):
    """A re-offer with new ICE credentials from a client that does not check with them
    (its ICE agent kept the old ones) gets an answer, but the gateway's new checks fail:
    the call ends with reason media, as a lost path does, once [media] ice_restart_timeout
    is over (3 s here; not the 30 s default); the client's next call works."""
    call = await _echo_call(gateway, clients)
    sdp = call.pc.localDescription.sdp
    restarted = re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:Rstr", sdp)
    restarted = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:restartrestartrestart0000", restarted)
    await call.send("offer", operation="media", sdp=restarted)
    ended = await call.wait_state("terminated", timeout=15)
    assert ended.get("reason") == "media", ended
    assert len(call.answers) == 2  # the re-offer was answered
    again = await _echo_call(gateway, clients)
    await again.hangup()


async def test_phone_refusing_video_keeps_the_call_audio_only(gateway, sipp, clients):
    """The web client adds video; the phone refuses the re-INVITE carrying it (488): the
    call goes on with audio, and the next re-INVITE (hold) offers no video again (sipp
    checks both offers)."""
    from tests.e2e.test_hold import check_tone_after, hold

    far = sipp.scenario(
        "uas_refuse_video", "uas_refuse_video.xml", None, port=gateway.pbx_port,
        extra=["-rtp_echo"],
    )  # fmt: skip
    sipp.wait_bound(far, gateway.pbx_port)
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("5555", freq=1000.0)
    await call.wait_state("active", timeout=20)
    await call.add_video()
    await asyncio.sleep(1.0)  # the gateway's re-INVITE with video, refused
    await check_tone_after(call, 1000.0, "echo after the phone refused video")
    await hold(call, "hold", "held")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0, far.logs()[-3000:]


async def test_bad_re_offers_are_refused_and_the_call_goes_on(gateway, clients):
    """Broken re-offers mid-call (not SDP, no media, the audio m-line gone, a wrong
    fingerprint) are each refused with the call unchanged; audio keeps crossing."""
    from tests.e2e.test_hold import check_tone_after

    call = await _echo_call(gateway, clients)
    sdp = call.pc.localDescription.sdp
    no_audio = sdp[: sdp.index("m=audio")]
    bad_fingerprint = re.sub(r"a=fingerprint:sha-256 \S+", "a=fingerprint:sha-256 00:11", sdp)
    for bad in ("hello", "v=0\r\n", no_audio, bad_fingerprint):
        refusal = await _refused(call, bad)
        assert refusal["state"] == "active", (bad[:40], refusal)
    assert len(call.answers) == 1
    await check_tone_after(call, 1000.0, "echo after the refused re-offers")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)


async def test_bad_answer_to_the_server_offer_ends_only_that_call(gateway, clients):
    """A client answering the gateway's offer with something that is not an answer to it
    gets the call ended with reason media (not a crash 10 s later); the gateway and the
    client's next call are unaffected."""
    call, incoming = await _alice_calls_bob(gateway, clients)
    await incoming._until(lambda: incoming.offer, 15.0, "media/offer")
    await incoming.send("answer", operation="media", sdp="hello")
    ended = await incoming.wait_state("terminated", timeout=5)
    assert ended.get("reason") == "media", ended
    await call.wait_state("terminated", timeout=10)
    again = await call.client.dial("9000", freq=1000.0)
    await again.wait_state("active", timeout=20)
    await again.wait_audio(1.0)
    await again.hangup()
