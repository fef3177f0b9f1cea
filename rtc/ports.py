"""
The audio port abstraction shared by the RTP leg, the WebRTC leg and the bridge.

A port exchanges 20 ms mono int16 frames at its own sample rate. Reads block
until a frame arrives; writes never block and drop the oldest frame when the
consumer falls behind, because stale audio is worse than lost audio.
"""

import asyncio
from collections import deque
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "FRAME_MS",
    "AudioPort",
    "FrameQueue",
    "PlayoutQueue",
    "PortClosed",
    "frame_samples",
]

FRAME_MS = 20

Frame = npt.NDArray[np.int16]


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


class FrameQueue:
    """
    Bounded queue of received frames for async readers.

    put() drops the oldest frame when full; get() skips frames that waited
    longer than ``max_age`` seconds (nobody was reading, e.g. before the
    bridge connected: relaying them would only add latency) and raises
    PortClosed once the queue is closed.
    """

    def __init__(self, maxlen: int, max_age: float | None = None) -> None:
        self._frames: deque[tuple[float, Frame]] = deque(maxlen=maxlen)
        self._max_age = max_age
        self._waiters: list[asyncio.Future[None]] = []
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: Frame) -> None:
        if self._closed:
            return
        now = asyncio.get_running_loop().time() if self._max_age is not None else 0.0
        self._frames.append((now, frame))
        self._wake()

    async def get(self) -> Frame:
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
        self._frames.clear()
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class PlayoutQueue:
    """
    Frames waiting for a paced sender (the RTP clock or an aiortc track).

    The producer and the sender run on different clocks, so a backlog that
    forms once (a burst, a late start) would otherwise stay as latency forever.
    When the sender found more than ``target`` frames waiting at each of its
    last ``window`` pulls, one frame is dropped: a backlog that bursts cause
    and drain again is left alone, one that stands is trimmed.
    """

    def __init__(self, maxlen: int = 5, target: int = 2, window: int = 25) -> None:
        self._frames: deque[Frame] = deque(maxlen=maxlen)
        self._target = target
        self._window = window
        self._pulls = 0
        self._min_depth = maxlen
        # pops that found nothing (the sender played silence) and frames trimmed
        self.underruns = 0
        self.trimmed = 0

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: Frame) -> None:
        self._frames.append(frame)

    def clear(self) -> None:
        self._frames.clear()

    def pop(self) -> Frame | None:
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
