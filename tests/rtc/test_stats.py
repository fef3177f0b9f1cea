"""Receiver statistics (RFC 3550 A.1/A.3/A.8), E-model MOS, and RTCP between RtpLegs."""

import asyncio
import random
import socket
import time

import pytest
import uvloop

from rtc.rtcp import RtcpRrPacket, RtcpSdesPacket, RtcpSrPacket, parse_rtcp
from rtc.rtcpsession import RtcpSession, ntp_time
from rtc.rtp import RtpPacket
from rtc.rtpleg import RtpLeg
from rtc.stats import ReceiverStatistics, estimate_mos, mos_from_r, r_factor

from .conftest import wait_for


def test_loss_wraparound_duplicates_and_report_fraction() -> None:
    stats = ReceiverStatistics(8000)
    sent = [(65500 + i) & 0xFFFF for i in range(100)]
    kept = [seq for i, seq in enumerate(sent) if i % 10 != 3]  # 10% lost
    for n, seq in enumerate(kept):
        stats.add(7, seq, seq * 160, n * 0.02, 160)
    stats.add(7, kept[-1], kept[-1] * 160, 2.0, 160)  # duplicate: not counted
    assert stats.expected == 100
    assert stats.lost == 10
    assert stats.extended_max == 65536 + 99 - 36
    report = stats.report()
    assert report is not None
    assert report.fraction_lost == 25  # 10/100 * 256, rounded down
    assert report.packets_lost == 10
    assert report.highest_sequence == stats.extended_max
    # nothing new since: the next report's fraction is 0
    assert stats.report().fraction_lost == 0  # type: ignore[union-attr]


def test_jitter_converges_to_the_transit_variation() -> None:
    stats = ReceiverStatistics(8000)
    for n in range(400):
        # every other packet 10 ms late: each transit difference is 10 ms
        stats.add(1, n, n * 160, n * 0.02 + (0.01 if n % 2 else 0.0), 160)
    assert stats.jitter == pytest.approx(0.010, rel=0.02)
    steady = ReceiverStatistics(8000)
    for n in range(100):
        steady.add(1, n, n * 160, 5.0 + n * 0.02, 160)
    assert steady.jitter == pytest.approx(0.0, abs=1e-6)


def test_new_ssrc_restarts_the_report_block_and_keeps_the_totals() -> None:
    stats = ReceiverStatistics(8000)
    for seq in range(10):
        if seq != 4:  # one lost
            stats.add(1, seq, seq * 160, seq * 0.02, 160)
    stats.add(2, 5000, 0, 1.0, 100)
    # the report block is the new source's alone
    assert (stats.ssrc, stats.max_seq, stats.expected, stats.lost) == (2, 5000, 1, 0)
    assert (stats.packets_received, stats.bytes_received) == (1, 100)
    report = stats.report()
    assert report is not None and (report.ssrc, report.packets_lost) == (2, 0)
    # the session's totals keep the first source's packets and its loss
    assert (stats.total_packets_received, stats.total_bytes_received) == (10, 9 * 160 + 100)
    assert (stats.total_expected, stats.total_lost) == (11, 1)


def _stream(stats: ReceiverStatistics, seqs: range, lose_every: int = 0) -> None:
    """Packets 20 ms apart on an 8 kHz clock, one in ``lose_every`` lost (not the first)."""
    for seq in seqs:
        if lose_every and seq % lose_every == lose_every // 2:
            continue
        stats.add(7, seq & 0xFFFF, seq * 160, seq * 0.02, 160)


@pytest.mark.parametrize("stray", [499 - 150, 499 + 5000], ids=["150-late", "5000-ahead"])
def test_one_stray_packet_neither_resets_nor_counts(stray: int) -> None:
    """RFC 3550 A.1: a packet far off the sequence is probably a stray."""
    stats = ReceiverStatistics(8000)
    _stream(stats, range(500), lose_every=10)
    before = (stats.packets_received, stats.bytes_received, stats.lost, stats.max_seq)
    assert before == (450, 72000, 50, 499)
    stats.add(7, stray, 0, 10.0, 160)
    assert (stats.packets_received, stats.bytes_received, stats.lost, stats.max_seq) == before
    _stream(stats, range(500, 505))
    assert (stats.packets_received, stats.lost, stats.max_seq) == (455, 50, 504)
    report = stats.report()
    assert report is not None
    assert (report.highest_sequence, report.packets_lost) == (504, 50)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_a_second_stray_after_the_next_packet_does_not_resync() -> None:
    stats = ReceiverStatistics(8000)
    _stream(stats, range(500))
    stats.add(7, 300, 0, 10.0, 160)  # stray: a resync would need 301 next
    _stream(stats, range(500, 502))
    stats.add(7, 301, 0, 10.1, 160)  # not right after 300: another stray
    _stream(stats, range(502, 504))
    assert (stats.packets_received, stats.lost, stats.max_seq) == (504, 0, 503)


