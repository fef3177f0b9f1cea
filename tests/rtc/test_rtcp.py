"""RTCP packets: golden bytes, round trips, and aiortc's parser as a second opinion."""

import pytest
from aiortc import rtp as aiortc_rtp

from rtc.rtcp import (
    RtcpByePacket,
    RtcpFirPacket,
    RtcpNackPacket,
    RtcpPliPacket,
    RtcpReceptionReport,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    parse_rtcp,
)

REPORT = RtcpReceptionReport(
    ssrc=0x11223344,
    fraction_lost=25,
    packets_lost=-3,
    highest_sequence=0x0001FFFF,
    jitter=80,
    lsr=0xAABBCCDD,
    dlsr=0x00010000,
)
REPORT_BYTES = bytes.fromhex("1122334419fffffd0001ffff00000050aabbccdd00010000")

SR = RtcpSrPacket(
    ssrc=0x01020304,
    ntp_timestamp=0xE1A2B3C4_80000000,
    rtp_timestamp=160000,
    packet_count=1000,
    octet_count=160000,
    reports=[REPORT],
)
SR_BYTES = bytes.fromhex("81c8000c01020304e1a2b3c48000000000027100000003e800027100") + REPORT_BYTES
RR = RtcpRrPacket(ssrc=0x01020304, reports=[REPORT])
RR_BYTES = bytes.fromhex("81c9000701020304") + REPORT_BYTES
EMPTY_RR_BYTES = bytes.fromhex("80c9000101020304")
SDES = RtcpSdesPacket([(0x01020304, [(1, b"gw@host")])])
# "gw@host" is 7 bytes: 4 ssrc + 2 + 7 + null = 14, padded to 16
SDES_BYTES = bytes.fromhex("81ca0004010203040107") + b"gw@host" + b"\x00\x00\x00"
BYE = RtcpByePacket([0x01020304], b"bye")
BYE_BYTES = bytes.fromhex("81cb00020102030403") + b"bye"
NACK = RtcpNackPacket(ssrc=1, media_ssrc=2, lost=[100, 101, 116, 117])
# 100 with bits for 101 and 116 (bit 0 and bit 15), then 117 on its own
NACK_BYTES = bytes.fromhex("81cd000400000001000000020064800100750000")
PLI = RtcpPliPacket(ssrc=1, media_ssrc=2)
PLI_BYTES = bytes.fromhex("81ce00020000000100000002")
FIR = RtcpFirPacket(ssrc=1, entries=[(2, 7)])
FIR_BYTES = bytes.fromhex("84ce000400000001000000000000000207000000")

GOLDEN = [
    (SR, SR_BYTES),
    (RR, RR_BYTES),
    (RtcpRrPacket(0x01020304), EMPTY_RR_BYTES),
    (SDES, SDES_BYTES),
    (BYE, BYE_BYTES),
    (NACK, NACK_BYTES),
    (PLI, PLI_BYTES),
    (FIR, FIR_BYTES),
]


@pytest.mark.parametrize(("packet", "data"), GOLDEN, ids=lambda x: type(x).__name__)
def test_golden(packet: object, data: bytes) -> None:
    assert bytes(packet) == data  # type: ignore[call-overload]
    assert parse_rtcp(data) == [packet]


def test_report_block() -> None:
    assert bytes(REPORT) == REPORT_BYTES
    assert RtcpReceptionReport.parse(REPORT_BYTES) == REPORT
    with pytest.raises(ValueError):
        RtcpReceptionReport(1, fraction_lost=256)


def test_compound_and_aiortc_agrees() -> None:
    compound = SR_BYTES + SDES_BYTES + BYE_BYTES
    assert parse_rtcp(compound) == [SR, SDES, BYE]
    theirs = aiortc_rtp.RtcpPacket.parse(compound)
    sr = theirs[0]
    assert isinstance(sr, aiortc_rtp.RtcpSrPacket)
    assert sr.ssrc == SR.ssrc
    assert sr.sender_info.ntp_timestamp == SR.ntp_timestamp
    assert sr.sender_info.packet_count == 1000
    report = sr.reports[0]
    assert (report.ssrc, report.fraction_lost, report.packets_lost) == (0x11223344, 25, -3)
    assert (report.jitter, report.lsr, report.dlsr) == (80, 0xAABBCCDD, 0x10000)
    sdes = theirs[1]
    assert isinstance(sdes, aiortc_rtp.RtcpSdesPacket)
    assert tuple(sdes.chunks[0].items[0]) == (1, b"gw@host")
    bye = theirs[2]
    assert isinstance(bye, aiortc_rtp.RtcpByePacket)
    assert bye.sources == [0x01020304]
    nack = aiortc_rtp.RtcpPacket.parse(NACK_BYTES)[0]
    assert isinstance(nack, aiortc_rtp.RtcpRtpfbPacket)
    assert sorted(nack.lost) == [100, 101, 116, 117]


def test_aiortc_bytes_parse_here() -> None:
    theirs = aiortc_rtp.RtcpRrPacket(
        ssrc=5,
        reports=[
            aiortc_rtp.RtcpReceiverInfo(
                ssrc=6, fraction_lost=1, packets_lost=2, highest_sequence=3, jitter=4, lsr=5, dlsr=6
            )
        ],
    )
    assert parse_rtcp(bytes(theirs)) == [
        RtcpRrPacket(5, [RtcpReceptionReport(6, 1, 2, 3, 4, 5, 6)])
    ]


def test_unknown_types_skipped_and_errors() -> None:
    app = bytes.fromhex("80cc00020000000141424344")  # APP
    xr = bytes.fromhex("80cf000100000001")
    assert parse_rtcp(app + EMPTY_RR_BYTES + xr) == [RtcpRrPacket(0x01020304)]
    for bad in (
        b"\x80",
        b"\x40\xc9\x00\x01\x00\x00\x00\x00",
        EMPTY_RR_BYTES[:-1],
        bytes.fromhex("81c9000101020304"),
        bytes.fromhex("81cd000100000001"),
    ):
        with pytest.raises(ValueError):
            parse_rtcp(bad)
    padded = bytes.fromhex("a0c900020102030400000004")
    assert parse_rtcp(padded) == [RtcpRrPacket(0x01020304)]
