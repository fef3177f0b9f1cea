"""
The audio port abstraction shared by the RTP leg, the WebRTC leg and the bridge.

A port exchanges 20 ms mono int16 frames at its own sample rate. Reads block
until a frame arrives; writes never block and drop the oldest frame when the
consumer falls behind, because stale audio is worse than lost audio.

Pass-through (PassThroughPort): two legs that negotiated the same codec
exchange 20 ms payloads as they came off the wire (EncodedFrame), so neither
decodes nor encodes; see MediaBridge.
"""

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from .sendclock import FILL_AFTER

__all__ = [
    "FRAME_MS",
    "MAX_GAP_TICKS",
    "AudioPort",
    "EncodedFrame",
    "FrameClock",
    "FrameQueue",
    "Gap",
    "MediaItem",
    "MediaQueue",
    "PassThroughPort",
    "PlayoutQueue",
    "PortClosed",
    "PushPort",
    "RateFollowingPort",
    "frame_samples",
]

FRAME_MS = 20
# how long a paced sender waits past a frame's due time for it to arrive
# before it sends silence in its place
HOLDOFF = 0.01
# after a stall (suspended loop) restart the clock rather than send a burst
MAX_CLOCK_LAG = 0.1
# pass-through: ticks a sender leaves empty (a gap the far decoder conceals, as
# with DTX) before it sends encoded silence again (hold, the far end stopped)
MAX_GAP_TICKS = 3

if TYPE_CHECKING:
    from .circuit import Circuit, Inbound, Outbound

Frame = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """
    20 ms of audio as one RTP payload of ``codec`` (lower-case name: "opus",
    "pcmu", "pcma"), relayed between legs that negotiated the same codec.
    """

    codec: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Gap:
    """
    ``frames`` 20 ms frames of a relayed stream that were lost upstream
    (pass-through cannot conceal them): the sink's RTP timestamps skip them,
    so the far decoder sees the loss and conceals it itself.
    """

    frames: int = 1


MediaItem = Frame | EncodedFrame | Gap
T = TypeVar("T")


class PortClosed(Exception):
    """The port was closed: no more frames will be read."""


def frame_samples(sample_rate: int) -> int:
    return sample_rate * FRAME_MS // 1000


class AudioPort(Protocol):
    """One side of a call's audio."""

    sample_rate: int

    async def read(self) -> Frame:
        """Next 20 ms mono int16 frame; raises PortClosed when closed."""
        ...

    def write(self, frame: Frame) -> None:
        """Queue a 20 ms mono int16 frame at sample_rate (non-blocking)."""
        ...


@runtime_checkable
class RateFollowingPort(AudioPort, Protocol):
    """
    A port that can change its rate to the far port's, so that the bridge
    relays without resampling (the WebRTC leg: Opus codes any rate natively).
    """

    def set_sample_rate(self, rate: int) -> None:
        """Exchange frames at ``rate`` from now on; ValueError when unsupported."""
        ...


class _ItemQueue(Generic[T]):
    """
    Bounded queue of received frames for async readers.

    put() drops the oldest frame when full; get() skips frames that waited
    longer than ``max_age`` seconds (nobody was reading, e.g. before the
    bridge connected: relaying them would only add latency) and raises
    PortClosed once the queue is closed.
    """

    def __init__(self, maxlen: int, max_age: float | None = None) -> None:
        self._frames: deque[tuple[float, T]] = deque(maxlen=maxlen)
        self._max_age = max_age
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False
        self._listener: Callable[[T], None] | None = None

    @property
    def listener(self) -> Callable[[T], None] | None:
        return self._listener

    def set_listener(self, listener: Callable[[T], None] | None) -> None:
        """
        Hand each frame put from now on to ``listener(frame)`` at once, in
        the producer's call, instead of queueing it for get() (None: queue
        again). Frames queued before are handed over first, unless older than
        ``max_age``.
        """
        self._listener = listener
        if listener is None or self._closed:
            return
        if self._max_age is not None:
            oldest = asyncio.get_running_loop().time() - self._max_age
            while self._frames and self._frames[0][0] < oldest:
                self._frames.popleft()
        while self._frames and self._listener is listener:
            listener(self._frames.popleft()[1])

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: T) -> None:
        if self._closed:
            return
        listener = self._listener
        if listener is not None:
            listener(frame)
            return
        now = asyncio.get_running_loop().time() if self._max_age is not None else 0.0
        self._frames.append((now, frame))
        self._wake()

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        while True:
            if self._max_age is not None:
                oldest = loop.time() - self._max_age
                while self._frames and self._frames[0][0] < oldest:
                    self._frames.popleft()
            if self._frames:
                return self._frames.popleft()[1]
            if self._closed:
                raise PortClosed
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)

    def clear(self) -> None:
        """Forget the queued frames (e.g. audio from before a hold)."""
        self._frames.clear()

    def close(self) -> None:
        self._closed = True
        self._listener = None
        self._frames.clear()
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class FrameQueue(_ItemQueue[Frame]):
    __doc__ = _ItemQueue.__doc__


