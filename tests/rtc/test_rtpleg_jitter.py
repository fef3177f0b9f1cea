"""
The jitter buffer inside RtpLeg: a real loopback pair with a scripted
impairment relay (loss, reordering, jitter) between them.
"""

import asyncio
import socket
from collections.abc import Callable
from typing import cast

import numpy as np
import numpy.typing as npt
import pytest

from rtc.g711 import ulaw_encode
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, rms_dbfs

from .conftest import write_paced

# not a multiple of 50 Hz: a repeated 20 ms frame breaks the phase, so
# concealment cannot pass for the original by accident
FREQ = 1010.0

Addr = tuple[str, int]


class ImpairmentRelay(asyncio.DatagramProtocol):
    """
    A UDP relay between two legs. Datagrams from ``source`` go to ``target``
    through ``impair(index) -> delay or None (drop)``; everything else goes
    back to ``source`` untouched.
    """

    def __init__(self, impair: Callable[[int], float | None]) -> None:
        self.impair = impair
        self.source: Addr | None = None
        self.target: Addr | None = None
        self.forwarded = 0
        self.dropped = 0
        self._index = 0
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        assert self._transport is not None
        if addr != self.source:
            if self.source is not None:
                self._transport.sendto(data, self.source)
            return
        delay = self.impair(self._index)
        self._index += 1
        if delay is None:
            self.dropped += 1
            return
        self.forwarded += 1
        assert self.target is not None
        transport, target = self._transport, self.target
        if delay <= 0:
            transport.sendto(data, target)
        else:
            asyncio.get_running_loop().call_later(delay, transport.sendto, data, target)


async def timed_reads(leg: RtpLeg, duration: float) -> list[tuple[float, npt.NDArray[np.int16]]]:
    """(loop time, frame) for every frame ``leg.read()`` yields during ``duration``."""
    loop = asyncio.get_running_loop()
    frames: list[tuple[float, npt.NDArray[np.int16]]] = []

    async def reader() -> None:
        while True:
            frame = await leg.read()
            frames.append((loop.time(), frame))

    task = loop.create_task(reader())
    await asyncio.sleep(duration)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    return frames


async def relayed_pair(
    impair: Callable[[int], float | None], **kwargs: float
) -> tuple[RtpLeg, RtpLeg, ImpairmentRelay, asyncio.DatagramTransport]:
    """a -> relay -> b (impaired), b -> relay -> a (clean)."""
    loop = asyncio.get_running_loop()
    a = await RtpLeg.open()
    b = await RtpLeg.open(**kwargs)  # type: ignore[arg-type]
    relay = ImpairmentRelay(impair)
    transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    relay_port = transport.get_extra_info("sockname")[1]
    relay.source = ("127.0.0.1", a.local_port)
    relay.target = ("127.0.0.1", b.local_port)
    # both legs see the relay as their peer (and latch onto it)
    offer = a.create_offer()
    answer = b.create_answer(
        offer.replace(f"m=audio {a.local_port} ".encode(), f"m=audio {relay_port} ".encode())
    )
    a.apply_answer(
        answer.replace(f"m=audio {b.local_port} ".encode(), f"m=audio {relay_port} ".encode())
    )
    return a, b, relay, transport


def scripted(index: int) -> float | None:
    """
    Over 4 s (200 packets): isolated losses (about 3 %), bursts of two and
    three lost packets, swapped pairs, and a second of 0-35 ms jitter.
    """
    if index % 31 == 7 or index in (60, 61, 100, 101, 170, 171, 172):
        return None
    if index % 17 == 3:
        return 0.025  # overtaken by the next packet: reordered
    if 80 <= index < 130:
        return float(np.random.default_rng(index).uniform(0.0, 0.035))
    return 0.0


async def test_impaired_stream_plays_continuously_at_the_right_frequency() -> None:
    a, b, relay, transport = await relayed_pair(scripted)
    try:
        reads, _ = await asyncio.gather(
            timed_reads(b, 4.3), write_paced(a, SineSource(FREQ, 8000, 0.3), 4.0)
        )
        assert relay.dropped >= 10
        # the tone: 200 frames sent, losses filled by concealment (at most 3 in
        # a row here), nothing added or dropped
        loud = [i for i, (_, f) in enumerate(reads) if np.any(f)]
        times = np.array([t for t, _ in reads[loud[0] : loud[-1] + 1]])
        # frames leave as they arrive: the longest pause in the tone is a burst of
        # three lost packets (170-172), which shows when the next one arrives,
        # here 25 ms late itself (173: reordered): 100 ms
        assert float(np.max(np.diff(times))) < 0.12
        active = [f for _, f in reads[loud[0] : loud[-1] + 1]]
        assert 198 <= len(active) <= 204
        assert min(rms_dbfs(f) for f in active) > -25.0  # faded repeats, never silence
        audio = np.concatenate(active)
        # the right tone everywhere, in 200 ms windows
        for start in range(0, len(audio) - 1600, 1600):
            window = audio[start : start + 1600]
            assert dominant_frequency(window, 8000) == pytest.approx(FREQ, abs=8)
            assert band_energy_ratio(window, 8000, FREQ, 100) > 0.9
        jb = b.jitter_buffer
        assert jb.concealed >= relay.dropped - 2
        assert jb.late > 0  # the jittery second made the buffer grow
        assert jb.played >= 180
    finally:
        transport.close()
        await a.close()
        await b.close()


