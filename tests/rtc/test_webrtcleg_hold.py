"""Renegotiation and hold directions on WebRtcLeg."""

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, dominant_frequency, rms

from .conftest import read_for, wait_for, write_paced
from .test_webrtcleg import connect


async def exchange(
    a: WebRtcLeg, b: WebRtcLeg, duration: float
) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]]:
    writers = asyncio.gather(
        write_paced(a, SineSource(1000, 48000, 0.3), duration),
        write_paced(b, SineSource(600, 48000, 0.3), duration),
    )
    at_b, at_a = await asyncio.gather(read_for(b, duration), read_for(a, duration))
    await writers
    return at_b, at_a


async def test_hold_and_resume_by_reoffer_both_sides() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        await connect(a, b)
        assert a.direction == b.direction == "sendrecv"
        with pytest.raises(ValueError):
            a.set_direction("hold")

        # a holds b with its own re-offer
        a.set_direction("sendonly")
        await a.accept_answer(await b.accept_offer(await a.create_offer()))
        assert (a.direction, b.direction) == ("sendonly", "recvonly")
        assert a.held and b.held
        at_b, at_a = await exchange(a, b, 1.0)
        assert dominant_frequency(at_b[-24000:], 48000) == pytest.approx(1000, abs=5)
        assert rms(at_a[-24000:]) < 0.001

        # b re-offers (as a browser would) and a answers; a resumes sendrecv
        a.set_direction("sendrecv")
        await b.accept_answer(await a.accept_offer(await b.create_offer()))
        assert a.direction == b.direction == "sendrecv"
        at_b, at_a = await exchange(a, b, 1.0)
        assert dominant_frequency(at_b[-24000:], 48000) == pytest.approx(1000, abs=5)
        assert dominant_frequency(at_a[-24000:], 48000) == pytest.approx(600, abs=5)
        assert a.connection_state == "connected"
    finally:
        await a.close()
        await b.close()


async def test_direction_none_before_negotiation() -> None:
    leg = WebRtcLeg()
    try:
        assert leg.direction is None and not leg.held
        leg.set_direction("inactive")
        offer = await leg.create_offer()
        assert "a=inactive" in offer
    finally:
        await leg.close()
        await wait_for(lambda: True)


def _video_line_direction(sdp: str) -> str:
    video = sdp[sdp.index("m=video") :]
    return next(
        d for d in ("sendrecv", "sendonly", "recvonly", "inactive") if f"a={d}" in video
    )


async def test_video_direction_follows_the_far_end_and_hold() -> None:
    """set_video_direction (the far end's video off/on) combines with the call's direction
    (hold) in every later offer; audio keeps its own direction."""
    leg = WebRtcLeg()
    try:
        assert leg.video_direction == "sendrecv"
        leg.set_video_direction("inactive")  # before video exists: kept for when it does
        offer = await leg.create_offer(video=True)
        assert _video_line_direction(offer) == "inactive"
        assert "a=sendrecv" in offer[: offer.index("m=video")]  # the audio
        leg.set_direction("sendonly")
        leg.set_video_direction("sendrecv")
        assert leg._video is not None
        assert leg._video.transceiver.direction == "sendonly"  # hold wins
        leg.set_direction("sendrecv")
        assert leg._video.transceiver.direction == "sendrecv"
        with pytest.raises(ValueError):
            leg.set_video_direction("off")
    finally:
        await leg.close()
