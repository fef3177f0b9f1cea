"""
RtpLeg receiving a PBX whose ptime is not 20 ms (10, 30): its packets are cut
into 20 ms frames on the stream's timeline, whatever order they arrive in.
"""

import asyncio
import socket

import numpy as np
import pytest

from rtc.g711 import ulaw_decode, ulaw_encode
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from tests.audio import sine


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