async def send_with_late_packet(leg: RtpLeg, sender: socket.socket, late: float) -> None:
    """Ten packets every 20 ms; packet 3 comes ``late`` seconds after its time."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for seq in range(10):
        packet = RtpPacket(0, seq, seq * 160, 77, payload=bytes([0x10 + seq]) * 160)
        if seq == 3:
            loop.call_later(late, sender.sendto, bytes(packet), ("127.0.0.1", leg.local_port))
        else:
            sender.sendto(bytes(packet), ("127.0.0.1", leg.local_port))
        await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))
    await asyncio.sleep(late + 0.05)


@pytest.mark.parametrize(("jitter_min", "waited"), [(0.02, False), (0.1, True)])
async def test_minimum_delay_is_configurable(jitter_min: float, waited: bool) -> None:
    leg = await RtpLeg.open(jitter_min=jitter_min)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    try:
        offer = (
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\n" % sender.getsockname()[1]
        )
        leg.create_answer(offer)
        assert leg.jitter_buffer.delay == pytest.approx(jitter_min)
        start = loop.time()
        reads, _ = await asyncio.gather(
            timed_reads(leg, 0.35), send_with_late_packet(leg, sender, 0.05)
        )
        # the first packet leaves at once, whatever the delay: in order, nothing waits
        assert reads[0][0] - start < 0.01
        levels = [int(ulaw_encode(f)[0]) for _, f in reads]
        assert len(reads) == 10
        if waited:
            # 100 ms of delay covers a packet 50 ms late: all ten, in order
            assert levels == [0x10 + seq for seq in range(10)]
            assert leg.jitter_buffer.concealed == 0
        else:
            # 20 ms does not: 3 is concealed (from 2), and its late arrival grows the delay
            assert levels[:3] + levels[4:] == [0x10 + seq for seq in range(10) if seq != 3]
            assert leg.jitter_buffer.concealed == 1 and leg.jitter_buffer.late == 1
            assert leg.jitter_buffer.delay == pytest.approx(0.04)
    finally:
        sender.close()
        await leg.close()


async def test_bad_jitter_bounds_are_refused() -> None:
    for lo, hi in ((0.01, 0.2), (0.05, 0.03), (0.02, 0.3)):
        with pytest.raises(ValueError):
            await RtpLeg.open(jitter_min=lo, jitter_max=hi)


async def test_comfort_noise_plays_then_speech_resumes() -> None:
    leg = await RtpLeg.open()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    try:
        offer = (
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0 13\r\n" % sender.getsockname()[1]
        )
        leg.create_answer(offer)
        addr = ("127.0.0.1", leg.local_port)
        tone = SineSource(FREQ, 8000, 0.3)

        async def send() -> None:
            start = loop.time()
            for seq in range(40):
                if 10 <= seq < 30:
                    # silence: one CN packet (-40 dBov) then nothing
                    if seq == 10:
                        cn = RtpPacket(13, seq, seq * 160, 5, payload=bytes([40]))
                        sender.sendto(bytes(cn), addr)
                    tone.frame(160)
                else:
                    payload = ulaw_encode(tone.frame(160))
                    packet = RtpPacket(0, seq, seq * 160, 5, payload=payload, marker=seq == 30)
                    sender.sendto(bytes(packet), addr)
                await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))

        reads, _ = await asyncio.gather(timed_reads(leg, 1.0), send())
        levels = [rms_dbfs(f) for _, f in reads]
        assert len(reads) >= 38
        noise = levels[12:28]
        assert all(-46 < level < -34 for level in noise)  # about -40 dBov
        assert levels[-5] > -15
        assert dominant_frequency(np.concatenate([f for _, f in reads[-8:-1]]), 8000) == (
            pytest.approx(FREQ, abs=10)
        )
    finally:
        sender.close()
        await leg.close()


@pytest.mark.timeout(30)
async def test_timestamps_off_the_frame_grid_still_play() -> None:
    """
    A phone whose 20 ms packets are 164 units of its clock apart, then jump by
    an odd amount: the leg's jitter buffer once stepped past such packets for
    ever (pop() never returned, and the event loop with every call on it hung).
    They play, at the right frequency, with a gap where the timeline says so.
    """
    leg = await RtpLeg.open()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    loop = asyncio.get_running_loop()
    try:
        leg.create_answer(
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\n" % sender.getsockname()[1]
        )
        addr = ("127.0.0.1", leg.local_port)
        tone = SineSource(FREQ, 8000, 0.3)

        async def send() -> None:
            start = loop.time()
            for seq in range(40):
                timestamp = 164 * seq + (37 if seq >= 20 else 0)
                payload = ulaw_encode(tone.frame(160))
                sender.sendto(bytes(RtpPacket(0, seq, timestamp, 5, payload=payload)), addr)
                await asyncio.sleep(max(0.0, start + (seq + 1) * 0.02 - loop.time()))

        reads, _ = await asyncio.gather(timed_reads(leg, 1.0), send())
        assert leg.packets_received == 40
        assert len(reads) >= 38
        audio = np.concatenate([f for _, f in reads[-12:-1]])
        assert dominant_frequency(audio, 8000) == pytest.approx(FREQ, abs=15)
        assert leg.jitter_buffer.played >= 38
    finally:
        sender.close()
        await leg.close()
