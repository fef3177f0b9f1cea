"""
The audio of one call: relays frames between the client leg and the far leg,
resampling where their rates differ, or plays ringback (or another call
progress tone: busy, congestion) to the client while the far end is alerting
or after it failed. A tone can also be mixed into what one leg hears of the
other (call waiting, ``MediaBridge.overlay``).

The cheapest correct pipeline is chosen per frame: between two legs that can
pass payloads through (rtc.ports.PassThroughPort: the WebRTC and RTP legs),
a packet of the codec the other leg sends is relayed undecoded; anything else
is decoded by the leg that received it and encoded by the leg that sends it.
So a call whose legs negotiated the same codec (Opus, PCMU or PCMA both
ways) relays payloads, and a re-negotiation to different codecs (or back)
switches by itself, frame by frame, with no action by the gateway.
"""

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .circuit import ENGAGE_AFTER, Circuit
from .ports import (
    FRAME_MS,
    AudioPort,
    EncodedFrame,
    Gap,
    MediaItem,
    PassThroughPort,
    PlayoutQueue,
    PortClosed,
    PushPort,
    RateFollowingPort,
)
from .resample import Resampler
from .tones import ToneGenerator
from .videolink import VideoLink

if TYPE_CHECKING:
    from .rtpvideo import RtpVideo
    from .webrtcleg import WebRtcLeg

__all__ = ["MediaBridge"]

logger = logging.getLogger(__name__)

# after a stall (suspended loop) restart the clock rather than send a burst
MAX_CLOCK_LAG = 0.1


async def relay(source: AudioPort, sink: AudioPort) -> None:
    """
    Copy frames from source to sink until either port closes; payloads pass
    through undecoded where both are PassThroughPorts and the sink sends the
    codec the source received.
    """
    if isinstance(source, PassThroughPort) and isinstance(sink, PassThroughPort):
        await _relay_passing(source, sink)
        return
    resampler = None
    if source.sample_rate != sink.sample_rate:
        # created per relay so that filter state never leaks across connects
        resampler = Resampler(source.sample_rate, sink.sample_rate)
    while True:
        try:
            frame = await source.read()
            sink.write(frame if resampler is None else resampler.process(frame))
        except PortClosed:
            return


async def _relay_passing(source: PassThroughPort, sink: PassThroughPort) -> None:
    def wants(codec: str) -> bool:
        return sink.send_codec == codec

    source.set_passthrough(wants)
    resampler: Resampler | None = None
    passing: bool | None = None  # what the last frame did, to log each change once

    def mode(now: bool) -> None:
        nonlocal passing
        if now != passing:
            passing = now
            logger.info(
                "%s -> %s: %s",
                type(source).__name__,
                type(sink).__name__,
                f"{sink.send_codec} payloads relayed undecoded" if now else "transcoding",
            )

    try:
        while True:
            try:
                item = await source.read_any()
                if isinstance(item, Gap):
                    sink.write_gap(item.frames)
                    continue
                if isinstance(item, EncodedFrame):
                    if sink.send_codec == item.codec:
                        mode(True)
                        sink.write_encoded(item)
                        continue
                    # the sink's codec changed since the source queued it
                    frame = source.decode_frame(item)
                else:
                    frame = item
                mode(False)
                if source.sample_rate != sink.sample_rate:
                    if (
                        resampler is None
                        or resampler.in_rate != source.sample_rate
                        or resampler.out_rate != sink.sample_rate
                    ):
                        resampler = Resampler(source.sample_rate, sink.sample_rate)
                    frame = resampler.process(frame)
                sink.write(frame)
            except PortClosed:
                return
    finally:
        # unless a newer relay from this source took over meanwhile
        if source.passthrough is wants:
            source.set_passthrough(None)


