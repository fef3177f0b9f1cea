import pytest

from rtc.rtp import RtpPacket, is_rtcp, seq_diff, seq_gt

# PCMU, marker, seq 0x1234, ts 0xdeadbeef, ssrc 0x01020304, 4 bytes of payload
SIMPLE = bytes.fromhex("80 80 1234 deadbeef 01020304 fffefdfc")
# padding + extension + 2 CSRCs: V=2 P=1 X=1 CC=2, PT 96, no marker
FULL = bytes.fromhex(
    "b2 60 0001 000000a0 11111111"
    "22222222 33333333"  # CSRC list
    "bede 0001 10ff0000"  # one-byte header extension, 1 word
    "aabbcc"  # payload
    "000003"  # 3 bytes of padding, the last one counts them
)


def test_parse_simple() -> None:
    packet = RtpPacket.parse(SIMPLE)
    assert packet == RtpPacket(
        payload_type=0,
        sequence_number=0x1234,
        timestamp=0xDEADBEEF,
        ssrc=0x01020304,
        payload=b"\xff\xfe\xfd\xfc",
        marker=True,
    )
    assert bytes(packet) == SIMPLE


def test_parse_csrc_extension_padding() -> None:
    packet = RtpPacket.parse(FULL)
    assert packet.payload_type == 96
    assert not packet.marker
    assert packet.csrc == [0x22222222, 0x33333333]
    assert packet.extension_profile == 0xBEDE
    assert packet.extension == bytes.fromhex("10ff0000")
    assert packet.payload == b"\xaa\xbb\xcc"
    assert packet.padding_size == 3
    assert bytes(packet) == FULL


def test_serialize_golden() -> None:
    packet = RtpPacket(
        payload_type=8, sequence_number=65535, timestamp=4294967295, ssrc=1, payload=b"\xd5" * 2
    )
    assert bytes(packet).hex() == "8008ffffffffffff00000001d5d5"


def test_empty_extension_round_trips() -> None:
    packet = RtpPacket(payload_type=0, extension_profile=0x1000)
    data = bytes(packet)
    assert data[0] == 0x90 and data[12:16] == bytes.fromhex("10000000")
    assert RtpPacket.parse(data) == packet


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (SIMPLE[:11], "length"),
        (bytes([0x40]) + SIMPLE[1:], "version"),
        (bytes([0x82]) + SIMPLE[1:12] + b"\x00" * 4, "CSRC"),
        (bytes([0x90]) + SIMPLE[1:12] + b"\xbe\xde", "extension profile"),
        (bytes([0x90]) + SIMPLE[1:12] + bytes.fromhex("bede0002") + b"\x00" * 4, "extension value"),
        (bytes([0xA0]) + SIMPLE[1:12] + b"\x00\x00", "padding"),
        (bytes([0xA0]) + SIMPLE[1:12] + b"\x00\x05", "padding"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RtpPacket.parse(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_type": 128},
        {"sequence_number": 65536},
        {"timestamp": -1},
        {"ssrc": 2**32},
        {"csrc": list(range(16))},
        {"extension_profile": 1, "extension": b"\x00"},
        {"padding_size": 256},
    ],
)
def test_invalid_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RtpPacket(**kwargs)  # type: ignore[arg-type]


def test_rtcp_detection() -> None:
    assert is_rtcp(bytes.fromhex("80c80006"))  # sender report
    assert is_rtcp(bytes.fromhex("81c90007"))  # receiver report
    assert not is_rtcp(SIMPLE)
    assert not is_rtcp(bytes.fromhex("80e5"))  # dynamic PT 101 with marker


def test_sequence_arithmetic() -> None:
    assert seq_diff(1, 65535) == 2
    assert seq_diff(65535, 1) == -2
    assert seq_gt(0, 65535) and not seq_gt(65535, 0)
    assert seq_diff(100, 100) == 0


def test_parse_received_agrees_with_the_full_parser() -> None:
    from rtc.rtp import RTP_FIXED_HEADER, parse_received

    for packet in (
        RtpPacket(0, 7, 160, 0x1234, payload=b"\x01" * 160),
        RtpPacket(96, 65535, 0xFFFFFFFF, 1, payload=b"opus", marker=True, csrc=[5, 6]),
        RtpPacket(8, 1, 2, 3, payload=b"ab", extension_profile=0xBEDE, extension=b"\x10abc"),
        RtpPacket(8, 1, 2, 3, payload=b"padded", padding_size=3),
    ):
        lean = parse_received(bytes(packet))
        assert lean is not None
        assert (
            lean.payload_type,
            lean.sequence_number,
            lean.timestamp,
            lean.ssrc,
            lean.payload,
            lean.marker,
        ) == (
            packet.payload_type,
            packet.sequence_number,
            packet.timestamp,
            packet.ssrc,
            packet.payload,
            packet.marker,
        )
    # what we send: the fixed header, marker in the payload type byte
    assert RTP_FIXED_HEADER.pack(0x80, 0x80 | 0, 7, 160, 9) == bytes(
        RtpPacket(0, 7, 160, 9, marker=True)
    )
    # not RTP, or no room for what the header announces
    for bad in (b"", b"\x80" * 11, b"\x40" + bytes(11), b"\x90" + bytes(11), b"\xa0" + bytes(11)):
        assert parse_received(bad) is None
