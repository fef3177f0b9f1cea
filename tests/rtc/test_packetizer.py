"""
rtc.packetizer: the packet time sent for a peer's a=ptime / a=maxptime, and a stream
of stamped 20 ms payloads cut into packets of it (byte strings, a fake clock).
"""

import pytest

from rtc.packetizer import Packet, Packetizer, packet_time


@pytest.mark.parametrize(
    ("ptime", "maxptime", "expected"),
    [
        (None, None, 20),  # nothing said: the default
        (20, None, 20),
        (10, None, 10),
        (30, None, 30),
        (40, None, 40),
        (60, None, 60),
        (80, None, 60),  # a preference beyond what we send: as close as we go
        (200, None, 60),
        (None, 10, 10),  # the limit below 20: 10 ms
        (None, 15, 10),  # rounded down to the grid
        (None, 5, 10),  # below anything we send: 10 ms, the finest
        (None, 20, 20),
        (None, 30, 20),  # a limit is no preference
        (None, 150, 20),
        (30, 20, 20),  # ptime above maxptime: the limit wins
        (60, 40, 40),
        (30, 35, 30),
        (10, 10, 10),
        (20, 10, 10),
        (25, None, 20),  # not on the 10 ms grid: ignored
        (15, None, 20),
        (25, 10, 10),
        (0, None, 20),  # nonsense: ignored
        (-20, None, 20),
        (None, 0, 20),
        (None, -10, 20),
        (30, 0, 30),
    ],
)
def test_packet_time(ptime: int | None, maxptime: int | None, expected: int) -> None:
    assert packet_time(ptime, maxptime) == expected


AUDIO = bytes(range(256)) * 8  # distinct bytes, so that any misplaced one shows


def frames(count: int, start: int = 0) -> list[bytes]:
    """Consecutive 20 ms PCMU payloads (160 bytes) of AUDIO from frame ``start``."""
    return [AUDIO[160 * k : 160 * (k + 1)] for k in range(start, start + count)]


def test_a_frame_is_cut_into_two_10_ms_packets() -> None:
    p = Packetizer(80)
    first, second = frames(2)
    assert p.push(1000, True, first, 0.0) == [(1000, True, first[:80]), (1080, False, first[80:])]
    assert p.push(1160, False, second, 0.02) == [
        (1160, False, second[:80]),
        (1240, False, second[80:]),
    ]
    # nothing held: no deadline, nothing to flush
    assert p.held == 0 and p.deadline is None and p.flush() is None


@pytest.mark.parametrize("ms", [30, 40, 60])
def test_frames_are_gathered_into_longer_packets(ms: int) -> None:
    size = 8 * ms
    p = Packetizer(size)
    sent: list[Packet] = []
    for k, payload in enumerate(frames(12)):
        sent += p.push(5000 + 160 * k, k == 0, payload, 0.02 * k)
    # 240 ms: whole packets, each starting where the last ended, the audio unchanged
    assert [len(payload) for _, _, payload in sent] == [size] * (240 // ms)
    assert [ts for ts, _, _ in sent] == [5000 + size * k for k in range(240 // ms)]
    assert [marker for _, marker, _ in sent] == [True] + [False] * (240 // ms - 1)
    assert b"".join(payload for _, _, payload in sent) == AUDIO[: 160 * 12]
    assert p.held == 0


def test_30_ms_packets_go_out_as_soon_as_complete() -> None:
    p = Packetizer(240)
    a, b, c = frames(3)
    assert p.push(0, False, a, 0.0) == []
    assert p.held == 160 and p.deadline == pytest.approx(0.06)
    assert p.push(160, False, b, 0.02) == [(0, False, a + b[:80])]
    assert p.held == 80 and p.deadline == pytest.approx(0.08)
    assert p.push(320, False, c, 0.04) == [(240, False, b[80:] + c)]
    assert p.held == 0 and p.deadline is None


def test_a_break_in_the_timeline_sends_what_is_held_first() -> None:
    p = Packetizer(320)  # 40 ms
    a, b, c, d = frames(4)
    assert p.push(0, True, a, 0.0) == []
    # frames lost upstream (the timestamps skip two): the held one goes out alone,
    # and the next packet starts at the new frame
    assert p.push(480, False, b, 0.06) == [(0, True, a)]
    assert p.push(640, False, c, 0.08) == [(480, False, b + c)]
    assert p.push(800, False, d, 0.1) == []
    # a new talk spurt (after RFC 4733 events, a hold) on a timeline that follows on:
    # the marker alone breaks it
    assert p.push(960, True, a, 0.12) == [(800, False, d)]
    assert p.flush() == (960, True, a)
    assert p.flush() is None and p.deadline is None
    # after a flush the stream goes on where the packets left it
    assert p.push(1120, False, b, 0.14) == []
    assert p.push(1280, False, c, 0.16) == [(1120, False, b + c)]


def test_a_flush_mid_packet_keeps_the_timestamps() -> None:
    """30 ms: a flush with half a frame held; the rest of the stream follows on."""
    p = Packetizer(240)
    a, b, c, d = frames(4)
    p.push(0, False, a, 0.0)
    p.push(160, False, b, 0.02)
    assert p.flush() == (240, False, b[80:])
    assert p.push(320, False, c, 0.04) == []
    assert p.push(480, False, d, 0.06) == [(320, False, c + d[:80])]
    assert p.flush() == (560, False, d[80:])


def test_the_deadline_follows_the_last_payload() -> None:
    p = Packetizer(480, hold=0.05)
    p.push(0, False, frames(1)[0], 1.0)
    assert p.deadline == pytest.approx(1.05)
    p.push(160, False, frames(1, 1)[0], 1.03)
    assert p.deadline == pytest.approx(1.08)


def test_payloads_of_any_length_keep_their_bytes_on_the_timeline() -> None:
    """Whatever the sizes pushed and wherever the timeline breaks, each byte goes out
    once, at the timestamp it came with, in packets of at most the packet size."""
    for size in (80, 240, 320, 480):
        p = Packetizer(size)
        pushed: dict[int, int] = {}
        sent: list[Packet] = []
        timestamp = 7000
        for k, length in enumerate([160, 160, 80, 240, 160, 1, 159, 160, 480, 160]):
            if k in (3, 7):
                timestamp += 160  # a gap
            payload = AUDIO[timestamp % 1000 : timestamp % 1000 + length]
            for i, byte in enumerate(payload):
                pushed[timestamp + i] = byte
            sent += p.push(timestamp, k == 5, payload, 0.02 * k)
            timestamp += length
        last = p.flush()
        sent += [last] if last is not None else []
        received = {ts + i: byte for ts, _, payload in sent for i, byte in enumerate(payload)}
        assert received == pushed
        assert all(0 < len(payload) <= size for _, _, payload in sent)
        assert [ts for ts, _, _ in sent] == sorted(ts for ts, _, _ in sent)


def test_invalid_size() -> None:
    with pytest.raises(ValueError):
        Packetizer(0)