def test_a_restarted_sequence_resyncs_without_counting_the_jump() -> None:
    """Two packets in sequence far off: the sender restarted; nothing counted lost."""
    stats = ReceiverStatistics(8000)
    _stream(stats, range(500), lose_every=10)
    # the sender restarts its sequence numbers near the wrap, keeping its SSRC
    for n, seq in enumerate(range(65530, 65546)):
        if seq != 65540:  # one lost after the restart
            stats.add(7, seq & 0xFFFF, 0, 20.0 + n * 0.02, 100)
    assert stats.max_seq == 65545 & 0xFFFF
    # the packet that looked like a stray is counted once the next confirms it
    assert stats.packets_received == 450 + 15
    assert stats.bytes_received == 450 * 160 + 15 * 100
    assert (stats.expected, stats.lost) == (500 + 16, 50 + 1)
    report = stats.report()
    assert report is not None and report.packets_lost == 51
    assert report.highest_sequence == stats.extended_max == (1 << 16) + 9


def test_statistics_tell_the_packet_that_continues_the_stream() -> None:
    """What a jitter buffer needs to tell a timestamp jump from a late packet."""
    stats = ReceiverStatistics(8000)
    assert not stats.add(1, 100, 0, 0.0, 160)  # the first of a source
    assert stats.add(1, 101, 160, 0.02, 160)
    assert not stats.add(1, 101, 160, 0.021, 160)  # a copy
    assert not stats.add(1, 103, 480, 0.06, 160)  # 102 lost
    assert not stats.add(1, 102, 320, 0.061, 160)  # late
    assert stats.add(1, 104, 640, 0.08, 160)
    assert not stats.add(2, 105, 800, 0.1, 160)  # another source


@pytest.mark.parametrize("jump", [-40000, -4000, -800, 40000, 4000])
def test_a_timestamp_jump_is_not_jitter(jump: int) -> None:
    """
    RFC 3550 A.8 across a timestamp jump under continuing sequence numbers (a PBX
    re-bridging the call): the transit starts over, as for a new source (a jump of
    5 s, back or ahead, made 312 ms of jitter, still 12 ms a second later).
    """
    stats = ReceiverStatistics(8000)
    rng = random.Random(5)
    for seq in range(100):
        arrival = seq * 0.02 + rng.uniform(0, 0.002)
        stats.add(7, seq, 1_000_000 + seq * 160 + (jump if seq >= 50 else 0), arrival, 160)
        assert stats.jitter < 0.002, (seq, stats.jitter)


def test_real_jitter_still_counts() -> None:
    """A packet 300 ms late, the ones queued behind it coming in a burst with it
    (each 20 ms early on the one before): jitter, as ever."""
    stats = ReceiverStatistics(8000)
    peak = 0.0
    for seq in range(50):
        arrival = max(seq * 0.02, 0.7) if 20 <= seq < 35 else seq * 0.02
        assert stats.add(7, seq, 1_000_000 + seq * 160, arrival, 160) == (seq > 0)
        peak = max(peak, stats.jitter)
    assert peak > 0.015


def test_session_totals_survive_ssrc_changes() -> None:
    """What an RtpLeg or RtpVideo reports: every source of the call."""
    session = RtcpSession(ssrc=1, clock_rate=8000, cname="x")
    for seq in range(300):  # early media from one source, 10 % lost
        if seq % 10 != 5:
            session.rtp_received(0xAAAA, seq, seq * 160, seq * 0.02, 160)
    for n, seq in enumerate(range(9000, 9100)):  # the answer: another source, none lost
        session.rtp_received(0xBBBB, seq, n * 160, 6.0 + n * 0.02, 160)
    stats = session.stats("PCMU")
    assert (stats.packets_received, stats.bytes_received) == (370, 370 * 160)
    assert stats.packets_lost == 30
    assert stats.fraction_lost == pytest.approx(30 / 400)
    # the report block is about the current source alone
    report = session.receiver.report()
    assert report is not None
    assert (report.ssrc, report.packets_lost, report.highest_sequence) == (0xBBBB, 0, 9099)


