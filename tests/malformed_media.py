"""Malformed media datagrams for robustness tests: what a buggy or hostile peer could send
to an RTP, RTCP or ICE (STUN/DTLS/SRTP) port. The same byte strings feed the parser and
leg unit tests (tests/rtc/test_malformed_media.py) and the end-to-end burst against a
running gateway (tests/e2e/test_media_fuzz.py).

Every function is deterministic: randomness comes from a `random.Random(seed)`.
"""

from __future__ import annotations

import random
import struct

HUGE = 65000  # bytes: a datagram far above any MTU, still below the UDP maximum


def rtp(
    payload_type: int,
    payload: bytes = b"",
    *,
    seq: int = 1,
    timestamp: int = 160,
    ssrc: int = 0x5EED,
    marker: bool = False,
    first: int = 0x80,
) -> bytes:
    """An RTP packet with a raw first byte (version, padding, extension, CSRC count)."""
    return struct.pack(
        "!BBHII", first, payload_type | (0x80 if marker else 0), seq, timestamp, ssrc
    ) + bytes(payload)


def rtcp(packet_type: int, body: bytes, *, count: int = 0, length: int | None = None) -> bytes:
    """One RTCP packet; `length` (in 32-bit words minus one) may lie about the body."""
    words = len(body) // 4 if length is None else length
    return struct.pack("!BBH", 0x80 | count, packet_type, words) + body


def stun(message_type: int, attributes: bytes = b"", *, length: int | None = None) -> bytes:
    """A STUN message (magic cookie, fixed transaction id); `length` may lie."""
    size = len(attributes) if length is None else length
    return struct.pack("!HHI12s", message_type, size, 0x2112A442, b"fuzz-fuzz-tx") + attributes


