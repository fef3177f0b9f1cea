"""Malformed media never raises and never disturbs a stream (DESIGN §9: bad input affects
nothing else). The byte strings of tests/malformed_media.py go straight into the parsers,
into RtpLeg's datagram handlers (from its latched peer and from a stranger) and into a
connected WebRtcLeg's UDP receive path (aioice's StunProtocol, as the event loop would
call it); the legs' audio keeps flowing both ways. The same datagrams are sent over the
wire to a running gateway by tests/e2e/test_media_fuzz.py."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pylibsrtp
import pytest

from rtc.dtmf import DtmfEventReceiver, TelephoneEvent
from rtc.g711 import ulaw_encode
from rtc.rtcp import RtcpRrPacket, parse_rtcp
from rtc.rtcplink import RtcpLink
from rtc.rtcpsession import RtcpSession
from rtc.rtp import RtpPacket, parse_received
from rtc.rtpleg import RtpLeg
from rtc.sdes import DEFAULT_SUITE, SrtpContext, SrtpError, generate_key
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, band_energy_ratio, dominant_frequency
from tests.malformed_media import (
    corpus,
    huge_datagrams,
    malformed_rtcp,
    malformed_rtp,
    malformed_srtp,
    random_datagrams,
)

from .conftest import read_for, write_paced
from .test_webrtcleg import connect

SEED = 20261124
STRANGER = ("127.0.0.1", 9)  # nobody's address: no leg sends there
STRANGER6 = ("::1", 9, 0, 0)


async def stop(writers: asyncio.Future[Any]) -> None:
    """Stop the writers: the legs sent for as long as the test listened."""
    writers.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writers


# --------------------------------------------------------------------------- parsers


def test_parsers_reject_malformed_input_with_value_error_only() -> None:
    """The lean receive parser says None, the full parsers raise ValueError and nothing
    else, the DTMF receiver and the RTCP session ignore what they cannot read."""
    session = RtcpSession(0x1234, 8000, "test@host")
    receiver = DtmfEventReceiver()
    accepted = 0
    for data in corpus(0, 101, seed=SEED):
        parse_received(data)  # None or a packet, never an exception
        for parse in (RtpPacket.parse, parse_rtcp, TelephoneEvent.parse):
            try:
                parse(data)
            except ValueError:
                pass
        receiver.feed(0x5EED, len(data), data)
        try:
            parse_rtcp(data)
        except ValueError:
            assert not session.handle(data, 1e9, 1.0), data[:40].hex()
        else:
            accepted += session.handle(data, 1e9, 1.0)
    assert not session.handle(b"", 1e9, 1.0)
    assert accepted  # some random bytes and truncations are well-formed RTCP after all
    assert session.remote_report is None  # nothing here reported on our SSRC


def test_srtp_too_long_to_be_srtp_fails_like_a_forgery() -> None:
    """pylibsrtp raises ValueError for more than 1500 bytes: SrtpContext makes it the
    SrtpError every caller drops."""
    context = SrtpContext(DEFAULT_SUITE, generate_key(), generate_key())
    for data in huge_datagrams() + [b"\x80" * 1501]:
        with pytest.raises(SrtpError):
            context.unprotect(data)
        with pytest.raises(SrtpError):
            context.unprotect_rtcp(data)
    for data in malformed_srtp(0):
        with pytest.raises(SrtpError):
            context.unprotect(data)


def test_only_rtcp_latches_the_rtcp_source() -> None:
    """A datagram that is not RTCP, arriving on the RTCP port before the peer's first
    report, does not take the peer's reports: our RTCP still goes where the SDP says."""
    link = RtcpLink(RtcpSession(0x1234, 8000, "test@host"))
    link.set_remote(("192.0.2.1", 4000), ("192.0.2.1", 4001))
    for data in malformed_rtcp() + malformed_rtp(0) + random_datagrams(SEED, 200):
        try:
            parse_rtcp(data)
        except ValueError:
            link.receive(data, STRANGER, False, None, 1e9, 1.0)
            assert link.latched is None, data[:40].hex()
    report = bytes(RtcpRrPacket(0x9999, []))
    link.receive(report, ("192.0.2.1", 4001), False, None, 1e9, 1.0)
    assert link.latched == ("192.0.2.1", 4001)


# --------------------------------------------------------------------------- RtpLeg


async def rtp_pair(**options: object) -> tuple[RtpLeg, RtpLeg]:
    """Two RtpLegs on loopback, `offerer` and `answerer`, negotiated with `options`."""
    offerer = await RtpLeg.open(**options)  # type: ignore[arg-type]
    answerer = await RtpLeg.open(**options)  # type: ignore[arg-type]
    offerer.apply_answer(answerer.create_answer(offerer.create_offer()))
    return offerer, answerer