def test_rfc4733_events_sharing_a_timestamp_add_no_jitter() -> None:
    """Every packet of an event carries its start; a 1 s key press is not 35 ms jitter."""
    stats = ReceiverStatistics(8000)
    seq, t = 0, 100.0
    for _ in range(100):
        stats.add(1, seq, seq * 160, t, 160)
        seq, t = seq + 1, t + 0.02
    start = (seq - 1) * 160 + 160
    for _ in range(20):  # an event packet every 50 ms, all with the event's timestamp
        stats.add(1, seq, start, t, 4)
        seq, t = seq + 1, t + 0.05
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)
    # the audio after it goes on from when the event began, 1 s later
    for n in range(10):
        stats.add(1, seq, start + 8000 + n * 160, t + n * 0.02, 160)
        seq += 1
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_e_model() -> None:
    # G.711, no loss, short delay: the best narrowband score
    assert estimate_mos(0.0, 0.0, 0.0) == pytest.approx(4.40, abs=0.01)
    assert mos_from_r(0) == 1.0 and mos_from_r(120) == 4.5
    scores = [estimate_mos(loss, 5.0, 40.0) for loss in (0.0, 0.01, 0.05, 0.2)]
    assert scores == sorted(scores, reverse=True)
    assert 4.1 < scores[1] < 4.4  # 1% loss with PLC: still good
    assert scores[3] < 3.0
    assert r_factor(0.0, 0.0, 600.0) < r_factor(0.0, 0.0, 100.0)


def test_rtt_from_lsr_and_dlsr() -> None:
    a = RtcpSession(ssrc=1, clock_rate=8000, cname="a")
    b = RtcpSession(ssrc=2, clock_rate=8000, cname="b")
    a.rtp_sent(160)
    b.rtp_received(1, 0, 0, 0.0, 160)
    sr = a.build_report(wall_time=1000.0, monotonic=0.0, rtp_timestamp=0)
    packets = parse_rtcp(sr)
    assert isinstance(packets[0], RtcpSrPacket) and isinstance(packets[1], RtcpSdesPacket)
    assert packets[0].ntp_timestamp == ntp_time(1000.0)
    # the SR takes 30 ms to b, b answers 200 ms later, the RR takes 30 ms back
    b.handle(sr, wall_time=1000.03, monotonic=10.0)
    a.rtp_received(2, 0, 0, 0.0, 160)
    rr = b.build_report(wall_time=1000.23, monotonic=10.2, rtp_timestamp=0)
    assert isinstance(parse_rtcp(rr)[0], RtcpRrPacket)
    a.handle(rr, wall_time=1000.26, monotonic=0.26)
    assert a.rtt == pytest.approx(0.06, abs=0.001)
    assert a.stats("PCMU").rtt_ms == pytest.approx(60, abs=1)
    a.handle(b"\x80\xc9garbage", 0, 0)  # ignored


async def test_rtcp_between_legs_gives_rtt_and_counts() -> None:
    a = await RtpLeg.open()
    b = await RtpLeg.open()
    a.rtcp_interval = b.rtcp_interval = 0.2
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        # Wait on what is asserted below, not on a time: a loaded machine is slower.
        await wait_for(
            lambda: all(
                leg.stats().rtt_ms is not None
                and leg.stats().packets_sent > 10
                and leg.stats().packets_received > 10
                for leg in (a, b)
            ),
            10,
        )
        for leg in (a, b):
            stats = leg.stats()
            assert stats.codec == "PCMU"
            assert stats.packets_sent > 10 and stats.bytes_sent == 160 * stats.packets_sent
            assert stats.packets_received > 10
            assert stats.packets_lost == 0 and stats.fraction_lost == 0.0
            assert stats.remote_packets_lost == 0
            assert stats.rtt_ms is not None and 0 <= stats.rtt_ms < 50
            assert stats.jitter_ms < 10
            assert stats.mos is not None and stats.mos > 4.3
    finally:
        await a.close()
        await b.close()


