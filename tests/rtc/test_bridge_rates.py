"""
The WebRTC leg follows the far leg's rate: Opus is encoded from and decoded to
8 kHz on a G.711 call and 16 kHz on a G.722 call, so nothing resamples.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

import rtc.bridge
import rtc.webrtcleg
from rtc.bridge import MediaBridge
from rtc.opus import OpusDecoder, OpusEncoder
from rtc.rtpleg import RtpLeg
from rtc.webrtcleg import WebRtcLeg
from tests.audio import (
    SineSource,
    band_energy_ratio,
    dominant_frequency,
    normalized_xcorr,
    rms_dbfs,
    sine,
    speech_like,
)

from .conftest import read_for, wait_for, write_paced


class NoResampler:
    def __init__(self, *args: Any) -> None:
        raise AssertionError(f"a resampler was created {args}")


async def setup_call(codec: str) -> tuple[WebRtcLeg, WebRtcLeg, MediaBridge, RtpLeg, RtpLeg]:
    browser, client = WebRtcLeg(), WebRtcLeg()
    far = await RtpLeg.open(codecs=(codec,))
    phone = await RtpLeg.open(codecs=(codec,))
    await browser.accept_answer(await client.accept_offer(await browser.create_offer()))
    far.apply_answer(phone.create_answer(far.create_offer()))
    await wait_for(lambda: browser.connection_state == "connected", 10)
    return browser, client, MediaBridge(client), far, phone


@pytest.fixture(params=[("PCMU", 8000), ("G722", 16000)])
async def legs(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[WebRtcLeg, WebRtcLeg, MediaBridge, RtpLeg, RtpLeg, int]]:
    codec, rate = request.param
    browser, client, bridge, far, phone = await setup_call(codec)
    try:
        yield browser, client, bridge, far, phone, rate
    finally:
        await bridge.close()
        for leg in (browser, client):
            await leg.close()
        for rtp in (far, phone):
            await rtp.close()


async def test_client_leg_takes_the_far_rate_and_nothing_resamples(
    legs: tuple[WebRtcLeg, WebRtcLeg, MediaBridge, RtpLeg, RtpLeg, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    browser, client, bridge, far, phone, rate = legs
    # neither the bridge nor the client leg may resample (the browser leg, at
    # 48 kHz, decodes as a browser would)
    monkeypatch.setattr(rtc.bridge, "Resampler", NoResampler)
    monkeypatch.setattr(rtc.webrtcleg, "Resampler", NoResampler)
    assert far.sample_rate == rate
    assert client.sample_rate == 48000
    bridge.connect(far)
    assert client.sample_rate == rate
    assert client.codec == "audio/opus"

    writers = asyncio.gather(
        write_paced(browser, SineSource(1000, 48000, 0.3), 1.5),
        write_paced(phone, SineSource(700, rate, 0.3), 1.5),
    )
    at_phone, at_browser = await asyncio.gather(read_for(phone, 1.5), read_for(browser, 1.5))
    await writers

    tail = at_phone[-rate // 2 :]
    assert len(tail) == rate // 2
    assert dominant_frequency(tail, rate) == pytest.approx(1000, abs=5)
    assert band_energy_ratio(tail, rate, 1000) > 0.98
    assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)

    tail = at_browser[-24000:]
    assert len(tail) == 24000
    assert dominant_frequency(tail, 48000) == pytest.approx(700, abs=5)
    assert band_energy_ratio(tail, 48000, 700) > 0.99
    assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)
    assert client.decoded > 50 and client._track.encoded > 50


async def test_rate_follows_a_new_far_leg_and_ringback_uses_it() -> None:
    browser, client, bridge, far, phone = await setup_call("PCMU")
    wide = await RtpLeg.open(codecs=("G722",))
    wide_phone = await RtpLeg.open(codecs=("G722",))
    try:
        wide.apply_answer(wide_phone.create_answer(wide.create_offer()))
        bridge.connect(far)
        assert client.sample_rate == 8000
        bridge.ringback("us")  # ringback at the client's current rate
        ringing = await read_for(browser, 1.0)
        tail = ringing[-19200:]
        assert (
            band_energy_ratio(tail, 48000, 440, 15) + band_energy_ratio(tail, 48000, 480, 15) > 0.9
        )

        bridge.connect(wide)
        assert client.sample_rate == 16000
        writer = asyncio.ensure_future(write_paced(wide_phone, SineSource(5000, 16000, 0.3), 1.2))
        received = await read_for(browser, 1.2)
        await writer
        # 5 kHz: only a 16 kHz path carries it
        assert dominant_frequency(received[-19200:], 48000) == pytest.approx(5000, abs=5)
        with pytest.raises(ValueError):
            client.set_sample_rate(44100)
        with pytest.raises(ValueError):
            client.write(np.zeros(960, np.int16))  # frames are 20 ms at 16 kHz now
    finally:
        await bridge.close()
        for leg in (browser, client):
            await leg.close()
        for rtp in (far, phone, wide, wide_phone):
            await rtp.close()


async def test_g711_browser_at_8k_port_rate_codes_without_aiortc() -> None:
    """A PCMU browser with the port at 8 kHz: our own G.711 both ways, no resampling."""
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        offer = await a.create_offer()
        lines = []
        for line in offer.splitlines():
            if line.startswith("m=audio"):
                line = " ".join(line.split()[:3] + ["0", "126"])
            elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) and not line.startswith(
                ("a=rtpmap:0 ", "a=rtpmap:126 ", "a=fmtp:126 ")
            ):
                continue
            lines.append(line)
        await a.accept_answer(await b.accept_offer("\r\n".join(lines) + "\r\n"))
        assert b.codec == "audio/PCMU"
        b.set_sample_rate(8000)
        await wait_for(lambda: a.connection_state == b.connection_state == "connected", 10)
        writers = asyncio.gather(
            write_paced(a, SineSource(1000, 48000, 0.3), 1.2),
            write_paced(b, SineSource(700, 8000, 0.3), 1.2),
        )
        at_b, at_a = await asyncio.gather(read_for(b, 1.2), read_for(a, 1.2))
        await writers
        assert len(at_b) % 160 == 0
        assert dominant_frequency(at_b[-4000:], 8000) == pytest.approx(1000, abs=5)
        assert rms_dbfs(at_b[-4000:]) == pytest.approx(-13.5, abs=1.5)
        assert dominant_frequency(at_a[-24000:], 48000) == pytest.approx(700, abs=5)
        assert rms_dbfs(at_a[-24000:]) == pytest.approx(-13.5, abs=1.5)
        assert b.decoded > 30 and b._track.encoded > 30
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_opus_codes_at_the_port_rate(rate: int) -> None:
    """libopus straight at 8/16/48 kHz: a speech-like signal survives, delay-aligned."""
    encoder, decoder = OpusEncoder(rate, 32000), OpusDecoder(rate)
    signal = speech_like(2.0, rate)
    n = rate // 50
    out = np.concatenate(
        [decoder.decode(encoder.encode(signal[i : i + n])) for i in range(0, len(signal), n)]
    )
    assert len(out) == len(signal)
    corr, lag = normalized_xcorr(signal[rate // 2 :], out[rate // 2 :], max_lag=rate // 50)
    assert corr > 0.9
    assert 0 <= lag < rate // 100 + 1  # libopus' lookahead, 6.5 ms
    tone = sine(1000, 1.0, rate, 0.3)
    decoded = np.concatenate(
        [decoder.decode(encoder.encode(tone[i : i + n])) for i in range(0, len(tone), n)]
    )
    assert dominant_frequency(decoded[n * 10 :], rate) == pytest.approx(1000, abs=3)
    assert len(decoder.conceal(n)) == n