RTP_LEGS = {
    "pcmu": {"codecs": ("PCMU",)},
    "g722": {"codecs": ("G722",)},
    "opus": {"codecs": ("opus",)},
    "srtp": {"codecs": ("PCMU",), "srtp": "mandatory"},
}


@pytest.mark.parametrize("passthrough", [False, True], ids=["decoding", "passthrough"])
@pytest.mark.parametrize("options", RTP_LEGS.values(), ids=RTP_LEGS.keys())
async def test_rtp_leg_survives_malformed_datagrams(
    options: dict[str, object], passthrough: bool
) -> None:
    """Mid-call, every malformed datagram reaches the leg's RTP and RTCP handlers, from
    its latched peer (a broken phone) and from a stranger. Nothing raises, the latch
    stays, and afterwards each leg hears the other's tone."""
    a, b = await rtp_pair(**options)
    writers = asyncio.gather(
        write_paced(a, SineSource(1000, a.sample_rate, 0.3), 10),
        write_paced(b, SineSource(600, b.sample_rate, 0.3), 10),
    )
    try:
        if passthrough:
            b.set_passthrough(lambda codec: True)
        await asyncio.sleep(0.3)
        assert b.latched and b.remote_address == ("127.0.0.1", a.local_port)
        rtp_pt = b._codec_pt
        event_pt = b._telephone_event_pt
        peer, peer_rtcp = ("127.0.0.1", a.local_port), ("127.0.0.1", a.local_port + 1)
        for data in corpus(rtp_pt, event_pt, seed=SEED):
            for source in (peer, STRANGER):
                b._datagram_received(data, source)
            for source in (peer_rtcp, STRANGER):
                b._rtcp_received(data, source)
        assert b.remote_address == peer
        from_a, from_b = await asyncio.gather(read_for(b, 0.9), read_for(a, 0.9))
        for received, freq, leg in ((from_a, 1000, b), (from_b, 600, a)):
            tail = received[-leg.sample_rate * 2 // 5 :]  # the last 0.4 s
            assert len(tail) == leg.sample_rate * 2 // 5, f"{len(received)} samples"
            assert dominant_frequency(tail, leg.sample_rate) == pytest.approx(freq, abs=10)
    finally:
        await stop(writers)
        await a.close()
        await b.close()


async def test_rtp_from_a_stranger_is_not_heard_once_latched() -> None:
    """Once the peer's audio has latched, RTP of the negotiated payload types from another
    address (a stranger who found the port) is dropped: audio and telephone-events are
    not counted, not played, not taken as digits, and take neither the latch nor the
    jitter buffer's stream away from the peer. (Before the peer's first packet, the
    first source latches: that is symmetric RTP, for peers behind NAT.)"""
    a, b = await rtp_pair(codecs=("PCMU",))
    assert b._telephone_event_pt is not None
    digits: list[str] = []
    b.on_dtmf = digits.append
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stranger.setblocking(False)
    writer = asyncio.ensure_future(write_paced(a, SineSource(1000, 8000, 0.3), 1.6))
    try:
        await asyncio.sleep(0.3)
        assert b.remote_address == ("127.0.0.1", a.local_port)
        received = b.packets_received
        tone = SineSource(2500, 8000, 0.5)
        loop = asyncio.get_running_loop()
        start = loop.time()
        heard = asyncio.ensure_future(read_for(b, 1.2))
        for n in range(50):  # 1 s of a 2.5 kHz tone, paced, in its own stream
            payload = ulaw_encode(tone.frame(160))
            packet = RtpPacket(0, n, n * 160, 0xBAD, payload=payload, marker=n == 0)
            stranger.sendto(bytes(packet), ("127.0.0.1", b.local_port))
            if n % 10 == 0:  # and a key press now and then: "5", start and end
                event = RtpPacket(b._telephone_event_pt, 1000 + n, n * 160, 0xBAD, marker=True)
                for payload in (b"\x05\x0a\x00\xa0", b"\x05\x8a\x03\x20"):
                    event.payload = payload
                    stranger.sendto(bytes(event), ("127.0.0.1", b.local_port))
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))
        audio = await heard
        await writer
        assert b.remote_address == ("127.0.0.1", a.local_port)
        assert digits == [], "the stranger's key presses were taken as digits"
        assert b.packets_received - received <= 80  # a's 20 ms packets only, not 60 more
        assert len(audio) >= 8000
        assert band_energy_ratio(audio, 8000, 2500.0) < 0.01, "the stranger was heard"
        assert dominant_frequency(audio[-4000:], 8000) == pytest.approx(1000, abs=10)
        with pytest.raises(BlockingIOError):  # and b never sent it anything
            stranger.recv(2048)
    finally:
        await stop(writer)
        stranger.close()
        await a.close()
        await b.close()


