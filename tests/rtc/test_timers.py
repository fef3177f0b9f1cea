"""
The legs' timers on uvloop (the gateway's loop), whose clock counts whole
milliseconds: each tick is one callback, not a busy loop until the
millisecond turns over (rtc.timers.DeadlineTimer).
"""

import asyncio
import socket
from collections.abc import Callable

import uvloop

from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.timers import DeadlineTimer
from rtc.webrtcleg import WebRtcLeg

from .test_webrtcleg import connect

SECONDS = 0.6
FRAMES = SECONDS / 0.02  # one filler frame or comfort-noise frame per 20 ms


def count_calls(timer: DeadlineTimer) -> list[int]:
    """Count the times ``timer`` fires (its callback, looked up at each firing)."""
    calls = [0]
    original: Callable[[float], None] = timer.callback

    def counting(now: float) -> None:
        calls[0] += 1
        original(now)

    timer.callback = counting
    return calls


async def filler_and_comfort_noise() -> tuple[int, int, int, int]:
    """
    A leg answering a peer that sent one RFC 3389 CN packet and nothing else:
    it sends filler (nothing is written) and plays comfort noise paced by its
    playout deadline. Callbacks of each timer, frames sent and frames played.
    """
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    leg = await RtpLeg.open()
    try:
        fill = count_calls(leg._fill_timer)
        playout = count_calls(leg._playout_timer)
        leg.create_answer(
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0 13\r\n" % peer.getsockname()[1]
        )
        cn = RtpPacket(13, 1, 160, 5, payload=bytes([40]))
        peer.sendto(bytes(cn), ("127.0.0.1", leg.local_port))
        played = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + SECONDS
        while (left := end - loop.time()) > 0:
            try:
                await asyncio.wait_for(leg.read(), left)
                played += 1
            except TimeoutError:
                break
        sent = 0
        while True:
            try:
                peer.recv(2048)
                sent += 1
            except BlockingIOError:
                break
        return fill[0], playout[0], sent, played
    finally:
        peer.close()
        await leg.close()


def test_filler_and_playout_timers_tick_once_per_frame_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        fill, playout, sent, played = runner.run(filler_and_comfort_noise())
    # the timers did their work...
    assert sent >= FRAMES - 5 and played >= FRAMES - 5
    # ...with about one callback per frame (a busy loop: hundreds per frame)
    assert FRAMES - 5 <= fill <= 2 * FRAMES
    assert FRAMES - 5 <= playout <= 2 * FRAMES


async def webrtc_filler() -> tuple[int, int]:
    """Two connected WebRtcLegs with nothing written: each sends filler on its own
    timer. Callbacks of one leg's timer, and the filler frames it sent."""
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        await connect(a, b)
        await asyncio.sleep(0.3)  # past the first written-nothing wait: filling
        fill = count_calls(a._fill_timer)
        before = a._track.filled
        await asyncio.sleep(SECONDS)
        return fill[0], a._track.filled - before
    finally:
        await a.close()
        await b.close()


def test_webrtc_leg_filler_timer_ticks_once_per_frame_on_uvloop() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        fill, filled = runner.run(webrtc_filler())
    assert filled >= FRAMES - 5
    assert FRAMES - 5 <= fill <= 2 * FRAMES
