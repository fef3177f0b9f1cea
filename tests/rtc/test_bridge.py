import asyncio
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import pytest

from rtc.bridge import MediaBridge
from rtc.ports import FrameQueue, PortClosed
from rtc.rtpleg import RtpLeg
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, on_off_runs, rms_dbfs

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


@pytest.mark.parametrize(
    ("tone", "country", "frequencies", "cadence"),
    [("busy", "us", (480, 620), 0.5), ("congestion", "de", (425,), 0.24)],
)
async def test_progress_tone_reaches_the_browser(
    call: Call, tone: str, country: str, frequencies: tuple[int, ...], cadence: float
) -> None:
    """What the far end's failure plays (tone()), as the browser's end of a real WebRTC
    leg receives it: the country's frequencies and cadence (US busy 480+620 Hz, 0.5 s on,
    0.5 s off; German congestion 425 Hz, 0.24 s on and off), far audio ignored."""
    writer = asyncio.ensure_future(write_paced(call.phone, SineSource(700, 8000, 0.3), 2.4))
    call.bridge.connect(call.far)
    await asyncio.sleep(0.3)
    call.bridge.tone(tone, country)
    heard = await read_for(call.browser, 2.3)
    await writer
    runs = on_off_runs(heard, 48000, threshold=300)  # the bursts are about 4600
    while runs and not runs[0][0]:
        runs.pop(0)  # the far party's audio in flight, then the tone
    inner = runs[1:-1]  # the first run may hold the far audio's tail, the last is cut
    assert len(inner) >= 3, runs
    assert [on for on, _ in inner] == [i % 2 == 1 for i in range(len(inner))], runs
    for _, seconds in inner:
        assert seconds == pytest.approx(cadence, abs=0.05), runs
    start = round(sum(s for _, s in runs[:2]) * 48000)  # the second burst
    burst = heard[start + 2400 : start + round(cadence * 48000) - 2400]
    for f in frequencies:
        assert band_energy_ratio(burst, 48000, f, 15) > 0.9 / len(frequencies)
    assert band_energy_ratio(burst, 48000, 700, 30) < 0.01


async def test_call_waiting_tone_mixed_over_the_far_audio(call: Call) -> None:
    """overlay(): the US call-waiting tone (440 Hz, 0.3 s, then 9.7 s off) over what the
    browser hears of the far party, which goes on being heard; the far party hears
    nothing of it; overlay(None) ends it."""
    call.bridge.connect(call.far)
    writers = asyncio.gather(
        write_paced(call.phone, SineSource(700, 8000, 0.3), 2.6),
        write_paced(call.browser, SineSource(1000, 48000, 0.3), 2.6),
    )
    await asyncio.sleep(0.5)
    call.bridge.overlay(call.client, "call-waiting", "us")
    call.bridge.overlay(call.client, "call-waiting", "us")  # idempotent
    at_browser, at_phone = await asyncio.gather(
        read_for(call.browser, 1.0), read_for(call.phone, 1.0)
    )
    call.bridge.overlay(call.client, None)
    after = await read_for(call.browser, 0.8)
    await writers

    blocks = at_browser[: len(at_browser) // 2400 * 2400].reshape(-1, 2400)  # 50 ms each
    with_tone = [band_energy_ratio(b, 48000, 440, 25) > 0.03 for b in blocks]
    first = with_tone.index(True)
    assert first <= 3, with_tone  # at once (what was in flight aside)
    assert 5 <= sum(with_tone) <= 7 and all(with_tone[first : first + 5]), with_tone
    for block in blocks[2:]:
        assert band_energy_ratio(block, 48000, 700, 30) > 0.8  # the far party goes on
    assert band_energy_ratio(at_phone[-4000:], 8000, 440, 25) < 0.001
    assert dominant_frequency(at_phone[-4000:], 8000) == pytest.approx(1000, abs=5)
    assert band_energy_ratio(after[-24000:], 48000, 700, 15) > 0.99


class _Sink:
    """A port that keeps what is written to it, and when."""

    sample_rate = 8000

    def __init__(self) -> None:
        self.frames: list[npt.NDArray[np.int16]] = []
        self.times: list[float] = []

    def write(self, frame: npt.NDArray[np.int16]) -> None:
        self.frames.append(frame)
        self.times.append(asyncio.get_running_loop().time())

    async def read(self) -> npt.NDArray[np.int16]:
        raise PortClosed


async def test_the_tone_mixer_passes_each_far_frame_once_under_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Far frames every 20 ms, every 5th 15 ms late (ordinary jitter): each goes on
    once, as it comes, with nothing in between; once they stop, the tone goes on
    alone a frame per 20 ms. (Paced by a clock of its own, the mixer sent the tone
    alone in place of each late frame and the frame after it: 120 frames for 100.)"""
    from rtc.bridge import ToneMixer
    from rtc.tones import TONES, Cadence

    # a tone that is off all along: only the far audio shows
    monkeypatch.setitem(TONES["call-waiting"], "us", Cadence((440,), (0.02, 1000.0)))
    sink = _Sink()
    mixer = ToneMixer(sink, "call-waiting", "us")  # type: ignore[arg-type]
    task = asyncio.ensure_future(mixer.run())
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    for k in range(100):
        late = 0.015 if k % 5 == 2 else 0.0
        loop.call_at(start + 0.02 * k + late, mixer.write, np.full(160, 100 * (k + 1), np.int16))
    await asyncio.sleep(0.05 + 0.02 * 100 + 0.3)
    task.cancel()
    levels = [int(round(float(f.mean()))) for f in sink.frames]
    far = [i for i, level in enumerate(levels) if level >= 50]
    assert [levels[i] // 100 - 1 for i in far] == list(range(100))
    assert far == list(range(far[0], far[0] + 100))  # nothing written in between
    # after the last far frame: the tone alone (silent here) from 60 ms on, every 20 ms
    after = sink.times[far[-1] + 1 :]
    assert after and after[0] - sink.times[far[-1]] == pytest.approx(0.06, abs=0.006)
    gaps = np.diff(after)
    assert len(gaps) >= 8 and np.all(np.abs(gaps - 0.02) < 0.006), gaps
