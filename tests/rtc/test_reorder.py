"""rtc.reorder: the browser -> SIP direction's wait behind a gap, on a fake clock."""

from rtc.reorder import FRAME, MAX_WAIT, SHRINK_AFTER, ReorderBuffer

SSRC = 0x1234


class Feed:
    """Drives a ReorderBuffer as the WebRTC leg does: what comes out, in order."""

    def __init__(self, buffer: ReorderBuffer[int] | None = None) -> None:
        self.buffer = buffer or ReorderBuffer()
        self.out: list[tuple[int, int, float]] = []  # (seq, lost before it, when)

    def arrive(self, seq: int, now: float, ssrc: int = SSRC) -> None:
        self.tick(now)  # the timer fires before a later arrival
        lost = self.buffer.admit(seq & 0xFFFF, ssrc, seq & 0xFFFF, now)
        if lost is not None:
            self.out.append((seq & 0xFFFF, lost, now))
        self.drain(now)

    def tick(self, now: float) -> None:
        deadline = self.buffer.deadline
        if deadline is not None and deadline <= now:
            self.buffer.expire(deadline)
            self.drain(deadline)

    def drain(self, now: float) -> None:
        ready, self.buffer.ready = self.buffer.ready, []
        self.out.extend((seq, lost, now) for seq, lost in ready)

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _, _ in self.out]


def test_a_stream_in_order_passes_at_once_and_loss_costs_no_delay() -> None:
    feed = Feed()
    for seq in range(100):
        if seq not in (10, 50, 51):
            feed.arrive(seq, seq * FRAME)
    assert feed.seqs == [s for s in range(100) if s not in (10, 50, 51)]
    # no wait: each packet goes on when it arrives, the gaps reported with it
    assert all(when == seq * FRAME for seq, _, when in feed.out)
    assert [(seq, lost) for seq, lost, _ in feed.out if lost] == [(11, 1), (52, 2)]
    assert feed.buffer.wait == 0 and feed.buffer.deadline is None


def test_every_fifth_packet_overtaken_is_lost_once_then_waited_for() -> None:
    """
    Every fifth packet 25 ms late (behind its successor): the first one is given up
    (there was no sign of reordering yet), then the wait grows to a frame and every
    later one is passed on in its place, in order, at the cost of 5 ms to the one
    that overtook it.
    """
    feed = Feed()
    arrivals = sorted((seq * FRAME + (0.025 if seq % 5 == 2 else 0.0), seq) for seq in range(500))
    for when, seq in arrivals:
        feed.arrive(seq, when)
    feed.tick(100.0)
    buffer = feed.buffer
    assert buffer.given_up == 1 and buffer.late == 1
    assert buffer.wait == FRAME
    assert feed.seqs == [s for s in range(500) if s != 2]
    # delay added: only to the packet behind each overtaken one, 5 ms
    delays = [when - seq * FRAME for seq, _, when in feed.out]
    assert max(delays) < 0.026
    assert sum(1 for d in delays if d > 1e-9) == 2 * 99  # the late ones and their successors


def test_a_packet_lost_for_good_is_given_up_at_the_end_of_the_wait() -> None:
    feed = Feed(ReorderBuffer())
    buffer = feed.buffer
    buffer.wait = 0.05
    for seq in range(5):
        feed.arrive(seq, seq * FRAME)
    # 5 lost; 6, 7 and 8 are held behind it until 0.12 + 0.05
    for seq in (6, 7, 8):
        feed.arrive(seq, seq * FRAME)
    assert feed.seqs == [0, 1, 2, 3, 4] and buffer.deadline == 6 * FRAME + 0.05
    feed.arrive(9, 9 * FRAME)  # at 0.18: the wait ended at 0.17
    assert [(seq, lost) for seq, lost, _ in feed.out[5:]] == [(6, 1), (7, 0), (8, 0), (9, 0)]
    assert [round(when, 3) for _, _, when in feed.out[5:]] == [0.17, 0.17, 0.17, 0.18]
    assert buffer.given_up == 1 and buffer.deadline is None
    feed.arrive(5, 0.2)  # after all: dropped, and the wait grows
    assert buffer.late == 1 and buffer.wait == MAX_WAIT
    feed.arrive(20, 20 * FRAME)  # 10-19 lost: one wait, then the gap whole
    feed.tick(20 * FRAME + buffer.wait)
    assert feed.out[-1][:2] == (20, 10)


