"""
RTP timestamps that jump on the same SSRC while the sequence numbers go on (RFC
3550 forbids it; Asterisk does it after a transfer, a masquerade or a change of
native bridge, with or without the marker bit). The jitter buffers take the
packet that continues the sequence numbers far off its expected timestamp for a
new timeline and play on at once; a packet behind the sequence numbers is still
late, reordered or a copy. First the sans-I/O buffers, fed as RtpLeg feeds
them (rtc.stats telling which packet continues the stream), then real calls
over loopback UDP: a raw SIP peer -> RtpLeg -> MediaBridge -> WebRtcLeg -> a
browser WebRtcLeg, transcoded (Opus browser) and passed through (PCMU browser,
through the circuit). The RFC 3550 jitter across a jump: test_stats.py; RFC
4733 digits across jumps: test_dtmf.py.
"""

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from rtc.bridge import MediaBridge
from rtc.g711 import ulaw_encode
from rtc.jitterbuffer import MAX_SKIP, JitterBuffer, PlayoutBuffer
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.stats import ReceiverStatistics
from rtc.webrtcleg import WebRtcLeg
from tests.audio import SineSource, band_energy_ratio, dominant_frequency, rms_dbfs

from .conftest import wait_for
from .test_passthrough import only_codec

N = 160  # a 20 ms frame at 8 kHz
P = 0.02
SECOND = 8000
START = 1_000_000  # clear of the 32-bit wrap, which hid a jump from the jitter
SSRC = 0x4242

# backward: 5 s, just under the 50 frames that were already a new timeline, 5
# frames, one frame, one frame and an odd amount either way, under a frame
BACK = [-5 * SECOND, -49 * N - 50, -5 * N, -N, -N - 37, -N + 53]
# forward: beyond what is taken for a gap, and far (but under 50 frames)
AHEAD = [(MAX_SKIP + 1) * N, 25 * N + 41]


@dataclass
class Packet:
    seq: int
    timestamp: int
    arrival: float
    marker: bool = False


def stream(count: int, jump_at: int, jump: int, marker: bool = False) -> list[Packet]:
    """``count`` 20 ms packets in order; from ``jump_at`` on the timestamps are
    ``jump`` off, the sequence numbers and arrivals go on."""
    return [
        Packet(
            seq,
            (START + seq * N + (jump if seq >= jump_at else 0)) & 0xFFFFFFFF,
            seq * P,
            marker and seq == jump_at,
        )
        for seq in range(count)
    ]


@dataclass
class Played:
    items: list[Any] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # when each was released
    on_arrival: list[bool] = field(default_factory=list)  # at a put, not a deadline


def run_packet_buffer(buffer: PlayoutBuffer[int], packets: list[Packet]) -> Played:
    """As RtpLeg's pass-through: take() the next in order, else put() and pop()."""
    stats = ReceiverStatistics(8000)
    played = Played()

    def release(items: list[Any], now: float, arrival: bool) -> None:
        played.items += items
        played.at += [now] * len(items)
        played.on_arrival += [arrival] * len(items)

    for packet in packets:
        while (deadline := buffer.deadline) is not None and deadline <= packet.arrival:
            release(buffer.pop(deadline), deadline, False)
        continues = stats.add(SSRC, packet.seq, packet.timestamp, packet.arrival, N)
        if buffer.take(SSRC, packet.timestamp, packet.arrival):
            release([packet.seq], packet.arrival, True)
            continue
        buffer.put(SSRC, packet.timestamp, packet.seq, packet.arrival, packet.marker, continues)
        release(buffer.pop(packet.arrival), packet.arrival, True)
    while (deadline := buffer.deadline) is not None:
        release(buffer.pop(deadline), deadline, False)
    return played


@pytest.mark.parametrize("marker", [False, True])
@pytest.mark.parametrize("jump", BACK + AHEAD)
def test_packet_buffer_plays_on_at_once_after_a_jump(jump: int, marker: bool) -> None:
    buffer: PlayoutBuffer[int] = PlayoutBuffer(N)
    packets = stream(60, 30, jump, marker)
    played = run_packet_buffer(buffer, packets)
    # every packet once, in order, each the moment it arrived: nothing dropped
    # as late (a jump back of k frames lost k frames, up to a second), nothing
    # held for frames that will never come (a jump ahead waited 60 ms)
    assert played.items == list(range(60))
    assert played.at == [p.arrival for p in packets]
    assert (buffer.late, buffer.duplicates, buffer.missing) == (0, 0, 0)
    assert buffer.target == buffer.min_frames  # no delay grown for "late" packets


