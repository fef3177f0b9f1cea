"""Video on the WebRTC leg and between two legs (web-to-web), with plain aiortc peers
standing in for the browsers."""

import asyncio
import fractions
import re
import time

import numpy as np
import numpy.typing as npt
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from rtc.bridge import MediaBridge
from rtc.videolink import VideoLink
from rtc.webrtcdtmf import TransceiverDtmf
from rtc.webrtcleg import WebRtcLeg
from rtc.webrtcvideo import is_keyframe, offer_has_video
from tests.audio import SineSource, dominant_frequency

from .conftest import read_for, wait_for

WIDTH, HEIGHT = 320, 240
VIDEO_RATE = 90000


class PatternTrack(MediaStreamTrack):
    """A moving bar of one colour on grey, 30 frames/s."""

    kind = "video"

    def __init__(self, colour: tuple[int, int, int]) -> None:
        super().__init__()
        self._colour = np.array(colour, dtype=np.uint8)
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._n / 30 - time.monotonic()))
        image = np.full((HEIGHT, WIDTH, 3), 60, dtype=np.uint8)
        x = (self._n * 8) % (WIDTH - 80)
        image[:, x : x + 80] = self._colour
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._n * VIDEO_RATE // 30
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        self._n += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A sine as 20 ms mono frames, paced."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self._source = SineSource(freq, 48000, 0.3)
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + self._n * 0.02 - time.monotonic()))
        frame = AudioFrame.from_ndarray(
            self._source.frame(960).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = self._n * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self._n += 1
        return frame


class Browser:
    """An aiortc peer with a tone and a coloured pattern, collecting what it receives."""

    def __init__(self, freq: float, colour: tuple[int, int, int], codec: str | None = None):
        self.pc = RTCPeerConnection()
        self.pc.addTrack(ToneTrack(freq))
        self.video_transceiver = self.pc.addTransceiver(PatternTrack(colour), "sendrecv")
        if codec is not None:
            self.video_transceiver.setCodecPreferences(
                [
                    c
                    for c in RTCRtpSender.getCapabilities("video").codecs
                    if c.mimeType.lower() in (codec.lower(), "video/rtx")
                ]
            )
        self.frames: list[npt.NDArray[np.uint8]] = []
        self.audio: list[npt.NDArray[np.int16]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, VideoFrame):
                self.frames.append(np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8))
            else:
                assert isinstance(frame, AudioFrame)
                data = frame.to_ndarray().reshape(-1, frame.layout.nb_channels)[:, 0]
                self.audio.append(data.astype(np.int16))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, offer: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


def lit_frames(frames: list[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.uint8]]:
    """Frames that are not black (the decoder's output before a keyframe, or nothing)."""
    return [f for f in frames if f.mean() > 20]


def dominant_channel(frame: npt.NDArray[np.uint8]) -> int:
    """0 red, 1 green, 2 blue: the bar's colour."""
    return int(np.argmax(frame.reshape(-1, 3).astype(np.int64).sum(axis=0)))


async def call(codec_a: str | None = None, codec_b: str | None = None):
    """PA -> leg A (client offer), leg B -> PB (gateway offer with video), both connected."""
    pa = Browser(1000, (230, 20, 20), codec_a)
    pb = Browser(600, (20, 20, 230), codec_b)
    a, b = WebRtcLeg(), WebRtcLeg()
    offer = await pa.offer()
    assert offer_has_video(offer)
    await pa.accept(await a.accept_offer(offer))
    await b.accept_answer(await pb.answer(await b.create_offer(video=True)))
    await wait_for(lambda: a.connection_state == b.connection_state == "connected", 10)
    await wait_for(lambda: pa.pc.connectionState == pb.pc.connectionState == "connected", 10)
    return pa, pb, a, b


