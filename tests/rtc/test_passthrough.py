"""
Codec pass-through: when the browser leg and the SIP leg send the same codec,
MediaBridge relays payloads; nothing is decoded or encoded (counters prove it),
audio still arrives (frequency, level), SIP->browser packets go through a packet
jitter buffer, re-negotiation switches to transcoding and back, ringback, hold
and in-band DTMF detection keep working.
"""

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from rtc.bridge import MediaBridge, PushRelay
from rtc.g711 import ulaw_decode, ulaw_encode
from rtc.ports import EncodedFrame, MediaItem
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, rms_dbfs

from .conftest import read_for, wait_for, write_paced


def only_codec(offer: str, pt: str) -> str:
    """The offer restricted to one audio payload type (and telephone-event/8000, 126)."""
    lines = []
    for line in offer.splitlines():
        if line.startswith("m=audio"):
            line = " ".join(line.split()[:3] + [pt, "126"])
        elif line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")) and not line.startswith(
            (f"a=rtpmap:{pt} ", f"a=fmtp:{pt} ", "a=rtpmap:126 ", "a=fmtp:126 ")
        ):
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


@dataclass
class Work:
    """What the two gateway legs decoded, encoded and relayed."""

    decoded: int
    encoded: int
    passed: int
    relayed: int


def work(client: WebRtcLeg, far: RtpLeg) -> Work:
    # what circuits relayed since their last sync counts too (stats() does the same)
    client._sync_circuits()
    far._sync_circuits()
    return Work(
        decoded=client.decoded + far.frames_decoded,
        encoded=client._track.encoded + far.frames_encoded,
        passed=client.frames_passed + far.frames_passed,
        relayed=client._track.relayed + far.frames_relayed,
    )


def delta(after: Work, before: Work) -> Work:
    return Work(
        after.decoded - before.decoded,
        after.encoded - before.encoded,
        after.passed - before.passed,
        after.relayed - before.relayed,
    )


class Call:
    """browser <-WebRTC-> [client | bridge | far] <-RTP-> phone"""

    def __init__(self, browser_pt: str | None, codecs: tuple[str, ...], srtp: str = "off") -> None:
        self.browser_pt = browser_pt
        self.codecs = codecs
        self.srtp = srtp
        self.browser = WebRtcLeg()
        self.client = WebRtcLeg()
        self.bridge = MediaBridge(self.client)

    async def setup(self, phone_codecs: tuple[str, ...] | None = None) -> None:
        self.far = await RtpLeg.open(codecs=self.codecs, srtp=self.srtp)
        self.phone = await RtpLeg.open(codecs=phone_codecs or self.codecs, srtp=self.srtp)
        offer = await self.browser.create_offer()
        if self.browser_pt is not None:
            offer = only_codec(offer, self.browser_pt)
        await self.browser.accept_answer(await self.client.accept_offer(offer))
        self.far.apply_answer(self.phone.create_answer(self.far.create_offer()))
        await wait_for(lambda: self.browser.connection_state == "connected", 10)

    async def close(self) -> None:
        await self.bridge.close()
        for leg in (self.browser, self.client):
            await leg.close()
        for rtp in (self.far, self.phone):
            await rtp.close()

    async def exchange(
        self, seconds: float, to_phone: float = 1000, to_browser: float = 700
    ) -> tuple[np.ndarray, np.ndarray]:
        writers = asyncio.gather(
            write_paced(self.browser, SineSource(to_phone, 48000, 0.3), seconds),
            write_paced(self.phone, SineSource(to_browser, self.phone.sample_rate, 0.3), seconds),
        )
        at_phone, at_browser = await asyncio.gather(
            read_for(self.phone, seconds), read_for(self.browser, seconds)
        )
        await writers
        return at_phone, at_browser

    def check(
        self, at_phone: np.ndarray, at_browser: np.ndarray, to_phone: float, to_browser: float
    ) -> None:
        rate = self.phone.sample_rate
        tail = at_phone[-rate // 2 :]
        assert len(tail) == rate // 2
        assert dominant_frequency(tail, rate) == pytest.approx(to_phone, abs=5)
        assert band_energy_ratio(tail, rate, to_phone) > 0.95
        assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)
        tail = at_browser[-24000:]
        assert len(tail) == 24000
        assert dominant_frequency(tail, 48000) == pytest.approx(to_browser, abs=5)
        assert band_energy_ratio(tail, 48000, to_browser) > 0.95
        assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)