def test_packet_buffer_a_small_step_ahead_is_a_gap_at_once() -> None:
    """Timestamps a frame or two ahead of the next sequence number (a sender clock
    a little fast, a frame its encoder dropped): a gap for the far decoder, given
    up when the packet comes (no packet can fill it), not after the wait."""
    for step in range(1, MAX_SKIP + 1):
        buffer: PlayoutBuffer[int] = PlayoutBuffer(N)
        played = run_packet_buffer(buffer, stream(20, 10, step * N))
        assert played.items == [*range(10), *[None] * step, *range(10, 20)]
        assert all(played.on_arrival) and buffer.missing == step


def test_packet_buffer_late_copies_and_losses_are_told_from_a_jump() -> None:
    """Packets behind the sequence numbers are late or copies as ever, a lost one
    is waited for; a jump while a frame is waited for loses no more than what
    was held behind it."""
    buffer: PlayoutBuffer[int] = PlayoutBuffer(N, min_delay=0.04)
    packets = stream(20, 20, 0)
    # 5 comes after it was given up (at 0.14, 40 ms past its due time); a copy of 8
    late, copy = Packet(5, packets[5].timestamp, 0.17), Packet(8, packets[8].timestamp, 0.185)
    arrivals = sorted([*packets[:5], *packets[6:], late, copy], key=lambda p: p.arrival)
    played = run_packet_buffer(buffer, arrivals)
    assert played.items == [0, 1, 2, 3, 4, None, *range(6, 20)]
    assert (buffer.late, buffer.duplicates, buffer.missing) == (1, 1, 1)

    # 30 lost, 31 held behind it, then 32 continues with its timestamp 5 frames back
    buffer = PlayoutBuffer(N, min_delay=0.06)
    packets = [p for p in stream(50, 32, -5 * N) if p.seq != 30]
    played = run_packet_buffer(buffer, packets)
    assert played.items == [*range(30), *range(32, 50)]  # 31 was the old timeline's
    assert played.at[30:] == [p.arrival for p in packets[31:]]
    assert buffer.late == buffer.duplicates == 0


def ramp(start: int, count: int) -> npt.NDArray[np.int16]:
    """Audio that says which sample of the stream it is (from 1)."""
    return np.arange(start + 1, start + count + 1, dtype=np.int16)


def run_jitter_buffer(
    buffer: JitterBuffer, ptime: int, count: int, jump_at: int, jump: int, marker: bool = False
) -> tuple[npt.NDArray[np.int16], list[bool]]:
    """Packets of ``ptime`` ms as RtpLeg decodes them; from packet ``jump_at``
    on, timestamps ``jump`` off. The audio released, and whether each frame
    left at an arrival (not at a deadline)."""
    size = 8 * ptime
    stats = ReceiverStatistics(8000)
    out: list[npt.NDArray[np.int16] | None] = []
    on_arrival: list[bool] = []

    def release(frames: list[Any], arrival: bool) -> None:
        out.extend(frames)
        on_arrival.extend([arrival] * len(frames))

    for seq in range(count):
        now = seq * ptime / 1000
        while (deadline := buffer.deadline) is not None and deadline <= now:
            release(buffer.pop(deadline), False)
        timestamp = (START + seq * size + (jump if seq >= jump_at else 0)) & 0xFFFFFFFF
        continues = stats.add(SSRC, seq, timestamp, now, size)
        buffer.put(
            SSRC,
            timestamp,
            ramp(seq * size, size),
            now,
            marker and seq == jump_at,
            continues,
        )
        release(buffer.pop(now), True)
    while (deadline := buffer.deadline) is not None:
        release(buffer.pop(deadline), False)
    assert all(f is not None for f in out)
    return np.concatenate([f for f in out if f is not None]), on_arrival


