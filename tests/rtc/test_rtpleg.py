import asyncio
import socket

import numpy as np
import pytest

from rtc.ports import PortClosed
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.sdp import SdpError, SessionDescription
from tests.audio import SineSource, dominant_frequency, rms_dbfs

from .conftest import read_for, wait_for, write_paced


async def test_open_binds_even_port_in_range() -> None:
    leg = await RtpLeg.open("127.0.0.1", 30000, 30100)
    try:
        assert 30000 <= leg.local_port <= 30100
        assert leg.local_port % 2 == 0
    finally:
        await leg.close()


async def test_open_skips_busy_ports() -> None:
    first = await RtpLeg.open("127.0.0.1", 30200, 30202)
    second = await RtpLeg.open("127.0.0.1", 30200, 30202)
    try:
        assert {first.local_port, second.local_port} == {30200, 30202}
        with pytest.raises(OSError):
            await RtpLeg.open("127.0.0.1", 30200, 30202)
    finally:
        await first.close()
        await second.close()


async def test_offer_content() -> None:
    leg = await RtpLeg.open()
    try:
        sdp = SessionDescription.parse(leg.create_offer())
        assert sdp.connection == "127.0.0.1"
        audio = sdp.audio()
        assert audio.port == leg.local_port
        assert audio.proto == "RTP/AVP"
        assert audio.formats == ["0", "8", "101"]
        assert audio.rtpmap[101] == ("telephone-event", 8000, None)
        assert audio.fmtp[101] == "0-16"
        assert audio.ptime == 20
        assert audio.direction == "sendrecv"
    finally:
        await leg.close()


@pytest.mark.parametrize(
    "connection", [b"IN IP4 pbx.example.com", b"IN IP6 2001:db8::1", b"IN IP4 999.1.1.1"]
)
async def test_offer_to_an_address_no_socket_can_send_to_is_refused(connection: bytes) -> None:
    """A host name (a DNS lookup per datagram; uvloop's sendto refuses it and raised
    out of the leg's send path) or an address of the other family: SdpError, which
    the core answers with 488, and the leg sends nothing."""
    leg = await RtpLeg.open()
    try:
        with pytest.raises(SdpError, match="Connection address"):
            leg.create_answer(
                b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=" + connection + b"\r\n"
                b"t=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
            )
        leg.write(np.zeros(160, np.int16))
        await asyncio.sleep(0.1)
        assert leg.packets_sent == 0 and leg.remote_address is None
    finally:
        await leg.close()


OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP %s\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\na=sendrecv\r\n"
)


@pytest.mark.parametrize(
    ("formats", "codec"),
    [(b"0 8 101", "PCMU"), (b"8 0 101", "PCMA"), (b"8", "PCMA"), (b"18 0", "PCMU")],
)
async def test_answer_picks_first_g711_of_offer(formats: bytes, codec: str) -> None:
    leg = await RtpLeg.open()
    try:
        answer = SessionDescription.parse(leg.create_answer(OFFER % formats))
        assert leg.codec == codec
        audio = answer.audio()
        assert audio.codecs[0].name == codec
        assert audio.port == leg.local_port
        assert audio.direction == "sendrecv"
        assert ("101" in audio.formats) == (b"101" in formats)
    finally:
        await leg.close()


async def test_answer_without_g711_is_refused() -> None:
    leg = await RtpLeg.open()
    try:
        with pytest.raises(SdpError):
            leg.create_answer(OFFER % b"18 101")
        with pytest.raises(SdpError):
            leg.apply_answer(OFFER % b"9")
    finally:
        await leg.close()


async def test_answer_to_sendonly_is_recvonly_and_rejects_video() -> None:
    offer = (OFFER % b"0").replace(b"a=sendrecv", b"a=sendonly") + b"m=video 40002 RTP/AVP 96\r\n"
    leg = await RtpLeg.open()
    try:
        answer = SessionDescription.parse(leg.create_answer(offer))
        assert answer.media[0].direction == "recvonly"
        assert answer.media[1].kind == "video"
        assert answer.media[1].port == 0
    finally:
        await leg.close()


async def test_loopback_sine_and_symmetric_latching() -> None:
    a = await RtpLeg.open()
    b = await RtpLeg.open()
    # a's offer points at a dead port: b must find a by latching onto the
    # source of a's packets (symmetric RTP)
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    try:
        offer = a.create_offer().replace(
            f"m=audio {a.local_port} ".encode(), f"m=audio {dead_port} ".encode()
        )
        a.apply_answer(b.create_answer(offer))
        assert a.codec == b.codec == "PCMU"
        assert b.remote_address == ("127.0.0.1", dead_port)

        writers = asyncio.gather(
            write_paced(a, SineSource(1000, 8000, 0.3), 1.0),
            write_paced(b, SineSource(700, 8000, 0.3), 1.0),
        )
        received_b, received_a = await asyncio.gather(read_for(b, 1.0), read_for(a, 1.0))
        await writers

        assert b.latched
        assert b.remote_address == ("127.0.0.1", a.local_port)
        # skip the start (silence before the first written frame arrives)
        assert len(received_b) >= 8000 * 0.8
        assert dominant_frequency(received_b[1600:], 8000) == pytest.approx(1000, abs=5)
        assert rms_dbfs(received_b[1600:]) == pytest.approx(-13.5, abs=1.0)
        assert len(received_a) >= 8000 * 0.5
        assert dominant_frequency(received_a[-4000:], 8000) == pytest.approx(700, abs=5)
    finally:
        dead.close()
        await a.close()
        await b.close()


