import asyncio
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket
from aiortc.rtp import RtpPacket as AiortcRtpPacket
from aiortc.stats import RTCStatsReport
from av import AudioFrame

from rtc.ports import Gap, PortClosed
from rtc.rtp import RTP_FIXED_HEADER
from rtc.webrtcleg import (
    MAX_REMOTE_STREAMS,
    ImmediateAudioJitterBuffer,
    WebRtcLeg,
    to_mono_s16,
)
from tests.audio import SineSource, dominant_frequency

from .conftest import read_for, wait_for, write_paced


async def connect(offerer: WebRtcLeg, answerer: WebRtcLeg) -> None:
    offer = await offerer.create_offer()
    answer = await answerer.accept_offer(offer)
    await offerer.accept_answer(answer)
    await wait_for(lambda: offerer.connection_state == answerer.connection_state == "connected", 10)


async def test_offer_prefers_opus_then_g711() -> None:
    leg = WebRtcLeg()
    try:
        sdp = await leg.create_offer()
        m_line = next(line for line in sdp.splitlines() if line.startswith("m=audio"))
        assert m_line.split()[3:] == ["96", "0", "8", "110", "126"]
        assert "a=rtpmap:96 opus/48000/2" in sdp
        assert "a=rtpmap:110 telephone-event/48000" in sdp
        assert "a=fmtp:126 0-16" in sdp
        assert "G722" not in sdp
        assert "a=sendrecv" in sdp
        assert "a=candidate:" in sdp  # gathering finished before returning
    finally:
        await leg.close()


async def test_loopback_tone_both_ways() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        await connect(a, b)
        assert a.codec == b.codec == "audio/opus"
        writers = asyncio.gather(
            write_paced(a, SineSource(1000, 48000, 0.3), 1.5),
            write_paced(b, SineSource(600, 48000, 0.3), 1.5),
        )
        from_a, from_b = await asyncio.gather(read_for(b, 1.5), read_for(a, 1.5))
        await writers
        for received, freq in ((from_a, 1000), (from_b, 600)):
            assert len(received) % 960 == 0
            tail = received[-24000:]
            assert len(tail) == 24000
            assert dominant_frequency(tail, 48000) == pytest.approx(freq, abs=5)
        # the audio went the direct way (no aiortc sender/receiver per packet), taken
        # off the UDP sockets before aioice's STUN parse
        for leg in (a, b):
            assert leg.direct_sent > 50 and leg.direct_received > 50
            assert leg._hooked is not None
            protocols = leg._hooked[0]._protocols  # type: ignore[attr-defined]
            assert protocols and all("datagram_received" in vars(p) for p in protocols)
    finally:
        await a.close()
        await b.close()


async def test_g711_only_offer_is_answered_with_pcmu() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        offer = await a.create_offer()
        # keep only PCMU and PCMA, as a browser restricted to G.711 would
        lines = []
        for line in offer.splitlines():
            if line.startswith("m=audio"):
                line = " ".join(line.split()[:3] + ["0", "8", "126"])
            elif line.startswith(
                ("a=rtpmap:96", "a=fmtp:96", "a=rtcp-fb:96", "a=rtpmap:110", "a=fmtp:110")
            ):
                continue
            lines.append(line)
        answer = await b.accept_offer("\r\n".join(lines) + "\r\n")
        m_line = next(line for line in answer.splitlines() if line.startswith("m=audio"))
        assert m_line.split()[3:] == ["0", "8", "126"]
        assert b.codec == "audio/PCMU"

        await a.accept_answer(answer)
        await wait_for(lambda: a.connection_state == b.connection_state == "connected", 10)
        writer = asyncio.ensure_future(write_paced(a, SineSource(1000, 48000, 0.3), 1.0))
        received = await read_for(b, 1.0)
        await writer
        # 8 kHz G.711 frames come out as 48 kHz 20 ms frames
        assert len(received) % 960 == 0
        assert dominant_frequency(received[-16000:], 48000) == pytest.approx(1000, abs=5)
    finally:
        await a.close()
        await b.close()