class PushRelay:
    """
    What ``relay()`` does, without a task: installed as the source's listener
    (rtc.ports.PushPort), each frame the source receives is written to the
    sink in the call that produced it (the source's datagram callback or
    playout timer), passed through undecoded where both are PassThroughPorts
    and the sink sends the codec, else decoded, resampled where the rates
    differ, written.

    Between two PassThroughPorts the relayed packets of a steady stream
    skip even that: the source hands them to ``passed`` (its express way,
    rtc.ports.PassThroughPort) straight from its receive path.
    """

    def __init__(self, source: PushPort, sink: AudioPort) -> None:
        self.source = source
        self.sink = sink
        self._resampler: Resampler | None = None
        self._passing: bool | None = None  # what the last frame did, to log each change once
        self._wants: Callable[[str], bool] | None = None
        self._express: Callable[[str, bytes, float], bool] | None = None
        self._steady = 0  # packets relayed the express way in a row
        # checked once: isinstance() against a runtime-checkable Protocol walks
        # its members each time (tens of microseconds), too slow per frame
        self._passing_sink = sink if isinstance(sink, PassThroughPort) else None
        self._passing_source = source if isinstance(source, PassThroughPort) else None
        passing_source, passing_sink = self._passing_source, self._passing_sink
        if passing_source is not None and passing_sink is not None:

            def wants(codec: str) -> bool:
                return passing_sink.send_codec == codec

            self._wants = wants
            passing_source.set_passthrough(wants)
            # one bound method, so that stop() can tell whether it is still ours
            self._express = self.passed
            passing_source.set_express(self._express)
        source.set_listener(self)

    def stop(self) -> None:
        source = self.source
        if source.listener is self:
            source.set_listener(None)
        # unless a newer relay from this source took over meanwhile
        passing = self._passing_source
        if self._wants is not None and passing is not None and passing.passthrough is self._wants:
            passing.set_passthrough(None)
        if self._express is not None and passing is not None and passing.express is self._express:
            passing.set_express(None)

    def passed(self, codec: str, payload: bytes, now: float) -> bool:
        """
        A payload the source relays undecoded, sent by the sink at once (True),
        or False when the sink does not send ``codec`` that way now: the
        source then queues it for ``__call__`` (which transcodes it, or has
        the sink queue it for its paced sender).
        """
        sink = self._passing_sink
        assert sink is not None
        try:
            if not sink.send_passed(codec, payload, now):
                return False
        except Exception:
            # in the source's receive path: one bad frame must not stop it
            logger.exception("relaying a frame failed")
            return True
        if self._passing is not True:
            self._mode(True)
        steady = self._steady + 1
        if steady >= ENGAGE_AFTER:
            steady = 0
            self._engage(codec, now)
        self._steady = steady
        return True

    def _engage(self, codec: str, now: float) -> None:
        """A steady stream: a circuit (rtc.circuit) relays it from now on, if both legs can."""
        source, sink = self._passing_source, self._passing_sink
        assert source is not None and sink is not None
        try:
            inbound = source.circuit_inbound(codec)
            outbound = sink.circuit_outbound(codec, now) if inbound is not None else None
            if inbound is not None and outbound is not None:
                Circuit(source, inbound, sink, outbound)  # type: ignore[arg-type]
        except Exception:
            # the express way goes on: a circuit is only quicker
            logger.exception("engaging a circuit failed")

    def __call__(self, item: MediaItem) -> None:
        source, sink = self.source, self.sink
        self._steady = 0
        try:
            if isinstance(item, EncodedFrame):  # first: pass-through's every packet
                passing_sink = self._passing_sink
                if passing_sink is not None and passing_sink.send_codec == item.codec:
                    if self._passing is not True:
                        self._mode(True)
                    passing_sink.write_encoded(item)
                    return
                # the sink's codec changed since the source received it
                assert self._passing_source is not None
                frame = self._passing_source.decode_frame(item)
            elif isinstance(item, Gap):
                if self._passing_sink is not None:
                    self._passing_sink.write_gap(item.frames)
                return
            else:
                frame = item
            if self._wants is not None and self._passing is not False:
                self._mode(False)
            if source.sample_rate != sink.sample_rate:
                resampler = self._resampler
                if (
                    resampler is None
                    or resampler.in_rate != source.sample_rate
                    or resampler.out_rate != sink.sample_rate
                ):
                    resampler = self._resampler = Resampler(source.sample_rate, sink.sample_rate)
                frame = resampler.process(frame)
            sink.write(frame)
        except PortClosed:
            self.stop()
        except Exception:
            # in the source's receive path: one bad frame must not stop it
            logger.exception("relaying a frame failed")

    def _mode(self, now: bool) -> None:
        if now != self._passing:
            self._passing = now
            logger.info(
                "%s -> %s: %s",
                type(self.source).__name__,
                type(self.sink).__name__,
                (
                    f"{getattr(self.sink, 'send_codec', None)} payloads relayed undecoded"
                    if now
                    else "transcoding"
                ),
            )


