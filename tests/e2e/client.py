"""A json-v1 test client built on aiortc (protocols/json-v1.md).

One `JsonV1Client` is one WebSocket connection. It logs in (`register`/`start`), places
calls (`signaling`/`start` + `media`/`offer` with aiortc's complete SDP) and answers
offered ones (`accept`, `media`/`answer`, `answer`). Each call sends a sine tone through
an aiortc audio track (48 kHz mono s16, 20 ms frames paced in real time) and records what
it receives as 48 kHz mono int16. Every message in both directions is kept, so tests can
wait for states and print a transcript on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.audio import SineSource

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
Message = dict[str, Any]


def max_playback_rate(sdp: str | None) -> int | None:
    """The maxplaybackrate the gateway's SDP gives for Opus (RFC 7587), None without."""
    opus = re.search(r"^a=rtpmap:(\d+) opus/", sdp or "", re.M | re.I)
    fmtp = opus and re.search(rf"^a=fmtp:{opus[1]} (.*)$", sdp or "", re.M)
    rate = fmtp and re.search(r"maxplaybackrate=(\d+)", fmtp[1])
    return int(rate[1]) if rate else None


class ToneTrack(MediaStreamTrack):
    """An audio track sending a continuous sine, 20 ms frames paced in real time."""

    kind = "audio"

    def __init__(self, freq: float, amplitude: float = 0.3) -> None:
        super().__init__()
        self.source = SineSource(freq, RATE, amplitude)
        self._start: float | None = None
        self._pts = 0

    def set_frequency(self, freq: float) -> None:
        self.source.freq = float(freq)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += FRAME
            wait = self._start + self._pts / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = self.source.frame(FRAME)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


class PatternTrack(MediaStreamTrack):
    """A video track: a bright bar moving over grey, 320x240 at 30 frames/s in real time."""

    kind = "video"
    WIDTH, HEIGHT, FPS = 320, 240, 30

    def __init__(self) -> None:
        super().__init__()
        self._start: float | None = None
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._n / self.FPS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        image = np.full((self.HEIGHT, self.WIDTH, 3), 60, dtype=np.uint8)
        x = (self._n * 8) % (self.WIDTH - 80)
        image[:, x : x + 80] = (230, 230, 40)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._n * 90000 // self.FPS
        frame.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return frame


