"""SRTP toward SIP keyed by SDES (RFC 4568): crypto lines, offer/answer policy, media."""

import asyncio
import base64
import socket
from typing import cast

import numpy as np
import pytest

from rtc.g711 import ulaw_decode
from rtc.rtp import RtpPacket, is_rtcp
from rtc.rtpleg import RtpLeg
from rtc.sdes import CryptoAttribute, SrtpContext, SrtpError, find_crypto, generate_key
from rtc.sdp import SdpError, SessionDescription
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, rms_dbfs

from .conftest import read_for, wait_for, write_paced

# RFC 4568 section 4's key, without its MKI
KEY_B64 = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
KEY = base64.b64decode(KEY_B64)


def offer(proto: bytes = b"RTP/AVP", crypto: list[str] | None = None, port: int = 40000) -> bytes:
    lines = [
        b"v=0",
        b"o=- 1 1 IN IP4 127.0.0.1",
        b"s=-",
        b"c=IN IP4 127.0.0.1",
        b"t=0 0",
        b"m=audio %d %s 0 101" % (port, proto),
        b"a=rtpmap:101 telephone-event/8000",
    ]
    lines += [f"a=crypto:{c}".encode() for c in crypto or []]
    return b"\r\n".join(lines + [b"a=sendrecv", b""])


# crypto lines


def test_crypto_attribute_golden() -> None:
    line = f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}"
    crypto = CryptoAttribute.parse(line)
    assert crypto == CryptoAttribute(1, "AES_CM_128_HMAC_SHA1_80", KEY)
    assert str(crypto) == line
    # a lifetime is accepted (and not repeated)
    lifetime = CryptoAttribute.parse(f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}|2^20")
    assert (lifetime.tag, lifetime.suite, lifetime.key) == (2, "AES_CM_128_HMAC_SHA1_32", KEY)
    assert len(generate_key()) == 30 and generate_key() != generate_key()


@pytest.mark.parametrize(
    "line",
    [
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}|2^20|1:32",  # MKI
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64} KDR=1",  # session parameter
        f"1 F8_128_HMAC_SHA1_80 inline:{KEY_B64}",  # suite
        f"1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_B64}",
        "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA",  # key length
        "1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!",
        f"x AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}",
        f"1 AES_CM_128_HMAC_SHA1_80 uri:{KEY_B64}",
        "1 AES_CM_128_HMAC_SHA1_80",
    ],
)
def test_crypto_attribute_unusable(line: str) -> None:
    with pytest.raises(ValueError):
        CryptoAttribute.parse(line)


def test_find_crypto_skips_unusable_lines() -> None:
    attributes: list[tuple[str, str | None]] = [
        ("crypto", f"1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_B64}"),
        ("rtcp", "40001"),
        ("crypto", f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}"),
    ]
    assert [c.tag for c in find_crypto(attributes)] == [2]


def test_context_protects_and_rekeys() -> None:
    a_key, b_key = generate_key(), generate_key()
    a = SrtpContext("AES_CM_128_HMAC_SHA1_80", a_key, b_key)
    b = SrtpContext("AES_CM_128_HMAC_SHA1_80", b_key, a_key)
    plain = bytes(RtpPacket(0, 1, 160, 42, payload=b"\x55" * 160))
    wire = a.protect(plain)
    assert len(wire) == len(plain) + 10 and wire[12:172] != plain[12:]
    assert b.unprotect(wire) == plain
    with pytest.raises(SrtpError):
        b.unprotect(wire)  # replayed
    with pytest.raises(SrtpError):
        b.unprotect(plain)
    assert a.rekeyed("AES_CM_128_HMAC_SHA1_80", b_key) is a
    assert a.rekeyed("AES_CM_128_HMAC_SHA1_80", generate_key()) is not a


# offer/answer policy


@pytest.mark.parametrize(
    ("mode", "proto", "crypto"),
    [("off", "RTP/AVP", False), ("optional", "RTP/AVP", True), ("mandatory", "RTP/SAVP", True)],
)
async def test_offer(mode: str, proto: str, crypto: bool) -> None:
    leg = await RtpLeg.open(srtp=mode)
    other = await RtpLeg.open(srtp=mode)
    try:
        audio = SessionDescription.parse(leg.create_offer()).audio()
        assert audio.proto == proto
        lines = find_crypto(audio.attributes)
        if crypto:
            assert [(c.tag, c.suite) for c in lines] == [(1, "AES_CM_128_HMAC_SHA1_80")]
            theirs = find_crypto(SessionDescription.parse(other.create_offer()).audio().attributes)
            assert lines[0].key != theirs[0].key  # a key per leg
        else:
            assert not lines and not any(name == "crypto" for name, _ in audio.attributes)
    finally:
        await leg.close()
        await other.close()


CRYPTO_80 = f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_B64}"
CRYPTO_32 = f"7 AES_CM_128_HMAC_SHA1_32 inline:{KEY_B64}"
CRYPTO_256 = f"3 AES_256_CM_HMAC_SHA1_80 inline:{KEY_B64}"