async def paced(produce: Callable[[], npt.NDArray[np.int16]], sink: AudioPort) -> None:
    """Write ``produce()`` to ``sink`` every 20 ms of the loop's clock until it closes."""
    loop = asyncio.get_running_loop()
    next_time = loop.time()
    while True:
        try:
            sink.write(produce())
        except PortClosed:
            return
        next_time += FRAME_MS / 1000
        delay = next_time - loop.time()
        if delay < -MAX_CLOCK_LAG:
            next_time = loop.time()
            delay = 0
        await asyncio.sleep(delay)


async def play_tone(client: AudioPort, tone: str, country: str) -> None:
    await paced(ToneGenerator(tone, country, client.sample_rate).frame, client)


class ToneMixer:
    """
    What a port hears with a call progress tone mixed in (MediaBridge.overlay):
    the relay toward the port writes here instead. This is no PassThroughPort,
    so that relay decodes, as it does toward any port that takes only audio
    (pass-through and its circuit give way as they do for ringback). ``run()``
    writes each frame on to the port the moment it arrives, with the tone's
    next frame added: the far audio keeps its own pace, as without the tone
    (the port's sender paces and stamps it). Only once none has come for
    ``OUTAGE`` does the tone go on alone, a frame per 20 ms (a far end with
    silence suppression sends nothing, and the tone must still be heard).
    Pacing by a clock of its own instead, a frame a little late (ordinary
    jitter) had the tone sent alone in its place and the frame after it: a
    frame too many each time, which the port's send clock dropped later on.
    """

    # no far audio for this long: the tone plays alone (rtc.sendclock's
    # PAUSE, after which a sender starts a new talk spurt)
    OUTAGE = 0.06

    def __init__(self, sink: AudioPort, tone: str, country: str) -> None:
        self.sink = sink
        # the port's rate when the relays started (MediaBridge restarts them on a change)
        self.sample_rate = sink.sample_rate
        self._tone = ToneGenerator(tone, country, self.sample_rate)
        self._playout = PlayoutQueue()

    async def read(self) -> npt.NDArray[np.int16]:
        raise PortClosed  # nothing comes from here: it only mixes what is written

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        self._playout.put(frame)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        playout = self._playout
        alone_after = loop.time() + self.OUTAGE
        while True:
            await playout.wait(alone_after)
            item = playout.pop() if len(playout) else None
            now = loop.time()
            if item is not None:
                alone_after = now + self.OUTAGE  # the tone alone only once it stopped
            else:
                # then a frame per 20 ms, in phase (not drifting by each wake-up's delay)
                alone_after = max(alone_after + FRAME_MS / 1000, now - FRAME_MS / 1000)
            tone = self._tone.frame()
            mixed = tone
            # anything but a frame of the port's rate (one written before a rate
            # change) cannot be mixed: the tone plays alone in its place
            if isinstance(item, np.ndarray) and len(item) == len(tone):
                mixed = np.clip(tone.astype(np.int32) + item, -32768, 32767).astype(np.int16)
            try:
                self.sink.write(mixed)
            except PortClosed:
                return


async def drain(port: AudioPort) -> None:
    """Discard what a port receives, so nothing stale is queued when relaying starts."""
    while True:
        try:
            await port.read()
        except PortClosed:
            return


