"""RFC 4733 DTMF on the WebRTC leg (telephone-event grafted onto aiortc)."""

import asyncio

import pytest

from rtc.dtmf import DIGITS
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, dominant_frequency

from .conftest import read_for, wait_for, write_paced
from .test_webrtcleg import connect


def g711_only(offer: str) -> str:
    """The offer of a browser restricted to PCMU/PCMA (telephone-event/8000 kept)."""
    lines = []
    for line in offer.splitlines():
        if line.startswith("m=audio"):
            line = " ".join(line.split()[:3] + ["0", "8", "126"])
        elif line.startswith(("a=rtpmap:96", "a=fmtp:96", "a=rtcp-fb:96")):
            continue
        elif line.startswith(("a=rtpmap:110", "a=fmtp:110")):
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("codec", ["opus", "pcmu"])
async def test_every_digit_once_both_ways_and_audio_after(codec: str) -> None:
    at_a: list[str] = []
    at_b: list[str] = []
    a, b = WebRtcLeg(on_dtmf=at_a.append), WebRtcLeg()
    b.on_dtmf = at_b.append
    try:
        with pytest.raises(RuntimeError):
            a.send_dtmf("1")  # nothing negotiated yet
        if codec == "opus":
            await connect(a, b)
            assert a.codec == "audio/opus"
        else:
            answer = await b.accept_offer(g711_only(await a.create_offer()))
            assert "telephone-event/8000" in answer
            await a.accept_answer(answer)
            await wait_for(lambda: a.connection_state == b.connection_state == "connected", 10)
            assert a.codec == "audio/PCMU"
        assert a.dtmf_negotiated and b.dtmf_negotiated
        with pytest.raises(ValueError):
            a.send_dtmf("12x")

        writer = asyncio.ensure_future(write_paced(a, SineSource(1000, 48000, 0.3), 4.0))
        a.send_dtmf(DIGITS, duration_ms=60)
        b.send_dtmf("#*1")
        await wait_for(lambda: len(at_b) >= 16 and len(at_a) >= 3, 10)
        await asyncio.sleep(0.3)
        assert "".join(at_b) == DIGITS
        assert "".join(at_a) == "#*1"
        assert b.last_received is not None
        # the decoder never saw the events: audio still flows
        received = await read_for(b, 0.6)
        await writer
        assert dominant_frequency(received[-9600:], 48000) == pytest.approx(1000, abs=5)
    finally:
        await a.close()
        await b.close()


async def test_offer_without_telephone_event() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        offer = await a.create_offer()
        offer = "\r\n".join(
            line.replace(" 110 126", "")
            for line in offer.splitlines()
            if not line.startswith(("a=rtpmap:110", "a=rtpmap:126", "a=fmtp:110", "a=fmtp:126"))
        )
        answer = await b.accept_offer(offer + "\r\n")
        assert "telephone-event" not in answer
        await a.accept_answer(answer)
        assert not a.dtmf_negotiated and not b.dtmf_negotiated
        with pytest.raises(RuntimeError):
            b.send_dtmf("1")
    finally:
        await a.close()
        await b.close()
