"""
The adaptive jitter buffers under scripted loss, reordering, jitter and stream
changes, on a simulated clock: packets arrive at given times, ``pop`` runs after
each arrival and at each ``deadline`` (as the leg's timer does).
"""

import numpy as np
import numpy.typing as npt
import pytest

from rtc.jitterbuffer import JitterBuffer, PlayoutBuffer
from tests.audio import rms

N = 160
P = 0.02  # seconds per frame


def frame(seq: int) -> npt.NDArray[np.int16]:
    """A frame that says which packet it was (seq modulo 3000)."""
    return np.full(N, 1000 + (seq % 3000) * 10, dtype=np.int16)


def ident(out: npt.NDArray[np.int16] | None) -> int | None:
    """The packet a played frame came from, None for silence/concealment."""
    if out is None or not np.all(out == out[0]) or int(out[0]) < 1000 or int(out[0]) % 10:
        return None
    return (int(out[0]) - 1000) // 10


Arrivals = list[tuple[float, int]]  # (arrival time, seq)


def simulate(
    jb: JitterBuffer, arrivals: Arrivals, until: float | None = None, ssrc: int = 1
) -> list[tuple[float, npt.NDArray[np.int16]]]:
    """Every frame released, with the time it was released."""
    out: list[tuple[float, npt.NDArray[np.int16]]] = []

    def fire_deadlines(before: float) -> None:
        while (deadline := jb.deadline) is not None and deadline <= before:
            out.extend((deadline, f) for f in jb.pop(deadline))

    for time, seq in sorted(arrivals):
        fire_deadlines(time)
        jb.put(ssrc, seq * N, frame(seq), time)
        out.extend((time, f) for f in jb.pop(time))
    end = until if until is not None else (max(t for t, _ in arrivals) + 1.0)
    fire_deadlines(end)
    return out


def steady(count: int, start: int = 0, t0: float = 0.0) -> Arrivals:
    return [(t0 + k * P, start + k) for k in range(count)]


def test_in_order_frames_are_released_on_arrival() -> None:
    jb = JitterBuffer()
    assert jb.pop(0.0) == [] and jb.deadline is None and jb.idle
    out = simulate(jb, steady(100))
    assert [ident(f) for _, f in out] == list(range(100))
    # no frame waits: each leaves at its own arrival time
    assert [t for t, _ in out] == pytest.approx([k * P for k in range(100)])
    assert jb.delay == pytest.approx(0.02)
    assert (jb.concealed, jb.late, jb.missing) == (0, 0, 0)
    assert jb.deadline is None


def test_jitter_without_loss_passes_through_unchanged() -> None:
    # up to 15 ms late each: in order, so nothing waits and nothing is concealed
    rng = np.random.default_rng(1)
    arrivals = [(k * P + float(rng.uniform(0, 0.015)), k) for k in range(200)]
    out = simulate(JitterBuffer(), arrivals)
    played = [ident(f) for _, f in out]
    assert None not in played
    assert played == sorted(played)


def test_reordering_and_duplicates_within_the_delay() -> None:
    jb = JitterBuffer(min_delay=0.06)
    arrivals: Arrivals = []
    for k in range(0, 60, 2):
        # swapped pairs, each duplicated: k+1 first, k 5 ms later, then k again
        arrivals += [(k * P, k + 1), (k * P + 0.005, k), (k * P + 0.006, k)]
    arrivals[0] = (0.0, 0)  # the stream starts in order
    arrivals[1] = (0.001, 1)
    out = simulate(jb, arrivals)
    assert [ident(f) for _, f in out] == list(range(60))
    assert jb.duplicates == 30
    assert jb.concealed == 0 and jb.late == 0
    # k+1 waited for k, then both left when k came (5 ms later)
    released = {ident(f): t for t, f in out}
    assert released[5] == pytest.approx(4 * P + 0.005)


