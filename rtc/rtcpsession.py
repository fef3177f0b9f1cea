"""
The RTCP side of one RTP session (RFC 3550 section 6): counts what is sent
and received, builds our compound reports (SR or RR, then SDES CNAME) and
reads the peer's, from which loss, jitter and round-trip time follow.
Sans-I/O: the RTP leg passes packets and clocks in and sends the bytes.
"""

import logging

from .rtcp import (
    SDES_CNAME,
    RtcpByePacket,
    RtcpReceptionReport,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    parse_rtcp,
)
from .stats import LegStats, ReceiverStatistics, estimate_mos

__all__ = ["RtcpSession", "ntp_time"]

logger = logging.getLogger(__name__)

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970


def ntp_time(unix_time: float) -> int:
    """64-bit NTP timestamp of a Unix time."""
    seconds = int(unix_time)
    fraction = int((unix_time - seconds) * (1 << 32))
    return ((seconds + NTP_EPOCH_OFFSET) << 32) | fraction


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits, as LSR and DLSR use them (1/65536 s units)."""
    return (ntp >> 16) & 0xFFFFFFFF


class RtcpSession:
    def __init__(self, ssrc: int, clock_rate: int, cname: str) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.cname = cname.encode()[:255]
        self.receiver = ReceiverStatistics(clock_rate)
        self.packets_sent = 0
        self.octets_sent = 0
        self.remote_report: RtcpReceptionReport | None = None
        self.rtt: float | None = None  # seconds
        self.remote_bye = False
        self._sent_since_report = False
        self._last_sr: int = 0  # middle 32 bits of the peer's last SR
        self._last_sr_arrival: float | None = None  # on the caller's monotonic clock

    def rtp_sent(self, payload_size: int, packets: int = 1) -> None:
        """``packets`` RTP packets sent, ``payload_size`` octets of payload in all."""
        self.packets_sent += packets
        self.octets_sent += payload_size
        self._sent_since_report = True

    def rtp_received(
        self, ssrc: int, sequence_number: int, timestamp: int, arrival: float, size: int
    ) -> bool:
        """ReceiverStatistics.add: True when the packet continues its source's stream."""
        return self.receiver.add(ssrc, sequence_number, timestamp, arrival, size)

    def build_report(
        self, wall_time: float, monotonic: float, rtp_timestamp: int, bye: bool = False
    ) -> bytes:
        """
        Our compound RTCP packet: SR when we sent RTP since the last report
        (else RR), the report block about the peer, SDES CNAME, and BYE when
        leaving. ``rtp_timestamp`` is our RTP clock at ``wall_time``.
        """
        dlsr = 0
        if self._last_sr_arrival is not None:
            dlsr = int((monotonic - self._last_sr_arrival) * 65536) & 0xFFFFFFFF
        report = self.receiver.report(self._last_sr, dlsr)
        reports = [report] if report is not None else []
        first: RtcpSrPacket | RtcpRrPacket
        if self._sent_since_report:
            first = RtcpSrPacket(
                self.ssrc,
                ntp_time(wall_time),
                rtp_timestamp & 0xFFFFFFFF,
                self.packets_sent & 0xFFFFFFFF,
                self.octets_sent & 0xFFFFFFFF,
                reports,
            )
        else:
            first = RtcpRrPacket(self.ssrc, reports)
        self._sent_since_report = False
        data = bytes(first) + bytes(RtcpSdesPacket([(self.ssrc, [(SDES_CNAME, self.cname)])]))
        if bye:
            data += bytes(RtcpByePacket([self.ssrc]))
        return data

    def handle(self, data: bytes, wall_time: float, monotonic: float) -> bool:
        """Read the peer's RTCP; False (and ignored) when it is not well-formed RTCP."""
        try:
            packets = parse_rtcp(data)
        except (ValueError, IndexError) as exc:
            logger.debug("Bad RTCP packet: %s", exc)
            return False
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                self._last_sr = ntp_middle(packet.ntp_timestamp)
                self._last_sr_arrival = monotonic
            if isinstance(packet, RtcpSrPacket | RtcpRrPacket):
                for report in packet.reports:
                    if report.ssrc == self.ssrc:
                        self._remote_report(report, wall_time)
            elif isinstance(packet, RtcpByePacket) and packet.sources:
                self.remote_bye = True
        return bool(data)

    def _remote_report(self, report: RtcpReceptionReport, wall_time: float) -> None:
        self.remote_report = report
        if report.lsr:
            # RFC 3550 6.4.1: A - LSR - DLSR, in 1/65536 s
            rtt = (ntp_middle(ntp_time(wall_time)) - report.lsr - report.dlsr) & 0xFFFFFFFF
            if rtt < 0x80000000:
                self.rtt = rtt / 65536

    def stats(self, codec: str | None) -> LegStats:
        # the session's totals, not the current source's: a PBX switching
        # streams (early media to answer, a transfer, music on hold) must not
        # drop what came before from the call's counts
        receiver = self.receiver
        expected = receiver.total_expected
        lost = max(0, receiver.total_lost)
        fraction = lost / expected if expected > 0 else 0.0
        jitter_ms = receiver.jitter * 1000
        rtt_ms = self.rtt * 1000 if self.rtt is not None else None
        stats = LegStats(
            codec=codec,
            packets_sent=self.packets_sent,
            bytes_sent=self.octets_sent,
            packets_received=receiver.total_packets_received,
            bytes_received=receiver.total_bytes_received,
            packets_lost=lost,
            fraction_lost=fraction,
            jitter_ms=jitter_ms,
            rtt_ms=rtt_ms,
            mos=estimate_mos(fraction, jitter_ms, rtt_ms) if receiver.ssrc is not None else None,
        )
        if self.remote_report is not None:
            stats.remote_packets_lost = self.remote_report.packets_lost
            stats.remote_fraction_lost = self.remote_report.fraction_lost / 256
            stats.remote_jitter_ms = self.remote_report.jitter * 1000 / self.clock_rate
        return stats