@pytest.mark.parametrize(
    ("mode", "proto", "crypto", "expected"),
    [
        ("off", b"RTP/AVP", [], None),
        ("off", b"RTP/AVP", [CRYPTO_80], None),  # best effort offer: plain answer
        ("off", b"RTP/SAVP", [CRYPTO_80], SdpError),
        ("optional", b"RTP/AVP", [], None),
        ("optional", b"RTP/AVP", [CRYPTO_80], (1, "AES_CM_128_HMAC_SHA1_80")),
        ("optional", b"RTP/SAVP", [CRYPTO_256, CRYPTO_32], (7, "AES_CM_128_HMAC_SHA1_32")),
        ("optional", b"RTP/SAVP", [CRYPTO_256], SdpError),
        ("optional", b"RTP/SAVP", [], SdpError),
        ("mandatory", b"RTP/AVP", [], SdpError),
        ("mandatory", b"RTP/AVP", [CRYPTO_80], (1, "AES_CM_128_HMAC_SHA1_80")),
        ("mandatory", b"RTP/SAVP", [CRYPTO_80, CRYPTO_32], (1, "AES_CM_128_HMAC_SHA1_80")),
    ],
)
async def test_answer(
    mode: str, proto: bytes, crypto: list[str], expected: tuple[int, str] | type | None
) -> None:
    leg = await RtpLeg.open(srtp=mode)
    try:
        if expected is SdpError:
            with pytest.raises(SdpError):
                leg.create_answer(offer(proto, crypto))
            assert leg.codec is None
            return
        audio = SessionDescription.parse(leg.create_answer(offer(proto, crypto))).audio()
        assert audio.proto == proto.decode()  # RFC 3264: the offer's transport
        lines = find_crypto(audio.attributes)
        if expected is None:
            assert lines == [] and leg.srtp_suite is None
        else:
            assert [(c.tag, c.suite) for c in lines] == [expected]
            assert lines[0].key != KEY  # ours, not an echo of theirs
            assert leg.srtp_suite == expected[1]  # type: ignore[index]
    finally:
        await leg.close()


async def test_apply_answer_policy() -> None:
    plain = offer(b"RTP/AVP")
    mandatory = await RtpLeg.open(srtp="mandatory")
    optional = await RtpLeg.open(srtp="optional")
    off = await RtpLeg.open()
    try:
        mandatory.create_offer()
        with pytest.raises(SdpError):
            mandatory.apply_answer(plain)
        with pytest.raises(SdpError):  # a tag we did not offer
            mandatory.apply_answer(offer(b"RTP/SAVP", [CRYPTO_32]))
        mandatory.apply_answer(offer(b"RTP/SAVP", [CRYPTO_80]))
        assert mandatory.srtp_suite == "AES_CM_128_HMAC_SHA1_80"

        optional.create_offer()
        optional.apply_answer(plain)  # the PBX ignored our crypto line
        assert optional.codec == "PCMU" and optional.srtp_suite is None
        assert b"a=crypto" not in optional.create_offer()  # and a re-offer stays plain

        off.create_offer()
        off.apply_answer(offer(b"RTP/AVP", [CRYPTO_80]))
        assert off.srtp_suite is None
    finally:
        for leg in (mandatory, optional, off):
            await leg.close()


async def test_unknown_mode_refused() -> None:
    with pytest.raises(ValueError):
        await RtpLeg.open(srtp="on")


# media


class Relay(asyncio.DatagramProtocol):
    """One UDP port between two legs that records what crosses it."""

    def __init__(self) -> None:
        self.legs: tuple[tuple[str, int], tuple[str, int]] | None = None
        self.captured: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.legs is not None and self.transport is not None
        self.captured.append(data)
        a, b = self.legs
        self.transport.sendto(data, b if addr == a else a)


def via(sdp: bytes, leg: RtpLeg, port: int) -> bytes:
    return sdp.replace(f"m=audio {leg.local_port} ".encode(), f"m=audio {port} ".encode())


