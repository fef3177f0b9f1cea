"""G.722 toward SIP: the codec, offer/answer selection, wideband audio through RtpLegs."""

import asyncio

import numpy as np
import pytest

from rtc.bridge import MediaBridge
from rtc.g722 import G722Decoder, G722Encoder
from rtc.rtpleg import RtpLeg
from rtc.sdp import SdpError, SessionDescription
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, rms_dbfs

from .conftest import read_for, wait_for, write_paced
from .test_bridge import QueuePort

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP %s\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\na=sendrecv\r\n"
)


def test_g722_codec_round_trip_keeps_a_5khz_tone() -> None:
    encoder, decoder = G722Encoder(), G722Decoder()
    source = SineSource(5000, 16000, 0.3)
    decoded = []
    for _ in range(25):
        payload = encoder(source.frame(320))
        assert len(payload) == 160
        samples = decoder(payload)
        assert samples.dtype == np.int16 and len(samples) == 320
        decoded.append(samples)
    out = np.concatenate(decoded)[1600:]
    assert dominant_frequency(out, 16000) == pytest.approx(5000, abs=5)
    assert rms_dbfs(out) == pytest.approx(-13.5, abs=1.5)
    assert decoder(b"").size == 0


async def test_offer_golden_with_g722_first() -> None:
    leg = await RtpLeg.open(codecs=("G722", "PCMU", "PCMA"))
    try:
        assert leg.codecs == ("G722", "PCMU", "PCMA")
        sdp = leg.create_offer().decode()
        media = sdp[sdp.index("m=audio") :]
        assert media == (
            f"m=audio {leg.local_port} RTP/AVP 9 0 8 101\r\n"
            "a=rtpmap:9 G722/8000\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-16\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n"
        )
        assert leg.sample_rate == 8000  # nothing negotiated yet
    finally:
        await leg.close()


async def test_default_offer_has_no_g722() -> None:
    leg = await RtpLeg.open()
    try:
        assert SessionDescription.parse(leg.create_offer()).audio().formats == ["0", "8", "101"]
    finally:
        await leg.close()


@pytest.mark.parametrize(
    ("codecs", "formats", "chosen", "rate"),
    [
        (("G722", "PCMU", "PCMA"), b"9 0 101", "G722", 16000),
        # the offerer's preference wins among what we accept
        (("G722", "PCMU", "PCMA"), b"0 9 101", "PCMU", 8000),
        (("PCMU", "PCMA"), b"9 8 101", "PCMA", 8000),
        (("pcma", "g722"), b"0 9", "G722", 16000),
        (("PCMA",), b"0 8", "PCMA", 8000),
    ],
)
async def test_answer_selection(
    codecs: tuple[str, ...], formats: bytes, chosen: str, rate: int
) -> None:
    leg = await RtpLeg.open(codecs=codecs)
    try:
        answer = SessionDescription.parse(leg.create_answer(OFFER % formats))
        assert leg.codec == chosen
        assert leg.sample_rate == rate
        codec = answer.audio().codecs[0]
        assert codec.name == chosen and codec.clock_rate == 8000
        if chosen == "G722":
            assert answer.audio().formats[0] == "9"
            assert answer.audio().rtpmap[9] == ("G722", 8000, None)
    finally:
        await leg.close()


async def test_answer_refused_without_an_accepted_codec() -> None:
    leg = await RtpLeg.open(codecs=("G722",))
    try:
        with pytest.raises(SdpError, match="G722"):
            leg.create_answer(OFFER % b"0 8 101")
        with pytest.raises(SdpError):
            leg.apply_answer(OFFER % b"0")
    finally:
        await leg.close()


async def test_apply_answer_with_g722() -> None:
    leg = await RtpLeg.open(codecs=("PCMU", "G722"))
    try:
        leg.create_offer()
        leg.apply_answer(OFFER % b"9 101")
        assert leg.codec == "G722"
        assert leg.sample_rate == 16000
        assert leg.dtmf_mode == "rfc4733"
        with pytest.raises(ValueError, match="320"):
            leg.write(np.zeros(160, dtype=np.int16))
        leg.write(np.zeros(320, dtype=np.int16))
    finally:
        await leg.close()


