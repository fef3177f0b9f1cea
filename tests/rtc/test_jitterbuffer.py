"""
The adaptive jitter buffers under scripted loss, reordering, jitter and stream
changes, on a simulated clock: packets arrive at given times, ``pop`` runs after
each arrival and at each ``deadline`` (as the leg's timer does).
"""

import numpy as np
import numpy.typing as npt
import pytest

from rtc.jitterbuffer import FrameAssembler, JitterBuffer, PlayoutBuffer
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
    # speech resumes 5 ms after its place on the noise's timeline (the noise
    # has played that place: the test once passed only because its deadline,
    # 1.2000000000000004, came after the packet), and the noise stops
    out = simulate(jb, steady(10, start=60, t0=1.2 + 0.005))
    assert [ident(f) for _, f in out if ident(f) is not None] == list(range(60, 70))
    assert jb.late == 0 and jb.deadline is None


@pytest.mark.parametrize("marker", [True, False])
@pytest.mark.parametrize("onset", [-0.001, 0.001, 0.005, 0.015])
def test_speech_after_comfort_noise_is_never_late(onset: float, marker: bool) -> None:
    """
    Talk spurts with RFC 3389 CN between them, each resuming ``onset`` after
    its place: the noise runs on our clock, so a talk spurt a little behind it
    found its first frame already played as noise, and was dropped as late
    (the delay grew by a frame at every talk spurt, toward the maximum).
    """
    jb = JitterBuffer(noise=lambda n: np.zeros(n))
    out: list[npt.NDArray[np.int16] | None] = []

    def run_until(time: float) -> None:
        while (deadline := jb.deadline) is not None and deadline <= time:
            out.extend(jb.pop(deadline))

    seq = 0
    for spurt in range(5):
        for k in range(10):
            time = seq * P + (onset if k == 0 and spurt else 0.0)
            run_until(time)
            jb.put(1, seq * N, frame(seq), time, marker=marker and k == 0)
            out.extend(jb.pop(time))
            seq += 1
        run_until(seq * P)
        jb.put_comfort_noise(1, seq * N, bytes([60]), seq * P)
        out.extend(jb.pop(seq * P))
        seq += 10  # silence
    run_until(seq * P + 1.0)
    played = [ident(f) for f in out if ident(f) is not None]
    assert played == [s * 20 + k for s in range(5) for k in range(10)]
    assert jb.late == 0 and jb.delay == pytest.approx(0.02)


def test_a_straggler_from_before_comfort_noise_is_late_and_the_noise_goes_on() -> None:
    """Speech reordered behind the CN packet is from before the silence: it
    does not end the noise (it did: any audio stopped it)."""
    jb = JitterBuffer(noise=lambda n: np.ones(n))
    simulate(jb, [a for a in steady(10) if a[1] != 9])
    jb.put_comfort_noise(1, 10 * N, bytes([40]), 0.2)
    noise = jb.pop(0.2)
    jb.put(1, 9 * N, frame(9), 0.21)  # the last frame of the talk spurt
    assert jb.pop(0.21) == []
    for k in range(1, 5):
        noise += jb.pop(0.2 + k * P)
    assert len(noise) == 5 and all(f is not None and ident(f) is None for f in noise)
    assert jb.late == 1 and not jb.idle


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


def test_take_follows_a_timeline_moved_by_an_odd_amount() -> None:
    """
    A packet a sample off the grid (a broken one that authenticated, a
    sender's clock step) takes the next frame's place, and the stream after
    it, on its own grid again, is still taken at once: take() does not hold
    out for the exact timestamp, or every packet after it would go through
    put() and the playout timer for the rest of the call, and pass-through
    would never engage a circuit again.
    """
    jb: PlayoutBuffer[int] = PlayoutBuffer(160, min_delay=0.02, max_delay=0.2)
    assert not jb.take(1, 0, 0.0)  # nothing to follow yet
    jb.put(1, 0, 0, 0.0)
    assert jb.pop(0.0) == [0]
    for k in range(1, 5):
        assert jb.take(1, 160 * k, k * P)
    assert jb.take(1, 160 * 5 + 1, 5 * P)  # in the next frame's place
    jb.put(1, 160 * 5, 5, 5 * P + 0.001)  # the real one after it: a copy now
    assert jb.duplicates == 1 and jb.pop(5 * P + 0.001) == []
    for k in range(6, 20):
        assert jb.take(1, 160 * k, k * P), k
    assert not jb.take(1, 160 * 20 + 80, 20 * P)  # half a frame off: put() says
    assert jb.missing == jb.late == 0


