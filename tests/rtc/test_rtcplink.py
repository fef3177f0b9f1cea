"""RtcpLink: the RTCP addressing, latching and SRTCP shared by RtpLeg and RtpVideo."""

import pytest

from rtc.rtcp import RtcpPliPacket, RtcpRrPacket, RtcpSrPacket, parse_rtcp
from rtc.rtcplink import Address, RtcpLink, sdp_remote
from rtc.rtcpsession import RtcpSession
from rtc.sdes import DEFAULT_SUITE, SrtpContext, generate_key
from rtc.sdp import MediaDescription, SdpError, SessionDescription


class Sink:
    """A transport that keeps what is sent."""

    def __init__(self, closing: bool = False) -> None:
        self.sent: list[tuple[bytes, Address]] = []
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing

    def sendto(self, data: bytes, addr: Address) -> None:
        self.sent.append((data, addr))


def media(*attributes: tuple[str, str | None], port: int = 4000) -> MediaDescription:
    return MediaDescription("audio", port, "RTP/AVP", ["0"], attributes=list(attributes))


def link() -> RtcpLink:
    return RtcpLink(RtcpSession(0x1234, 8000, "test@host"))


@pytest.mark.parametrize(
    ("attributes", "mux", "rtcp"),
    [
        ((), False, ("192.0.2.1", 4001)),  # RTP port + 1
        ((("rtcp", "5005"),), False, ("192.0.2.1", 5005)),  # RFC 3605, port only
        ((("rtcp", "5005 IN IP4 198.51.100.9"),), False, ("198.51.100.9", 5005)),
        ((("rtcp", "garbage"),), False, ("192.0.2.1", 4001)),  # ignored
        ((("rtcp", "-5"),), False, ("192.0.2.1", 4001)),  # ignored
        ((("rtcp", "5005"), ("rtcp", "6006")), False, ("192.0.2.1", 6006)),  # the last wins
        ((("rtcp-mux", None),), True, ("192.0.2.1", 4000)),  # RFC 5761
        ((("rtcp-mux", None),), False, ("192.0.2.1", 4001)),  # not honoured (audio)
        ((("rtcp", "4000"), ("rtcp-mux", None)), True, ("192.0.2.1", 4000)),
        ((("rtcp-mux", None), ("rtcp", "5005")), True, ("192.0.2.1", 5005)),
    ],
)
def test_sdp_remote(
    attributes: tuple[tuple[str, str | None], ...], mux: bool, rtcp: Address
) -> None:
    assert sdp_remote("192.0.2.1", media(*attributes), mux=mux) == (("192.0.2.1", 4000), rtcp)


def test_sdp_remote_from_parsed_sdp() -> None:
    session = SessionDescription.parse(
        b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
        b"m=video 4000 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n"
        b"a=rtcp:5005 IN IP4 198.51.100.9\r\n"
    )
    video = session.media[0]
    address = session.media_connection(video)
    assert address is not None
    assert sdp_remote(address, video, mux=True) == (
        ("192.0.2.1", 4000),
        ("198.51.100.9", 5005),
    )


@pytest.mark.parametrize(
    ("address", "ipv6", "problem"),
    [
        ("pbx.example.com", False, "not an IP address"),
        ("2001:db8::1", False, "is IPv6, the media sockets are IPv4"),
        ("192.0.2.1", True, "is IPv4, the media sockets are IPv6"),
        ("192.0.2.300", False, "not an IP address"),
    ],
)
def test_sdp_remote_refuses_what_no_socket_can_send_to(
    address: str, ipv6: bool, problem: str
) -> None:
    with pytest.raises(SdpError, match=problem):
        sdp_remote(address, media(), ipv6=ipv6)


