"""
A small SDP model (RFC 4566 / RFC 3264) for the plain-RTP SIP side.

It understands what an audio offer/answer between the gateway and a PBX needs:
origin, connection, timing, ``m=audio`` lines with their ``rtpmap``, ``fmtp``,
``ptime`` and direction attributes (and reads ``maxptime``). Anything else is
preserved verbatim so that parse -> serialize does not lose information.

``ptime`` and ``maxptime`` say how much audio the sender of the description
wants in a packet (a preference and a limit); a value that is not a finite
number is no reason to refuse the call: it reads as absent and stays among
the attributes as written.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DIRECTIONS",
    "MAX_SDP_SIZE",
    "Codec",
    "MediaDescription",
    "Origin",
    "SdpError",
    "SessionDescription",
    "answer_direction",
    "combine_directions",
    "find_codec",
    "reverse_direction",
    "select_codec",
]

MAX_SDP_SIZE = 65536
MAX_MEDIA = 16
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 3551 table 4: the static audio payload types the gateway can meet
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
    18: ("G729", 8000, 1),
}


class SdpError(ValueError):
    """The SDP is malformed or offers nothing the gateway can use."""


@dataclass
class Codec:
    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str | None = None

    def matches(self, name: str, clock_rate: int) -> bool:
        return self.name.lower() == name.lower() and self.clock_rate == clock_rate

    @property
    def rtpmap(self) -> str:
        value = f"{self.payload_type} {self.name}/{self.clock_rate}"
        if self.channels is not None and self.channels != 1:
            value += f"/{self.channels}"
        return value


@dataclass
class Origin:
    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    address: str = "127.0.0.1"
    address_type: str = "IP4"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"IN {self.address_type} {self.address}"
        )

    @classmethod
    def parse(cls, value: str) -> "Origin":
        bits = value.split()
        if len(bits) != 6 or bits[3] != "IN":
            raise SdpError(f"Invalid o= line: {value!r}")
        try:
            return cls(bits[0], int(bits[1]), int(bits[2]), bits[5], bits[4])
        except ValueError as exc:
            raise SdpError(f"Invalid o= line: {value!r}") from exc


def parse_connection(value: str) -> str:
    bits = value.split()
    if len(bits) != 3 or bits[0] != "IN" or bits[1] not in ("IP4", "IP6"):
        raise SdpError(f"Invalid c= line: {value!r}")
    # drop a multicast /ttl suffix; only the address matters for unicast RTP
    return bits[2].split("/")[0]


def format_connection(address: str) -> str:
    return f"IN {'IP6' if ':' in address else 'IP4'} {address}"


def _milliseconds(value: str) -> int | None:
    """A ptime/maxptime value (a decimal, RFC 8866's non-zero-int-or-real) in whole ms, or None."""
    try:
        number = float(value)
    except ValueError:
        return None
    # int() of an infinity raises OverflowError, which no caller expects of a parser
    return int(number) if math.isfinite(number) else None


def _split_attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    return name, rest if sep else None


@dataclass
class MediaDescription:
    kind: str
    port: int
    proto: str = "RTP/AVP"
    formats: list[str] = field(default_factory=list)
    connection: str | None = None
    rtpmap: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    direction: str | None = None
    bandwidth: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def is_rtp(self) -> bool:
        return self.proto.upper().startswith("RTP/")

    @property
    def maxptime(self) -> int | None:
        """a=maxptime (ms): the most audio a packet to the describer may carry; None if absent."""
        for name, value in self.attributes:
            if name == "maxptime" and value is not None:
                return _milliseconds(value)
        return None

    @property
    def payload_types(self) -> list[int]:
        return [int(f) for f in self.formats] if self.is_rtp else []

    @property
    def codecs(self) -> list[Codec]:
        """Codecs in the order of the m= line, static payload types resolved."""
        result = []
        for pt in self.payload_types:
            mapping = self.rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
            if mapping is None:
                continue
            name, rate, channels = mapping
            result.append(Codec(pt, name, rate, channels, self.fmtp.get(pt)))
        return result

    def add_codec(self, codec: Codec) -> None:
        self.formats.append(str(codec.payload_type))
        self.rtpmap[codec.payload_type] = (codec.name, codec.clock_rate, codec.channels)
        if codec.fmtp is not None:
            self.fmtp[codec.payload_type] = codec.fmtp

    def lines(self) -> list[str]:
        lines = [f"m={self.kind} {self.port} {self.proto} {' '.join(self.formats)}"]
        if self.connection is not None:
            lines.append(f"c={format_connection(self.connection)}")
        lines += [f"b={b}" for b in self.bandwidth]
        for pt in self.payload_types:
            if pt in self.rtpmap:
                name, rate, channels = self.rtpmap[pt]
                lines.append(f"a=rtpmap:{Codec(pt, name, rate, channels).rtpmap}")
            if pt in self.fmtp:
                lines.append(f"a=fmtp:{pt} {self.fmtp[pt]}")
        if self.ptime is not None:
            lines.append(f"a=ptime:{self.ptime}")
        for name, value in self.attributes:
            lines.append(f"a={name}" if value is None else f"a={name}:{value}")
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        return lines

    def _parse_attribute(self, value: str) -> None:
        name, rest = _split_attribute(value)
        try:
            if name == "rtpmap" and rest is not None:
                pt_str, encoding = rest.split(None, 1)
                bits = encoding.strip().split("/")
                channels = int(bits[2]) if len(bits) > 2 else None
                self.rtpmap[int(pt_str)] = (bits[0], int(bits[1]), channels)
                return
            if name == "fmtp" and rest is not None:
                pt_str, _, params = rest.partition(" ")
                self.fmtp[int(pt_str)] = params.strip()
                return
        except (ValueError, IndexError) as exc:
            raise SdpError(f"Invalid a={name} attribute: {value!r}") from exc
        if name == "ptime" and rest is not None:
            ptime = _milliseconds(rest)
            if ptime is not None:
                self.ptime = ptime
                return
        if name in DIRECTIONS and rest is None:
            self.direction = name
        else:
            self.attributes.append((name, rest))


@dataclass
class SessionDescription:
    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    connection: str | None = None
    timing: str = "0 0"
    direction: str | None = None
    bandwidth: list[str] = field(default_factory=list)
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    other: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def __str__(self) -> str:
        lines = ["v=0", f"o={self.origin}", f"s={self.name}"]
        lines += [f"{t}={v}" for t, v in self.other]
        if self.connection is not None:
            lines.append(f"c={format_connection(self.connection)}")
        lines += [f"b={b}" for b in self.bandwidth]
        lines.append(f"t={self.timing}")
        for name, value in self.attributes:
            lines.append(f"a={name}" if value is None else f"a={name}:{value}")
        if self.direction is not None:
            lines.append(f"a={self.direction}")
        for media in self.media:
            lines += media.lines()
        return "\r\n".join(lines) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode()

    @classmethod
    def parse(cls, data: bytes | str) -> "SessionDescription":
        if isinstance(data, bytes | bytearray):
            if len(data) > MAX_SDP_SIZE:
                raise SdpError("SDP is too large")
            try:
                text = bytes(data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpError("SDP is not valid UTF-8") from exc
        else:
            text = data
            if len(text) > MAX_SDP_SIZE:
                raise SdpError("SDP is too large")

        lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
        if not lines or lines[0].strip() != "v=0":
            raise SdpError("SDP must start with v=0")

        session = cls()
        seen_origin = False
        current: MediaDescription | None = None
        for line in lines[1:]:
            if len(line) < 2 or line[1] != "=":
                raise SdpError(f"Invalid SDP line: {line!r}")
            kind, value = line[0], line[2:].strip()
            if kind == "m":
                if len(session.media) >= MAX_MEDIA:
                    raise SdpError("Too many media sections")
                current = _parse_media_line(value)
                session.media.append(current)
            elif current is not None:
                if kind == "c":
                    current.connection = parse_connection(value)
                elif kind == "b":
                    current.bandwidth.append(value)
                elif kind == "a":
                    current._parse_attribute(value)
                # i= and k= at media level carry nothing the gateway uses
            elif kind == "o":
                session.origin = Origin.parse(value)
                seen_origin = True
            elif kind == "s":
                session.name = value or "-"
            elif kind == "c":
                session.connection = parse_connection(value)
            elif kind == "b":
                session.bandwidth.append(value)
            elif kind == "t":
                session.timing = value
            elif kind == "a":
                name, rest = _split_attribute(value)
                if name in DIRECTIONS and rest is None:
                    session.direction = name
                else:
                    session.attributes.append((name, rest))
            else:
                session.other.append((kind, value))
        if not seen_origin:
            raise SdpError("SDP has no o= line")
        return session

    def media_connection(self, media: MediaDescription) -> str | None:
        return media.connection or self.connection

    def media_direction(self, media: MediaDescription) -> str:
        return media.direction or self.direction or "sendrecv"

    def audio(self) -> MediaDescription:
        """The first active RTP audio section; raises SdpError when none."""
        for media in self.media:
            if media.kind == "audio" and media.is_rtp and media.port != 0:
                return media
        raise SdpError("SDP has no active audio stream")


def _parse_media_line(value: str) -> MediaDescription:
    bits = value.split()
    if len(bits) < 3:
        raise SdpError(f"Invalid m= line: {value!r}")
    try:
        port = int(bits[1].split("/")[0])
    except ValueError as exc:
        raise SdpError(f"Invalid m= port: {value!r}") from exc
    if not 0 <= port <= 65535:
        raise SdpError(f"Invalid m= port: {value!r}")
    media = MediaDescription(kind=bits[0], port=port, proto=bits[2], formats=bits[3:])
    if media.is_rtp and not all(f.isdigit() and int(f) <= 127 for f in media.formats):
        raise SdpError(f"Invalid RTP payload types: {value!r}")
    return media


def answer_direction(offered: str) -> str:
    """Our direction in an answer to ``offered``, when we are willing to send and receive."""
    return {
        "sendrecv": "sendrecv",
        "sendonly": "recvonly",
        "recvonly": "sendonly",
        "inactive": "inactive",
    }[offered]


def reverse_direction(direction: str) -> str:
    """The same stream seen from the other end (sendonly <-> recvonly)."""
    return {"sendonly": "recvonly", "recvonly": "sendonly"}.get(direction, direction)


def combine_directions(a: str, b: str) -> str:
    """What both allow: we send only if both a and b send, receive only if both receive."""
    send = a in ("sendrecv", "sendonly") and b in ("sendrecv", "sendonly")
    recv = a in ("sendrecv", "recvonly") and b in ("sendrecv", "recvonly")
    return {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(send, recv)]


def select_codec(media: MediaDescription, supported: Iterable[tuple[str, int]]) -> Codec | None:
    """First codec of ``media`` (in its order of preference) that we support."""
    wanted = list(supported)
    for codec in media.codecs:
        if any(codec.matches(name, rate) for name, rate in wanted):
            return codec
    return None


def find_codec(media: MediaDescription, name: str, clock_rate: int) -> Codec | None:
    for codec in media.codecs:
        if codec.matches(name, clock_rate):
            return codec
    return None


def with_opus_parameter(sdp: str, name: str, value: int) -> str:
    """
    ``sdp`` with ``name=value`` in the fmtp of each audio m-line's Opus
    payload type (added to its fmtp line, or on a new one after its rtpmap);
    a parameter already there is left as it is. Text in, text out, every
    other line unchanged: for descriptions another stack wrote.
    """
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    # from the last m-line back, so that inserting keeps the earlier indices
    for start, end in reversed(list(zip(starts, [*starts[1:], len(lines)], strict=True))):
        if not lines[start].startswith("m=audio "):
            continue
        section = range(start + 1, end)
        rtpmap = next(
            (
                i
                for i in section
                if lines[i].startswith("a=rtpmap:")
                and lines[i].partition(" ")[2].lower().startswith("opus/")
            ),
            None,
        )
        if rtpmap is None:
            continue
        payload_type = lines[rtpmap][len("a=rtpmap:") :].partition(" ")[0]
        fmtp = next((i for i in section if lines[i].startswith(f"a=fmtp:{payload_type} ")), None)
        if fmtp is None:
            lines.insert(rtpmap + 1, f"a=fmtp:{payload_type} {name}={value}")
            continue
        present = lines[fmtp].partition(" ")[2].split(";")
        if all(p.partition("=")[0].strip().lower() != name for p in present):
            lines[fmtp] = f"{lines[fmtp]};{name}={value}"
    return eol.join(lines)
