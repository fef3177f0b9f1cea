"""Opus toward SIP (RFC 7587): offer/answer, packets on the wire, audio through RtpLegs."""

import asyncio
import socket

import numpy as np
import pytest

from rtc.bridge import MediaBridge
from rtc.dtmf import TelephoneEvent
from rtc.opus import OpusDecoder, OpusEncoder
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.sdp import SessionDescription
from rtc.webrtcleg import WebRtcLeg
from tests.audio import (
    SineSource,
    band_energy_ratio,
    dominant_frequency,
    normalized_xcorr,
    rms_dbfs,
    speech_like,
)

from .conftest import read_for, wait_for, write_paced

# what baresip's opus module offers (dynamic payload type 96)
FOREIGN_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio %d RTP/AVP 96 0 101 97\r\n"
    b"a=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 stereo=1;sprop-stereo=1;useinbandfec=1\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
    b"a=rtpmap:97 telephone-event/48000\r\na=fmtp:97 0-15\r\n"
    b"a=sendrecv\r\n"
)


async def test_offer_golden_with_opus_first() -> None:
    leg = await RtpLeg.open(codecs=("opus", "PCMU"))
    try:
        assert leg.codecs == ("opus", "PCMU")
        sdp = leg.create_offer().decode()
        media = sdp[sdp.index("m=audio") :]
        assert media == (
            f"m=audio {leg.local_port} RTP/AVP 111 0 101 102\r\n"
            "a=rtpmap:111 opus/48000/2\r\n"
            "a=fmtp:111 stereo=0;sprop-stereo=0\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-16\r\n"
            "a=rtpmap:102 telephone-event/48000\r\n"
            "a=fmtp:102 0-16\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n"
        )
    finally:
        await leg.close()


async def test_default_offer_is_unchanged() -> None:
    leg = await RtpLeg.open()
    try:
        audio = SessionDescription.parse(leg.create_offer()).audio()
        assert audio.formats == ["0", "8", "101"]
        assert "opus" not in leg.create_offer().decode().lower()
    finally:
        await leg.close()


async def test_opus_not_accepted_unless_configured() -> None:
    leg = await RtpLeg.open()  # PCMU, PCMA
    try:
        answer = SessionDescription.parse(leg.create_answer(FOREIGN_OFFER % 40000))
        assert leg.codec == "PCMU"
        assert answer.audio().formats == ["0", "101"]
    finally:
        await leg.close()


async def test_answer_keeps_the_offerers_payload_types() -> None:
    leg = await RtpLeg.open(codecs=("PCMU", "opus"))
    try:
        answer = SessionDescription.parse(leg.create_answer(FOREIGN_OFFER % 40000))
        # the offerer's preference (opus first) wins among what we accept
        assert leg.codec == "opus"
        assert leg.sample_rate == 48000
        audio = answer.audio()
        assert audio.formats == ["96", "97"]
        assert audio.rtpmap[96] == ("opus", 48000, 2)
        assert audio.fmtp[96] == "stereo=0;sprop-stereo=0"
        # telephone-event at Opus' clock preferred
        assert audio.rtpmap[97] == ("telephone-event", 48000, None)
        assert leg.dtmf_mode == "rfc4733"
        # a re-offer keeps both
        reoffer = SessionDescription.parse(leg.create_offer("sendonly")).audio()
        assert reoffer.formats == ["96", "97"]
        assert reoffer.rtpmap[96] == ("opus", 48000, 2)
    finally:
        await leg.close()