class VideoCounter:
    """Pulls decoded frames from a remote video track and counts them (with their sizes)."""

    def __init__(self) -> None:
        self.frames = 0
        self.sizes: set[tuple[int, int]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self, track: MediaStreamTrack) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                return
            if isinstance(frame, av.VideoFrame):
                self.frames += 1
                self.sizes.add((frame.width, frame.height))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class AudioRecorder:
    """Pulls frames from a remote track, stores them as 48 kHz mono int16 with arrival times."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, np.ndarray]] = []
        self.first_frame_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)

    def start(self, track: MediaStreamTrack) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                return
            now = time.monotonic()
            if self.first_frame_at is None:
                self.first_frame_at = now
            for out in self._resampler.resample(frame):
                self.chunks.append((now, out.to_ndarray().reshape(-1).astype(np.int16)))

    def audio(self, since: float | None = None, skip: float = 0.0) -> np.ndarray:
        """Received samples; only chunks that arrived at/after monotonic `since` when given,
        then the first `skip` seconds of that dropped."""
        parts = [a for t, a in self.chunks if since is None or t >= since]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        data = np.concatenate(parts)
        return data[int(skip * RATE) :]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class Call:
    """One call of a client: its peer connection, tone, recorder and statuses."""

    def __init__(self, client: JsonV1Client, identifier: str, direction: str, freq: float) -> None:
        self.client = client
        self.identifier = identifier
        self.direction = direction  # "outgoing" | "incoming"
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tone = ToneTrack(freq)
        self.recorder = AudioRecorder()
        self.start_message: Message | None = None  # server signaling/start (incoming)
        self.offer: str | None = None  # server media/offer (incoming)
        self.answer_sdp: str | None = None  # server media/answer (outgoing)
        self.offers: list[str] = []  # every server media/offer, re-offers included
        self.answers: list[str] = []  # every server media/answer
        self.statuses: list[Message] = []
        self.active_at: float | None = None  # monotonic time of the first `active`
        self._changed = asyncio.Event()
        # video: send a moving pattern (outgoing offer, or answering an offer with video)
        # when `video` is set, restricted to `video_codec` ("video/VP8", "video/H264") if given
        self.video = client.video
        self.video_codec: str | None = client.video_codec
        self.video_counter = VideoCounter()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.recorder.start(track)
            elif track.kind == "video":
                self.video_counter.start(track)

    # state --------------------------------------------------------------------

    @property
    def states(self) -> list[str]:
        return [m.get("state", "") for m in self.statuses]

    @property
    def state(self) -> str | None:
        return self.statuses[-1].get("state") if self.statuses else None

    @property
    def reason(self) -> str | None:
        for m in reversed(self.statuses):
            if "reason" in m:
                return m["reason"]
        return None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_message(self, msg: Message) -> None:
        op, action = msg.get("operation"), msg.get("action")
        if op == "signaling" and action == "status":
            self.statuses.append(msg)
            if msg.get("state") == "active" and self.active_at is None:
                self.active_at = time.monotonic()
        elif op == "signaling" and action == "start":
            self.start_message = msg
        elif op == "media" and action == "offer" and msg.get("sdp"):
            self.offers.append(msg["sdp"])
            self.offer = msg["sdp"]
        elif op == "media" and action == "answer" and msg.get("sdp"):
            self.answers.append(msg["sdp"])
            self.answer_sdp = msg["sdp"]
        self._notify()

    async def _until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"call {self.identifier}: no {what} within {timeout:.0f} s "
                    f"(statuses so far: {self.states})"
                )
            # audio arrives without a notification: poll as well
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def wait_state(self, state: str, timeout: float = 15.0) -> Message:
        """The first status with this state (including ones already received)."""

        def find() -> Message | None:
            return next((m for m in self.statuses if m.get("state") == state), None)

        return await self._until(find, timeout, f"status {state!r}")

    async def wait_audio(self, seconds: float, since: float | None = None, timeout: float = 20.0):
        """Wait until `seconds` of audio arrived after `since` (default: when active)."""

        def enough() -> bool:
            start = since if since is not None else self.active_at
            return self.recorder.audio(since=start).size >= seconds * RATE

        await self._until(enough, timeout, f"{seconds:.1f} s of received audio")

    # actions ------------------------------------------------------------------

    async def send(self, action: str, operation: str = "signaling", **extra: Any) -> None:
        await self.client.send(
            {"operation": operation, "action": action, "identifier": self.identifier, **extra}
        )

    def _add_video(self) -> None:
        transceiver = self.pc.addTransceiver(PatternTrack(), "sendrecv")
        self._prefer_video_codec(transceiver)

    def _prefer_video_codec(self, transceiver: Any) -> None:
        if self.video_codec is None:
            return
        transceiver.setCodecPreferences(
            [
                c
                for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType.lower() in (self.video_codec.lower(), "video/rtx")
            ]
        )

    @property
    def video_frames(self) -> int:
        """Decoded video frames received so far."""
        return self.video_counter.frames

    async def wait_video(self, frames: int, timeout: float = 20.0) -> None:
        await self._until(
            lambda: self.video_frames >= frames, timeout, f"{frames} decoded video frames"
        )

    async def _offer(self) -> None:
        self.pc.addTrack(self.tone)
        if self.video:
            self._add_video()
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)  # aiortc gathers all candidates here
        await self.send("offer", operation="media", sdp=self.pc.localDescription.sdp)

    async def wait_answer(self, timeout: float = 15.0) -> None:
        sdp = await self._until(lambda: self.answer_sdp, timeout, "media/answer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def accept(self) -> None:
        """Incoming: alert (the caller hears ringing)."""
        await self.send("accept")

    async def answer(self, timeout: float = 15.0) -> None:
        """Incoming: answer the server's media offer, then the call."""
        sdp = await self._until(lambda: self.offer, timeout, "media/offer")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self.pc.addTrack(self.tone)  # reuses the offered audio transceiver -> sendrecv
        if self.video:
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "video":
                    transceiver.sender.replaceTrack(PatternTrack())
                    transceiver.direction = "sendrecv"
                    self._prefer_video_codec(transceiver)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        await self.send("answer", operation="media", sdp=self.pc.localDescription.sdp)
        await self.send("answer")

    async def add_video(self, timeout: float = 15.0) -> str:
        """Connected: renegotiate with a video transceiver added (json-v1 §10); the
        server's answer, applied."""
        self.video = True
        self._add_video()
        return await self._reoffer(timeout, "media/answer to the re-offer")

    async def _reoffer(self, timeout: float, what: str) -> str:
        """Send a new local offer as a re-offer; the server's answer, applied."""
        answered = len(self.answers)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send("offer", operation="media", sdp=self.pc.localDescription.sdp)
        sdp = await self._until(
            lambda: self.answers[answered] if len(self.answers) > answered else None,
            timeout,
            what,
        )
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        return sdp

    async def restart_ice(self, timeout: float = 15.0) -> str:
        """Connected: re-offer with new ICE credentials and check the path again, as a
        browser's restartIce() does (json-v1 §10); the server's answer, applied."""
        from rtc.icerestart import IceRestart

        transceiver = self.pc.getTransceivers()[0]
        transport = transceiver.receiver.transport.transport
        await self._until(lambda: transport.state == "completed", timeout, "ICE completed")
        restart = IceRestart(transport)
        sdp = await self._reoffer(timeout, "media/answer to the ICE restart")
        remote = self.pc._RTCPeerConnection__remoteIce[transceiver]  # type: ignore[attr-defined]
        assert await restart.run(remote), "the client's ICE restart failed"
        return sdp

    async def accept_reoffer(self, count: int = 2, timeout: float = 15.0) -> str:
        """Answer the server's `count`-th media offer (a re-offer of a connected call),
        sending the moving pattern on an offered video m-line; that offer."""
        sdp = await self._until(
            lambda: self.offers[count - 1] if len(self.offers) >= count else None,
            timeout,
            f"media/offer #{count}",
        )
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video" and transceiver.sender.track is None:
                transceiver.sender.replaceTrack(PatternTrack())
                transceiver.direction = "sendrecv"
                self._prefer_video_codec(transceiver)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.send("answer", operation="media", sdp=self.pc.localDescription.sdp)
        return sdp

    async def hangup(self, reason: str | None = None) -> None:
        """`terminate` (hang up, decline with reason rejected/busy, or cancel)."""
        extra = {"reason": reason} if reason else {}
        await self.send("terminate", **extra)

    def received_audio(self, since: float | None = None, skip: float = 0.0) -> np.ndarray:
        return self.recorder.audio(since=since, skip=skip)

    async def close(self) -> None:
        await self.recorder.stop()
        await self.video_counter.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()