# --------------------------------------------------------------------------- WebRtcLeg


@contextlib.asynccontextmanager
async def talking() -> AsyncIterator[tuple[WebRtcLeg, WebRtcLeg]]:
    """Two connected WebRTC legs, each sending a tone (1000 Hz from a, 600 Hz from b)."""
    a, b = WebRtcLeg(), WebRtcLeg()
    writers: asyncio.Future[Any] | None = None
    try:
        await connect(a, b)
        writers = asyncio.gather(
            write_paced(a, SineSource(1000, 48000, 0.3), 10),
            write_paced(b, SineSource(600, 48000, 0.3), 10),
        )
        await asyncio.sleep(0.3)
        yield a, b
    finally:
        if writers is not None:
            await stop(writers)
        await a.close()
        await b.close()


async def hear_each_other(a: WebRtcLeg, b: WebRtcLeg) -> None:
    """Both legs connected, each hearing the other's tone in the last 0.4 s of 0.9."""
    assert a.connection_state == b.connection_state == "connected"
    from_a, from_b = await asyncio.gather(read_for(b, 0.9), read_for(a, 0.9))
    for received, freq in ((from_a, 1000), (from_b, 600)):
        tail = received[-19200:]
        assert len(tail) == 19200, f"{len(received)} samples"
        assert dominant_frequency(tail, 48000) == pytest.approx(freq, abs=10)
        assert np.abs(tail).max() > 3000


async def test_webrtc_leg_survives_malformed_datagrams() -> None:
    """Mid-call, every malformed datagram goes into the answering leg's UDP receive path
    (its ICE socket's protocol, as the event loop hands it datagrams). Nothing raises,
    the DTLS transport stays up, and each leg hears the other's tone afterwards. An empty
    datagram or a 65000-byte SRTCP-looking one used to end aiortc's DTLS transport task
    (and the call's media); STUN with an attribute of the wrong size raised struct.error
    out of aioice's parser."""
    async with talking() as (a, b):
        assert b._hooked is not None and b._transceiver is not None
        protocols = b._hooked[0]._protocols  # type: ignore[attr-defined]
        opus = next(c for c in b._transceiver._codecs if c.mimeType.lower() == "audio/opus")
        assert opus.payloadType is not None
        garbage = corpus(opus.payloadType, 110, seed=SEED)
        received_before = b.direct_received
        # as from a stranger of each socket's own family (an IPv4 address on an
        # IPv6 socket cannot come from the network; uvloop's sendto of aioice's
        # STUN error response to one raises)
        strangers = [
            STRANGER6 if protocol.transport.get_extra_info("sockname")[0].count(":") else STRANGER
            for protocol in protocols
        ]
        for data in garbage:
            for protocol, stranger in zip(protocols, strangers, strict=True):
                protocol.datagram_received(data, stranger)
        # the forgeries did not authenticate, so none of them counted as audio
        assert b.direct_received == received_before
        await asyncio.sleep(0.2)
        await hear_each_other(a, b)


async def test_webrtc_leg_survives_malformed_media_its_peer_authenticates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    The same corpus as a browser gone wrong (or an attacker with a login) sends it:
    RTP and RTCP protected with the browser's own SRTP keys, so that it authenticates
    and reaches what is behind SRTP (the RTP and RTCP parsers, the jitter buffer, the
    Opus decoder, aiortc's RTCP handling), from the browser's own address. Nothing
    raises or is logged with a traceback, the DTLS transport stays up, and each leg
    hears the other's tone afterwards.
    """
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        async with talking() as (a, b):
            assert a._hooked is not None and b._hooked is not None
            assert b._transceiver is not None
            browser_srtp = a._hooked[1]._tx_srtp  # type: ignore[attr-defined]
            pair = b._hooked[0]._nominated[1]  # type: ignore[attr-defined]
            types = {c.mimeType.lower(): c.payloadType for c in b._transceiver._codecs}
            opus, events = types["audio/opus"], types.get("audio/telephone-event")
            assert opus is not None and events is not None
            authenticated = 0
            for data in corpus(opus, events, seed=SEED, random_count=500):
                if 127 < (data[0] if data else 0) < 192:
                    rtcp = len(data) > 1 and 191 < data[1] < 224
                    protect = browser_srtp.protect_rtcp if rtcp else browser_srtp.protect
                    with contextlib.suppress(ValueError, pylibsrtp.Error):
                        data = protect(data)
                        authenticated += 1
                pair.protocol.datagram_received(data, pair.remote_addr)
            assert authenticated > 100
            await asyncio.sleep(0.2)
            await hear_each_other(a, b)
        assert errors == [] and "Traceback" not in caplog.text, (errors, caplog.text)
    finally:
        loop.set_exception_handler(None)