async def test_candidates_and_end_of_candidates() -> None:
    leg = WebRtcLeg()
    peer = WebRtcLeg()
    try:
        offer = await peer.create_offer()
        await leg.accept_offer(offer)
        candidate = next(line[2:] for line in offer.splitlines() if line.startswith("a=candidate:"))
        await leg.add_ice_candidate(candidate, "0", 0)
        await leg.add_ice_candidate("", None, None)
    finally:
        await leg.close()
        await peer.close()


async def test_on_failed_not_called_on_own_close() -> None:
    failed: list[str] = []
    a = WebRtcLeg(on_failed=lambda: failed.append("a"))
    b = WebRtcLeg(on_failed=lambda: failed.append("b"))
    await connect(a, b)
    await a.close()
    assert "a" not in failed
    # b may have had a's DTLS close_notify by now (on uvloop it has): its peer
    # gone underneath, which is b's failure; its own close adds nothing
    seen = list(failed)
    await b.close()
    assert failed == seen and set(seen) <= {"b"}


async def test_on_failed_when_connection_closes_underneath() -> None:
    failed: list[str] = []
    a = WebRtcLeg(on_failed=lambda: failed.append("a"))
    b = WebRtcLeg()
    try:
        await connect(a, b)
        await a._pc.close()  # as aiortc does on a fatal DTLS error
        assert failed == ["a"]
    finally:
        await a.close()
        await b.close()
    assert failed == ["a"]


async def test_bad_candidate_is_a_value_error() -> None:
    leg, peer = WebRtcLeg(), WebRtcLeg()
    try:
        await leg.accept_offer(await peer.create_offer())
        with pytest.raises(ValueError):
            await leg.add_ice_candidate("candidate:garbage", "0", 0)
    finally:
        await leg.close()
        await peer.close()


async def test_read_raises_after_close() -> None:
    leg = WebRtcLeg()
    reader = asyncio.ensure_future(leg.read())
    await asyncio.sleep(0)
    await leg.close()
    with pytest.raises(PortClosed):
        await reader
    leg.write(np.zeros(960, dtype=np.int16))  # harmless after close


@pytest.mark.parametrize(
    ("layout", "fmt", "shape"),
    [("stereo", "s16", (1, 1920)), ("stereo", "s16p", (2, 960)), ("mono", "s16", (1, 960))],
)
def test_to_mono_downmixes(layout: str, fmt: str, shape: tuple[int, int]) -> None:
    left = SineSource(1000, 48000, 0.25).frame(960)
    if shape == (1, 1920):
        data = np.stack([left, left]).T.reshape(1, -1)
    elif shape == (2, 960):
        data = np.stack([left, left])
    else:
        data = left.reshape(1, -1)
    frame = AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    mono = to_mono_s16(frame)
    assert mono.dtype == np.int16
    assert np.array_equal(mono, left)


async def test_on_failed_when_peer_closes() -> None:
    # the browser going away sends a DTLS close_notify; aiortc then closes the
    # connection, which the leg did not ask for
    failed: list[str] = []
    a = WebRtcLeg(on_failed=lambda: failed.append("a"))
    b = WebRtcLeg()
    try:
        await connect(a, b)
        await b.close()
        await wait_for(lambda: failed == ["a"], 5)
    finally:
        await a.close()
    assert failed == ["a"]


async def test_stats_from_aiortc() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        assert (await a.stats()).packets_sent == 0
        await connect(a, b)
        # aiortc sends its first RTCP report after 0.5-1.5 s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8
        stats = await a.stats()
        while stats.rtt_ms is None and loop.time() < deadline:
            await asyncio.sleep(0.2)
            stats = await a.stats()
        assert stats.codec == "audio/opus"
        assert stats.packets_sent > 10 and stats.bytes_sent > 0
        assert stats.packets_received > 10 and stats.bytes_received > 0
        assert stats.packets_lost == 0
        # sent and received by the direct path, counted where aiortc counts
        assert a.direct_sent >= stats.packets_sent - 5
        assert a.direct_received >= stats.packets_received - 5
        assert stats.rtt_ms is not None and 0 <= stats.rtt_ms < 100
        assert stats.mos is not None and stats.mos > 4.0
    finally:
        await a.close()
        await b.close()