def test_the_wait_is_bounded_and_shrinks_after_a_quiet_period() -> None:
    feed = Feed()
    buffer = feed.buffer
    seq = 0
    for _ in range(10):  # ten late arrivals after being given up
        feed.arrive(seq, seq * FRAME)
        feed.arrive(seq + 2, (seq + 2) * FRAME)
        feed.tick((seq + 2) * FRAME + buffer.wait)
        feed.arrive(seq + 1, (seq + 2) * FRAME + buffer.wait + 0.05)
        seq += 3
    assert buffer.wait == MAX_WAIT
    for _ in range(SHRINK_AFTER + 1):
        feed.arrive(seq, seq * FRAME)
        seq += 1
    assert abs(buffer.wait - (MAX_WAIT - FRAME)) < 1e-9


def test_copies_are_dropped_without_growing_the_wait() -> None:
    feed = Feed()
    for seq in (0, 1, 2, 2, 1, 3):
        feed.arrive(seq, seq * FRAME)
    assert feed.seqs == [0, 1, 2, 3]
    assert feed.buffer.late == 2 and feed.buffer.wait == 0


def test_events_fill_their_place_while_a_gap_is_waited_for() -> None:
    """RFC 4733 packets take audio's sequence numbers (``passed``): not a loss."""
    feed = Feed()
    buffer = feed.buffer
    buffer.wait = FRAME
    feed.arrive(0, 0.0)
    feed.arrive(3, 0.06)  # held: 1 and 2 missing
    buffer.passed(2)
    buffer.passed(1)
    feed.drain(0.065)
    assert feed.out == [(0, 0, 0.0), (3, 0, 0.065)] and buffer.deadline is None
    buffer.passed(4)  # nothing held: the audio after it follows on
    feed.arrive(5, 0.1)
    assert feed.out[-1] == (5, 0, 0.1) and buffer.given_up == 0


def test_a_new_ssrc_starts_afresh_after_what_was_held() -> None:
    feed = Feed()
    buffer = feed.buffer
    buffer.wait = FRAME
    feed.arrive(100, 0.0)
    feed.arrive(102, 0.04)  # held behind 101
    feed.arrive(60, 0.045, ssrc=SSRC + 1)  # the browser re-added its track
    assert feed.seqs == [100, 102, 60]
    assert [lost for _, lost, _ in feed.out] == [0, 1, 0]
    feed.arrive(61, 0.06, ssrc=SSRC + 1)
    assert feed.seqs[-1] == 61 and buffer.late == 0


def test_a_jump_is_a_new_start_and_wraps_are_in_order() -> None:
    feed = Feed()
    feed.buffer.wait = FRAME
    for seq in (65533, 65534, 65535, 65536, 65537):
        feed.arrive(seq, 0.0)
    feed.arrive(5000, 0.1)  # far ahead: a new start, not a gap of thousands
    assert feed.seqs == [65533, 65534, 65535, 0, 1, 5000]
    assert [lost for _, lost, _ in feed.out] == [0] * 6 and feed.buffer.deadline is None


def test_without_a_timer_nothing_is_held() -> None:
    """``now`` None (aiortc's receive path has no timer): a gap is reported at once,
    after anything the timed path held."""
    buffer: ReorderBuffer[int] = ReorderBuffer()
    buffer.wait = FRAME
    assert buffer.admit(0, SSRC, 0, 0.0) == 0
    assert buffer.admit(2, SSRC, 2, 0.04) is None  # held
    assert buffer.admit(4, SSRC, 4, None) is None
    assert buffer.ready == [(2, 1), (4, 1)] and buffer.deadline is None
    buffer.ready.clear()
    assert buffer.admit(6, SSRC, 6, None) == 1
