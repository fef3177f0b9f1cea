import asyncio
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from rtc.ports import FRAME_MS, AudioPort
from tests.audio import SineSource


async def write_paced(port: AudioPort, source: SineSource, duration: float, lead: int = 0) -> None:
    """Write a sine into a port in real time, one frame per 20 ms, after `lead` frames
    written at once (a cushion, so a sender whose clock ticks in the writer's phase
    never finds its queue empty: tests of the receiving side want no sender gaps)."""
    loop = asyncio.get_running_loop()
    samples = port.sample_rate * FRAME_MS // 1000
    for _ in range(lead):
        port.write(source.frame(samples))
    start = loop.time()
    for n in range(int(duration * 1000 / FRAME_MS)):
        port.write(source.frame(samples))
        await asyncio.sleep(max(0.0, start + (n + 1) * FRAME_MS / 1000 - loop.time()))


async def read_for(port: AudioPort, duration: float) -> npt.NDArray[np.int16]:
    """Everything a port yields during ``duration`` seconds, concatenated."""
    frames: list[npt.NDArray[np.int16]] = []

    async def reader() -> None:
        while True:
            frames.append(await port.read())

    task = asyncio.get_running_loop().create_task(reader())
    await asyncio.sleep(duration)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    if not frames:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate(frames)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)