async def test_leg_reports_loss_to_the_sender_and_sends_bye() -> None:
    leg = await RtpLeg.open()
    leg.rtcp_interval = 0.3
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    port = rtp.getsockname()[1]
    try:
        rtcp.bind(("127.0.0.1", port + 1))
    except OSError:
        pytest.skip("port above the RTP socket is taken")
    rtcp.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        offer = (
            b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio %d RTP/AVP 0\r\n" % port
        )
        leg.create_answer(offer)
        for seq in range(50):
            if seq % 5 != 2:  # 20% lost
                packet = RtpPacket(0, seq, seq * 160, 0xABC, payload=b"\xff" * 160)
                rtp.sendto(bytes(packet), ("127.0.0.1", leg.local_port))
            await asyncio.sleep(0.01)
        stats = leg.stats()
        assert stats.packets_lost == 10
        assert stats.fraction_lost == pytest.approx(0.2, abs=0.01)
        assert stats.mos is not None and stats.mos < 3.5

        report = None
        fractions = []
        deadline = loop.time() + 3
        while (report is None or report.highest_sequence != 49) and loop.time() < deadline:
            data = await asyncio.wait_for(loop.sock_recv(rtcp, 2048), 3)
            for rtcp_packet in parse_rtcp(data):
                if isinstance(rtcp_packet, RtcpSrPacket | RtcpRrPacket) and rtcp_packet.reports:
                    report = rtcp_packet.reports[0]
                    fractions.append(report.fraction_lost)
        assert report is not None
        assert report.ssrc == 0xABC
        assert report.packets_lost == 10
        # fraction_lost covers each report's own interval: whichever intervals the reports
        # fell on (a loaded machine shifts them), one of them saw the loss.
        assert max(fractions) > 0, fractions

        await leg.close()
        bye = await asyncio.wait_for(loop.sock_recv(rtcp, 2048), 1)
        while not any(type(p).__name__ == "RtcpByePacket" for p in parse_rtcp(bye)):
            bye = await asyncio.wait_for(loop.sock_recv(rtcp, 2048), 1)
    finally:
        rtp.close()
        rtcp.close()
        await leg.close()


def test_jitter_of_a_stream_on_time_is_near_zero_on_uvloop() -> None:
    """
    Packets handed to the leg exactly when their timestamps say, every 20.5 ms
    (164 units of the 8 kHz clock), have no interarrival jitter. On uvloop,
    whose loop.time() counts whole milliseconds once per loop iteration, an
    arrival read from it alternates between 20 and 21 ms apart: a jitter of
    ~0.5 ms that was never there.
    """
    spacing, units = 0.0205, 164

    async def run() -> float:
        leg = await RtpLeg.open()
        try:
            leg.create_answer(
                b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                b"m=audio 40000 RTP/AVP 0\r\n"
            )
            start = time.monotonic() + 0.03
            for k in range(80):
                due = start + k * spacing
                # asleep until just before, then to the microsecond (the loop's
                # own clock is not what is being tested)
                await asyncio.sleep(max(0.0, due - time.monotonic() - 0.004))
                while time.monotonic() < due:
                    pass
                packet = RtpPacket(0, k, k * units, 0x1234, payload=bytes(160))
                leg._datagram_received(bytes(packet), ("127.0.0.1", 40000))
            stats = leg.stats()
            assert stats.packets_received == 80
            return stats.jitter_ms
        finally:
            await leg.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        jitter_ms = runner.run(run())
    assert jitter_ms < 0.15


def test_a_clock_rate_learnt_later_counts_as_one_given_at_the_start() -> None:
    # an RtpLeg's statistics start at 8000 and learn 48000 when Opus is negotiated:
    # the bounds of a timestamp jump must follow, or the packet after a 40 ms delay
    # spike (33 ms "early" at 48 kHz) is taken for a jump and its jitter is lost
    def feed(stats: ReceiverStatistics) -> float:
        for k in range(200):
            spike = 0.04 if k % 20 == 10 else 0.0
            stats.add(1, k, k * 960, 0.02 * k + spike, 100)
        return stats.jitter_units / 48000

    learnt = ReceiverStatistics(8000)
    learnt.clock_rate = 48000
    given = feed(ReceiverStatistics(48000))
    assert given > 0.003
    assert feed(learnt) == pytest.approx(given)
