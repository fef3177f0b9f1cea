import asyncio
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import pytest

from rtc.bridge import MediaBridge
from rtc.ports import FrameQueue, PortClosed
from rtc.rtpleg import RtpLeg
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, rms_dbfs

from .conftest import read_for, wait_for, write_paced


class QueuePort:
    """An in-memory AudioPort: tests feed ``incoming`` and inspect ``written``."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.incoming = FrameQueue(1000)
        self.written: list[npt.NDArray[np.int16]] = []
        self.closed = False

    async def read(self) -> npt.NDArray[np.int16]:
        return await self.incoming.get()

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        if self.closed:
            raise PortClosed
        self.written.append(frame)

    def close(self) -> None:
        self.closed = True
        self.incoming.close()


class Call:
    """browser <-WebRTC-> [client leg | bridge | far leg] <-RTP-> phone"""

    def __init__(self) -> None:
        self.browser = WebRtcLeg()
        self.client = WebRtcLeg()
        self.bridge = MediaBridge(self.client)

    async def setup(self) -> None:
        self.far = await RtpLeg.open()
        self.phone = await RtpLeg.open()
        answer = await self.client.accept_offer(await self.browser.create_offer())
        await self.browser.accept_answer(answer)
        self.far.apply_answer(self.phone.create_answer(self.far.create_offer()))
        await wait_for(lambda: self.browser.connection_state == "connected", 10)

    async def close(self) -> None:
        await self.bridge.close()
        for leg in (self.browser, self.client):
            await leg.close()
        for rtp in (self.far, self.phone):
            await rtp.close()


@pytest.fixture
async def call() -> AsyncIterator[Call]:
    call = Call()
    await call.setup()
    yield call
    await call.close()


async def test_transcodes_opus_48k_to_pcmu_8k_and_back(call: Call) -> None:
    call.bridge.connect(call.far)
    call.bridge.connect(call.far)  # idempotent
    assert call.client.codec == "audio/opus"
    assert call.far.codec == "PCMU"

    writers = asyncio.gather(
        write_paced(call.browser, SineSource(1000, 48000, 0.3), 1.5),
        write_paced(call.phone, SineSource(700, 8000, 0.3), 1.5),
    )
    at_phone, at_browser = await asyncio.gather(
        read_for(call.phone, 1.5), read_for(call.browser, 1.5)
    )
    await writers

    tail = at_phone[-4000:]
    assert len(tail) == 4000
    assert dominant_frequency(tail, 8000) == pytest.approx(1000, abs=5)
    assert band_energy_ratio(tail, 8000, 1000) > 0.99
    assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)

    tail = at_browser[-24000:]
    assert len(tail) == 24000
    assert dominant_frequency(tail, 48000) == pytest.approx(700, abs=5)
    assert band_energy_ratio(tail, 48000, 700) > 0.99
    assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)


async def test_ringback_then_connect(call: Call) -> None:
    call.bridge.ringback("us")
    writer = asyncio.ensure_future(write_paced(call.phone, SineSource(700, 8000, 0.3), 1.8))
    # far audio is ignored while ringing back, even when the far leg has audio
    ringing = await read_for(call.browser, 1.0)
    tail = ringing[-19200:]
    assert band_energy_ratio(tail, 48000, 440, 15) + band_energy_ratio(tail, 48000, 480, 15) > 0.95

    call.bridge.connect(call.far)
    connected = await read_for(call.browser, 0.8)
    await writer
    assert dominant_frequency(connected[-19200:], 48000) == pytest.approx(700, abs=5)


async def test_relay_ends_quietly_when_ports_close() -> None:
    client = QueuePort(48000)
    far = QueuePort(8000)
    bridge = MediaBridge(client)
    bridge.connect(far)
    source = SineSource(1000, 8000)
    for _ in range(5):
        far.incoming.put(source.frame(160))
    await wait_for(lambda: len(client.written) == 5)
    assert all(len(frame) == 960 for frame in client.written)

    client.close()
    far.close()
    await asyncio.sleep(0.01)
    assert all(task.done() and task.exception() is None for task in bridge._tasks)
    await bridge.close()


async def test_ringback_survives_closed_client() -> None:
    client = QueuePort(8000)
    bridge = MediaBridge(client)
    bridge.ringback("uk")
    await wait_for(lambda: len(client.written) >= 3)
    client.close()
    await asyncio.sleep(0.05)
    assert all(task.done() for task in bridge._tasks)
    await bridge.close()


async def test_unknown_country_is_refused() -> None:
    bridge = MediaBridge(QueuePort(8000))
    with pytest.raises(ValueError):
        bridge.ringback("atlantis")
    await bridge.close()


async def test_hold_stops_relaying_and_resume_restarts_it() -> None:
    client, far = QueuePort(8000), QueuePort(8000)
    bridge = MediaBridge(client)
    try:
        bridge.hold()  # not connected: nothing to hold
        assert not bridge.held
        bridge.connect(far)
        frame = SineSource(1000, 8000, 0.3).frame(160)
        far.incoming.put(frame)
        await wait_for(lambda: len(client.written) == 1)

        bridge.hold()
        assert bridge.held and bridge.connected
        for _ in range(3):
            far.incoming.put(frame)
            client.incoming.put(frame)
        await asyncio.sleep(0.05)
        assert len(client.written) == 1 and far.written == []
        # what arrived during the hold was drained, not replayed on resume
        assert len(far.incoming) == len(client.incoming) == 0

        bridge.resume()
        assert not bridge.held
        far.incoming.put(frame)
        client.incoming.put(frame)
        await wait_for(lambda: len(client.written) == 2 and len(far.written) == 1)
        bridge.connect(far)  # idempotent after resume
        bridge.hold()
        bridge.connect(far)  # connect also ends a hold
        assert not bridge.held
    finally:
        await bridge.close()