async def test_keyframe_detection() -> None:
    assert is_keyframe("video/VP8", bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]))
    assert not is_keyframe("video/VP8", bytes([0x31, 0x02, 0x00]))
    assert is_keyframe("video/H264", b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x65\x88")
    assert not is_keyframe("video/H264", b"\x00\x00\x00\x01\x41\x9a")
    assert not is_keyframe("video/VP8", b"")


async def test_offers_and_answers() -> None:
    leg = WebRtcLeg()
    audio_only = WebRtcLeg()
    try:
        offer = await leg.create_offer(video=True)
        video_line = next(line for line in offer.splitlines() if line.startswith("m=video"))
        assert "a=rtpmap:97 VP8/90000" in offer
        assert "H264/90000" in offer
        # audio leads (its m-line is the BUNDLE's first) and VP8 is preferred
        assert offer.index("m=audio") < offer.index("m=video")
        assert video_line.split()[3] == "97"
        assert not leg.has_video  # not negotiated yet
        assert not offer_has_video(await audio_only.create_offer())
        assert audio_only.video is None and not audio_only.has_video
        assert audio_only.video_track is None
        audio_only.set_video_source(None)  # no-op without video
    finally:
        await leg.close()
        await audio_only.close()


async def test_rejected_video_is_not_video() -> None:
    a = WebRtcLeg()
    browser = RTCPeerConnection()
    try:
        browser.addTransceiver("audio", "sendrecv")
        offer = await a.create_offer(video=True)
        await browser.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await browser.setLocalDescription(await browser.createAnswer())
        # reject the video m-line as a browser without a camera policy would
        answer = re.sub(r"m=video \d+ ", "m=video 0 ", browser.localDescription.sdp)
        await a.accept_answer(answer)
        assert not a.has_video
        assert a.video_codec is None
    finally:
        await a.close()
        await browser.close()


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_video_both_ways_through_two_legs_with_audio(codec: str) -> None:
    pa, pb, a, b = await call(codec, codec)
    bridge = MediaBridge(a)
    link = VideoLink(a, b)
    try:
        assert a.has_video and b.has_video
        assert a.video_codec == b.video_codec == codec
        assert link.active and link.forwarding  # same codec: no transcoding
        assert a.video is not None and b.video is not None
        assert not a.video._tap.decode and not b.video._tap.decode  # nothing decoded
        bridge.connect(b)

        await wait_for(lambda: len(lit_frames(pb.frames)) >= 20, 10)
        await wait_for(lambda: len(lit_frames(pa.frames)) >= 20, 10)
        # PB sees PA's red bar, PA sees PB's blue one, moving
        at_b, at_a = lit_frames(pb.frames), lit_frames(pa.frames)
        assert dominant_channel(at_b[-1]) == 0
        assert dominant_channel(at_a[-1]) == 2
        assert not np.array_equal(at_b[-1], at_b[-10])
        assert at_b[-1].shape == (HEIGHT, WIDTH, 3)

        # audio alongside, both ways
        pa.audio.clear()
        pb.audio.clear()
        await asyncio.sleep(1.0)
        assert dominant_frequency(np.concatenate(pb.audio)[-24000:], 48000) == pytest.approx(
            1000, abs=5
        )
        assert dominant_frequency(np.concatenate(pa.audio)[-24000:], 48000) == pytest.approx(
            600, abs=5
        )
        # the legs' audio statistics leave video out
        stats = await a.stats()
        assert stats.codec == "audio/opus"
        assert stats.packets_received < 120
    finally:
        link.close()
        await bridge.close()
        await a.close()
        await b.close()
        await pa.close()
        await pb.close()


async def test_keyframe_request_is_forwarded() -> None:
    pa, pb, a, b = await call()
    link = VideoLink(a, b)
    try:
        await wait_for(lambda: len(lit_frames(pb.frames)) >= 5, 10)
        assert a.video is not None
        requests: list[float] = []
        sender = pa.video_transceiver.sender
        original = sender._send_keyframe

        def spy() -> None:
            requests.append(time.monotonic())
            original()

        sender._send_keyframe = spy  # type: ignore[method-assign]
        # PB's receiver reports picture loss to leg B's sender
        receiver = pb.video_transceiver.receiver
        ssrc = next(s.source for s in receiver.getSynchronizationSources())
        await asyncio.sleep(0.4)  # past the rate limit of the link's own request
        assert requests == []
        await receiver._send_rtcp_pli(ssrc)
        await wait_for(lambda: len(requests) >= 1, 3)
    finally:
        link.close()
        await a.close()
        await b.close()
        await pa.close()
        await pb.close()


async def test_different_codecs_are_transcoded() -> None:
    pa, pb, a, b = await call("video/VP8", "video/H264")
    link = VideoLink(a, b)
    try:
        assert a.video_codec == "video/VP8" and b.video_codec == "video/H264"
        assert link.active and not link.forwarding
        await wait_for(lambda: len(lit_frames(pb.frames)) >= 10, 10)
        await wait_for(lambda: len(lit_frames(pa.frames)) >= 10, 10)
        assert dominant_channel(lit_frames(pb.frames)[-1]) == 0
        assert dominant_channel(lit_frames(pa.frames)[-1]) == 2
    finally:
        link.close()
        await a.close()
        await b.close()
        await pa.close()
        await pb.close()


async def test_link_is_noop_without_video_and_unlinks_on_close() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    pa = Browser(1000, (230, 20, 20))
    try:
        # a has video, b is audio-only
        await pa.accept(await a.accept_offer(await pa.offer()))
        link = VideoLink(a, b)
        assert a.has_video and not b.has_video
        assert not link.active
        assert a.video is not None and a.video.outgoing.source is None
        link.close()
        link.close()
    finally:
        await a.close()
        await b.close()
        await pa.close()


async def test_video_track_decodes_and_link_stops_on_close() -> None:
    pa, pb, a, b = await call()
    link = VideoLink(a, b)
    try:
        track = a.video_track
        assert track is not None and a.video_track is track
        frame = await asyncio.wait_for(track.recv(), 5)
        assert isinstance(frame, VideoFrame)
        await wait_for(lambda: len(lit_frames(pb.frames)) >= 5, 10)
        assert b.video is not None and b.video.outgoing.source is not None
        await a.close()
        # closing leg A unlinks: B sends nothing any more
        assert not link.active
        assert b.video.outgoing.source is None
    finally:
        link.close()
        await a.close()
        await b.close()
        await pa.close()
        await pb.close()


async def test_audio_only_legs_unchanged() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        offer = await a.create_offer()
        assert "m=video" not in offer
        await a.accept_answer(await b.accept_offer(offer))
        await wait_for(lambda: a.connection_state == b.connection_state == "connected", 10)
        link = VideoLink(a, b)
        assert not link.active
        link.close()
        assert (await read_for(b, 0.1)) is not None
    finally:
        await a.close()
        await b.close()


async def test_dtmf_to_a_browser_offering_video_first() -> None:
    """BUNDLE then puts the audio on the video m-line's transport: DTMF must follow it."""
    pc = RTCPeerConnection()
    pc.addTransceiver(PatternTrack((230, 20, 20)), "sendrecv")
    audio = pc.addTransceiver(ToneTrack(1000), "sendrecv")
    digits: list[str] = []
    browser_dtmf = TransceiverDtmf(audio, lambda: None)
    browser_dtmf.on_dtmf = digits.append
    leg = WebRtcLeg()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        assert offer.index("m=video") < offer.index("m=audio")
        answer = await leg.accept_offer(offer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_for(lambda: leg.connection_state == "connected", 10)
        assert leg.has_video and leg.dtmf_negotiated
        leg.send_dtmf("19#", duration_ms=60)
        await wait_for(lambda: len(digits) >= 3, 5)
        assert "".join(digits) == "19#"
    finally:
        await leg.close()
        await pc.close()


async def test_bridge_links_video_while_relaying() -> None:
    pa, pb, a, b = await call()
    bridge = MediaBridge(a)
    try:
        assert a.video is not None and b.video is not None
        bridge.ringback()
        bridge.connect_video(a, b)
        assert bridge.video is None  # not while the far end is alerting
        bridge.connect(b)
        assert bridge.video is not None and bridge.video.forwarding
        await wait_for(lambda: len(lit_frames(pb.frames)) >= 5, 10)

        bridge.hold()
        assert bridge.video is None
        assert a.video.outgoing.source is None and b.video.outgoing.source is None
        await asyncio.sleep(0.3)
        count = len(pb.frames)
        await asyncio.sleep(0.5)
        assert len(pb.frames) <= count + 2  # nothing sent to PB while held

        bridge.resume()
        assert bridge.video is not None
        count = len(lit_frames(pb.frames))
        await wait_for(lambda: len(lit_frames(pb.frames)) >= count + 10, 10)
        await wait_for(lambda: len(lit_frames(pa.frames)) >= 5, 10)

        await bridge.close()
        assert bridge.video is None and b.video.outgoing.source is None
    finally:
        await bridge.close()
        await a.close()
        await b.close()
        await pa.close()
        await pb.close()
