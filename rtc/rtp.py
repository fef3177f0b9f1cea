"""
RTP packets (RFC 3550 section 5.1) as a plain dataclass with parse / bytes.

Header extensions are kept opaque (profile + raw value): the plain-RTP SIP
side has no use for them yet, but they must survive a parse/serialize round
trip.

The media legs' per-packet paths use the lean forms instead: ``ReceivedRtp``
(``parse_received``: the fields a receiver needs, CSRCs, extension and
padding skipped, no validation beyond what finding the payload takes) and
``RTP_FIXED_HEADER.pack`` for the 12-byte header we send.
"""

from dataclasses import dataclass, field
from struct import Struct, pack, pack_into, unpack_from

__all__ = [
    "RTP_FIXED_HEADER",
    "RTP_HEADER_LENGTH",
    "ReceivedRtp",
    "RtpPacket",
    "is_rtcp",
    "parse_received",
    "seq_gt",
    "seq_diff",
]

RTP_HEADER_LENGTH = 12
RTP_VERSION = 2
# V=2, no padding/extension/CSRC first byte, M+PT, sequence number, timestamp, SSRC
RTP_FIXED_HEADER = Struct("!BBHII")
_EXTENSION_HEADER = Struct("!HH")


class ReceivedRtp:
    """The fields of a received RTP packet a receiver needs."""

    __slots__ = ("marker", "payload", "payload_type", "sequence_number", "ssrc", "timestamp")

    def __init__(
        self,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        ssrc: int,
        payload: bytes,
        marker: bool = False,
    ) -> None:
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload
        self.marker = marker


def parse_received(data: bytes) -> ReceivedRtp | None:
    """A received datagram's RTP fields; None when it is not a well-formed RTP packet."""
    if len(data) < RTP_HEADER_LENGTH:
        return None
    first, second, sequence_number, timestamp, ssrc = RTP_FIXED_HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        return None
    start = RTP_HEADER_LENGTH + 4 * (first & 0x0F)
    if first & 0x10:
        if len(data) < start + 4:
            return None
        start += 4 + 4 * _EXTENSION_HEADER.unpack_from(data, start)[1]
    end = len(data)
    if first & 0x20:
        end -= data[-1]
        if data[-1] == 0:
            return None
    if start > end:
        return None
    return ReceivedRtp(
        second & 0x7F, sequence_number, timestamp, ssrc, data[start:end], bool(second & 0x80)
    )


def is_rtcp(data: bytes) -> bool:
    """True if the datagram looks like RTCP (RFC 5761 section 4) rather than RTP."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b between two 16-bit sequence numbers."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_diff(a: int, b: int) -> int:
    """Signed distance a - b between two 32-bit RTP timestamps."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def seq_gt(a: int, b: int) -> bool:
    """True if sequence number a comes after b, accounting for wrap-around."""
    return seq_diff(a, b) > 0


@dataclass
class RtpPacket:
    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension: bytes = b""
    padding_size: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise ValueError("RTP payload type must be in 0..127")
        if not 0 <= self.sequence_number <= 0xFFFF:
            raise ValueError("RTP sequence number must be in 0..65535")
        if not 0 <= self.timestamp <= 0xFFFFFFFF or not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise ValueError("RTP timestamp and SSRC must be 32-bit")
        if len(self.csrc) > 15:
            raise ValueError("RTP packet can carry at most 15 CSRCs")
        if len(self.extension) % 4 or len(self.extension) > 4 * 0xFFFF:
            raise ValueError("RTP header extension length must be a multiple of 4")
        if not 0 <= self.padding_size <= 255:
            raise ValueError("RTP padding must be in 0..255 bytes")

    def __repr__(self) -> str:
        return (
            f"RtpPacket(seq={self.sequence_number}, ts={self.timestamp}, "
            f"marker={int(self.marker)}, payload={self.payload_type}, "
            f"{len(self.payload)} bytes)"
        )

    @classmethod
    def parse(cls, data: bytes) -> "RtpPacket":
        if len(data) < RTP_HEADER_LENGTH:
            raise ValueError(f"RTP packet length is less than {RTP_HEADER_LENGTH} bytes")

        v_p_x_cc, m_pt, sequence_number, timestamp, ssrc = unpack_from("!BBHLL", data)
        if v_p_x_cc >> 6 != RTP_VERSION:
            raise ValueError("RTP packet has invalid version")
        padding = (v_p_x_cc >> 5) & 1
        has_extension = (v_p_x_cc >> 4) & 1
        cc = v_p_x_cc & 0x0F

        pos = RTP_HEADER_LENGTH
        if len(data) < pos + 4 * cc:
            raise ValueError("RTP packet has truncated CSRC")
        csrc = list(unpack_from(f"!{cc}L", data, pos))
        pos += 4 * cc

        extension_profile: int | None = None
        extension = b""
        if has_extension:
            if len(data) < pos + 4:
                raise ValueError("RTP packet has truncated extension profile / length")
            extension_profile, length = unpack_from("!HH", data, pos)
            pos += 4
            if len(data) < pos + 4 * length:
                raise ValueError("RTP packet has truncated extension value")
            extension = bytes(data[pos : pos + 4 * length])
            pos += 4 * length

        end = len(data)
        padding_size = 0
        if padding:
            padding_size = data[-1]
            if not padding_size or padding_size > end - pos:
                raise ValueError("RTP packet padding length is invalid")
            end -= padding_size

        return cls(
            payload_type=m_pt & 0x7F,
            sequence_number=sequence_number,
            timestamp=timestamp,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(m_pt >> 7),
            csrc=csrc,
            extension_profile=extension_profile,
            extension=extension,
            padding_size=padding_size,
        )

    def __bytes__(self) -> bytes:
        has_extension = self.extension_profile is not None
        cc = len(self.csrc)
        size = RTP_HEADER_LENGTH + 4 * cc
        if has_extension:
            size += 4 + len(self.extension)
        buf = bytearray(size)
        pack_into(
            "!BBHLL",
            buf,
            0,
            (RTP_VERSION << 6) | (bool(self.padding_size) << 5) | (has_extension << 4) | cc,
            (self.marker << 7) | self.payload_type,
            self.sequence_number,
            self.timestamp,
            self.ssrc,
        )
        pos = RTP_HEADER_LENGTH
        if cc:
            pack_into(f"!{cc}L", buf, pos, *self.csrc)
            pos += 4 * cc
        if self.extension_profile is not None:
            pack_into("!HH", buf, pos, self.extension_profile, len(self.extension) // 4)
            buf[pos + 4 :] = self.extension
        data = bytes(buf) + self.payload
        if self.padding_size:
            # RFC 3550 only defines the last octet; zeros keep output deterministic
            data += bytes(self.padding_size - 1) + pack("!B", self.padding_size)
        return data