async def test_srtp_tone_both_ways_and_encrypted_on_the_wire() -> None:
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(
        Relay, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    port = transport.get_extra_info("sockname")[1]
    a = await RtpLeg.open(srtp="mandatory")
    b = await RtpLeg.open(srtp="optional")
    try:
        relay.legs = (("127.0.0.1", a.local_port), ("127.0.0.1", b.local_port))
        answer = b.create_answer(via(a.create_offer(), a, port))
        assert b"m=audio %d RTP/SAVP 0 101" % b.local_port in answer
        a.apply_answer(via(answer, b, port))
        assert a.srtp_suite == b.srtp_suite == "AES_CM_128_HMAC_SHA1_80"

        writers = asyncio.gather(
            write_paced(a, SineSource(1000, 8000, 0.3), 1.0),
            write_paced(b, SineSource(700, 8000, 0.3), 1.0),
        )
        at_b, at_a = await asyncio.gather(read_for(b, 1.0), read_for(a, 1.0))
        await writers
        for received, freq in ((at_b, 1000), (at_a, 700)):
            assert len(received) >= 8000 * 0.6
            assert dominant_frequency(received[-4000:], 8000) == pytest.approx(freq, abs=5)
            assert rms_dbfs(received[-4000:]) == pytest.approx(-13.5, abs=1.0)

        rtp = [p for p in relay.captured if not is_rtcp(p)]
        assert len(rtp) > 60
        headers = [RtpPacket.parse(p) for p in rtp]  # the header stays in clear
        assert {h.payload_type for h in headers} == {0}
        assert all(len(p) == 12 + 160 + 10 for p in rtp)  # payload + 80-bit auth tag
        # what the payloads would sound like as plain PCMU: noise, no tone in it
        as_plain = np.concatenate([ulaw_decode(p[12:172]) for p in rtp[-40:]])
        for freq in (1000, 700):
            assert band_energy_ratio(as_plain, 8000, freq) < 0.05
    finally:
        transport.close()
        await a.close()
        await b.close()


async def test_srtp_with_g722_srtcp_and_hold() -> None:
    """G.722 over SRTP; SRTCP gives both sides an RTT; a hold re-offer keeps the keys."""
    a = await RtpLeg.open(srtp="optional", codecs=("G722",))
    b = await RtpLeg.open(srtp="mandatory", codecs=("G722", "PCMU"))
    a.rtcp_interval = b.rtcp_interval = 0.2
    try:
        first = a.create_offer()
        a.apply_answer(b.create_answer(first))
        assert a.codec == b.codec == "G722" and a.srtp_suite is not None
        writer = asyncio.ensure_future(write_paced(a, SineSource(5000, 16000, 0.3), 1.6))
        at_b = await read_for(b, 0.8)
        assert dominant_frequency(at_b[-6400:], 16000) == pytest.approx(5000, abs=5)
        await wait_for(lambda: a.stats().rtt_ms is not None and b.stats().rtt_ms is not None, 5)

        # hold and resume by re-INVITE: same crypto line, audio afterwards
        hold = a.create_offer("sendonly")
        key_line = [line for line in first.split(b"\r\n") if line.startswith(b"a=crypto")]
        assert key_line and key_line[0] in hold
        a.apply_answer(b.create_answer(hold))
        a.apply_answer(b.create_answer(a.create_offer("sendrecv")))
        at_b = await read_for(b, 0.6)
        await writer
        assert dominant_frequency(at_b[-4800:], 16000) == pytest.approx(5000, abs=5)
    finally:
        await a.close()
        await b.close()


async def test_plain_or_forged_packets_dropped_and_not_latched() -> None:
    leg = await RtpLeg.open(srtp="mandatory")
    rogue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rogue.bind(("127.0.0.1", 0))
    try:
        leg.create_answer(offer(b"RTP/SAVP", [CRYPTO_80], port=9))
        for seq in range(5):
            packet = bytes(RtpPacket(0, seq, seq * 160, 99, payload=b"\x00" * 160))
            rogue.sendto(packet, ("127.0.0.1", leg.local_port))
            rogue.sendto(packet + b"\x01" * 10, ("127.0.0.1", leg.local_port))
        await asyncio.sleep(0.1)
        assert leg.packets_received == 0
        assert not leg.latched
        # the same packets protected with the offerer's key do count
        sender = SrtpContext("AES_CM_128_HMAC_SHA1_80", KEY, generate_key())
        packet = bytes(RtpPacket(0, 7, 7 * 160, 99, payload=b"\xff" * 160))
        rogue.sendto(sender.protect(packet), ("127.0.0.1", leg.local_port))
        await wait_for(lambda: leg.packets_received == 1, 2)
        assert leg.latched
    finally:
        rogue.close()
        await leg.close()


async def test_a_packet_too_long_for_srtp_is_lost_not_raised() -> None:
    """
    A payload relayed from the browser longer than SRTP's buffer takes (no real
    encoder's: Opus ends at 1276 bytes in 20 ms; a browser's datagram may carry
    1490) cannot be protected toward the phone: it is lost, as on the wire,
    rather than raised in the browser leg's receive path once per packet.
    """
    a = await RtpLeg.open(srtp="mandatory")
    b = await RtpLeg.open(srtp="optional")
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        assert a.srtp_suite is not None
        addr = ("127.0.0.1", b.local_port)
        assert not a._sendto(bytes(RtpPacket(0, 1, 160, 7, payload=bytes(1400))), addr)
        assert a._sendto(bytes(RtpPacket(0, 2, 320, 7, payload=bytes(160))), addr)
        sent = a.packets_sent
        a._send(b"\xff" * 1400)  # relayed payloads are bytes
        assert a.packets_sent == sent
        a._send(b"\xff" * 160)
        assert a.packets_sent == sent + 1
    finally:
        await a.close()
        await b.close()