async def test_packets_on_the_wire_decode_and_dtmf_at_48k() -> None:
    """A foreign peer (raw socket): Opus PT 96, timestamps +960, our audio decodes to the
    tone; its Opus reaches read(); RFC 4733 events count the 48 kHz clock."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    leg = await RtpLeg.open(codecs=("opus",))
    loop = asyncio.get_running_loop()
    try:
        leg.create_answer(FOREIGN_OFFER % sink.getsockname()[1])
        writer = asyncio.ensure_future(write_paced(leg, SineSource(1000, 48000, 0.3), 0.8))
        packets: list[RtpPacket] = []
        deadline = loop.time() + 0.8
        while loop.time() < deadline:
            try:
                # sock_recv: uvloop has no sock_recvfrom
                data = await asyncio.wait_for(loop.sock_recv(sink, 2048), 0.1)
            except TimeoutError:
                continue
            packets.append(RtpPacket.parse(data))
        await writer
        assert len(packets) >= 30
        assert {p.payload_type for p in packets} == {96}
        steps = {
            (b.timestamp - a.timestamp) & 0xFFFFFFFF
            for a, b in zip(packets, packets[1:], strict=False)
            if not b.marker
        }
        assert steps == {960}
        # where the writer starts or stops, a marker and the timestamp in step with the clock
        jumps = [
            (b.timestamp - a.timestamp) & 0xFFFFFFFF
            for a, b in zip(packets, packets[1:], strict=False)
            if b.marker
        ]
        assert len(jumps) <= 2 and all(j % 960 == 0 for j in jumps)
        decoder = OpusDecoder(48000)
        decoded = np.concatenate([decoder.decode(p.payload) for p in packets])
        tail = decoded[-24000:]
        assert dominant_frequency(tail, 48000) == pytest.approx(1000, abs=5)
        assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)

        # the peer's Opus (a 12 kHz tone: wideband only) reaches read()
        encoder = OpusEncoder(48000, 64000)
        source = SineSource(12000, 48000, 0.3)

        async def send() -> None:
            for n in range(40):
                packet = RtpPacket(96, n, n * 960, 1234, encoder.encode(source.frame(960)))
                sink.sendto(bytes(packet), ("127.0.0.1", leg.local_port))
                await asyncio.sleep(0.02)

        received, _ = await asyncio.gather(read_for(leg, 0.9), send())
        tail = received[-19200:]
        assert dominant_frequency(tail, 48000) == pytest.approx(12000, abs=5)
        assert band_energy_ratio(tail, 48000, 12000) > 0.95

        leg.send_dtmf("7", duration_ms=100)
        events = []
        deadline = loop.time() + 0.5
        while loop.time() < deadline:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sink, 2048), 0.1)
            except TimeoutError:
                continue
            packet = RtpPacket.parse(data)
            if packet.payload_type == 97:
                events.append(TelephoneEvent.parse(packet.payload))
        assert events and all(e.event == 7 for e in events)
        assert events[-1].end and events[-1].duration == 4800  # 100 ms at 48 kHz
    finally:
        sink.close()
        await leg.close()


async def test_opus_loopback_tones_and_speech_both_ways() -> None:
    a = await RtpLeg.open(codecs=("opus", "PCMU"))
    b = await RtpLeg.open(codecs=("opus",))
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        assert a.codec == b.codec == "opus"
        assert a.sample_rate == b.sample_rate == 48000
        speech = speech_like(1.6, 48000)

        async def write_speech() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(len(speech) // 960):
                b.write(speech[n * 960 : (n + 1) * 960])
                await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))

        writers = asyncio.gather(write_paced(a, SineSource(10000, 48000, 0.3), 1.6), write_speech())
        at_b, at_a = await asyncio.gather(read_for(b, 1.7), read_for(a, 1.7))
        await writers
        tail = at_b[-24000:]
        assert dominant_frequency(tail, 48000) == pytest.approx(10000, abs=5)
        assert band_energy_ratio(tail, 48000, 10000) > 0.95
        assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)
        # speech: delay-aligned correlation over the middle of the signal
        corr, lag = normalized_xcorr(speech[24000:60000], at_a, max_lag=len(at_a))
        assert corr > 0.85, (corr, lag)
        assert a.stats().codec == "opus"
        assert a.stats().packets_received > 50
    finally:
        await a.close()
        await b.close()


async def test_dtmf_between_opus_legs() -> None:
    received: list[str] = []
    a = await RtpLeg.open(codecs=("opus",))
    b = await RtpLeg.open(codecs=("opus",), on_dtmf=received.append)
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        assert a.dtmf_mode == "rfc4733"
        a.send_dtmf("159#", duration_ms=60)
        await wait_for(lambda: len(received) >= 4, 10)
        await asyncio.sleep(0.2)
        assert "".join(received) == "159#"
    finally:
        await a.close()
        await b.close()


async def test_opus_sip_leg_bridged_to_a_browser() -> None:
    """browser <-WebRTC Opus-> [client | bridge | far] <-RTP Opus-> phone: 48 kHz both legs."""
    browser, client = WebRtcLeg(), WebRtcLeg()
    far = await RtpLeg.open(codecs=("opus",))
    phone = await RtpLeg.open(codecs=("opus",))
    bridge = MediaBridge(client)
    try:
        await browser.accept_answer(await client.accept_offer(await browser.create_offer()))
        far.apply_answer(phone.create_answer(far.create_offer()))
        await wait_for(lambda: browser.connection_state == "connected", 10)
        bridge.connect(far)
        assert client.sample_rate == 48000
        writers = asyncio.gather(
            write_paced(browser, SineSource(1000, 48000, 0.3), 1.5),
            write_paced(phone, SineSource(7000, 48000, 0.3), 1.5),
        )
        at_phone, at_browser = await asyncio.gather(read_for(phone, 1.5), read_for(browser, 1.5))
        await writers
        for received, freq in ((at_phone, 1000), (at_browser, 7000)):
            tail = received[-24000:]
            assert len(tail) == 24000
            assert dominant_frequency(tail, 48000) == pytest.approx(freq, abs=5)
            assert band_energy_ratio(tail, 48000, freq) > 0.95
            assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)
    finally:
        await bridge.close()
        for leg in (browser, client):
            await leg.close()
        for rtp in (far, phone):
            await rtp.close()