def test_loss_is_concealed_at_the_deadline_by_fading_repeats() -> None:
    jb = JitterBuffer()
    arrivals = [a for a in steady(40) if a[1] not in (10, 20, 21, 22, 23, 24)]
    out = simulate(jb, arrivals)
    frames = [f for _, f in out]
    times = [t for t, _ in out]
    assert len(frames) == 40
    assert ident(frames[9]) == 9
    assert frames[10] is not None
    assert int(frames[10][0]) == round(0.9 * (1000 + 90))  # repeat of 9, faded
    # given up 20 ms (the minimum delay) after it was due: when 11 arrives
    assert times[10] == pytest.approx(10 * P + 0.02)
    assert ident(frames[11]) == 11 and times[11] == pytest.approx(11 * P)
    # a burst of five: three fading repeats, the rest of the gap skipped (None),
    # all when the next packet shows the loss
    assert [int(f[0]) for f in frames[20:23] if f is not None] == [
        round(0.9 * 1190),
        round(0.6 * 1190),
        round(0.3 * 1190),
    ]
    assert frames[23] is None and frames[24] is None
    assert times[20:26] == pytest.approx([25 * P] * 6)
    assert ident(frames[25]) == 25
    assert jb.concealed == 4 and jb.missing == 6


def test_missing_frames_are_given_up_one_per_period_while_others_wait() -> None:
    jb = JitterBuffer(min_delay=0.04)
    # 10-12 never come; 13.. arrive on time and wait behind the gap
    arrivals = [a for a in steady(30) if a[1] not in (10, 11, 12)]
    out = simulate(jb, arrivals)
    conceal_times = [t for t, f in out if f is not None and ident(f) is None]
    # nothing shows the loss before 13 arrives (at 0.26): then 10 and 11 are
    # past their deadline (due + 40 ms), 12 is given up at its own (0.28)
    assert conceal_times == pytest.approx([13 * P, 13 * P, 12 * P + 0.04])
    # 13 waited behind the gap and leaves with 12's concealment, then 14 as it comes
    assert [ident(f) for _, f in out[13:15]] == [13, 14]
    assert [t for t, _ in out[12:15]] == pytest.approx([0.28] * 3)
    assert jb.concealed == 3


def test_late_packets_grow_the_delay_then_wait_for_them() -> None:
    jb = JitterBuffer(max_delay=0.2)
    arrivals = steady(40)
    # then every fifth packet 50 ms late (overtaken by the next two)
    for k in range(40, 290):
        arrivals.append((k * P + (0.05 if k % 5 == 0 else 0.0), k))
    out = simulate(jb, arrivals)
    assert jb.late == 2  # 20 ms, then 40 ms were not enough
    assert jb.delay == pytest.approx(0.06)
    played = [ident(f) for _, f in out]
    # once adapted, every frame is played in order, none concealed
    tail = played[60:]
    assert tail == list(range(60, 290))
    assert jb.concealed == 2


def test_delay_is_capped_and_shrinks_back() -> None:
    jb = JitterBuffer(max_delay=0.1)
    arrivals = steady(20)
    for k in range(20, 200):
        if k % 20 == 0:
            arrivals.append((k * P + 0.4, k))  # hopelessly late
        else:
            arrivals.append((k * P, k))
    simulate(jb, arrivals, until=200 * P)
    assert jb.delay == pytest.approx(0.1)
    later = steady(1500, start=200, t0=200 * P)
    out = simulate(jb, later)
    assert None not in [ident(f) for _, f in out[-500:]]
    assert jb.delay == pytest.approx(0.02)


def test_ssrc_change_and_timestamp_jump_reanchor() -> None:
    jb = JitterBuffer()
    simulate(jb, steady(20))
    # a new source with unrelated timestamps plays at once
    out = simulate(jb, steady(10, start=5000, t0=1.0), ssrc=2)
    assert [ident(f) for _, f in out] == [seq % 3000 for seq in range(5000, 5010)]
    # a jump on the same source (no marker) too
    out = simulate(jb, steady(10, start=90000, t0=2.0), ssrc=2)
    assert [ident(f) for _, f in out] == [seq % 3000 for seq in range(90000, 90010)]
    assert jb.concealed == 0