def test_sdp_remote_ipv6_and_unusable_rtcp_address() -> None:
    assert sdp_remote("2001:db8::1", media(), ipv6=True) == (
        ("2001:db8::1", 4000),
        ("2001:db8::1", 4001),
    )
    # an RFC 3605 address nobody could send to: RTCP goes beside the RTP address
    for rtcp in ("5005 IN IP4 rtcp.example.com", "5005 IN IP6 2001:db8::2"):
        assert sdp_remote("192.0.2.1", media(("rtcp", rtcp))) == (
            ("192.0.2.1", 4000),
            ("192.0.2.1", 5005),
        )


@pytest.mark.parametrize("address", ["0.0.0.0", "::"])
def test_sdp_remote_hold_address(address: str) -> None:
    assert sdp_remote(address, media(("rtcp", "5005"), ("rtcp-mux", None)), mux=True) == (
        None,
        None,
    )


def test_latch_and_reset_when_the_rtp_address_moves() -> None:
    ours = link()
    sink = Sink()
    assert ours.set_remote(("192.0.2.1", 4000), ("192.0.2.1", 4001))  # first: moved from None
    ours.send(sink, None, 1e9, 10.0, 0)
    assert sink.sent[-1][1] == ("192.0.2.1", 4001)

    # the peer's RTCP on our RTCP port latches its source; muxed RTCP does not
    report = bytes(RtcpRrPacket(0x9999, []))
    assert ours.receive(report, ("10.0.0.5", 7000), True, None, 1e9, 10.0) == report
    assert ours.latched is None
    ours.receive(report, ("10.0.0.5", 7001), False, None, 1e9, 10.0)
    ours.receive(report, ("10.0.0.6", 9999), False, None, 1e9, 10.0)  # the first one stays
    assert ours.latched == ("10.0.0.5", 7001)
    ours.send(sink, None, 1e9, 11.0, 0)
    assert sink.sent[-1][1] == ("10.0.0.5", 7001)

    # a re-negotiation to the same RTP address keeps the latch, even with a new a=rtcp
    assert not ours.set_remote(("192.0.2.1", 4000), ("192.0.2.1", 5005))
    assert ours.latched == ("10.0.0.5", 7001)
    assert ours.remote == ("192.0.2.1", 5005)

    # the RTP address moves: latch forgotten, the SDP's RTCP address is used
    assert ours.set_remote(("192.0.2.2", 4000), ("192.0.2.2", 4001))
    assert ours.latched is None
    ours.send(sink, None, 1e9, 12.0, 0)
    assert sink.sent[-1][1] == ("192.0.2.2", 4001)

    # hold (0.0.0.0): nowhere to send
    assert ours.set_remote(None, None)
    assert not ours.send(sink, None, 1e9, 13.0, 0)
    assert len(sink.sent) == 3


def test_send_needs_an_open_transport() -> None:
    ours = link()
    ours.set_remote(("192.0.2.1", 4000), ("192.0.2.1", 4001))
    assert not ours.send(None, None, 1e9, 10.0, 0)
    closing = Sink(closing=True)
    assert not ours.send(closing, None, 1e9, 10.0, 0)
    assert closing.sent == []


def test_report_with_extra_feedback() -> None:
    ours = link()
    ours.set_remote(("192.0.2.1", 4000), ("192.0.2.1", 4001))
    ours.session.rtp_sent(160)
    sink = Sink()
    pli = bytes(RtcpPliPacket(0x1234, 0x5678))
    assert ours.send(sink, None, 1e9, 10.0, 123456, extra=pli)
    packets = parse_rtcp(sink.sent[0][0])
    assert isinstance(packets[0], RtcpSrPacket)
    assert packets[0].rtp_timestamp == 123456
    assert isinstance(packets[-1], RtcpPliPacket)


