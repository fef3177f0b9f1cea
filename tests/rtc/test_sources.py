"""The test-number ports: an echo returns what it is given, a tone is paced and pure."""

import asyncio

import numpy as np

from rtc.ports import PortClosed
from rtc.sources import EchoPort, TonePort
from tests.audio import dominant_frequency


async def test_echo_returns_frames_in_order() -> None:
    port = EchoPort(8000)
    frames = [np.full(160, i, dtype=np.int16) for i in range(3)]
    for f in frames:
        port.write(f)
    for f in frames:
        assert np.array_equal(await port.read(), f)
    port.close()
    try:
        await port.read()
    except PortClosed:
        pass
    else:
        raise AssertionError("read after close must raise PortClosed")


async def test_tone_is_paced_seamless_and_at_its_frequency() -> None:
    port = TonePort(1000.0, 48000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = [await port.read() for _ in range(10)]
    elapsed = loop.time() - start
    # Ten frames are 200 ms of audio; the first is immediate, so >= 180 ms.
    assert elapsed >= 0.17, elapsed
    signal = np.concatenate(frames)
    assert abs(dominant_frequency(signal, 48000) - 1000.0) < 5
    # No discontinuity at frame joins: sample-to-sample steps stay within a sine's slope.
    max_step = 0.25 * 32767 * 2 * np.pi * 1000 / 48000
    assert np.max(np.abs(np.diff(signal.astype(np.int32)))) <= max_step + 2
    port.close()