async def test_sends_marker_silence_and_rfc3550_fields() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    port = sink.getsockname()[1]
    leg = await RtpLeg.open()
    try:
        leg.create_answer((OFFER % b"8").replace(b"40000", str(port).encode()))
        loop = asyncio.get_running_loop()
        packets = []
        start = loop.time()
        for _ in range(10):
            data = await loop.sock_recv(sink, 2048)
            packets.append(RtpPacket.parse(data))
        elapsed = loop.time() - start
        assert packets[0].marker and not any(p.marker for p in packets[1:])
        assert all(p.payload_type == 8 for p in packets)
        assert all(p.payload == b"\xd5" * 160 for p in packets)  # A-law silence
        assert len({p.ssrc for p in packets}) == 1
        for prev, cur in zip(packets, packets[1:], strict=False):
            assert cur.sequence_number == (prev.sequence_number + 1) & 0xFFFF
            assert cur.timestamp == (prev.timestamp + 160) & 0xFFFFFFFF
        assert 0.15 < elapsed < 0.5  # 9 intervals of 20 ms, with slack for a busy machine
    finally:
        sink.close()
        await leg.close()


async def test_receive_drops_wrong_payload_type_and_reorders() -> None:
    leg = await RtpLeg.open()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    try:
        leg.create_answer(
            (OFFER % b"0 101").replace(b"40000", str(sender.getsockname()[1]).encode())
        )

        def send(seq: int, pt: int = 0, value: int = 0) -> None:
            # timestamps continue across the sequence number wrap
            timestamp = ((seq - 65534) & 0xFFFF) * 160
            packet = RtpPacket(pt, seq, timestamp, 1234, payload=bytes([value]) * 160)
            sender.sendto(bytes(packet), ("127.0.0.1", leg.local_port))

        send(65534, value=0x80)
        send(0, value=0x82)  # arrives before 65535
        send(65535, value=0x81)
        send(1, pt=101, value=0x90)  # telephone-event: ignored
        send(2, pt=8, value=0x90)  # not negotiated
        sender.sendto(b"\x80\x00junk", ("127.0.0.1", leg.local_port))
        send(1, value=0x83)
        frames = [await asyncio.wait_for(leg.read(), 1) for _ in range(4)]
        assert [int(f[0]) for f in frames] == [32124, 31100, 30076, 29052]
        assert leg.latched
    finally:
        sender.close()
        await leg.close()


async def test_read_raises_after_close() -> None:
    leg = await RtpLeg.open()
    reader = asyncio.get_running_loop().create_task(leg.read())
    await asyncio.sleep(0)
    await leg.close()
    with pytest.raises(PortClosed):
        await reader
    with pytest.raises(PortClosed):
        await leg.read()
    leg.write(np.zeros(160, dtype=np.int16))  # harmless after close


async def test_missing_packet_is_concealed() -> None:
    leg = await RtpLeg.open()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    try:
        port = str(sender.getsockname()[1]).encode()
        leg.create_answer((OFFER % b"0").replace(b"40000", port))
        for seq, value in [(10, 0x80), (12, 0x82)]:  # 11 never comes
            packet = RtpPacket(0, seq, seq * 160, 99, payload=bytes([value]) * 160)
            sender.sendto(bytes(packet), ("127.0.0.1", leg.local_port))
        frames = [await asyncio.wait_for(leg.read(), 1) for _ in range(3)]
        # the jitter buffer plays 11 as a faded repeat of 10
        assert [int(f[0]) for f in frames] == [32124, round(0.9 * 32124), 30076]
        assert leg.jitter_buffer.concealed == 1
    finally:
        sender.close()
        await leg.close()


async def test_other_ptime_is_reframed_to_20_ms() -> None:
    leg = await RtpLeg.open()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    try:
        port = str(sender.getsockname()[1]).encode()
        leg.create_answer((OFFER % b"0").replace(b"40000", port))
        for seq in range(2):  # two 30 ms packets make three 20 ms frames
            packet = RtpPacket(0, seq, seq * 240, 99, payload=b"\x80" * 240)
            sender.sendto(bytes(packet), ("127.0.0.1", leg.local_port))
        frames = [await asyncio.wait_for(leg.read(), 1) for _ in range(3)]
        assert [len(f) for f in frames] == [160, 160, 160]
    finally:
        sender.close()
        await leg.close()


async def test_reanswer_moves_the_stream() -> None:
    a = await RtpLeg.open()
    b = await RtpLeg.open()
    c = await RtpLeg.open()
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        await wait_for(lambda: b.packets_received > 0)
        # our re-INVITE: the far end moved to c; the re-offer keeps the codec
        reoffer = SessionDescription.parse(a.create_offer())
        assert reoffer.audio().formats == ["0", "101"]
        assert reoffer.audio().port == a.local_port
        a.apply_answer(c.create_answer(bytes(reoffer)))
        assert a.codec == "PCMU"
        assert a.remote_address == ("127.0.0.1", c.local_port)
        await wait_for(lambda: c.packets_received > 0)
        # the PBX's re-INVITE may still change codec
        a.create_answer(c.create_offer().replace(b"RTP/AVP 0 101", b"RTP/AVP 8 101"))
        assert a.codec == "PCMA"
    finally:
        for leg in (a, b, c):
            await leg.close()


async def test_write_checks_frame_size() -> None:
    leg = await RtpLeg.open()
    try:
        with pytest.raises(ValueError):
            leg.write(np.zeros(960, dtype=np.int16))
    finally:
        await leg.close()