@pytest.mark.parametrize("ptime", [20, 10, 30, 40])
@pytest.mark.parametrize("jump", [-5 * SECOND, -5 * N, -N - 37, -N + 53, 25 * N + 41])
def test_jitter_buffer_plays_on_at_once_after_a_jump(ptime: int, jump: int) -> None:
    buffer = JitterBuffer()
    count = 1200 // ptime  # 1.2 s, the jump half way
    audio, on_arrival = run_jitter_buffer(buffer, ptime, count, count // 2, jump)
    steps = np.diff(audio.astype(np.int64))
    # the stream's audio in order, never a sample twice (no replay) and no
    # concealment: at most the frame being assembled when the timeline jumped
    # is lost (ptime 10 and 30), less than a frame
    assert np.all(steps > 0), np.flatnonzero(steps <= 0)
    assert int(np.sum(steps != 1)) <= 1 and int(steps.max()) <= N
    assert len(audio) >= count * 8 * ptime - N
    assert all(on_arrival)  # nothing waited for
    assert (buffer.late, buffer.duplicates, buffer.concealed) == (0, 0, 0)


@pytest.mark.parametrize("jump", [-5 * N, -N - 37])
def test_jitter_buffer_a_marked_jump_back_plays_on_too(jump: int) -> None:
    buffer = JitterBuffer()
    audio, on_arrival = run_jitter_buffer(buffer, 20, 60, 30, jump, marker=True)
    assert np.array_equal(audio, ramp(0, 60 * N)) and all(on_arrival)
    assert (buffer.late, buffer.duplicates, buffer.concealed) == (0, 0, 0)


def test_jitter_buffer_speech_after_comfort_noise_stamped_back_plays() -> None:
    """Comfort noise, then speech in sequence stamped behind the CN packet: it is
    from after the noise (its sequence number says), not a straggler from before."""
    buffer = JitterBuffer(noise=lambda n: np.zeros(n))
    stats = ReceiverStatistics(8000)
    for seq in range(10):
        stats.add(SSRC, seq, START + seq * N, seq * P, N)
        buffer.put(SSRC, START + seq * N, ramp(seq * N, N), seq * P)
        buffer.pop(seq * P)
    stats.add(SSRC, 10, START + 10 * N, 10 * P, 1)
    buffer.put_comfort_noise(SSRC, START + 10 * N, bytes([60]), 10 * P)
    buffer.pop(10 * P)
    out: list[Any] = []
    for k in range(10):
        seq, now = 11 + k, 0.3 + k * P
        timestamp = START + 10 * N - 3 * N + k * 240
        continues = stats.add(SSRC, seq, timestamp, now, 240)
        buffer.put(SSRC, timestamp, ramp(10_000 + k * 240, 240), now, False, continues)
        out += [f for f in buffer.pop(now) if f is not None and f.any()]
    assert np.array_equal(np.concatenate(out), ramp(10_000, 2400)[: len(out) * N])
    assert len(out) == 2400 // N and buffer.late == 0


# --------------------------------------------------------------------------- real calls


@dataclass
class Heard:
    frames: list[tuple[float, npt.NDArray[np.int16]]]  # (loop time, 48 kHz frame) at the browser
    jumped_at: float  # when the first packet on the new timeline was sent
    jitter_ms: float  # the SIP leg's RFC 3550 jitter ten packets after the jump
    circuit: bool  # a circuit relayed the stream when the jump came
    pts: list[int]  # RTP timestamps the client leg sent toward the browser from then on


BEFORE, AFTER = 700.0, 1100.0  # the tones before and after the jump


async def sip_to_browser(browser_pt: str | None, jump: int, marker: bool) -> tuple[Heard, RtpLeg]:
    """
    A raw SIP peer sends 100 packets of a 700 Hz tone, then jumps its timestamps by
    ``jump`` (same SSRC, the sequence numbers go on) and sends 50 of 1100 Hz; the
    browser leg records what it hears.
    """
    browser, client = WebRtcLeg(), WebRtcLeg()
    far = await RtpLeg.open(codecs=("PCMU",))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    bridge = MediaBridge(client)
    loop = asyncio.get_running_loop()
    reader: asyncio.Task[None] | None = None
    try:
        offer = await browser.create_offer()
        if browser_pt is not None:
            offer = only_codec(offer, browser_pt)
        await browser.accept_answer(await client.accept_offer(offer))
        far.create_answer(
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\na=sendrecv\r\n" % sock.getsockname()[1]
        )
        await wait_for(lambda: browser.connection_state == "connected", 10)
        bridge.connect(far)
        frames: list[tuple[float, npt.NDArray[np.int16]]] = []

        async def read() -> None:
            while True:
                frame = await browser.read()
                frames.append((loop.time(), frame))

        reader = loop.create_task(read())
        pts: list[int] = []
        track = client._track
        direct = track.direct
        assert direct is not None

        def spy(path: Any, payload: bytes, timestamp: int, mark: bool) -> None:
            pts.append(timestamp)
            direct(path, payload, timestamp, mark)

        tones = [SineSource(BEFORE, 8000, 0.3), SineSource(AFTER, 8000, 0.3)]
        jumped_at = jitter_ms = 0.0
        circuit = False
        start = loop.time()
        for seq in range(150):
            after = seq >= 100
            if seq == 100:
                circuit = far._circuit_in is not None
                track.direct = spy
                jumped_at = loop.time()
            if seq == 110:
                jitter_ms = far.stats().jitter_ms
            packet = RtpPacket(
                0,
                seq,
                (START + seq * N + (jump if after else 0)) & 0xFFFFFFFF,
                SSRC,
                ulaw_encode(tones[after].frame(N)),
                marker=marker and seq == 100,
            )
            sock.sendto(bytes(packet), ("127.0.0.1", far.local_port))
            await asyncio.sleep(max(0.0, start + (seq + 1) * P - loop.time()))
        await asyncio.sleep(0.2)
        return Heard(frames, jumped_at, jitter_ms, circuit, pts), far
    finally:
        if reader is not None:
            reader.cancel()
        sock.close()
        await bridge.close()
        await browser.close()
        await client.close()
        await far.close()


def check_heard(heard: Heard) -> None:
    """The new timeline's tone within 60 ms of the jump, all of it, and nothing of
    the old one after it; what went toward the browser never stepped back."""

    def tone(frame: npt.NDArray[np.int16]) -> float | None:
        if rms_dbfs(frame) < -30:
            return None
        freq = dominant_frequency(frame, 48000)
        return next((t for t in (BEFORE, AFTER) if abs(freq - t) < 60), None)

    after = [(t, f) for t, f in heard.frames if t >= heard.jumped_at]
    tones = [tone(f) for _, f in after]
    assert AFTER in tones, tones
    first = tones.index(AFTER)
    assert after[first][0] - heard.jumped_at < 0.06, (after[first][0] - heard.jumped_at, tones)
    assert BEFORE not in tones[first:], tones  # the old audio is not played again
    # all 50 frames of it but the one the codecs' delays share with the old tone
    new = [f for (_, f), t in zip(after, tones, strict=True) if t == AFTER]
    assert len(new) >= 49, tones
    audio = np.concatenate(new)
    assert dominant_frequency(audio, 48000) == pytest.approx(AFTER, abs=5)
    assert band_energy_ratio(audio, 48000, AFTER) > 0.9
    assert rms_dbfs(audio) == pytest.approx(-13.5, abs=1.5)
    assert len(heard.pts) >= 45
    assert all(0 < b - a < 1 << 31 for a, b in zip(heard.pts, heard.pts[1:], strict=False))
    # ten packets after a jump of seconds the jitter read hundreds of ms
    assert heard.jitter_ms < 10


CALL_JUMPS = [
    (-5 * SECOND, False),
    (-5 * N, False),
    (-5 * N, True),
    (-N - 37, False),
    (-N + 53, False),
    (25 * N + 41, False),
]


# The transcoded path's buffer is the JitterBuffer tested above over every jump and
# packet time: through a real call, one jump of each kind (the suite's time is counted).
TRANSCODED_JUMPS = [CALL_JUMPS[0], CALL_JUMPS[3], CALL_JUMPS[5]]


@pytest.mark.parametrize(("jump", "marker"), TRANSCODED_JUMPS)
async def test_transcoded_call_hears_the_new_timeline_at_once(jump: int, marker: bool) -> None:
    heard, far = await sip_to_browser(None, jump, marker)
    assert far.frames_decoded >= 140 and far.frames_passed == 0  # transcoded
    check_heard(heard)
    jb = far.jitter_buffer
    assert (jb.late, jb.duplicates, jb.missing, jb.concealed) == (0, 0, 0, 0)
    assert jb.played == 150


@pytest.mark.parametrize(("jump", "marker"), CALL_JUMPS)
async def test_passed_through_call_hears_the_new_timeline_at_once(jump: int, marker: bool) -> None:
    heard, far = await sip_to_browser("0", jump, marker)
    assert far.frames_decoded == 0 and far.frames_passed == 150  # passed through
    assert heard.circuit  # the jump came to a circuit relaying the stream
    check_heard(heard)
    buffer = far.packet_buffer
    assert (buffer.late, buffer.duplicates, buffer.missing) == (0, 0, 0)
    assert buffer.played == 150