@pytest.mark.parametrize(
    ("low", "high", "frames"),
    [
        (0.05, 0.05, (3, 3)),  # no multiple of 20 in between: the minimum wins
        (0.03, 0.2, (2, 10)),
        (0.07, 0.07, (4, 4)),
        (0.09, 0.11, (5, 5)),
        (0.02, 0.05, (1, 2)),
        (0.06, 0.1, (3, 5)),  # 0.06 * 1000 / 20 is 3.0000000000000004
        (0.04, 0.18, (2, 9)),
    ],
)
def test_delay_bounds_between_frames_stay_within_the_configuration(
    low: float, high: float, frames: tuple[int, int]
) -> None:
    """The minimum rounds up and the maximum down (round() made 50 ms 40,
    below the configured minimum, and 110 ms 120, above the maximum)."""
    jb: PlayoutBuffer[int] = PlayoutBuffer(N, min_delay=low, max_delay=high)
    assert (jb.min_frames, jb.max_frames) == frames
    assert jb.delay == pytest.approx(frames[0] * P)


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        JitterBuffer(min_delay=0.1, max_delay=0.05)
    with pytest.raises(ValueError):
        PlayoutBuffer(160, min_delay=0.0)


# Packets of another ptime than 20 ms: sample-exact audio in, frames out.

# 4320 samples (27 frames, 18 packets of 30 ms), each sample known
AUDIO = np.arange(-6480, 6480, 3, dtype=np.int16)
Frame = npt.NDArray[np.int16]

Packets = list[tuple[float, int, npt.NDArray[np.int16]]]  # (arrival, timestamp, samples)