def test_srtcp_round_trip() -> None:
    key_a, key_b = generate_key(), generate_key()
    a, b = link(), RtcpLink(RtcpSession(0x5678, 8000, "b@host"))
    srtp_a = SrtpContext(DEFAULT_SUITE, key_a, key_b)
    srtp_b = SrtpContext(DEFAULT_SUITE, key_b, key_a)
    a.set_remote(("127.0.0.1", 4000), ("127.0.0.1", 4001))
    a.session.rtp_sent(160)
    sink = Sink()
    assert a.send(sink, srtp_a, 1e9, 10.0, 42)
    protected, _ = sink.sent[0]
    # the peer's context takes SRTCP off
    plain = b.receive(protected, ("127.0.0.1", 5001), False, srtp_b, 1e9, 10.1)
    assert plain is not None
    assert isinstance(parse_rtcp(plain)[0], RtcpSrPacket)
    assert b.latched == ("127.0.0.1", 5001)
    # forged or replayed: rejected, nothing latched
    b.latched = None
    assert b.receive(protected, ("127.0.0.1", 5001), False, srtp_b, 1e9, 10.2) is None
    assert b.receive(plain, ("127.0.0.1", 5001), False, srtp_b, 1e9, 10.2) is None
    assert b.latched is None


RTP_OLD, RTP_NEW = ("192.0.2.1", 4000), ("192.0.2.1", 61000)  # a NAT rebinding


def test_rtcp_follows_a_muxed_rtp_latch_and_is_relearnt_when_rtp_moves() -> None:
    ours = link()
    # RTCP on its own port: a first RTP latch leaves a learnt RTCP source alone
    ours.set_remote(("192.0.2.1", 4000), ("192.0.2.1", 4001))
    ours.latched = ("192.0.2.1", 4001)
    ours.rtp_latched(RTP_OLD, moved=False)
    assert ours.latched == ("192.0.2.1", 4001)
    # ...and a moved RTP source means a moved RTCP source: learnt from the next report
    ours.rtp_latched(RTP_NEW, moved=True)
    assert ours.latched is None
    # RTCP muxed on the RTP port (a=rtcp pointing at it): the reports follow the RTP latch
    ours.set_remote(("192.0.2.1", 4000), ("192.0.2.1", 4000))
    ours.rtp_latched(RTP_OLD, moved=False)
    assert ours.latched == RTP_OLD
    ours.rtp_latched(RTP_NEW, moved=True)
    assert ours.latched == RTP_NEW


def test_reports_to_a_nated_peer_go_beside_its_rtp_until_its_rtcp_arrives() -> None:
    """The SDP of a phone behind NAT gives private addresses, unreachable from here. Once
    its RTP latched from elsewhere, our reports (and the SR that its RTT to us needs) go
    to the RTCP port beside the latched RTP one, at the SDP's distance between the two;
    the phone's own RTCP, when it comes, settles it."""
    ours = link()
    sink = Sink()

    def destination() -> tuple[str, int]:
        assert ours.send(sink, None, 1.0, 1.0, 0)
        return sink.sent[-1][1]

    ours.set_remote(("10.0.0.5", 4000), ("10.0.0.5", 4001))
    assert destination() == ("10.0.0.5", 4001)
    ours.rtp_latched(("203.0.113.9", 61000), moved=False)
    assert destination() == ("203.0.113.9", 61001)
    ours.rtp_latched(("203.0.113.9", 62000), moved=True)  # rebinding: the guess follows
    assert destination() == ("203.0.113.9", 62001)
    report = RtcpSession(2, 8000, "p@q").build_report(1.0, 1.0, 0)
    ours.receive(report, ("203.0.113.9", 62007), False, None, 1.0, 1.0)
    assert destination() == ("203.0.113.9", 62007)
    # a=rtcp at another distance; a peer not behind NAT keeps the SDP's address
    ours.set_remote(("198.51.100.1", 5000), ("198.51.100.1", 5010))
    ours.rtp_latched(("203.0.113.9", 61000), moved=False)
    assert destination() == ("203.0.113.9", 61010)
    ours.set_remote(("198.51.100.2", 5000), ("198.51.100.2", 5001))
    ours.rtp_latched(("198.51.100.2", 5000), moved=False)
    assert destination() == ("198.51.100.2", 5001)