@pytest.fixture
async def pcmu_call() -> AsyncIterator[Call]:
    call = Call("0", ("PCMU", "PCMA"))
    await call.setup()
    yield call
    await call.close()


@pytest.mark.parametrize(
    ("browser_pt", "codec", "rate"),
    [("0", "PCMU", 8000), ("8", "PCMA", 8000), (None, "opus", 48000)],
)
async def test_same_codec_both_legs_relays_payloads(
    browser_pt: str | None, codec: str, rate: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what reaches the bridge's listener as an EncodedFrame, rather than the express way
    queued: list[EncodedFrame] = []
    listener = PushRelay.__call__

    def counting(relay: PushRelay, item: MediaItem) -> None:
        if isinstance(item, EncodedFrame):
            queued.append(item)
        listener(relay, item)

    monkeypatch.setattr(PushRelay, "__call__", counting)
    call = Call(browser_pt, (codec,))
    await call.setup()
    try:
        assert call.client.send_codec == call.far.send_codec == codec.lower()
        call.bridge.connect(call.far)
        assert call.client.sample_rate == rate
        assert call.far.express is not None and call.client.express is not None
        await call.exchange(0.6)  # pass-through settles in
        before = work(call.client, call.far)
        queued.clear()
        at_phone, at_browser = await call.exchange(1.2)
        done = delta(work(call.client, call.far), before)
        call.check(at_phone, at_browser, 1000, 700)
        # the proof: no frame decoded or encoded by the gateway's legs, ~60 each way relayed
        assert done.decoded == 0, done
        assert done.encoded == 0, done
        assert done.passed >= 80 and done.relayed >= 80, done
        # in order on loopback: nearly all of it the express way (only packets the
        # SIP side's buffer held behind a late one go through the queue)
        assert len(queued) <= done.relayed // 10, (len(queued), done)
    finally:
        await call.close()


async def test_srtp_sip_leg_relays_and_keeps_statistics() -> None:
    """SRTP toward SIP too (SRTP <-> DTLS-SRTP): payloads relayed, RTCP statistics kept."""
    call = Call("0", ("PCMU",), srtp="mandatory")
    await call.setup()
    try:
        assert call.far.srtp_suite is not None
        call.bridge.connect(call.far)
        await call.exchange(0.4)
        before = work(call.client, call.far)
        at_phone, at_browser = await call.exchange(1.2)
        done = delta(work(call.client, call.far), before)
        call.check(at_phone, at_browser, 1000, 700)
        assert done.decoded == 0 and done.encoded == 0, done
        assert done.passed >= 80 and done.relayed >= 80, done
        far, client = call.far.stats(), await call.client.stats()
        assert far.codec == "PCMU" and far.packets_received >= 70 and far.packets_sent >= 70
        assert client.packets_received >= 70 and client.packets_sent >= 70
    finally:
        await call.close()


async def test_different_codecs_still_transcode() -> None:
    call = Call("0", ("PCMA",))  # PCMU browser, PCMA toward SIP
    await call.setup()
    try:
        call.bridge.connect(call.far)
        await call.exchange(0.4)
        before = work(call.client, call.far)
        at_phone, at_browser = await call.exchange(1.0)
        done = delta(work(call.client, call.far), before)
        call.check(at_phone, at_browser, 1000, 700)
        assert done.passed == 0 and done.relayed == 0, done
        assert done.decoded >= 80 and done.encoded >= 80, done
    finally:
        await call.close()


async def test_reinvite_switches_to_transcoding_and_back(pcmu_call: Call) -> None:
    call = pcmu_call
    call.bridge.connect(call.far)
    await call.exchange(0.5)
    # the PBX re-INVITEs with PCMA only (say, after a transfer): transcoding
    pcma_offer = call.phone.create_offer().replace(b" 0 101\r\n", b" 8 101\r\n")
    pcma_offer = pcma_offer.replace(b"a=rtpmap:0 PCMU/8000", b"a=rtpmap:8 PCMA/8000")
    call.phone.apply_answer(call.far.create_answer(pcma_offer))
    assert call.far.codec == call.phone.codec == "PCMA"
    await call.exchange(0.4)
    before = work(call.client, call.far)
    at_phone, at_browser = await call.exchange(1.0, 1200, 500)
    done = delta(work(call.client, call.far), before)
    call.check(at_phone, at_browser, 1200, 500)
    assert done.decoded >= 80 and done.encoded >= 80, done
    assert done.passed == 0 and done.relayed == 0, done

    # and back to PCMU: pass-through again
    pcmu_offer = call.phone.create_offer().replace(b" 8 101\r\n", b" 0 101\r\n")
    pcmu_offer = pcmu_offer.replace(b"a=rtpmap:8 PCMA/8000", b"a=rtpmap:0 PCMU/8000")
    call.phone.apply_answer(call.far.create_answer(pcmu_offer))
    assert call.far.codec == "PCMU"
    await call.exchange(0.4)
    before = work(call.client, call.far)
    at_phone, at_browser = await call.exchange(1.0, 900, 600)
    done = delta(work(call.client, call.far), before)
    call.check(at_phone, at_browser, 900, 600)
    assert done.decoded == 0 and done.encoded == 0, done
    assert done.passed >= 80 and done.relayed >= 80, done


async def test_ringback_then_pass_through_then_hold(pcmu_call: Call) -> None:
    call = pcmu_call
    call.bridge.ringback("us")
    ringing = await read_for(call.browser, 1.0)
    tail = ringing[-19200:]
    assert band_energy_ratio(tail, 48000, 440, 15) + band_energy_ratio(tail, 48000, 480, 15) > 0.9

    call.bridge.connect(call.far)
    at_phone, at_browser = await call.exchange(1.2)
    call.check(at_phone, at_browser, 1000, 700)
    assert call.far.passthrough is not None and call.client.passthrough is not None

    call.bridge.hold()
    await asyncio.sleep(0.1)
    assert call.far.passthrough is None and call.client.passthrough is None
    assert call.far.express is None and call.client.express is None
    at_phone, at_browser = await call.exchange(0.8)
    # the senders fill the gap with silence: nothing crosses
    assert rms_dbfs(at_browser[-9600:]) < -60
    assert rms_dbfs(at_phone[-1600:]) < -60

    call.bridge.resume()
    assert call.far.express is not None and call.client.express is not None
    at_phone, at_browser = await call.exchange(1.2, 800, 600)
    call.check(at_phone, at_browser, 800, 600)


async def test_call_waiting_tone_over_pass_through(pcmu_call: Call) -> None:
    """A tone mixed into what the browser hears (MediaBridge.overlay, call waiting) needs
    the far audio decoded: that direction transcodes while it plays (the browser hears
    the far party and the tone), the other goes on relaying payloads, and once the tone
    is off both relay undecoded again."""
    call = pcmu_call
    call.bridge.connect(call.far)
    await call.exchange(0.5)  # pass-through settles in
    assert call.client.express is not None and call.far.express is not None
    before = work(call.client, call.far)
    call.bridge.overlay(call.client, "call-waiting", "us")  # 440 Hz, 0.3 s on, 9.7 s off
    at_phone, at_browser = await call.exchange(1.2)
    done = delta(work(call.client, call.far), before)
    tone = at_browser[: round(0.3 * 48000)]
    assert band_energy_ratio(tone, 48000, 440, 15) > 0.03  # the burst, mixed in
    assert band_energy_ratio(tone, 48000, 700, 15) > 0.8  # over the far party
    call.check(at_phone, at_browser, 1000, 700)  # after the burst: the far party alone
    assert band_energy_ratio(at_phone, 8000, 440, 15) < 0.001  # toward the browser only
    # SIP -> browser decoded and encoded (~60 frames each), browser -> SIP relayed
    assert 50 <= done.decoded <= 70 and 50 <= done.encoded <= 70, done
    assert done.passed >= 50 and done.relayed >= 50, done
    assert call.client.express is not None and call.far.express is None

    call.bridge.overlay(call.client, None)
    await call.exchange(0.4)
    before = work(call.client, call.far)
    at_phone, at_browser = await call.exchange(1.0)
    done = delta(work(call.client, call.far), before)
    call.check(at_phone, at_browser, 1000, 700)
    assert done.decoded == 0 and done.encoded == 0, done
    assert call.client.express is not None and call.far.express is not None


async def test_inband_dtmf_detected_in_pass_through() -> None:
    """No telephone-event toward SIP: the far leg decodes for its detector only."""
    digits: list[str] = []
    call = Call("0", ("PCMU",))
    call.far = await RtpLeg.open(codecs=("PCMU",), on_dtmf=digits.append)
    call.phone = await RtpLeg.open(codecs=("PCMU",))
    try:
        offer = only_codec(await call.browser.create_offer(), "0")
        await call.browser.accept_answer(await call.client.accept_offer(offer))
        call.far.apply_answer(
            call.phone.create_answer(call.far.create_offer().replace(b" 0 101\r\n", b" 0\r\n"))
        )
        assert call.phone.dtmf_mode == "inband"
        await wait_for(lambda: call.browser.connection_state == "connected", 10)
        call.bridge.connect(call.far)
        writer = asyncio.ensure_future(write_paced(call.browser, SineSource(1000, 48000, 0.1), 2))
        await asyncio.sleep(0.3)
        call.phone.send_dtmf("47#", duration_ms=100)
        received = await read_for(call.browser, 1.5)
        await writer
        assert "".join(digits) == "47#"
        # the tones themselves reached the browser undecoded
        call.far._sync_circuits()  # what its circuit relayed since the last sync
        assert call.far.frames_passed > 40
        assert rms_dbfs(received) > -40
    finally:
        await call.close()


async def test_sip_to_browser_reordered_lost_and_duplicated_packets() -> None:
    """A raw SIP peer sends PCMU with packets swapped, repeated and lost: the packet
    jitter buffer plays them in order (the browser hears a clean tone) and counts them;
    toward SIP, our own sequence numbers and timestamps run on steadily."""
    browser, client = WebRtcLeg(), WebRtcLeg()
    far = await RtpLeg.open(codecs=("PCMU",))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    bridge = MediaBridge(client)
    loop = asyncio.get_running_loop()
    try:
        offer = only_codec(await browser.create_offer(), "0")
        await browser.accept_answer(await client.accept_offer(offer))
        port = sock.getsockname()[1]
        far.create_answer(
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
            b"a=sendrecv\r\n" % port
        )
        await wait_for(lambda: browser.connection_state == "connected", 10)
        bridge.connect(far)

        source = SineSource(700, 8000, 0.3)
        payloads = [ulaw_encode(source.frame(160)) for _ in range(100)]
        order = list(range(100))
        for i in range(10, 90, 10):
            order[i], order[i + 1] = order[i + 1], order[i]  # swapped pairs
        order = [n for n in order if n % 25 != 24]  # 4 lost
        order[30:30] = [order[29]]  # a duplicate

        async def send() -> None:
            start = loop.time()
            for k, n in enumerate(order):
                packet = RtpPacket(0, n, 1000 + n * 160, 4242, payloads[n])
                sock.sendto(bytes(packet), ("127.0.0.1", far.local_port))
                await asyncio.sleep(max(0.0, start + (k + 1) * 0.02 - loop.time()))

        async def sip_side() -> list[RtpPacket]:
            got = []
            deadline = loop.time() + 2.0
            while loop.time() < deadline:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.1)
                except TimeoutError:
                    continue
                got.append(RtpPacket.parse(data))
            return got

        writer = asyncio.ensure_future(write_paced(browser, SineSource(1000, 48000, 0.3), 2.0))
        received, _, from_far = await asyncio.gather(read_for(browser, 2.0), send(), sip_side())
        await writer

        buffer = far.packet_buffer
        assert buffer.duplicates >= 1
        assert buffer.played >= 90
        assert buffer.missing >= 3  # the lost ones: gaps the browser conceals
        assert far.frames_decoded == 0
        tail = received[-48000:]
        assert dominant_frequency(tail, 48000) == pytest.approx(700, abs=5)
        assert band_energy_ratio(tail, 48000, 700) > 0.9

        # toward SIP: the browser's PCMU relayed, sequence numbers consecutive,
        # timestamps advancing by whole 20 ms frames
        audio = [p for p in from_far if p.payload_type == 0]
        assert len(audio) >= 60
        seqs = [p.sequence_number for p in audio]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        steps = [
            (b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(audio, audio[1:], strict=False)
        ]
        assert all(step > 0 and step % 160 == 0 for step in steps)
        decoded = np.concatenate([ulaw_decode(p.payload) for p in audio[-50:]])
        assert dominant_frequency(decoded, 8000) == pytest.approx(1000, abs=5)
        far._sync_circuits()
        assert far.frames_relayed >= 60
    finally:
        sock.close()
        await bridge.close()
        await browser.close()
        await client.close()
        await far.close()


async def test_send_passed_takes_only_the_codec_the_leg_sends(pcmu_call: Call) -> None:
    """The sinks' express entry: another codec is left to the caller (False, nothing sent)."""
    call = pcmu_call
    now = asyncio.get_running_loop().time()
    far_sent, client_sent = call.far.packets_sent, call.client.direct_sent
    assert not call.far.send_passed("pcma", bytes(160), now)
    assert not call.client.send_passed("pcma", bytes(160), now)
    assert not call.client.send_passed("opus", b"\x78", now)
    assert (call.far.packets_sent, call.client.direct_sent) == (far_sent, client_sent)
    assert call.far.send_passed("pcmu", bytes(160), now)
    assert call.client.send_passed("pcmu", bytes(160), now)
    assert (call.far.packets_sent, call.client.direct_sent) == (far_sent + 1, client_sent + 1)
    assert call.far.frames_relayed == 1 and call.client._track.relayed == 1


async def test_audio_resumes_after_an_outage_upstream() -> None:
    """
    The PBX's stream stops for 400 ms (20 packets lost, no marker when it comes
    back). Meanwhile the sending leg keeps the far end's stream going with
    filler; the gap reported afterwards must not push its timeline ahead, or
    every relayed frame after the outage would be dropped (filler for the rest
    of the call).
    """
    loop = asyncio.get_running_loop()
    pbx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (pbx, peer):
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    a = await RtpLeg.open(codecs=("PCMU",))
    b = await RtpLeg.open(codecs=("PCMU",))
    bridge = MediaBridge(b)
    speech = b"\x55" * 160
    received: list[tuple[float, bool]] = []  # arrival, speech (not filler)

    def receive() -> None:
        while True:
            try:
                data = peer.recv(2000)
            except BlockingIOError:
                return
            if len(data) > 12 and data[1] & 0x7F == 0:
                received.append((loop.time(), data[12:] == speech))

    loop.add_reader(peer.fileno(), receive)
    try:
        for leg, sock in ((a, pbx), (b, peer)):
            leg.create_answer(
                b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                b"m=audio %d RTP/AVP 0\r\n" % sock.getsockname()[1]
            )
        bridge.connect(a)
        start = loop.time()
        resumed = 0.0
        for seq in [*range(30), *range(50, 110)]:
            if seq == 50:
                await asyncio.sleep(max(0.0, start + seq * 0.02 - loop.time()))
                resumed = loop.time()
            packet = RtpPacket(0, seq, seq * 160, 0x1234, payload=speech)
            pbx.sendto(bytes(packet), ("127.0.0.1", a.local_port))
            await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))
        await asyncio.sleep(0.1)
        after = [is_speech for t, is_speech in received if t >= resumed]
        assert sum(after) >= 55, (sum(after), b._clock.dropped, b.frames_filled)
        assert b.frames_filled >= 5  # the outage was filled
    finally:
        loop.remove_reader(peer.fileno())
        await bridge.close()
        await a.close()
        await b.close()
        pbx.close()
        peer.close()