def packets(ptime_ms: int, base: int = 0, audio: npt.NDArray[np.int16] = AUDIO) -> Packets:
    """The audio in packets of ``ptime_ms``, each arriving at its own time."""
    size = 8 * ptime_ms
    return [
        (k * size / 8000, (base + k * size) & 0xFFFFFFFF, audio[k * size : (k + 1) * size])
        for k in range(len(audio) // size)
    ]


def play(jb: JitterBuffer, arrivals: Packets, marker: int | None = None) -> list[Frame | None]:
    """What the buffer releases, the leg's way (pop after each put and at each deadline)."""
    out: list[Frame | None] = []

    def fire(before: float) -> None:
        while (deadline := jb.deadline) is not None and deadline <= before:
            out.extend(jb.pop(deadline))

    for when, timestamp, samples in sorted(arrivals, key=lambda a: a[0]):
        fire(when)
        jb.put(1, timestamp, samples, when, marker=timestamp == marker)
        out.extend(jb.pop(when))
    fire(max(a[0] for a in arrivals) + 1.0)
    return out


def overtaken(arrivals: Packets, index: int, late: float) -> Packets:
    """Packet ``index`` ``late`` after its time, the next one just before it."""
    out = list(arrivals)
    when, timestamp, samples = out[index]
    out[index] = (when + late, timestamp, samples)
    out[index + 1] = (when + late - 0.001, out[index + 1][1], out[index + 1][2])
    return out


@pytest.mark.parametrize("ptime", [10, 30])
@pytest.mark.parametrize("base", [0, 0xFFFFFFFF - 1000])  # the timestamps wrap
def test_other_ptimes_are_cut_on_the_grid_in_any_order(ptime: int, base: int) -> None:
    """
    ptime 10 or 30 with a reordered pair: the stream cut into 20 ms frames
    as the sender's timeline has it. (RtpLeg cut the stream as it came and
    restarted at the next packet after one out of order: the frames lay half
    a frame off, and the buffer put them in the nearest place, a 10 ms
    splice.)
    """
    arrivals = overtaken(packets(ptime, base), 5, ptime / 2000)
    jb = JitterBuffer()
    out = play(jb, arrivals)
    assert all(f is not None for f in out)
    assert np.array_equal(np.concatenate([f for f in out if f is not None]), AUDIO)
    assert (jb.concealed, jb.late, jb.missing) == (0, 0, 0)


def test_a_lost_piece_costs_its_frame_only() -> None:
    arrivals = packets(10)
    del arrivals[7]  # the second half of frame 3
    jb = JitterBuffer()
    out = play(jb, arrivals)
    assert len(out) == 27 and jb.concealed == 1
    assert ident(out[3]) is None  # a repeat of 2, faded
    got = np.concatenate([f for k, f in enumerate(out) if k != 3 and f is not None])
    assert np.array_equal(got, np.concatenate((AUDIO[: 3 * N], AUDIO[4 * N :])))
    assert jb._assembler.depth == 0  # the half of frame 3 was dropped


def test_a_piece_after_its_frame_was_given_up_is_late_and_grows_the_delay() -> None:
    arrivals = packets(10)
    when, timestamp, samples = arrivals[7]
    arrivals[7] = (when + 0.2, timestamp, samples)  # frame 3's second half
    arrivals.append((0.3, arrivals[20][1], arrivals[20][2]))  # a copy of a played one
    jb = JitterBuffer()
    out = play(jb, arrivals)
    assert len(out) == 27 and jb.concealed == 1
    assert jb.late == 1 and jb.delay == pytest.approx(0.04)
    assert jb.duplicates == 1


@pytest.mark.parametrize("ptime", [10, 20, 30, 40, 60])
def test_a_packet_is_waited_for_as_long_whatever_the_ptime(ptime: int) -> None:
    """
    A packet 15 ms late, overtaken by the next, plays (the delay is 20 ms)
    whatever the sender's ptime. The frames of a 60 ms packet had one arrival
    time: the next packet was expected 20 ms after it, not 60 ms, and given up
    40 ms too early; a frame that takes two 30 ms packets to complete was
    expected 10 ms before it could be.
    """
    arrivals = overtaken(packets(ptime), 5 if ptime < 40 else 3, 0.015)
    jb = JitterBuffer()
    out = play(jb, arrivals)
    got = np.concatenate([f for f in out if f is not None])
    assert np.array_equal(got, AUDIO[: len(got)]) and len(got) >= len(AUDIO) - 2 * 8 * ptime
    assert (jb.concealed, jb.late, jb.missing) == (0, 0, 0)


def test_a_talk_spurt_off_the_grid_starts_a_new_one() -> None:
    """After silence the sender's timeline moved on by a whole number of its
    packets, not of our frames: the marker starts the grid afresh, and
    the talk spurt's first 10 ms are not lost."""
    first = packets(10, audio=AUDIO[: 10 * N])
    start = 10 * N + 8000 + 80  # 1 s on, half a frame off the grid
    later = [
        (when + 1.0, start + timestamp, samples)
        for when, timestamp, samples in packets(10, audio=AUDIO[10 * N :])
    ]
    jb = JitterBuffer()
    out = play(jb, first + later, marker=start)
    assert np.array_equal(np.concatenate([f for f in out if f is not None]), AUDIO)
    assert (jb.concealed, jb.late) == (0, 0)


def test_speech_in_other_ptimes_after_comfort_noise_starts_a_new_grid() -> None:
    jb = JitterBuffer(noise=lambda n: np.zeros(n))
    out = play(jb, packets(30, audio=AUDIO[:1200]))
    jb.put_comfort_noise(1, 1200, bytes([60]), 0.15)
    jb.pop(0.15)
    for k in range(1, 20):
        jb.pop(0.15 + k * P)
    # the noise played from 1120 (frame 7: its first half came, the second
    # half is silence) to 4320 by 0.53; speech resumes, without a marker, at
    # 4240: in the last noise frame's place, and off its grid by 10 ms
    resumed = [
        (when + 0.545, timestamp + 4240, samples)
        for when, timestamp, samples in packets(30, audio=AUDIO[1200:2640])
    ]
    out = play(jb, resumed)
    speech = [f for f in out if f is not None and f.any()]  # after the last noise
    assert np.array_equal(np.concatenate(speech), AUDIO[1200:2640])
    assert jb.late == 0


def test_a_change_of_ptime_stays_on_the_grid() -> None:
    """20 ms packets, then 10 ms ones, the first two swapped: the pieces fill
    the frames of the timeline playout follows, not one of their own that
    starts at the first to come, half a frame off."""
    before = packets(20, audio=AUDIO[: 10 * N])
    after = [
        (when + 10 * P, timestamp + 10 * N, samples)
        for when, timestamp, samples in packets(10, audio=AUDIO[10 * N :])
    ]
    after[0], after[1] = (after[1][0] + 0.001, *after[0][1:]), (after[0][0], *after[1][1:])
    jb = JitterBuffer()
    out = play(jb, before + after)
    assert np.array_equal(np.concatenate([f for f in out if f is not None]), AUDIO)
    assert (jb.concealed, jb.late, jb.missing) == (0, 0, 0)


def test_frame_assembler_fills_frames_from_pieces_in_any_order() -> None:
    asm = FrameAssembler(N)
    base = 0xFFFFFFFF - 300  # through the wrap
    pieces = [((base + 120 * k) & 0xFFFFFFFF, AUDIO[120 * k : 120 * (k + 1)]) for k in range(30)]
    order = [0, 2, 1, 3, 4, 7, 5, 6, 8, 9, 11, 10, *range(12, 30)]
    done: list[tuple[int, Frame, int, bool]] = []
    for k in order:
        done += asm.add(7, *pieces[k])
    assert [ts for ts, *_ in done] == [(base + N * j) & 0xFFFFFFFF for j in range(22)]
    for ts, samples, lead, marker in done:
        start = (ts - base) & 0xFFFFFFFF
        assert np.array_equal(samples, AUDIO[start : start + N]) and not marker
        assert -N < lead < 120
    assert asm.pending  # the last 40 samples of frame 22
    # a frame that will not complete is dropped once playout has passed it
    asm.discard_before((base + 23 * N) & 0xFFFFFFFF)
    assert not asm.pending


def test_frame_assembler_restarts_its_grid() -> None:
    asm = FrameAssembler(N)
    assert asm.add(1, 1000, AUDIO[:80]) == []
    # a new source, a jump, a marked piece ahead of all: the grid restarts there
    [(ts, _, lead, marker)] = asm.add(2, 5, AUDIO[:200])
    assert (ts, lead, marker) == (5, 0, False) and asm.depth == 1
    [(ts, _, lead, marker)] = asm.add(2, 5 + 100 * N, AUDIO[:N])
    assert (ts, lead, marker) == (5 + 100 * N, 0, False) and not asm.pending
    assert asm.add(2, 5 + 100 * N + 240, AUDIO[:80], marker=True) == []
    [(ts, _, lead, marker)] = asm.add(2, 5 + 100 * N + 320, AUDIO[:80])
    assert (ts, lead, marker) == (5 + 100 * N + 240, -80, True)
    # a marked piece behind what was seen is reordered, not a new talk spurt
    assert asm.add(2, 5 + 100 * N + 480, AUDIO[:80]) == []
    [(ts, _, lead, marker)] = asm.add(2, 5 + 100 * N + 400, AUDIO[:80], marker=True)
    assert (ts, lead, marker) == (5 + 100 * N + 400, 0, False)


def test_frame_assembler_memory_is_bounded() -> None:
    asm = FrameAssembler(N)
    for k in range(2000):  # every frame's second half lost, no playout to discard them
        assert asm.add(1, k * N, AUDIO[:80]) == []
    assert asm.depth <= 51