class MediaBridge:
    """
    The audio of one call between the client leg and the far leg.

    Hold: ``hold()`` stops relaying while keeping the far port, so both legs
    hear silence (their senders fill the gap) and nothing received during
    the hold is replayed afterwards; ``resume()`` relays again. This is
    independent of SDP: the gateway renegotiates directions on the legs
    (``RtpLeg.create_offer("sendonly")``, ``WebRtcLeg.set_direction``) and
    uses hold()/resume() so that no audio crosses meanwhile.

    Video (web-to-web): ``connect_video(a, b)`` links two WebRTC legs' video
    (VideoLink) for as long as audio is relayed: hold(), disconnect() and
    ringback() pause it, resume() and connect() bring it back, close() ends it.

    Tones: ``ringback()`` and ``tone()`` replace the far audio with a call
    progress tone (the far port is let go); ``overlay(port, tone)`` mixes one
    into what the client or the far port hears of the other, for as long as
    audio is relayed, as video is.
    """

    def __init__(self, client: AudioPort) -> None:
        self.client = client
        self.far: AudioPort | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # directions relayed without a task (PushPort sources), and drained ports
        self._relays: list[PushRelay] = []
        self._drained: list[PushPort] = []

        def discard(item: MediaItem) -> None:
            pass

        self._discard: Callable[[MediaItem], None] = discard  # this bridge's drain
        self._held = False
        self._video_legs: tuple[WebRtcLeg | RtpVideo, WebRtcLeg | RtpVideo] | None = None
        self._video: VideoLink | None = None
        # overlay(): (port, tone, country) per port that hears a tone over the other
        self._overlays: list[tuple[AudioPort, str, str]] = []

    @property
    def video(self) -> VideoLink | None:
        """The live video link, if any."""
        return self._video

    def connect_video(self, a: "WebRtcLeg | RtpVideo", b: "WebRtcLeg | RtpVideo") -> None:
        """
        Link the video of two WebRTC legs, of a WebRTC leg and a SIP phone's
        video stream, or of two phones' streams, both ways while audio is
        relayed (idempotent; a no-op as long as either has no video, and it
        follows later negotiations by itself).
        """
        if self._video_legs != (a, b):
            self._unlink_video()
            self._video_legs = (a, b)
        self._sync_video()

    def disconnect_video(self) -> None:
        """Stop linking video (audio unaffected)."""
        self._video_legs = None
        self._unlink_video()

    def _sync_video(self) -> None:
        relaying = self.far is not None and self._running and not self._held
        if self._video_legs is None or not relaying:
            self._unlink_video()
        elif self._video is None:
            self._video = VideoLink(*self._video_legs)

    def _unlink_video(self) -> None:
        video, self._video = self._video, None
        if video is not None:
            video.close()

    @property
    def connected(self) -> bool:
        return self.far is not None

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        """Stop relaying, both ways silent, far port kept (no-op unless connected)."""
        if self.far is None or self._held:
            return
        self._cancel_tasks()
        self._held = True
        self._drain(self.client)
        self._drain(self.far)
        self._sync_video()

    def resume(self) -> None:
        """Relay again after hold() (no-op when not held)."""
        if self.far is None or not self._held:
            return
        self._cancel_tasks()
        self._held = False
        self._relay_both(self.far)
        self._sync_video()

    def ringback(self, country: str = "us") -> None:
        """Client hears generated ringback (far audio ignored)."""
        self.tone("ringback", country)

    def tone(self, tone: str, country: str = "us") -> None:
        """
        Client hears a call progress tone of rtc.tones.TONES ("ringback",
        "busy", "congestion", ...) for ``country``, until connect() or
        disconnect(); far audio is ignored and the far port let go.
        """
        # validate before tearing anything down
        ToneGenerator(tone, country, self.client.sample_rate)
        self._cancel_tasks()
        self.far = None
        self._held = False
        self._start(play_tone(self.client, tone, country))
        self._drain(self.client)
        self._sync_video()

    def overlay(self, port: AudioPort, tone: str | None, country: str = "us") -> None:
        """
        Mix ``tone`` (of rtc.tones.TONES, e.g. "call-waiting") for ``country``
        into what ``port``, the client or the far port, hears of the other,
        whenever audio is relayed (held, ringing back or connected elsewhere
        it waits); None stops it. Idempotent. The direction toward ``port``
        is decoded meanwhile (ToneMixer), so pass-through resumes only after.
        """
        wanted = None if tone is None else (tone, country)
        if wanted is not None:
            ToneGenerator(*wanted, port.sample_rate)  # validate before changing anything
        if self._overlay_for(port) == wanted:
            return
        self._overlays = [o for o in self._overlays if o[0] is not port]
        if wanted is not None:
            self._overlays.append((port, *wanted))
        far = self.far
        relaying = far is not None and self._running and not self._held
        if relaying and (port is self.client or port is far):
            assert far is not None
            self._cancel_tasks()
            self._relay_both(far)

    def connect(self, far: AudioPort) -> None:
        """
        Relay both ways (idempotent; replaces ringback). A client port that can
        follow the far port's rate (the WebRTC leg) is set to it first, so
        nothing resamples; otherwise the relays resample where rates differ.
        """
        if far is self.far and self._running and not self._held:
            return
        self._cancel_tasks()
        if self._video_legs is not None and far not in self._video_legs:
            self.disconnect_video()  # another far party: its video is not linked
        # another far party: what was mixed into what the last one heard is not its
        self._overlays = [o for o in self._overlays if o[0] is self.client or o[0] is far]
        self.far = far
        self._held = False
        self._relay_both(far)
        self._sync_video()

    def disconnect(self) -> None:
        """Stop relaying and ringback at once (hold): each side then hears silence.
        The ports stay open and connect() starts again."""
        self._cancel_tasks()
        self.far = None
        self._sync_video()

    def _follow_rate(self, far: AudioPort) -> None:
        client = self.client
        if isinstance(client, RateFollowingPort) and client.sample_rate != far.sample_rate:
            try:
                client.set_sample_rate(far.sample_rate)
            except ValueError:
                pass  # a rate it cannot take: the relays resample

    async def close(self) -> None:
        """Stop the tasks; the ports stay open."""
        tasks = self._cancel_tasks()
        self.far = None
        self._held = False
        self.disconnect_video()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def _running(self) -> bool:
        return bool(self._tasks or self._relays or self._drained)

    def _start(self, *coros: Coroutine[Any, Any, None]) -> None:
        loop = asyncio.get_running_loop()
        self._tasks += [loop.create_task(coro) for coro in coros]

    def _relay_both(self, far: AudioPort) -> None:
        self._follow_rate(far)
        self._relay(far, self.client)
        self._relay(self.client, far)

    def _overlay_for(self, port: AudioPort) -> tuple[str, str] | None:
        return next(((t, c) for p, t, c in self._overlays if p is port), None)

    def _relay(self, source: AudioPort, sink: AudioPort) -> None:
        """Relay one direction: pushed by the source where it can, else a task;
        through a ToneMixer when the sink hears a tone over it (overlay())."""
        overlay = self._overlay_for(sink)
        if overlay is not None:
            mixer = ToneMixer(sink, *overlay)
            self._start(mixer.run())
            sink = mixer
        if isinstance(source, PushPort):
            self._relays.append(PushRelay(source, sink))
        else:
            self._start(relay(source, sink))

    def _drain(self, port: AudioPort) -> None:
        if isinstance(port, PushPort):
            port.set_listener(self._discard)
            self._drained.append(port)
        else:
            self._start(drain(port))

    def _cancel_tasks(self) -> list[asyncio.Task[None]]:
        relays, self._relays = self._relays, []
        for push in relays:
            push.stop()
        drained, self._drained = self._drained, []
        for port in drained:
            if port.listener is self._discard:
                port.set_listener(None)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        return tasks