def stun_attribute(kind: int, value: bytes, *, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    return struct.pack("!HH", kind, size) + value + bytes(-len(value) % 4)


def malformed_rtp(payload_type: int, event_type: int | None = None) -> list[bytes]:
    """Broken RTP toward a leg whose codec is `payload_type` (and telephone-event
    `event_type`): every header field wrong in turn, unknown payload types, comfort noise
    and telephone-event payloads that are too short or odd."""
    audio = bytes(range(160))
    good = rtp(payload_type, audio)
    cases = [b""]
    cases += [good[:n] for n in range(1, 12)]  # truncated fixed header
    cases += [rtp(payload_type, audio, first=version << 6) for version in (0, 1, 3)]
    cases += [
        rtp(payload_type, b"", first=0x8F),  # 15 CSRCs announced, none there
        rtp(payload_type, bytes(8), first=0x8F),
        rtp(payload_type, bytes(59), first=0x8F),  # one byte short of 15 CSRCs
        rtp(payload_type, b"", first=0x90),  # extension bit, no extension header
        rtp(payload_type, b"\xbe\xde", first=0x90),  # half an extension header
        rtp(payload_type, b"\xbe\xde\xff\xff" + audio, first=0x90),  # length overflows
        rtp(payload_type, b"\xbe\xde\x00\x29" + audio, first=0x90),  # 41 words > 160 bytes
        rtp(payload_type, b"\x00" * 8 + b"\xbe\xde\xff\xff", first=0x92),  # CSRCs + overflow
        rtp(payload_type, audio + b"\x00", first=0xA0),  # padding count 0
        rtp(payload_type, audio[:10] + b"\xff", first=0xA0),  # padding longer than the payload
        rtp(payload_type, b"\x01", first=0xA0),  # the padding count is the whole payload
        rtp(payload_type, b"", first=0xA0),  # padding bit, no byte to count it
        rtp(payload_type, b"\xbe\xde\x00\x01" + bytes(4) + b"\x20", first=0xB0),  # ext + pad
        rtp(payload_type, b"\xff" * 11, first=0xBF),  # every flag, nothing behind them
    ]
    cases += [rtp(pt, audio) for pt in (2, 3, 19, 35, 77, 95, 96, 111, 120, 127)]
    # marker + payload types 72..76 look like RTCP 200..204 (RFC 5761) on a muxed port
    cases += [rtp(pt, audio, marker=True) for pt in range(72, 77)]
    # payload lengths the codec never produces
    cases += [
        rtp(payload_type, b"", seq=2),
        rtp(payload_type, b"\xff", seq=3),
        rtp(payload_type, bytes(161), seq=4),
        rtp(payload_type, bytes(1200), seq=5),
    ]
    # timestamps off the 20 ms grid: 164 apart, then an odd jump (a jitter buffer that
    # steps 160 at a time must not look for them for ever)
    cases += [
        rtp(payload_type, audio, seq=30 + i, timestamp=1000 + 164 * i + (37 if i > 4 else 0))
        for i in range(10)
    ]
    # RFC 3389 comfort noise: empty, noise level only, absurd spectral parameters
    cases += [rtp(13, payload, seq=10 + i) for i, payload in enumerate([b"", b"\x7f", bytes(300)])]
    # RFC 4733 events: too short, odd lengths, unknown event codes, reserved bits
    for event_pt in [101] if event_type is None else [event_type, 101]:
        for i, payload in enumerate(
            [
                b"",
                b"\x01",
                b"\x01\x8a",
                b"\x01\x8a\x00",
                b"\x01\x8a\x00\xa0\x05",  # 5 bytes: a stacked event cut short
                b"\xff\xff\xff\xff",  # event 255, end, reserved bit, volume 63
                b"\x10\x4a\x00\x00",  # event 16 (flash), duration 0
                b"\x05\x80\x00\x00" * 64,  # 64 stacked end events
            ]
        ):
            cases.append(rtp(event_pt, payload, seq=100 + i, timestamp=8000 * i, marker=True))
    return cases


def malformed_rtcp() -> list[bytes]:
    """Broken RTCP: wrong length fields, unknown types, every packet type truncated, bad
    padding and compounds with a valid packet followed by a broken one."""
    ssrc = struct.pack("!I", 0x5EED)
    report = struct.pack("!IIIIII", 0x5EED, 0x01000001, 100, 5, 0, 0)
    sender = ssrc + struct.pack("!QIII", 1 << 60, 160, 10, 1600)
    valid_rr = rtcp(201, ssrc)
    cases = [b"", b"\x80", b"\x80\xc8", b"\x80\xc8\x00"]
    cases += [rtcp(201, ssrc, length=n) for n in (0, 2, 0xFFFF)]  # length too short or long
    cases += [bytes([v << 6 | 0x01, 201, 0, 1]) + ssrc for v in (0, 1, 3)]
    cases += [rtcp(pt, ssrc + bytes(4)) for pt in (192, 193, 199, 204, 207, 210, 223, 255)]
    cases += [
        rtcp(200, sender[:20], count=1),  # SR shorter than its sender info
        rtcp(200, sender, count=1),  # SR announcing a report block it lacks
        rtcp(200, sender + report[:20], count=1),
        rtcp(200, sender, count=31),
        rtcp(201, b"", count=0),  # RR without SSRC
        rtcp(201, ssrc + report[:12], count=1),
        rtcp(201, ssrc, count=31),
        rtcp(202, b"", count=1),  # SDES without chunk
        rtcp(202, ssrc + b"\x01\xff" + b"x" * 2, count=1),  # item longer than the packet
        rtcp(202, ssrc + b"\x01\x02ab", count=1),  # no end-of-items
        rtcp(202, ssrc + b"\x01", count=1),  # item type, no length
        rtcp(202, ssrc + bytes(4), count=31),
        rtcp(203, b"", count=2),  # BYE without its sources
        rtcp(203, ssrc + b"\xff" + b"why", count=1),  # reason longer than the packet
        rtcp(205, ssrc, count=1),  # NACK without media SSRC
        rtcp(205, ssrc * 2 + b"\x00\x01", count=1),  # half an FCI
        rtcp(205, ssrc * 2, count=15),  # unknown RTPFB format
        rtcp(206, ssrc, count=1),  # PLI without media SSRC
        rtcp(206, ssrc * 2 + ssrc, count=4),  # FIR with half an entry
        rtcp(206, ssrc * 2 + ssrc + b"\x01", count=4),
        rtcp(206, ssrc * 2, count=31),  # unknown PSFB format
        bytes([0xA0, 201, 0, 1]) + b"\x00\x00\x00\xff",  # padding longer than the body
        bytes([0xA0, 201, 0, 1]) + b"\x00\x00\x00\x00",  # padding count 0
        bytes([0xA0, 201, 0, 0]),  # padding bit on an empty body
    ]
    broken = [c for c in cases if len(c) >= 4]
    cases += [valid_rr + c for c in broken[:12]]  # compound: a good packet, then garbage
    cases += [valid_rr + b"\x80", valid_rr * 40 + rtcp(201, b"")]
    return cases


def malformed_srtp(payload_type: int) -> list[bytes]:
    """SRTP and SRTCP lookalikes that cannot authenticate: no keys, or a bad tag."""
    cases = [rtp(payload_type, bytes(range(64)) + bytes(10), seq=40 + i) for i in range(4)]
    cases += [rtp(payload_type, b"\x00" * 4, seq=50)]  # shorter than a tag
    cases += [rtp(payload_type, b"", first=0x8F)]
    cases += [rtcp(201, struct.pack("!I", 0x5EED)) + struct.pack("!I", 0x80000001) + bytes(10)]
    cases += [rtcp(200, bytes(24)) + struct.pack("!I", 0x80000007) + bytes(10)]
    cases += [rtcp(201, b"") + b"\x80"]  # SRTCP index cut short
    return cases


def stun_like(rng: random.Random) -> list[bytes]:
    """Datagrams whose first byte is 0..3 (RFC 7983: STUN), broken in the ways a STUN
    parser is likely to trip over: lengths, attributes of the wrong size, bad encodings."""
    username = stun_attribute(0x0006, b"\xff\xfe:\x80")  # not UTF-8
    cases = [bytes([b]) for b in range(4)]
    cases += [stun(0x0001)[:n] for n in range(1, 20)]
    cases += [
        stun(0x0001, length=4),  # length beyond the datagram
        stun(0x0001, bytes(4), length=0),
        stun(0x0001),  # a binding request without USERNAME and MESSAGE-INTEGRITY
        stun(0x0011),  # a binding indication
        stun(0x0101),  # a binding success nobody asked for
        stun(0x0111),  # an error response nobody asked for
        stun(0x0003),  # an unknown method
        stun(0x3FFF),
        stun(0x0001, username),
        stun(0x0001, stun_attribute(0x0024, b"\x01\x02")),  # PRIORITY, 2 bytes instead of 4
        stun(0x0001, stun_attribute(0x0024, b"")),
        stun(0x0001, stun_attribute(0x8029, b"\x01\x02\x03")),  # ICE-CONTROLLED, 3 of 8 bytes
        stun(0x0001, stun_attribute(0x802A, bytes(9))),  # ICE-CONTROLLING, 9 of 8 bytes
        stun(0x0001, stun_attribute(0x8028, b"\x01")),  # FINGERPRINT, 1 of 4 bytes
        stun(0x0001, stun_attribute(0x8028, b"\x00\x00\x00\x00")),  # wrong FINGERPRINT
        stun(0x0001, stun_attribute(0x0008, b"")),  # empty MESSAGE-INTEGRITY
        stun(0x0001, stun_attribute(0x0009, b"\x00")),  # ERROR-CODE too short
        stun(0x0001, stun_attribute(0x0009, b"\x00\x00\x04\x01\xff")),  # reason not UTF-8
        stun(0x0001, stun_attribute(0x0020, b"\x00\x01")),  # XOR-MAPPED-ADDRESS too short
        stun(0x0001, stun_attribute(0x0020, b"\x00\x03" + bytes(6))),  # unknown family
        stun(0x0001, stun_attribute(0x0020, b"\x00\x02" + bytes(6))),  # IPv6, 4 bytes short
        stun(0x0001, stun_attribute(0x0025, b"\x01")),  # USE-CANDIDATE with a value
        stun(0x0001, stun_attribute(0x0024, b"\x00" * 4, length=0xFFF0)),  # attr beyond
        stun(0x0001, stun_attribute(0x0024, b"\x00\x00")[:6]),  # attribute header only
    ]
    for _ in range(40):
        body = rng.randbytes(rng.randrange(0, 120))
        cases.append(bytes([rng.randrange(4)]) + body)
        cases.append(stun(rng.choice([0x0001, 0x0101, 0x0111, 0x0011]), body))
    return cases


def dtls_like(rng: random.Random) -> list[bytes]:
    """Datagrams whose first byte is 20..63 (RFC 7983: DTLS): record headers of every
    content type with wrong versions, epochs and lengths, and random records."""
    cases = [bytes([b]) for b in range(20, 64)]
    for content_type in (20, 21, 22, 23, 24):
        for epoch in (0, 1, 0xFFFF):
            body = rng.randbytes(rng.randrange(0, 64))
            header = struct.pack("!BHH6sH", content_type, 0xFEFD, epoch, bytes(6), len(body))
            cases.append(header + body)
            cases.append(header[:-2] + struct.pack("!H", len(body) + 50) + body)
            cases.append(header[:7])
    # a ClientHello-looking handshake record (renegotiation attempt), cut short
    hello = struct.pack("!BHH6sH", 22, 0xFEFF, 0, bytes(6), 60) + b"\x01" + bytes(59)
    cases += [hello, hello[:30]]
    for _ in range(40):
        cases.append(bytes([rng.randrange(20, 64)]) + rng.randbytes(rng.randrange(0, 200)))
    return cases


def random_datagrams(seed: int, count: int, max_size: int = 300) -> list[bytes]:
    """`count` datagrams of random bytes, some with an RTP-like or RTCP-like start."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        data = bytearray(rng.randbytes(rng.randrange(0, max_size)))
        if data and i % 3 == 0:
            data[0] = 0x80 | (data[0] & 0x3F)  # version 2, the rest random
        if len(data) > 1 and i % 6 == 0:
            data[1] = rng.randrange(192, 224)  # and an RTCP packet type
        cases.append(bytes(data))
    return cases


def huge(first: int = 0x80, second: int = 0) -> bytes:
    """A HUGE-byte datagram starting with `first` and `second` (0x80 0x00: RTP version 2,
    payload type 0; 0x80 0xc8: an RTCP sender report)."""
    return bytes([first, second]) + bytes(range(256)) * (HUGE // 256) + bytes(HUGE % 256 - 2)


def huge_datagrams(payload_type: int = 0) -> list[bytes]:
    """HUGE-byte datagrams that look like RTP of `payload_type`, RTCP, RTP of an unknown
    payload type, DTLS and STUN."""
    firsts = [(0x80, payload_type), (0x80, 0xC8), (0x80, 0x7F), (0x16, 0xFE), (0x00, 0x01)]
    return [huge(first, second) for first, second in firsts]


def corpus(
    payload_type: int, event_type: int | None = None, *, seed: int, random_count: int = 1500
) -> list[bytes]:
    """Every kind above, for a media port whose stream has `payload_type` (and RFC 4733
    events on `event_type`): RTP, RTCP, SRTP, STUN- and DTLS-looking, `random_count`
    random datagrams and huge ones."""
    rng = random.Random(seed)
    return (
        malformed_rtp(payload_type, event_type)
        + malformed_rtcp()
        + malformed_srtp(payload_type)
        + stun_like(rng)
        + dtls_like(rng)
        + random_datagrams(seed, random_count)
        + huge_datagrams(payload_type)
    )
