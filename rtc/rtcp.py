"""
RTCP packets (RFC 3550 section 6, RFC 4585 feedback) as plain dataclasses
with parse / bytes, in the manner of rtp.py: SR, RR, SDES, BYE, and the
feedback messages NACK (generic, RTPFB 1), PLI (PSFB 1) and FIR (PSFB 4,
RFC 5104). ``parse_rtcp`` splits a compound packet.
"""

from dataclasses import dataclass, field
from struct import pack, unpack_from

__all__ = [
    "RTCP_BYE",
    "RTCP_PSFB",
    "RTCP_RR",
    "RTCP_RTPFB",
    "RTCP_SDES",
    "RTCP_SR",
    "RtcpByePacket",
    "RtcpFirPacket",
    "RtcpNackPacket",
    "RtcpPacket",
    "RtcpPliPacket",
    "RtcpReceptionReport",
    "RtcpRrPacket",
    "RtcpSdesPacket",
    "RtcpSrPacket",
    "parse_rtcp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_RTPFB = 205
RTCP_PSFB = 206

RTCP_VERSION = 2
SDES_CNAME = 1
NACK_FMT = 1
PLI_FMT = 1
FIR_FMT = 4
REPORT_LENGTH = 24


def _header(count: int, packet_type: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError("RTCP body must be a multiple of 4 bytes")
    return pack("!BBH", (RTCP_VERSION << 6) | count, packet_type, len(body) // 4) + body


@dataclass
class RtcpReceptionReport:
    """One report block (RFC 3550 6.4.1)."""

    ssrc: int
    fraction_lost: int = 0  # of 256, since the previous report
    packets_lost: int = 0  # cumulative, signed 24-bit (duplicates can make it negative)
    highest_sequence: int = 0  # extended: cycles << 16 | sequence number
    jitter: int = 0  # in timestamp units
    lsr: int = 0  # middle 32 bits of the last SR's NTP timestamp
    dlsr: int = 0  # delay since that SR, in 1/65536 s

    def __post_init__(self) -> None:
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError("fraction_lost must be in 0..255")
        if not -(1 << 23) <= self.packets_lost < (1 << 23):
            raise ValueError("packets_lost must fit in 24 signed bits")

    @classmethod
    def parse(cls, data: bytes, pos: int = 0) -> "RtcpReceptionReport":
        ssrc, lost_word, highest, jitter, lsr, dlsr = unpack_from("!LLLLLL", data, pos)
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, lost_word >> 24, lost, highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        lost = (self.fraction_lost << 24) | (self.packets_lost & 0xFFFFFF)
        return pack(
            "!LLLLLL", self.ssrc, lost, self.highest_sequence, self.jitter, self.lsr, self.dlsr
        )


def _parse_reports(data: bytes, pos: int, count: int) -> list[RtcpReceptionReport]:
    if len(data) < pos + count * REPORT_LENGTH:
        raise ValueError("RTCP report blocks are truncated")
    return [RtcpReceptionReport.parse(data, pos + i * REPORT_LENGTH) for i in range(count)]


@dataclass
class RtcpSrPacket:
    ssrc: int
    ntp_timestamp: int = 0  # 64-bit NTP
    rtp_timestamp: int = 0
    packet_count: int = 0
    octet_count: int = 0
    reports: list[RtcpReceptionReport] = field(default_factory=list)

    @classmethod
    def parse(cls, count: int, body: bytes) -> "RtcpSrPacket":
        if len(body) < 24:
            raise ValueError("RTCP SR is truncated")
        ssrc, ntp, rtp_ts, packets, octets = unpack_from("!LQLLL", body)
        return cls(ssrc, ntp, rtp_ts, packets, octets, _parse_reports(body, 24, count))

    def __bytes__(self) -> bytes:
        body = pack(
            "!LQLLL",
            self.ssrc,
            self.ntp_timestamp,
            self.rtp_timestamp,
            self.packet_count,
            self.octet_count,
        )
        body += b"".join(bytes(r) for r in self.reports)
        return _header(len(self.reports), RTCP_SR, body)


@dataclass
class RtcpRrPacket:
    ssrc: int
    reports: list[RtcpReceptionReport] = field(default_factory=list)

    @classmethod
    def parse(cls, count: int, body: bytes) -> "RtcpRrPacket":
        if len(body) < 4:
            raise ValueError("RTCP RR is truncated")
        (ssrc,) = unpack_from("!L", body)
        return cls(ssrc, _parse_reports(body, 4, count))

    def __bytes__(self) -> bytes:
        body = pack("!L", self.ssrc) + b"".join(bytes(r) for r in self.reports)
        return _header(len(self.reports), RTCP_RR, body)


@dataclass
class RtcpSdesPacket:
    """Source descriptions: per SSRC a list of (item type, value) (RFC 3550 6.5)."""

    chunks: list[tuple[int, list[tuple[int, bytes]]]] = field(default_factory=list)

    @classmethod
    def parse(cls, count: int, body: bytes) -> "RtcpSdesPacket":
        chunks = []
        pos = 0
        for _ in range(count):
            if len(body) < pos + 4:
                raise ValueError("RTCP SDES chunk is truncated")
            (ssrc,) = unpack_from("!L", body, pos)
            pos += 4
            items = []
            while pos < len(body) and body[pos] != 0:
                if len(body) < pos + 2 or len(body) < pos + 2 + body[pos + 1]:
                    raise ValueError("RTCP SDES item is truncated")
                kind, length = body[pos], body[pos + 1]
                items.append((kind, bytes(body[pos + 2 : pos + 2 + length])))
                pos += 2 + length
            # the null item ends the chunk, padded to a 32-bit boundary
            pos = (pos + 4) & ~3
            chunks.append((ssrc, items))
        return cls(chunks)

    def __bytes__(self) -> bytes:
        body = b""
        for ssrc, items in self.chunks:
            chunk = pack("!L", ssrc)
            for kind, value in items:
                if len(value) > 255:
                    raise ValueError("SDES item is longer than 255 bytes")
                chunk += pack("!BB", kind, len(value)) + value
            chunk += b"\x00" * (4 - len(chunk) % 4)
            body += chunk
        return _header(len(self.chunks), RTCP_SDES, body)


@dataclass
class RtcpByePacket:
    sources: list[int] = field(default_factory=list)
    reason: bytes = b""

    @classmethod
    def parse(cls, count: int, body: bytes) -> "RtcpByePacket":
        if len(body) < 4 * count:
            raise ValueError("RTCP BYE is truncated")
        sources = list(unpack_from(f"!{count}L", body))
        reason = b""
        pos = 4 * count
        if len(body) > pos:
            length = body[pos]
            if len(body) < pos + 1 + length:
                raise ValueError("RTCP BYE reason is truncated")
            reason = bytes(body[pos + 1 : pos + 1 + length])
        return cls(sources, reason)

    def __bytes__(self) -> bytes:
        body = b"".join(pack("!L", s) for s in self.sources)
        if self.reason:
            if len(self.reason) > 255:
                raise ValueError("BYE reason is longer than 255 bytes")
            reason = pack("!B", len(self.reason)) + self.reason
            body += reason + b"\x00" * (-len(reason) % 4)
        return _header(len(self.sources), RTCP_BYE, body)


@dataclass
class RtcpNackPacket:
    """Generic NACK (RFC 4585 6.2.1): the lost sequence numbers of media_ssrc."""

    ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes) -> "RtcpNackPacket":
        ssrc, media_ssrc = unpack_from("!LL", body)
        lost = []
        for pos in range(8, len(body) - 3, 4):
            pid, blp = unpack_from("!HH", body, pos)
            lost.append(pid)
            lost += [(pid + i + 1) & 0xFFFF for i in range(16) if blp >> i & 1]
        return cls(ssrc, media_ssrc, lost)

    def __bytes__(self) -> bytes:
        fci = b""
        remaining = list(dict.fromkeys(self.lost))
        while remaining:
            pid = remaining.pop(0)
            blp = 0
            for seq in list(remaining):
                distance = (seq - pid) & 0xFFFF
                if 1 <= distance <= 16:
                    blp |= 1 << (distance - 1)
                    remaining.remove(seq)
            fci += pack("!HH", pid, blp)
        return _header(NACK_FMT, RTCP_RTPFB, pack("!LL", self.ssrc, self.media_ssrc) + fci)


@dataclass
class RtcpPliPacket:
    """Picture loss indication (RFC 4585 6.3.1): ask media_ssrc for a keyframe."""

    ssrc: int
    media_ssrc: int

    def __bytes__(self) -> bytes:
        return _header(PLI_FMT, RTCP_PSFB, pack("!LL", self.ssrc, self.media_ssrc))


@dataclass
class RtcpFirPacket:
    """Full intra request (RFC 5104 4.3.1): (ssrc, command sequence number) entries."""

    ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def parse(cls, body: bytes) -> "RtcpFirPacket":
        (ssrc,) = unpack_from("!L", body)
        entries = [
            (unpack_from("!L", body, pos)[0], body[pos + 4]) for pos in range(8, len(body) - 7, 8)
        ]
        return cls(ssrc, entries)

    def __bytes__(self) -> bytes:
        fci = b"".join(pack("!LB3x", s, seq & 0xFF) for s, seq in self.entries)
        return _header(FIR_FMT, RTCP_PSFB, pack("!LL", self.ssrc, 0) + fci)


RtcpPacket = (
    RtcpSrPacket
    | RtcpRrPacket
    | RtcpSdesPacket
    | RtcpByePacket
    | RtcpNackPacket
    | RtcpPliPacket
    | RtcpFirPacket
)


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """
    The packets of a compound RTCP packet. Unknown packet types and feedback
    formats are skipped; malformed input raises ValueError.
    """
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if len(data) < pos + 4:
            raise ValueError("RTCP header is truncated")
        first, packet_type, length = unpack_from("!BBH", data, pos)
        if first >> 6 != RTCP_VERSION:
            raise ValueError("RTCP packet has invalid version")
        count = first & 0x1F
        end = pos + 4 + 4 * length
        if end > len(data):
            raise ValueError("RTCP packet length exceeds the datagram")
        body = data[pos + 4 : end]
        if first & 0x20 and body:
            # padding, only allowed on the last packet of a compound
            if body[-1] > len(body):
                raise ValueError("RTCP padding length is invalid")
            body = body[: len(body) - body[-1]]
        pos = end

        if packet_type == RTCP_SR:
            packets.append(RtcpSrPacket.parse(count, body))
        elif packet_type == RTCP_RR:
            packets.append(RtcpRrPacket.parse(count, body))
        elif packet_type == RTCP_SDES:
            packets.append(RtcpSdesPacket.parse(count, body))
        elif packet_type == RTCP_BYE:
            packets.append(RtcpByePacket.parse(count, body))
        elif packet_type in (RTCP_RTPFB, RTCP_PSFB):
            if len(body) < 8:
                raise ValueError("RTCP feedback packet is truncated")
            if packet_type == RTCP_RTPFB and count == NACK_FMT:
                packets.append(RtcpNackPacket.parse(body))
            elif packet_type == RTCP_PSFB and count == PLI_FMT:
                ssrc, media_ssrc = unpack_from("!LL", body)
                packets.append(RtcpPliPacket(ssrc, media_ssrc))
            elif packet_type == RTCP_PSFB and count == FIR_FMT:
                packets.append(RtcpFirPacket.parse(body))
    return packets