def test_marker_after_silence_resyncs_without_stretching() -> None:
    jb = JitterBuffer()
    simulate(jb, steady(10))
    # the sender goes quiet (DTX) for 200 ms; the talk spurt resumes 5 frames
    # further on its clock (its clock and ours differ)
    out: list[int | None] = []
    for k, seq in enumerate(range(25, 35)):
        now = 0.4 + k * P
        jb.put(1, seq * N, frame(seq), now, marker=k == 0)
        out += [ident(f) for f in jb.pop(now)]
    assert out == list(range(25, 35))
    assert jb.concealed == 0


def test_comfort_noise_at_the_signalled_level_paced_by_the_deadline() -> None:
    rng = np.random.default_rng(3)
    jb = JitterBuffer(noise=lambda n: rng.standard_normal(n))
    simulate(jb, steady(10))
    jb.put_comfort_noise(1, 10 * N, bytes([40]), 0.2)  # -40 dBov
    assert not jb.idle
    noise = []
    for _ in range(50):
        deadline = jb.deadline
        assert deadline is not None
        noise += jb.pop(deadline)
    assert len(noise) == 50
    assert jb.deadline == pytest.approx(0.2 + 50 * P)
    assert 20 * np.log10(rms(np.concatenate(noise))) == pytest.approx(-40, abs=1)
    # speech resumes in step, and the noise stops
    out = simulate(jb, steady(10, start=60, t0=1.2))
    assert [ident(f) for _, f in out] == list(range(60, 70))
    assert jb.deadline is None


def test_packet_buffer_orders_dedups_and_passes_gaps_on() -> None:
    jb: PlayoutBuffer[str] = PlayoutBuffer(160, min_delay=0.04, max_delay=0.2)
    assert jb.pop(0.0) == [] and jb.idle
    jb.put(1, 320, "b", 0.0)
    jb.put(1, 160, "a", 0.001)  # reordered before anything was released: starts from it
    assert jb.pop(0.001) == ["a", "b"]
    jb.put(1, 320, "b", 0.002)  # a copy of a played one
    assert jb.duplicates == 1 and jb.late == 0
    jb.put(1, 640, "d", 0.05)  # 480 is missing
    assert jb.pop(0.05) == []
    # 480 was due a period after 320 arrived (at 0.0, the earliest), and is
    # waited for the delay (40 ms) past that
    assert jb.deadline == pytest.approx(0.02 + 0.04)
    jb.put(1, 800, "e", 0.055)
    assert jb.pop(0.0599) == []
    assert jb.pop(0.06) == [None, "d", "e"]  # given up: a gap for the far decoder
    assert jb.missing == 1 and jb.idle and jb.deadline is None
    jb.put(1, 480, "late", 0.07)
    assert jb.late == 1 and jb.target == 3  # grew by a frame
    jb.put(2, 99999, "new ssrc", 0.08)
    assert jb.pop(0.08) == ["new ssrc"]
    assert jb.played == 5


@pytest.mark.timeout(10)
def test_timestamps_off_the_frame_grid_take_the_nearest_frame() -> None:
    """
    A sender whose packets are not a whole frame of its clock apart (164
    units for 20 ms of 160), or whose timeline jumps by an odd amount:
    playout steps 160 at a time and would step past such a packet for ever
    (pop() never returned), so each takes the nearest frame's place.
    """
    jb: PlayoutBuffer[int] = PlayoutBuffer(160, min_delay=0.02, max_delay=0.2)
    played: list[int | None] = []
    for k in range(100):
        now = k * P
        while (deadline := jb.deadline) is not None and deadline <= now:
            played += jb.pop(deadline)
        jb.put(1, k * 164, k, now)
        played += jb.pop(now)
    played += jb.pop(100 * P + 1.0)
    assert [p for p in played if p is not None] == list(range(100))
    # 100 * 164 units are 102.5 frames of the clock: the extra time is gaps
    assert 1 <= played.count(None) <= 3 and jb.missing == played.count(None)

    # an odd jump with a frame held behind a missing one
    jb = PlayoutBuffer(160, min_delay=0.02, max_delay=0.2)
    jb.put(1, 0, 0, 0.0)
    jb.put(1, 330, 2, 0.021)  # 160 is missing; 330 is nearest to 320
    assert jb.pop(0.021) == [0]
    jb.put(1, 495, 3, 0.03)  # nearest to 480
    assert jb.pop(0.03) == []
    jb.put(1, 170, 1, 0.035)  # the missing one (waited for until 0.04), a little off too
    assert jb.pop(0.035) == [1, 2, 3] and jb.idle
    jb.put(1, 330, 2, 0.05)  # a copy of a played one
    assert jb.duplicates == 1 and jb.late == 0


