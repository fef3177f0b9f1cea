"""
Where one RTP session's RTCP goes and how it travels: the peer's RTCP
address from SDP (RFC 3605 a=rtcp, else the RTP port + 1; a=rtcp-mux where
the caller honours it), the source latched from the peer's RTCP (symmetric
RTCP), SRTCP protection, and the report sent through a transport.

It exists so that the audio leg (RtpLeg) and the video stream (RtpVideo)
share one implementation of these rules. Sans-I/O apart from ``sendto`` on
the transport handed in: callers pass the SRTP context and the clocks.
"""

import ipaddress
from typing import Protocol

from .rtcpsession import RtcpSession
from .sdes import SrtpContext, SrtpError
from .sdp import MediaDescription, SdpError

__all__ = ["Address", "DatagramSink", "RtcpLink", "sdp_remote"]

Address = tuple[str, int]


class DatagramSink(Protocol):
    """What RtcpLink sends through (an asyncio.DatagramTransport)."""

    def is_closing(self) -> bool: ...

    def sendto(self, data: bytes, addr: Address) -> None: ...


def sdp_remote(
    address: str, media: MediaDescription, mux: bool = False, ipv6: bool = False
) -> tuple[Address | None, Address | None]:
    """
    The peer's RTP and RTCP addresses for an m= line whose connection
    address is ``address``: (None, None) for a hold address (0.0.0.0, ::).
    RTCP: the RTP port + 1, or RFC 3605 ``a=rtcp:port [IN IP4 address]``;
    with ``mux``, ``a=rtcp-mux`` (RFC 5761) sends it to the RTP address.
    The last of these attributes wins.

    ``ipv6``: whether the caller's sockets are IPv6 ones. The address must be
    an IP address of that family (SdpError otherwise): a host name would need
    a DNS lookup per datagram, and uvloop's ``sendto`` refuses both outright.
    An RFC 3605 address that is not is ignored (the RTP address is used).
    """
    if address in ("0.0.0.0", "::"):
        # RFC 2543 style hold: nowhere to send
        return None, None
    problem = _unusable(address, ipv6)
    if problem is not None:
        raise SdpError(f"Connection address {address!r} {problem}")
    remote = (address, media.port)
    rtcp = (address, media.port + 1)
    for name, value in media.attributes:
        if name == "rtcp" and value:
            bits = value.split()
            if bits and bits[0].isdecimal():
                other = bits[3] if len(bits) >= 4 else address
                rtcp = (other if _unusable(other, ipv6) is None else address, int(bits[0]))
        elif name == "rtcp-mux" and mux:
            rtcp = remote
    return remote, rtcp


def _unusable(address: str, ipv6: bool) -> str | None:
    """Why datagrams cannot be sent to ``address`` from a socket of that family."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "is not an IP address (host names are not supported)"
    if (ip.version == 6) != ipv6:
        return f"is IPv{ip.version}, the media sockets are IPv{6 if ipv6 else 4}"
    return None


class RtcpLink:
    """
    The RTCP addressing of one RTP session around its RtcpSession: ``remote``
    from SDP, ``latched`` from the first RTCP the peer sent to our RTCP port
    (forgotten when the SDP's RTP address moves); reports go to the latched
    address, else to the one guessed from the peer's latched RTP source when
    that is not the SDP's (a NAT: the SDP's RTCP address is then as private
    as its RTP one), else to the SDP's.
    """

    def __init__(self, session: RtcpSession) -> None:
        self.session = session
        self.remote: Address | None = None  # from SDP (a=rtcp, rtcp-mux or port + 1)
        self.latched: Address | None = None
        self.guessed: Address | None = None  # from the RTP latch, until RTCP arrives
        self._rtp_remote: Address | None = None  # the SDP's RTP address, to see it move

    def set_remote(self, remote: Address | None, rtcp_remote: Address | None) -> bool:
        """
        A negotiation's RTP and RTCP addresses (from ``sdp_remote``). True
        when the RTP address moved: the RTCP latch is reset, and the caller
        forgets its latched RTP source too.
        """
        moved = remote != self._rtp_remote
        if moved:
            self.latched = None
            self.guessed = None
        self._rtp_remote = remote
        self.remote = rtcp_remote
        return moved

    @property
    def sdp_address(self) -> Address | None:
        """The RTP address the last negotiation named."""
        return self._rtp_remote

    def rtp_latched(self, source: Address, moved: bool) -> None:
        """
        The peer's RTP source latched (``moved``: away from an earlier latch, a
        NAT rebinding). RTCP muxed on the RTP port comes from there too, so the
        reports go there; otherwise a moved RTP source means a moved RTCP
        source, learnt again from the peer's next report. Until the peer's
        RTCP arrives, a source that is not the SDP's address (a NAT) gives the
        guessed RTCP address.
        """
        if self.remote is not None and self.remote == self._rtp_remote:
            self.latched = source
            return
        if moved:
            self.latched = None
        if self.remote is not None and self._rtp_remote is not None and source != self._rtp_remote:
            # behind a NAT: its RTCP mapping is most likely beside the RTP one, at
            # the SDP's distance between the two ports (usually the next port)
            port = source[1] + self.remote[1] - self._rtp_remote[1]
            self.guessed = (source[0], port) if 0 < port < 65536 else None

    def receive(
        self,
        data: bytes,
        addr: Address,
        muxed: bool,
        srtp: SrtpContext | None,
        wall_time: float,
        monotonic: float,
    ) -> bytes | None:
        """
        The peer's RTCP from ``addr`` (``muxed``: it came on the RTP port):
        SRTCP removed, the session fed, the source latched if it was RTCP.
        Returns the plain compound packet, or None when SRTCP rejected it.
        """
        if srtp is not None:
            try:
                data = srtp.unprotect_rtcp(data)
            except SrtpError:
                return None
        # only RTCP latches: a stray datagram on our RTCP port before the
        # peer's first report would otherwise take its reports away from it
        if self.session.handle(data, wall_time, monotonic) and not muxed and self.latched is None:
            self.latched = addr
        return data

    def send(
        self,
        transport: DatagramSink | None,
        srtp: SrtpContext | None,
        wall_time: float,
        monotonic: float,
        rtp_timestamp: int,
        bye: bool = False,
        extra: bytes = b"",
    ) -> bool:
        """
        Our report (``RtcpSession.build_report``), then ``extra`` (feedback
        such as PLI), SRTCP-protected when ``srtp`` is set, to the latched, the
        guessed or the SDP's address. False when there is nowhere or nothing to send it.
        """
        addr = self.latched or self.guessed or self.remote
        if addr is None or transport is None or transport.is_closing():
            return False
        data = self.session.build_report(wall_time, monotonic, rtp_timestamp, bye=bye) + extra
        if srtp is not None:
            data = srtp.protect_rtcp(data)
        transport.sendto(data, addr)
        return True