@pytest.mark.parametrize("codecs", [("SILK",), (), "PCMU"])
async def test_unsupported_codec_configuration(codecs: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        await RtpLeg.open(codecs=codecs)


async def test_g722_loopback_carries_5khz() -> None:
    """A 5 kHz tone (beyond G.711's 4 kHz band) crosses a G.722 call both ways."""
    a = await RtpLeg.open(codecs=("G722", "PCMU"))
    b = await RtpLeg.open(codecs=("G722", "PCMA"))
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        assert a.codec == b.codec == "G722"
        assert a.sample_rate == b.sample_rate == 16000
        writers = asyncio.gather(
            write_paced(a, SineSource(5000, 16000, 0.3), 1.0),
            write_paced(b, SineSource(6000, 16000, 0.3), 1.0),
        )
        at_b, at_a = await asyncio.gather(read_for(b, 1.0), read_for(a, 1.0))
        await writers
        for received, freq in ((at_b, 5000), (at_a, 6000)):
            assert len(received) >= 16000 * 0.6
            tail = received[-8000:]
            assert dominant_frequency(tail, 16000) == pytest.approx(freq, abs=5)
            assert band_energy_ratio(tail, 16000, freq) > 0.95
            assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)
        assert a.stats().codec == "G722"
        assert a.stats().packets_received > 20
    finally:
        await a.close()
        await b.close()


async def test_bridge_resamples_48k_to_g722_16k() -> None:
    """MediaBridge between a 48 kHz port and a negotiated G.722 leg: 5 kHz crosses."""
    far = await RtpLeg.open(codecs=("G722",))
    phone = await RtpLeg.open(codecs=("G722",))
    client = QueuePort(48000)
    bridge = MediaBridge(client)
    try:
        far.apply_answer(phone.create_answer(far.create_offer()))
        bridge.connect(far)  # after negotiation: far.sample_rate is 16000 now
        source = SineSource(5000, 48000, 0.3)

        async def feed() -> None:
            for _ in range(50):
                client.incoming.put(source.frame(960))
                await asyncio.sleep(0.02)

        received, _ = await asyncio.gather(read_for(phone, 1.0), feed())
        assert len(received) >= 16000 * 0.5
        tail = received[-6400:]
        assert dominant_frequency(tail, 16000) == pytest.approx(5000, abs=5)
        assert rms_dbfs(tail) == pytest.approx(-13.5, abs=2.0)
    finally:
        await bridge.close()
        await far.close()
        await phone.close()


async def test_renegotiation_to_pcmu_keeps_the_port_rate() -> None:
    """
    A re-INVITE offering only PCMU (say, after a transfer on the PBX) switches
    the codec; the port stays at 16 kHz (a bridge may be running) and the leg
    resamples internally both ways.
    """
    a = await RtpLeg.open(codecs=("G722", "PCMU"))
    b = await RtpLeg.open(codecs=("G722",))
    phone = await RtpLeg.open(codecs=("PCMU",))
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        assert a.codec == "G722" and a.sample_rate == 16000
        phone.apply_answer(a.create_answer(phone.create_offer()))
        assert a.codec == "PCMU" and a.sample_rate == 16000
        writers = asyncio.gather(
            write_paced(a, SineSource(1000, 16000, 0.3), 1.0),
            write_paced(phone, SineSource(700, 8000, 0.3), 1.0),
        )
        at_phone, at_a = await asyncio.gather(read_for(phone, 1.0), read_for(a, 1.0))
        await writers
        assert len(at_phone) >= 8000 * 0.6
        assert dominant_frequency(at_phone[-4000:], 8000) == pytest.approx(1000, abs=5)
        assert rms_dbfs(at_phone[-4000:]) == pytest.approx(-13.5, abs=1.5)
        assert len(at_a) >= 16000 * 0.6
        assert dominant_frequency(at_a[-8000:], 16000) == pytest.approx(700, abs=5)
        assert rms_dbfs(at_a[-8000:]) == pytest.approx(-13.5, abs=1.5)
    finally:
        for leg in (a, b, phone):
            await leg.close()


async def test_inband_dtmf_detected_over_g722() -> None:
    received: list[str] = []
    a = await RtpLeg.open(codecs=("G722",))
    b = await RtpLeg.open(codecs=("G722",), on_dtmf=received.append)
    try:
        offer = a.create_offer().replace(b" 101\r\n", b"\r\n")
        a.apply_answer(b.create_answer(offer))
        assert a.dtmf_mode == "inband"
        a.send_dtmf("159#", duration_ms=100)  # a browser's tone length: robust under load
        await wait_for(lambda: len(received) >= 4, 10)
        await asyncio.sleep(0.2)
        assert "".join(received) == "159#"
    finally:
        await a.close()
        await b.close()