class JsonV1Client:
    """One json-v1 WebSocket connection."""

    def __init__(self, url: str, *, name: str = "") -> None:
        self.url = url
        self.name = name
        self.ws: ClientConnection | None = None
        self.log: list[tuple[float, str, Any]] = []  # (time, "<"/">"/"!", message or text)
        self.messages: list[Message] = []  # received, parsed
        self.calls: dict[str, Call] = {}
        self.incoming: asyncio.Queue[Call] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.registration: Message | None = None
        self._t0 = time.monotonic()
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self.incoming_freq = 1000.0
        self.video = False  # calls send and receive video (see Call.video)
        self.video_codec: str | None = None

    # connection -----------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        self.ws = await connect(self.url, open_timeout=timeout, max_size=2**20)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                self._record("<", raw)
                try:
                    msg = json.loads(raw)
                except (TypeError, ValueError):
                    continue
                if isinstance(msg, dict):
                    self._dispatch(msg)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            self._record("!", f"closed code={self.close_code} reason={self.close_reason!r}")
            self._closed.set()
            self._notify()

    def _record(self, direction: str, item: Any) -> None:
        self.log.append((time.monotonic() - self._t0, direction, item))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _dispatch(self, msg: Message) -> None:
        self.messages.append(msg)
        op, action, ident = msg.get("operation"), msg.get("action"), msg.get("identifier")
        if op == "register" and action == "status":
            self.registration = msg
        if op in ("signaling", "media") and isinstance(ident, str):
            call = self.calls.get(ident)
            if call is None and op == "signaling" and action == "start":
                call = Call(self, ident, "incoming", self.incoming_freq)
                self.calls[ident] = call
                call._on_message(msg)
                self.incoming.put_nowait(call)
            elif call is not None:
                call._on_message(msg)
        self._notify()

    async def send(self, msg: Message, *, version: Any = 1) -> None:
        """Send one message; `version` is added unless the message has one already."""
        msg = {"version": version, **msg} if "version" not in msg else msg
        await self.send_raw(json.dumps(msg))

    async def send_raw(self, text: str | bytes) -> None:
        assert self.ws is not None
        self._record(">", text)
        await self.ws.send(text)

    async def wait_message(
        self, predicate: Callable[[Message], bool], timeout: float = 10.0, start: int = 0
    ) -> Message:
        """The first received message (from index `start`) matching `predicate`."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.messages[start:]:
                if predicate(msg):
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.name or self.url}: no matching message within {timeout:.0f} s\n"
                    + self.transcript()
                )
            if self._closed.is_set():
                raise ConnectionError(
                    f"connection closed ({self.close_code}) before a matching message\n"
                    + self.transcript()
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_closed(self, timeout: float = 10.0) -> int | None:
        """Wait until the server closed the connection; the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout)
        return self.close_code

    @property
    def is_open(self) -> bool:
        return self.ws is not None and not self._closed.is_set()

    # register -------------------------------------------------------------------

    async def register(self, number: str, display_name: str = "", timeout: float = 10.0) -> Message:
        """`register`/`start`; returns the server's register `status` (any state)."""
        start = len(self.messages)
        await self.send(
            {
                "operation": "register",
                "action": "start",
                "localAddress": {"dialString": number, "displayName": display_name},
                "localSideDescription": "tests/e2e json-v1 client",
            }
        )
        return await self.wait_message(
            lambda m: m.get("operation") == "register" and m.get("action") == "status",
            timeout,
            start,
        )

    async def login(self, number: str, display_name: str = "") -> Message:
        """`register` and insist on state `active`."""
        msg = await self.register(number, display_name)
        if msg.get("state") != "active":
            raise AssertionError(f"login as {number} failed: {msg}\n{self.transcript()}")
        return msg

    # calls ----------------------------------------------------------------------

    async def dial(
        self, number: str, *, freq: float = 1000.0, display_name: str = "", answer_timeout=15.0
    ) -> Call:
        """Place a call: `signaling`/`start` + `media`/`offer`, then apply `media`/`answer`."""
        call = Call(self, str(uuid.uuid4()), "outgoing", freq)
        self.calls[call.identifier] = call
        await call.send("start", remoteAddress={"dialString": number, "displayName": display_name})
        await call._offer()
        await call.wait_answer(answer_timeout)
        return call

    async def wait_incoming(self, timeout: float = 15.0) -> Call:
        try:
            return await asyncio.wait_for(self.incoming.get(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name or self.url}: no incoming call within {timeout:.0f} s\n"
                + self.transcript()
            ) from None

    async def wait_state(self, call_id: str, state: str, timeout: float = 15.0) -> Message:
        return await self.calls[call_id].wait_state(state, timeout)

    async def hangup(self, call_id: str | None = None, reason: str | None = None) -> None:
        """Hang up one call (default: the only/last one)."""
        call = self.calls[call_id] if call_id else list(self.calls.values())[-1]
        await call.hangup(reason)

    def received_audio(self, call_id: str | None = None, **kwargs: Any) -> np.ndarray:
        call = self.calls[call_id] if call_id else list(self.calls.values())[-1]
        return call.received_audio(**kwargs)

    # teardown -------------------------------------------------------------------

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await call.close()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    def transcript(self, limit: int = 200) -> str:
        lines = []
        for t, direction, item in self.log[-limit:]:
            text = item if isinstance(item, str) else repr(item)
            text = _shorten_sdp(text)
            lines.append(f"{t:8.3f} {direction} {text}")
        return "\n".join(lines)


def _shorten_sdp(text: str, keep: int = 400) -> str:
    """Transcripts keep messages readable: long SDP bodies are cut."""
    if '"sdp"' in text and len(text) > keep:
        return text[:keep] + f"... [{len(text)} chars]"
    return text
