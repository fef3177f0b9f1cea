"""
Local far ends for the gateway's test numbers: an echo and a steady tone.

They stand where a remote party would, so the bridge treats them like any
other port.
"""

import asyncio

import numpy as np
import numpy.typing as npt

from .ports import FRAME_MS, FrameQueue, PortClosed, frame_samples

__all__ = ["EchoPort", "TonePort"]

# An echo that lags behind by more than this sounds broken, not delayed.
ECHO_QUEUE_FRAMES = 10
TONE_AMPLITUDE = 0.25  # of full scale, about -15 dBFS
# After a stall (suspended loop) restart the clock rather than send a burst.
MAX_CLOCK_LAG = 0.1


class EchoPort:
    """Returns what is written to it: the frames written are the frames read."""

    def __init__(self, sample_rate: int = 48000) -> None:
        self.sample_rate = sample_rate
        self._queue = FrameQueue(ECHO_QUEUE_FRAMES)

    async def read(self) -> npt.NDArray[np.int16]:
        return await self._queue.get()

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        self._queue.put(frame)

    def close(self) -> None:
        self._queue.close()


class TonePort:
    """A continuous sine, produced at the pace of real time; writes are discarded."""

    def __init__(self, frequency: float = 1000.0, sample_rate: int = 48000) -> None:
        self.sample_rate = sample_rate
        n = frame_samples(sample_rate)
        # Phase from an absolute sample counter keeps frames seamless.
        self._step = 2 * np.pi * frequency / sample_rate
        self._index = np.arange(n)
        self._sent = 0
        self._next: float | None = None
        self._closed = False

    async def read(self) -> npt.NDArray[np.int16]:
        if self._closed:
            raise PortClosed
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next is None or now - self._next > MAX_CLOCK_LAG:
            self._next = now
        delay = self._next - now
        if delay > 0:
            await asyncio.sleep(delay)
        if self._closed:
            raise PortClosed
        self._next += FRAME_MS / 1000
        n = self._index.size
        phase = (self._sent + self._index) * self._step
        self._sent += n
        return np.rint(np.sin(phase) * TONE_AMPLITUDE * 32767).astype(np.int16)

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        pass

    def close(self) -> None:
        self._closed = True
