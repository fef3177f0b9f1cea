"""
The regular RTCP reports of a WebRtcLeg's audio, at the interval browsers use.

aiortc's sender and receiver each send a report (SR + SDES, and RR) every
0.5-1.5 s, for audio as for video. libwebrtc reports on audio every 5 s (1 s
on video), RFC 3550's minimum (6.2; randomized over [0.5, 1.5] times it,
6.3.5). At 600 pass-through calls those two tasks per call, each waking a
thousand times a second across the calls to build, protect and send a packet,
took ~5 % of the gateway's CPU (bench/README.md, round 13).

``pace_reports`` gives an audio transceiver's sender and receiver these loops
in place of aiortc's own ``_run_rtcp``: the same reports, built from the same
statistics (aiortc 1.x: the loops are its own with another interval): the
first three every 0.5-1.5 s as before (counted once there is a DTLS
transport to send them on and, for receiver reports, something received), so
that the far end's reports on ours, and the round-trip time, come as early as
before; then every 2.5-7.5 s. What else aiortc sends (NACK, PLI, REMB, the
BYE on stop) is unchanged. Video keeps aiortc's pace: the browser's
bandwidth estimate reacts to the receiver reports there.
"""

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc.rtp import (
    RtcpByePacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
)

__all__ = ["REPORT_INTERVAL", "pace_reports", "report_interval"]

# seconds: RFC 3550's minimum interval, libwebrtc's for audio
REPORT_INTERVAL = 5.0
# the first reports, as aiortc sends its every report: the far end's reports
# on ours (the round-trip time) come as early as before
EARLY_INTERVAL = 1.0
EARLY_REPORTS = 3


def report_interval(sent: int) -> float:
    """The wait before the next report after ``sent``: [0.5, 1.5] times the interval."""
    interval = EARLY_INTERVAL if sent < EARLY_REPORTS else REPORT_INTERVAL
    return interval * (0.5 + random.random())


def pace_reports(transceiver: Any) -> None:
    """Before negotiation: the audio transceiver's regular reports go out at this pace."""
    sender, receiver = transceiver.sender, transceiver.receiver
    sender._run_rtcp = lambda: _sender_reports(sender)
    receiver._run_rtcp = lambda: _receiver_reports(receiver)


async def _paced(report: Callable[[], Awaitable[bool]]) -> None:
    """``report()`` (True: one went out) at ``report_interval``'s pace, until cancelled."""
    sent = 0
    try:
        while True:
            await asyncio.sleep(report_interval(sent))
            if await report():
                sent += 1
    except asyncio.CancelledError:
        pass


async def _sender_reports(sender: Any) -> None:
    """aiortc's RTCRtpSender._run_rtcp, paced by ``report_interval``."""

    async def report() -> bool:
        if sender.transport.state != "connected":
            return False  # the early reports are those that can go out
        ntp_timestamp = sender._RTCRtpSender__ntp_timestamp
        packets: list[Any] = [
            RtcpSrPacket(
                ssrc=sender._ssrc,
                sender_info=RtcpSenderInfo(
                    ntp_timestamp=ntp_timestamp,
                    rtp_timestamp=sender._RTCRtpSender__rtp_timestamp,
                    packet_count=sender._RTCRtpSender__packet_count & 0xFFFFFFFF,
                    octet_count=sender._RTCRtpSender__octet_count & 0xFFFFFFFF,
                ),
            )
        ]
        # what the round-trip time is computed from when the report comes back
        sender._RTCRtpSender__lsr = (ntp_timestamp >> 16) & 0xFFFFFFFF
        sender._RTCRtpSender__lsr_time = time.time()
        cname = sender._RTCRtpSender__cname
        if cname is not None:
            packets.append(
                RtcpSdesPacket(
                    chunks=[RtcpSourceInfo(ssrc=sender._ssrc, items=[(1, cname.encode())])]
                )
            )
        await sender._send_rtcp(packets)
        return True

    sender._RTCRtpSender__rtcp_started.set()
    await _paced(report)
    await sender._send_rtcp([RtcpByePacket(sources=[sender._ssrc])])
    sender._RTCRtpSender__rtcp_exited.set()


async def _receiver_reports(receiver: Any) -> None:
    """aiortc's RTCRtpReceiver._run_rtcp, paced by ``report_interval``."""

    async def report() -> bool:
        lsrs = receiver._RTCRtpReceiver__lsr
        lsr_times = receiver._RTCRtpReceiver__lsr_time
        reports = []
        for ssrc, stream in receiver._RTCRtpReceiver__remote_streams.items():
            lsr = dlsr = 0
            if ssrc in lsrs:
                lsr = lsrs[ssrc]
                delay = time.time() - lsr_times[ssrc]
                if 0 < delay < 65536:
                    dlsr = int(delay * 65536)
            reports.append(
                RtcpReceiverInfo(
                    ssrc=ssrc,
                    fraction_lost=stream.fraction_lost,
                    packets_lost=stream.packets_lost,
                    highest_sequence=stream.max_seq,
                    jitter=stream.jitter,
                    lsr=lsr,
                    dlsr=dlsr,
                )
            )
        rtcp_ssrc = receiver._RTCRtpReceiver__rtcp_ssrc
        if rtcp_ssrc is None or not reports or receiver.transport.state != "connected":
            return False
        await receiver._send_rtcp(RtcpRrPacket(ssrc=rtcp_ssrc, reports=reports))
        return True

    receiver._RTCRtpReceiver__rtcp_started.set()
    await _paced(report)
    receiver._RTCRtpReceiver__rtcp_exited.set()