async def test_remote_fraction_lost_is_a_fraction() -> None:
    """aiortc passes on the browser's RTCP fraction lost (0-255); LegStats says 0..1."""
    transport = SimpleNamespace(
        state="new", _stats_id="transport_1", _get_stats=lambda: RTCStatsReport()
    )
    sender = RTCRtpSender("audio", transport)  # type: ignore[arg-type]
    # the browser's RR about our stream: a quarter lost in its interval
    info = RtcpReceiverInfo(
        ssrc=sender._ssrc,
        fraction_lost=64,
        packets_lost=100,
        highest_sequence=1000,
        jitter=480,
        lsr=0,
        dlsr=0,
    )
    await sender._handle_rtcp_packet(RtcpRrPacket(ssrc=1234, reports=[info]))
    report = await sender.getStats()

    async def get_stats() -> RTCStatsReport:
        return report

    # only what stats() reads of the leg: a real one needs a browser to get a report
    leg = SimpleNamespace(
        codec="opus",
        _closed=False,
        _sync_circuits=lambda: None,
        _pc=SimpleNamespace(getStats=get_stats),
        _transceiver=SimpleNamespace(_codecs=[SimpleNamespace(clockRate=48000)]),
    )
    stats = await WebRtcLeg.stats(leg)  # type: ignore[arg-type]
    assert stats.remote_fraction_lost == 0.25
    assert stats.remote_packets_lost == 100
    assert stats.remote_jitter_ms == 10.0


async def test_lost_and_reordered_browser_packets_become_gaps_not_glitches() -> None:
    """Packets lost on the way in are passed on as Gaps (the far leg's timestamps skip
    them); one that comes behind a later one is dropped rather than played out of order."""
    a, b = WebRtcLeg(), WebRtcLeg()
    items: list[object] = []
    try:
        original = b._receive_direct
        seen = 0
        held: list[bytes] = []

        def impaired(data: bytes) -> bool:
            nonlocal seen
            # RTP of the negotiated Opus only (not RTCP, DTLS, events)
            if len(data) > 12 and 127 < data[0] < 192 and data[1] & 0x7F == 96:
                seen += 1
                if seen in (20, 40, 41):
                    return True  # lost
                if seen == 60:
                    held.append(data)  # overtaken by the next one
                    return True
                if seen == 61:
                    handled = original(data)
                    original(held.pop())
                    return handled
            return original(data)

        b._receive_direct = impaired  # type: ignore[method-assign]
        await connect(a, b)
        b.set_listener(items.append)
        await write_paced(a, SineSource(1000, 48000, 0.3), 1.6)
        await asyncio.sleep(0.1)
        assert seen > 61
        gaps = [item for item in items if isinstance(item, Gap)]
        assert [gap.frames for gap in gaps] == [1, 2, 1]
        assert b._jitter is not None and b._jitter.late == 1
        frames = [item for item in items if isinstance(item, np.ndarray)]
        assert len(frames) >= seen - 5 - 40  # written before the listener came: not counted
    finally:
        await a.close()
        await b.close()


async def test_browser_packets_overtaken_on_the_way_are_waited_for() -> None:
    """
    Every fifth packet 25 ms late, behind the one after it (rtc.reorder): once the
    first has been given up, the leg waits a frame behind each gap and every later
    packet is played in its place instead of dropped (before: a fifth of the frames
    lost). In order, too: nothing comes out late or twice.
    """
    a, b = WebRtcLeg(), WebRtcLeg()
    items: list[object] = []
    try:
        original = b._receive_direct
        seen = 0
        loop = asyncio.get_running_loop()

        def impaired(data: bytes) -> bool:
            nonlocal seen
            if len(data) > 12 and 127 < data[0] < 192 and data[1] & 0x7F == 96:
                seen += 1
                if seen % 5 == 0:
                    loop.call_later(0.025, original, data)
                    return True
            return original(data)

        b._receive_direct = impaired  # type: ignore[method-assign]
        await connect(a, b)
        b.set_listener(items.append)
        start = seen
        await write_paced(a, SineSource(1000, 48000, 0.3), 2.0)
        await asyncio.sleep(0.1)
        received = seen - start
        assert received > 80
        jitter = b._jitter
        assert jitter is not None
        assert jitter.given_up <= 1 and jitter.late <= 1 and jitter.wait > 0
        frames = [item for item in items if isinstance(item, np.ndarray)]
        gaps = [item for item in items if isinstance(item, Gap)]
        assert len(frames) >= received - 1 and len(gaps) <= 1
    finally:
        await a.close()
        await b.close()