def test_a_copy_or_late_talk_spurt_start_is_not_played_again() -> None:
    """
    The marker bit re-anchors playout on a talk spurt's first packet, but only
    ahead of it: a copy of that packet coming later, or the marked packet
    arriving after the one behind it, is a duplicate or late like any other
    (re-anchoring on it replayed the audio, then gave up the frames after it).
    """
    jb: PlayoutBuffer[int] = PlayoutBuffer(160, min_delay=0.02, max_delay=0.2)
    jb.put(1, 0, 0, 0.0)
    assert jb.pop(0.0) == [0]
    jb.put(1, 160 * 50, 100, 1.0, marker=True)  # a talk spurt after a pause
    played = jb.pop(1.0)
    for k in range(1, 6):
        jb.put(1, 160 * (50 + k), 100 + k, 1.0 + k * P)
        played += jb.pop(1.0 + k * P)
    jb.put(1, 160 * 50, 100, 1.1, marker=True)  # the start again, 100 ms late
    played += jb.pop(1.1)
    for k in range(6, 10):
        jb.put(1, 160 * (50 + k), 100 + k, 1.0 + k * P)
        played += jb.pop(1.0 + k * P)
    assert played == list(range(100, 110))
    assert jb.duplicates == 1 and jb.missing == 0

    # the start arriving just after the packet behind it: both play, in order
    jb = PlayoutBuffer(160, min_delay=0.02, max_delay=0.2)
    jb.put(1, 0, 0, 0.0)
    assert jb.pop(0.0) == [0]
    jb.put(1, 160 * 51, 101, 1.0)
    jb.put(1, 160 * 50, 100, 1.001, marker=True)
    out = jb.pop(1.001)  # the frames of the pause given up (a gap), then both
    assert [x for x in out if x is not None] == [100, 101] and out[-2:] == [100, 101]


def test_take_is_put_then_pop_of_the_frame_that_plays_next() -> None:
    """
    The in-order shortcut (pass-through's usual packet) leaves the buffer
    exactly as put() then pop() would, through loss, reordering, duplicates,
    late packets (the delay grows, then shrinks), jitter and an SSRC change.
    """
    rng = np.random.default_rng(7)
    arrivals: list[tuple[float, int, int]] = []  # (time, ssrc, seq)
    for k in range(700):
        if k in (40, 41, 300):
            continue  # lost
        when = k * P + float(rng.uniform(0, 0.015))
        if k in (100, 101):
            when += 0.07  # reordered behind later packets, then late
        ssrc = 1 if k < 500 else 2
        arrivals.append((when, ssrc, k))
        if k % 97 == 0:
            arrivals.append((when + 0.001, ssrc, k))  # duplicate
    arrivals.sort()
    plain: PlayoutBuffer[int] = PlayoutBuffer(N)
    quick: PlayoutBuffer[int] = PlayoutBuffer(N)
    taken = 0

    def state(jb: PlayoutBuffer[int]) -> tuple[object, ...]:
        return (jb.played, jb.missing, jb.late, jb.duplicates, jb.target, jb.deadline, jb.depth)

    for when, ssrc, seq in arrivals:
        for jb in (plain, quick):
            while (deadline := jb.deadline) is not None and deadline <= when:
                jb.pop(deadline)
        plain.put(ssrc, seq * N, seq, when)
        expected = plain.pop(when)
        if quick.take(ssrc, seq * N, when):
            taken += 1
            got: list[int | None] = [seq]
        else:
            quick.put(ssrc, seq * N, seq, when)
            got = quick.pop(when)
        assert got == expected, (when, seq)
        assert state(quick) == state(plain), (when, seq)
    assert taken > 600 and plain.late > 0 and plain.missing > 0 and plain.duplicates > 0


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(min_delay=0.1, max_delay=0.05)
    with pytest.raises(ValueError):
        PlayoutBuffer(160, min_delay=0.0)