class MediaQueue(_ItemQueue[MediaItem]):
    """A FrameQueue that may also hold EncodedFrames (a leg in pass-through)."""


class ReceivingPort(AudioPort):
    """
    What a leg that queues what it receives in ``_queue`` (a MediaQueue) offers:
    ``read()`` (EncodedFrames decoded with the leg's ``decode_frame()``),
    ``read_any()``, ``listener`` and ``set_listener()`` (PushPort,
    PassThroughPort), ``express`` and ``set_express()`` (PassThroughPort: the
    leg's receive path calls ``_express``); RtpLeg and WebRtcLeg share it.
    """

    _queue: "MediaQueue"
    _express: Callable[[str, bytes, float], bool] | None = None
    # the circuits (rtc.circuit) this leg receives for and sends for, if engaged
    _circuit_in: "Circuit | None" = None
    _circuit_out: "Circuit | None" = None

    async def read(self) -> Frame:
        """The next frame received, EncodedFrames decoded, Gaps skipped."""
        while True:
            item = await self._queue.get()
            if isinstance(item, EncodedFrame):
                return self.decode_frame(item)
            if not isinstance(item, Gap):
                return item

    def decode_frame(self, frame: EncodedFrame) -> Frame:
        raise NotImplementedError

    async def read_any(self) -> MediaItem:
        return await self._queue.get()

    @property
    def listener(self) -> Callable[[MediaItem], None] | None:
        return self._queue.listener

    def set_listener(self, listener: Callable[[MediaItem], None] | None) -> None:
        """Received frames go to ``listener`` as they come (PushPort)."""
        self._queue.set_listener(listener)

    @property
    def express(self) -> Callable[[str, bytes, float], bool] | None:
        return self._express

    def set_express(self, send: Callable[[str, bytes, float], bool] | None) -> None:
        self._release_circuits()
        self._express = send

    def _sync_circuits(self) -> None:
        """The leg's counters and positions up to date (before they are read)."""
        if self._circuit_in is not None:
            self._circuit_in.sync()
        if self._circuit_out is not None:
            self._circuit_out.sync()

    def _tick_circuit_out(self, now: float) -> float | None:
        """
        For the leg's filler tick at ``now``: while the circuit sending through
        it is steady (rtc.circuit.Circuit.due), when to tick next, with
        nothing else to do; otherwise None, once what the leg sends is up to
        date (synced) for the tick's whole work. The circuit it receives on is
        the other leg's outgoing one, which that leg's tick syncs as often
        (syncing each circuit from both legs' ticks doubled a cost that showed
        at hundreds of calls: bench/README.md, round 12).
        """
        circuit = self._circuit_out
        if circuit is None:
            return None
        wait = circuit.due(FILL_AFTER)  # the legs' send clocks fill after as long
        if wait is not None:
            return now + wait
        circuit.sync()
        return None

    def _release_circuit_out(self) -> None:
        """Before what the leg sends changes hands (audio written to it): the
        circuit sending through it stops, the one it receives on goes on."""
        if self._circuit_out is not None:
            self._circuit_out.release()

    def _release_circuits(self) -> None:
        """Before the leg's state changes: its own paths take over again."""
        if self._circuit_in is not None:
            self._circuit_in.release()
        if self._circuit_out is not None:
            self._circuit_out.release()


@runtime_checkable
class PushPort(AudioPort, Protocol):
    """
    A port that can hand what it receives to a listener as it arrives (in the
    call that produced it: a datagram callback, a playout timer) instead of
    queueing it for ``read()``. MediaBridge relays this way, with no task per
    direction. ``set_listener(listener)``: from now on received frames (and
    EncodedFrames of pass-through) go to ``listener(item)``; None: queued
    again for read().
    """

    @property
    def listener(self) -> Callable[[MediaItem], None] | None: ...

    def set_listener(self, listener: Callable[[MediaItem], None] | None) -> None: ...


