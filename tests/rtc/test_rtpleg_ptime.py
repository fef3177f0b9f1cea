"""
RtpLeg and a PBX whose ptime is not 20 ms. Receiving (10, 30): its packets are
cut into 20 ms frames on the stream's timeline, whatever order they arrive in.
Sending: packets of the PBX's a=ptime / a=maxptime (rtc.packetizer) on real
sockets, from frames the leg encodes and from payloads relayed from a browser,
around filler, DTMF, hold and sender reports.
"""

import asyncio
import socket
from collections.abc import Callable

import numpy as np
import pytest

from rtc.bridge import MediaBridge
from rtc.dtmfdetect import DtmfDetector
from rtc.g711 import alaw_decode, ulaw_decode, ulaw_encode
from rtc.g722 import G722Decoder
from rtc.opus import OpusDecoder, packet_samples
from rtc.rtcp import RtcpSrPacket, parse_rtcp
from rtc.rtp import RtpPacket, is_rtcp
from rtc.rtpleg import RtpLeg, attach_rtp_pair, bind_rtp_pair
from rtc.sdp import SessionDescription
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, rms_dbfs, sine

from .conftest import wait_for, write_paced
from .test_passthrough import only_codec


@pytest.mark.parametrize("ptime", [10, 30])
async def test_reordered_packets_of_another_ptime_keep_the_timeline(ptime: int) -> None:
    """
    Packets 5 and 6 sent together, 6 first: the leg cut the stream as it came
    and restarted at the next packet after one out of order, half a frame off
    the grid (ptime 10 or 30); the jitter buffer put those frames in the
    nearest place, and the rest of the call was shifted by 10 ms, a splice.
    """
    leg = await RtpLeg.open(jitter_min=0.06)  # room for a loaded test machine
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    try:
        leg.create_answer(
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\na=ptime:%d\r\n" % (sender.getsockname()[1], ptime)
        )
        addr = ("127.0.0.1", leg.local_port)
        size = 8 * ptime
        payloads = [ulaw_encode(c) for c in np.split(sine(1010, 0.48, 8000, 0.3), 480 // ptime)]
        sent = np.concatenate([ulaw_decode(p) for p in payloads])
        order = list(range(len(payloads)))
        order[5], order[6] = 6, 5

        async def send() -> None:
            start = loop.time()
            for k in order:
                packet = RtpPacket(0, 100 + k, 5000 + k * size, 7, payload=payloads[k])
                when = max(k, 5.5 if k in (5, 6) else k) * ptime / 1000
                await asyncio.sleep(max(0.0, start + when - loop.time()))
                sender.sendto(bytes(packet), addr)

        sending = loop.create_task(send())
        frames = [await asyncio.wait_for(leg.read(), 2) for _ in range(len(sent) // 160)]
        await sending
        assert np.array_equal(np.concatenate(frames), sent)
        assert leg.jitter_buffer.concealed == 0
    finally:
        sender.close()
        await leg.close()


# --------------------------------------------------------------------------- sending


class Datagrams(asyncio.DatagramProtocol):
    """Whatever arrives, kept."""

    def __init__(self, into: list[bytes]) -> None:
        self.into = into

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.into.append(data)


class Phone(asyncio.DatagramProtocol):
    """A PBX's RTP socket (and the RTCP one above it): what the leg sends it, recorded."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.arrivals: list[float] = []
        self.rtcp: list[bytes] = []
        self.recording = True
        self.port = 0
        self._transports: tuple[asyncio.DatagramTransport, ...] = ()

    @classmethod
    async def open(cls) -> "Phone":
        phone = cls()
        phone._transports = await attach_rtp_pair(
            bind_rtp_pair("127.0.0.1", 40000, 49998), phone, Datagrams(phone.rtcp)
        )
        phone.port = phone._transports[0].get_extra_info("sockname")[1]
        return phone

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.recording and not is_rtcp(data):
            self.packets.append(RtpPacket.parse(data))
            self.arrivals.append(asyncio.get_running_loop().time())

    def sdp(
        self,
        lines: bytes = b"",
        formats: bytes = b"0 101",
        rtpmap: bytes = b"a=rtpmap:101 telephone-event/8000\r\n",
        direction: bytes = b"sendrecv",
    ) -> bytes:
        """Its offer or answer: ``lines`` are its a=ptime / a=maxptime."""
        return (
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP %s\r\n%s%sa=%s\r\n"
            % (self.port, formats, rtpmap, lines, direction)
        )

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


OPUS_SDP = {
    "formats": b"111 101",
    "rtpmap": b"a=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n",
}


def check_stream(packets: list[RtpPacket], step: int, units: Callable[[bytes], int] = len) -> None:
    """
    Packets of ``step`` timestamp units (``units`` of a payload: bytes for G.711 and
    G.722, samples for Opus), sequence numbers without a gap, each timestamp where the
    packet before ended; a shorter packet only just before a new talk spurt (marker:
    what was held went out as it was) or at the end.
    """
    assert packets
    for p, q in zip(packets, packets[1:], strict=False):
        assert (q.sequence_number - p.sequence_number) & 0xFFFF == 1, (p, q)
        assert 0 < units(p.payload) <= step, p
        if not q.marker:
            assert units(p.payload) == step, (p, q)
            assert (q.timestamp - p.timestamp) & 0xFFFFFFFF == step, (p, q)
    assert 0 < units(packets[-1].payload) <= step


def audio_of(
    packets: list[RtpPacket], decode: Callable[[bytes], np.ndarray], scale: int = 1
) -> np.ndarray:
    """The packets' audio where their timestamps put it (``scale``: samples per unit)."""
    start = packets[0].timestamp
    pieces = [(((p.timestamp - start) & 0xFFFFFFFF) * scale, decode(p.payload)) for p in packets]
    out = np.zeros(max(at + len(samples) for at, samples in pieces), np.int16)
    for at, samples in pieces:
        out[at : at + len(samples)] = samples
    return out


def check_tone(audio: np.ndarray, rate: int, freq: float) -> None:
    """The half second before the last 0.1 s: the tone written, at its level."""
    tail = audio[-(rate * 6) // 10 : -rate // 10]
    assert len(tail) == rate // 2
    assert dominant_frequency(tail, rate) == pytest.approx(freq, abs=5)
    assert band_energy_ratio(tail, rate, freq) > 0.95
    assert rms_dbfs(tail) == pytest.approx(-13.5, abs=1.5)


def talk_spurt(packets: list[RtpPacket]) -> list[RtpPacket]:
    """The packets up to the next marker (the stream's first talk spurt)."""
    end = next((k for k, p in enumerate(packets[1:], 1) if p.marker), len(packets))
    return packets[:end]


@pytest.mark.parametrize(
    ("lines", "ms"),
    [
        (b"a=maxptime:10\r\n", 10),
        (b"a=ptime:30\r\n", 30),
        (b"a=ptime:40\r\n", 40),
        (b"a=ptime:60\r\na=maxptime:60\r\n", 60),
        (b"", 20),  # as before (passes without the change too)
    ],
)
async def test_frames_written_go_out_in_the_peers_packet_time(lines: bytes, ms: int) -> None:
    """
    PCMU encoded by the leg: packets of the peer's ptime (or under its maxptime),
    timestamps and sequence numbers without a gap, the tone in them; when the writer
    stops, what was held goes out at once rather than with the filler 250 ms later,
    and the filler is cut the same way.
    """
    phone = await Phone.open()
    leg = await RtpLeg.open()
    try:
        answer = SessionDescription.parse(leg.create_answer(phone.sdp(lines)))
        assert answer.audio().ptime == 20  # what we would like to receive
        assert leg.packet_time == ms
        await write_paced(leg, SineSource(1000, 8000, 0.3), 1.0)
        written = len(phone.packets)
        stopped = asyncio.get_running_loop().time()
        await asyncio.sleep(0.5)
        packets = phone.packets
        check_stream(packets, 8 * ms)
        spurt = talk_spurt(packets)
        check_tone(audio_of(spurt[:written], ulaw_decode), 8000, 1000)
        # the filler that followed: a new talk spurt of silence in the same packets
        filler = packets[len(spurt) :]
        assert len(filler) >= 150 // ms
        assert all(p.payload == b"\xff" * 8 * ms for p in filler)
        if ms > 20:
            # the last packet of the tone left within 60 ms (and a bit) of the last frame
            assert phone.arrivals[len(spurt) - 1] - stopped < 0.15
            assert phone.arrivals[len(spurt)] - phone.arrivals[len(spurt) - 1] > 0.1
    finally:
        phone.close()
        await leg.close()


@pytest.mark.parametrize(("lines", "ms"), [(b"a=maxptime:10\r\n", 10), (b"a=ptime:30\r\n", 30)])
@pytest.mark.parametrize("codec", ["PCMA", "G722"])
async def test_pcma_and_g722_go_out_in_the_peers_packet_time(
    codec: str, lines: bytes, ms: int
) -> None:
    """PCMA as PCMU; G.722: 16 kHz audio, an 8000 Hz RTP clock, a byte per unit of it."""
    payload_type, rate = {"PCMA": (8, 8000), "G722": (9, 16000)}[codec]
    phone = await Phone.open()
    leg = await RtpLeg.open(codecs=(codec,))
    try:
        leg.create_answer(phone.sdp(lines, formats=b"%d 101" % payload_type))
        assert leg.packet_time == ms and leg.sample_rate == rate
        await write_paced(leg, SineSource(1000, rate, 0.3), 1.0)
        phone.recording = False
        check_stream(phone.packets, 8 * ms)
        assert all(p.payload_type == payload_type for p in phone.packets)
        decode = alaw_decode if codec == "PCMA" else G722Decoder()
        check_tone(audio_of(talk_spurt(phone.packets), decode, rate // 8000), rate, 1000)
    finally:
        phone.close()
        await leg.close()


@pytest.mark.parametrize(
    ("lines", "ms"),
    [
        (b"a=maxptime:10\r\n", 10),  # a limit below 20: 10 ms Opus frames
        (b"a=maxptime:15\r\n", 10),
        (b"a=ptime:40\r\n", 20),  # a preference: Opus keeps 20 ms
        (b"a=ptime:10\r\n", 20),
    ],
)
async def test_opus_under_a_maxptime_below_20_is_encoded_in_10_ms_frames(
    lines: bytes, ms: int
) -> None:
    phone = await Phone.open()
    leg = await RtpLeg.open(codecs=("opus",))
    try:
        leg.create_answer(phone.sdp(lines, **OPUS_SDP))
        assert leg.packet_time == ms
        # its 20 ms payloads cannot be relayed then: the bridge transcodes
        assert leg.send_codec == ("opus" if ms == 20 else None)
        await write_paced(leg, SineSource(1000, 48000, 0.3), 1.0)
        phone.recording = False
        check_stream(phone.packets, 48 * ms, packet_samples)
        decoder = OpusDecoder(48000)
        check_tone(audio_of(talk_spurt(phone.packets), decoder.decode), 48000, 1000)
    finally:
        phone.close()
        await leg.close()


class BrowserCall:
    """browser <-WebRTC-> [client | bridge | far] <-RTP-> phone (a Phone: what reaches it)"""

    def __init__(self, browser_pt: str | None) -> None:
        self.browser_pt = browser_pt
        self.browser = WebRtcLeg()
        self.client = WebRtcLeg()
        self.bridge = MediaBridge(self.client)

    async def setup(self, codecs: tuple[str, ...], offer: Callable[[Phone], bytes]) -> None:
        self.far = await RtpLeg.open(codecs=codecs)
        self.phone = await Phone.open()
        self.phone.recording = False
        sdp = await self.browser.create_offer()
        if self.browser_pt is not None:
            sdp = only_codec(sdp, self.browser_pt)
        await self.browser.accept_answer(await self.client.accept_offer(sdp))
        self.far.create_answer(offer(self.phone))  # the PBX's INVITE
        await wait_for(lambda: self.browser.connection_state == "connected", 10)
        self.bridge.connect(self.far)

    async def close(self) -> None:
        await self.bridge.close()
        for leg in (self.browser, self.client):
            await leg.close()
        await self.far.close()
        self.phone.close()


@pytest.mark.parametrize(
    ("browser_pt", "codecs", "lines", "ms"),
    [
        ("0", ("PCMU",), b"a=maxptime:10\r\n", 10),  # relayed: each payload cut in two
        ("0", ("PCMU",), b"a=ptime:30\r\n", 30),  # relayed: a frame and a half a packet
        ("0", ("PCMU",), b"a=ptime:60\r\n", 60),
        (None, ("PCMU",), b"a=maxptime:10\r\n", 10),  # the browser's Opus transcoded
        (None, ("PCMU",), b"a=ptime:40\r\n", 40),
    ],
)
async def test_a_browsers_audio_reaches_the_phone_in_its_packet_time(
    browser_pt: str | None, codecs: tuple[str, ...], lines: bytes, ms: int
) -> None:
    """
    The whole way: the browser's PCMU relayed undecoded (the express way; no circuit,
    which sends a packet per packet received) or its Opus transcoded, cut to the
    phone's packet time with timestamps and sequence numbers that run on.
    """
    call = BrowserCall(browser_pt)
    await call.setup(codecs, lambda phone: phone.sdp(lines))
    try:
        assert call.far.packet_time == ms
        far = call.far
        await write_paced(call.browser, SineSource(1000, 48000, 0.3), 0.4)  # settles in
        far._sync_circuits()  # what circuits relayed counts once synced
        encoded, relayed = far.frames_encoded, far.frames_relayed
        call.phone.recording = True
        await write_paced(call.browser, SineSource(1000, 48000, 0.3), 1.6)
        call.phone.recording = False
        packets = call.phone.packets
        check_stream(packets, 8 * ms)
        check_tone(audio_of(packets, ulaw_decode), 8000, 1000)
        if browser_pt == "0":
            # relayed as the browser sent it, not decoded and encoded again...
            far._sync_circuits()
            assert far.frames_relayed - relayed >= 70
            assert far.frames_encoded == encoded
            # ...the express way, each payload restamped and cut: no circuit
            assert call.client._circuit_in is None and far._circuit_out is None
        else:
            assert far.frames_encoded - encoded >= 70
    finally:
        await call.close()


async def test_the_browsers_opus_is_transcoded_for_a_maxptime_below_20() -> None:
    """Opus both ways, but the phone takes at most 10 ms: the browser's 20 ms packets
    cannot be relayed; decoded and encoded again as 10 ms frames."""
    call = BrowserCall(None)
    await call.setup(("opus",), lambda phone: phone.sdp(b"a=maxptime:10\r\n", **OPUS_SDP))
    try:
        assert call.far.codec == "opus" and call.far.packet_time == 10
        await write_paced(call.browser, SineSource(1000, 48000, 0.3), 0.4)
        call.phone.recording = True
        await write_paced(call.browser, SineSource(1000, 48000, 0.3), 1.6)
        call.phone.recording = False
        packets = call.phone.packets
        check_stream(packets, 480, packet_samples)
        check_tone(audio_of(packets, OpusDecoder(48000).decode), 48000, 1000)
        assert call.far.frames_relayed == 0
    finally:
        await call.close()


@pytest.mark.parametrize(
    ("lines", "ms"),
    [
        (b"a=ptime:20\r\n", 20),
        (b"a=ptime:10\r\n", 10),
        (b"a=ptime:120\r\n", 60),  # more than we send: our longest
        (b"a=ptime:30\r\na=maxptime:20\r\n", 20),  # the limit wins
        (b"a=ptime:60\r\na=maxptime:45\r\n", 40),
        (b"a=maxptime:15\r\n", 10),
        (b"a=maxptime:150\r\n", 20),
        # odd or invalid: as if absent, and never a reason to refuse the call
        (b"a=ptime:25\r\n", 20),
        (b"a=ptime:0\r\n", 20),
        (b"a=ptime:-30\r\n", 20),
        (b"a=maxptime:5\r\n", 10),
        (b"a=maxptime:0\r\n", 20),
        (b"a=ptime:abc\r\n", 20),
        (b"a=ptime:inf\r\na=maxptime:nan\r\n", 20),
        (b"a=ptime:30\r\na=maxptime:garbage\r\n", 30),
    ],
)
async def test_packet_time_from_an_offer_or_an_answer(lines: bytes, ms: int) -> None:
    phone = await Phone.open()
    leg = await RtpLeg.open()
    try:
        # the PBX's offer
        answer = SessionDescription.parse(leg.create_answer(phone.sdp(lines)))
        assert leg.packet_time == ms
        assert answer.audio().ptime == 20 and answer.audio().maxptime is None
        # the PBX's answer to our re-offer: its a=ptime counts just the same
        leg.apply_answer(phone.sdp())
        assert leg.packet_time == 20
        leg.create_offer()
        leg.apply_answer(phone.sdp(lines))
        assert leg.packet_time == ms
    finally:
        phone.close()
        await leg.close()


async def test_rfc4733_events_between_packets_of_30_ms() -> None:
    """The audio held for a packet goes out before the event, which starts where that
    audio ends; after it, a new talk spurt; one sequence throughout."""
    phone = await Phone.open()
    leg = await RtpLeg.open()
    try:
        leg.create_answer(phone.sdp(b"a=ptime:30\r\n"))
        writing = asyncio.get_running_loop().create_task(
            write_paced(leg, SineSource(1000, 8000, 0.3), 1.0)
        )
        for _ in range(2):
            await asyncio.sleep(0.25)
            leg.send_dtmf("5", duration_ms=100)
        await writing
        phone.recording = False
        packets = phone.packets
        events = [p for p in packets if p.payload_type == 101]
        audio = [p for p in packets if p.payload_type == 0]
        assert len({p.timestamp for p in events}) == 2
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
        for k, p in enumerate(packets[1:], 1):
            before = packets[k - 1]
            if p.payload_type == 101 and before.payload_type == 0:
                # the event starts where the audio before it ended
                assert p.marker
                assert (p.timestamp - before.timestamp) & 0xFFFFFFFF == len(before.payload)
            if p.payload_type == 0 and before.payload_type == 101:
                # the audio resumes after the event, as a new talk spurt
                assert p.marker
                assert (p.timestamp - before.timestamp) & 0xFFFFFFFF >= 800
        # the audio between the events: 30 ms packets, short only before an event
        runs: list[list[RtpPacket]] = [[]]
        for p in packets:
            if p.payload_type == 101:
                if runs[-1]:
                    runs.append([])
            else:
                runs[-1].append(p)
        assert len(runs) == 3 and len(audio) == sum(len(run) for run in runs)
        for run in runs:
            check_stream(run, 240)
    finally:
        phone.close()
        await leg.close()


async def test_inband_dtmf_in_packets_of_30_ms() -> None:
    """No telephone-event: the tones go out in the audio, cut like it, and can be heard."""
    phone = await Phone.open()
    leg = await RtpLeg.open()
    try:
        leg.create_answer(phone.sdp(b"a=ptime:30\r\n", formats=b"0", rtpmap=b""))
        assert leg.dtmf_mode == "inband"
        leg.send_dtmf("159#", duration_ms=80)
        await asyncio.sleep(1.2)
        phone.recording = False
        check_stream(phone.packets, 240)
        detected = DtmfDetector().process(audio_of(phone.packets, ulaw_decode))
        assert "".join(detected) == "159#"
    finally:
        phone.close()
        await leg.close()


async def test_hold_resume_and_a_new_packet_time() -> None:
    """The PBX holds (nothing sent), resumes (the sequence goes on, a talk spurt
    starts), then asks for 10 ms in a re-INVITE."""
    phone = await Phone.open()
    leg = await RtpLeg.open()
    try:
        leg.create_answer(phone.sdp(b"a=ptime:30\r\n"))
        await asyncio.sleep(0.3)
        leg.create_answer(phone.sdp(b"a=ptime:30\r\n", direction=b"sendonly"))
        assert leg.held
        await asyncio.sleep(0.05)  # one may have been in flight
        held = len(phone.packets)
        await asyncio.sleep(0.3)
        assert len(phone.packets) == held
        leg.create_answer(phone.sdp(b"a=ptime:30\r\n"))
        await asyncio.sleep(0.3)
        leg.create_answer(phone.sdp(b"a=ptime:10\r\n"))
        assert leg.packet_time == 10
        first = leg._sequence_number  # of the first packet of 10 ms
        await asyncio.sleep(0.3)
        phone.recording = False
        packets = phone.packets
        resumed = packets[held]
        assert resumed.marker
        assert resumed.sequence_number == (packets[held - 1].sequence_number + 1) & 0xFFFF
        ten = next(k for k, p in enumerate(packets) if p.sequence_number == first)
        check_stream(packets[:ten], 240)
        # from the re-INVITE on: 10 ms packets, carrying on the same timeline
        last = packets[ten - 1]
        assert packets[ten].timestamp == (last.timestamp + len(last.payload)) & 0xFFFFFFFF
        check_stream(packets[ten:], 80)
    finally:
        phone.close()
        await leg.close()


async def test_sender_reports_count_the_packets_of_another_packet_time() -> None:
    phone = await Phone.open()
    leg = await RtpLeg.open()
    try:
        leg.create_answer(phone.sdp(b"a=ptime:40\r\n"))
        await write_paced(leg, SineSource(1000, 8000, 0.3), 0.5)
        await asyncio.sleep(0.1)  # what was held went out
        leg._send_rtcp()
        await wait_for(lambda: bool(phone.rtcp), 2)
        phone.recording = False
        report = parse_rtcp(phone.rtcp[0])[0]
        assert isinstance(report, RtcpSrPacket)
        sent = phone.packets
        check_stream(sent, 320)
        assert report.packet_count == len(sent) == leg.packets_sent
        assert report.octet_count == sum(len(p.payload) for p in sent)
        # the report's RTP time is the sender's clock now: after the last packet's audio
        last = sent[-1]
        after = (report.rtp_timestamp - last.timestamp - len(last.payload)) & 0xFFFFFFFF
        assert after < 8000 * 0.3
    finally:
        phone.close()
        await leg.close()