async def test_end_of_candidates_lets_ice_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A browser that trickles its candidates, none reachable, then ends them
    (json-v1: an empty candidate): aioice declares ICE failed only after
    end-of-candidates, so the leg must pass it on; before, the call stayed
    "connecting" for ever with no audio and on_failed never came.
    """
    import aioice.stun

    monkeypatch.setattr(aioice.stun, "RETRY_MAX", 2)  # ~3.5 s per check instead of ~31
    failed: list[bool] = []
    leg = WebRtcLeg(on_failed=lambda: failed.append(True))
    browser = WebRtcLeg()
    try:
        offer = await browser.create_offer()
        trickled = "\r\n".join(
            line
            for line in offer.split("\r\n")
            if not line.startswith("a=candidate") and line != "a=end-of-candidates"
        )
        await leg.accept_offer(trickled)
        await leg.add_ice_candidate(
            "candidate:1 1 udp 2122260223 203.0.113.7 40000 typ host", "0", 0
        )
        await leg.add_ice_candidate("", None, None)
        await wait_for(lambda: bool(failed), 15)
        assert leg.connection_state == "failed"
    finally:
        await leg.close()
        await browser.close()


def test_events_in_place_of_audio_are_not_counted_as_lost() -> None:
    """RFC 4733 packets take the audio's sequence numbers while a digit plays: the audio
    after them follows on; a real loss after that is still reported."""
    losses: list[int] = []

    def decode(packet: AiortcRtpPacket, lost: int) -> bool:
        losses.append(lost)
        return True

    buffer = ImmediateAudioJitterBuffer(decode)
    buffer.add(AiortcRtpPacket(sequence_number=65534))
    buffer.add(AiortcRtpPacket(sequence_number=65535))
    for seq in (0, 1, 2):
        buffer.passed(seq)  # a short digit: three event packets
    buffer.passed(1)  # late: ignored
    buffer.add(AiortcRtpPacket(sequence_number=3))
    buffer.add(AiortcRtpPacket(sequence_number=6))
    buffer.add(AiortcRtpPacket(sequence_number=5))  # behind: dropped
    assert losses == [0, 0, 0, 2]
    assert buffer.late == 1


def test_a_burst_of_loss_is_reported_whole_and_a_new_ssrc_starts_afresh() -> None:
    """
    8 packets lost are a gap of 8 (the far leg's timestamps leave room for them,
    as far as the time that passed allows; reported as 0 they left the stream
    toward SIP 160 ms behind its timestamps for good). A new SSRC whose first
    sequence number is just behind the old stream's last is not "late".
    """
    losses: list[int] = []

    def decode(packet: AiortcRtpPacket, lost: int) -> bool:
        losses.append(lost)
        return True

    buffer = ImmediateAudioJitterBuffer(decode)
    for seq in (100, 101, 110, 111):
        buffer.add(AiortcRtpPacket(sequence_number=seq, ssrc=1))
    assert losses == [0, 0, 8, 0]
    for seq in (60, 61, 62):  # the browser re-added its track: a new stream
        buffer.add(AiortcRtpPacket(sequence_number=seq, ssrc=2))
    assert losses == [0, 0, 8, 0, 0, 0, 0] and buffer.late == 0
    buffer.add(AiortcRtpPacket(sequence_number=62, ssrc=2))  # a copy: still dropped
    assert buffer.late == 1 and len(losses) == 7


async def test_playback_rate_tells_the_browser_opus_need_not_be_full_band() -> None:
    """RFC 7587 maxplaybackrate for Opus in our offer and answer; none by default
    (web-to-web)."""
    narrow, wide, browser = (
        WebRtcLeg(playback_rate=8000),
        WebRtcLeg(playback_rate=16000),
        WebRtcLeg(),
    )
    try:
        offer = await narrow.create_offer()
        assert "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 maxplaybackrate=8000\r\n" in offer
        browser_offer = await browser.create_offer()
        assert "maxplaybackrate" not in browser_offer
        assert "a=fmtp:96 maxplaybackrate=16000" in await wide.accept_offer(browser_offer)
    finally:
        for leg in (narrow, wide, browser):
            await leg.close()
    with pytest.raises(ValueError):
        WebRtcLeg(playback_rate=11025)


async def test_a_browser_changing_ssrc_all_the_time_keeps_rtcp_and_close_working() -> None:
    """
    Audio with a new SSRC in every packet (only the call's own, authenticated
    browser can send it): the statistics aiortc reports on stay a few streams,
    its receiver's RTCP task lives on (past 31 streams its receiver report
    overflowed, past 255 the task died and close() then waited for it for ever).
    """
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        await connect(a, b)
        await wait_for(lambda: a._direct_path() is not None and b._rx_dtls is not None, 10)
        path = a._direct_path()
        assert path is not None
        receiver: Any = b._transceiver.receiver  # type: ignore[union-attr]
        streams = receiver._RTCRtpReceiver__remote_streams
        rtcp_task = receiver._RTCRtpReceiver__rtcp_task
        rng = random.Random(1)
        for seq in range(400):
            plain = RTP_FIXED_HEADER.pack(
                0x80, path.payload_type, seq, seq * 960, rng.getrandbits(32)
            ) + bytes([0xF8, 0xFF, 0xFE])
            path.sendto(path.protect(plain), path.remote_addr)
            if seq % 50 == 49:
                await asyncio.sleep(0.02)
        await wait_for(lambda: b.direct_received >= 380, 5)
        assert len(streams) <= MAX_REMOTE_STREAMS
        await asyncio.sleep(1.6)  # aiortc's receiver reports: every 0.5-1.5 s
        assert not rtcp_task.done()
    finally:
        await asyncio.wait_for(b.close(), 10)
        await a.close()


async def test_close_does_not_wait_for_ever_on_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    leg = WebRtcLeg()
    await leg.create_offer()

    async def never() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(leg._pc, "close", never)
    monkeypatch.setattr("rtc.webrtcleg.CLOSE_TIMEOUT", 0.2)
    await asyncio.wait_for(leg.close(), 5)


async def test_audio_reports_early_then_every_five_seconds() -> None:
    """
    The audio's regular RTCP reports (rtc.webrtcrtcp): the first three sender and
    receiver reports every 0.5-1.5 s, as aiortc sends all of them (the round-trip
    time comes as early), then every 2.5-7.5 s, as browsers pace audio reports;
    the BYE on close as before.
    """
    a, b = WebRtcLeg(), WebRtcLeg()
    a._ensure_transceiver()
    assert a._transceiver is not None
    sender: Any = a._transceiver.sender
    receiver: Any = a._transceiver.receiver
    loop = asyncio.get_running_loop()
    reports: list[tuple[float, str]] = []
    send_sr, send_rr = sender._send_rtcp, receiver._send_rtcp

    async def sr(packets: list[Any]) -> None:
        reports.append((loop.time(), type(packets[0]).__name__))
        await send_sr(packets)

    async def rr(packet: Any) -> None:
        reports.append((loop.time(), type(packet).__name__))
        await send_rr(packet)

    sender._send_rtcp, receiver._send_rtcp = sr, rr
    try:
        await connect(a, b)
        await wait_for(lambda: sum(kind == "RtcpSrPacket" for _, kind in reports) >= 4, 12)
        stats = await a.stats()
        assert stats.rtt_ms is not None and 0 <= stats.rtt_ms < 100
        for kind in ("RtcpSrPacket", "RtcpRrPacket"):
            times = [when for when, sent in reports if sent == kind]
            gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
            assert len(gaps) >= 2, reports
            assert all(0.45 <= gap <= 1.55 for gap in gaps[:2]), (kind, gaps)
            assert all(2.45 <= gap <= 7.55 for gap in gaps[2:]), (kind, gaps)
        assert [kind for _, kind in reports].count("RtcpSrPacket") == 4
    finally:
        await a.close()
        await b.close()
    assert reports[-1][1] == "RtcpByePacket"