@runtime_checkable
class PassThroughPort(AudioPort, Protocol):
    """
    A leg that can relay payloads without decoding or encoding them.

    ``send_codec``: the lower-case name of the codec it sends now (None before
    negotiation). ``set_passthrough(wants)``: from now on, a received 20 ms
    packet whose codec ``wants(codec)`` accepts is queued as an EncodedFrame
    instead of being decoded (None: decode everything, the default).
    ``read_any()`` yields frames or EncodedFrames as queued (``read()`` decodes
    an EncodedFrame itself); ``decode_frame()`` decodes one of this leg's
    EncodedFrames to a frame at ``sample_rate``, with the leg's own decoder;
    ``write_encoded()`` sends an EncodedFrame of ``send_codec`` as it is;
    ``write_gap(frames)`` tells the leg that frames of what it relays were
    lost upstream (a Gap), so its timestamps skip them.

    The express way, for the steady state of a relayed stream (MediaBridge
    sets it up): ``set_express(send)``: from now on, each packet that
    pass-through takes and that plays at once (in order, nothing held) goes
    to ``send(codec, payload, now)`` in the receiving call, with no
    EncodedFrame, queue or listener in between; when ``send`` returns False
    it is queued as usual (None: always queued). ``send_passed(codec,
    payload, now)`` is a sink's side of it: send a payload received at
    ``now`` as it is (True, also when it was dropped as ``write_encoded``
    would drop it), or False, having done nothing, when the leg does not
    send ``codec`` that way now (its caller then queues an EncodedFrame).

    Once the express way has carried a steady stream for a while, MediaBridge
    engages a circuit (rtc.circuit): ``circuit_inbound(codec)`` is the
    receiving leg's side of it and ``circuit_outbound(codec, now)`` the
    sending leg's, each None when it cannot be taken now.
    """

    @property
    def send_codec(self) -> str | None: ...

    @property
    def passthrough(self) -> Callable[[str], bool] | None: ...

    def set_passthrough(self, wants: Callable[[str], bool] | None) -> None: ...

    async def read_any(self) -> MediaItem: ...

    def decode_frame(self, frame: EncodedFrame) -> Frame: ...

    def write_encoded(self, frame: EncodedFrame) -> None: ...

    def write_gap(self, frames: int) -> None: ...

    def set_express(self, send: Callable[[str, bytes, float], bool] | None) -> None: ...

    @property
    def express(self) -> Callable[[str, bytes, float], bool] | None: ...

    def send_passed(self, codec: str, payload: bytes, now: float) -> bool: ...

    def circuit_inbound(self, codec: str) -> "Inbound | None": ...

    def circuit_outbound(self, codec: str, now: float) -> "Outbound | None": ...


class PlayoutQueue:
    """
    Frames waiting for a paced sender (the browser track while aiortc sends it:
    before DTLS is up and over TURN; see rtc.sendclock for the usual way).

    The producer and the sender run on different clocks, so a backlog that
    forms once (a burst, a late start) would otherwise stay as latency forever.
    When the sender found more than ``target`` frames waiting at each of its
    last ``window`` pulls, one frame is dropped: a backlog that bursts cause
    and drain again is left alone, one that stands is trimmed.
    """

    def __init__(self, maxlen: int = 5, target: int = 2, window: int = 25) -> None:
        self._frames: deque[MediaItem] = deque(maxlen=maxlen)
        self._target = target
        self._window = window
        self._pulls = 0
        self._min_depth = maxlen
        # pops that found nothing (the sender played silence) and frames trimmed
        self.underruns = 0
        self.trimmed = 0
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: MediaItem) -> None:
        self._frames.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, deadline: float) -> None:
        """Until a frame is queued or the loop clock reaches ``deadline``."""
        if self._frames:
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(deadline, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def clear(self) -> None:
        self._frames.clear()

    def pop(self) -> MediaItem | None:
        self._min_depth = min(self._min_depth, len(self._frames))
        self._pulls += 1
        if self._pulls >= self._window:
            if self._min_depth > self._target and self._frames:
                self._frames.popleft()
                self.trimmed += 1
            self._pulls = 0
            self._min_depth = len(self._frames)
        if not self._frames:
            self.underruns += 1
            return None
        return self._frames.popleft()


def _wake(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class FrameClock:
    """
    The 20 ms clock of a paced sender (the browser track while aiortc sends
    it), phase-locked to the frames it relays instead of free-running.

    ``next()`` returns the next frame to send (None: send silence). When the
    queue is empty the frame is released the moment it arrives and the clock
    re-phases to that arrival, so a relayed frame does not wait for the next
    tick of an unrelated clock (up to 20 ms, 10 ms on average). A backlog is
    paced at one frame per 20 ms. When nothing arrives by ``holdoff`` past the
    due time, None is returned (silence keeps the stream going) and the clock
    keeps its phase.
    """

    def __init__(self, playout: PlayoutQueue, holdoff: float = HOLDOFF) -> None:
        self._playout = playout
        self._holdoff = holdoff
        self._due: float | None = None

    async def next(self) -> MediaItem | None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._due
        if due is None or due < now - MAX_CLOCK_LAG:
            due = now
        if len(self._playout):
            # a backlog: one frame per period
            if due > now:
                await asyncio.sleep(due - now)
            self._due = due + FRAME_MS / 1000
            return self._playout.pop()
        await self._playout.wait(due + self._holdoff)
        if len(self._playout):
            # arrived while we waited: send it now, re-phase to its arrival
            self._due = loop.time() + FRAME_MS / 1000
            return self._playout.pop()
        self._due = due + FRAME_MS / 1000
        return self._playout.pop()  # None; counts the underrun
