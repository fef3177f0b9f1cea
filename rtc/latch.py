"""
Symmetric RTP's latch (RFC 4961) for one RTP session, strict, and following
the peer's stream through a NAT rebinding. One implementation for RtpLeg's
audio and RtpVideo.

The first packet of the peer's stream fixes where we send (``address``),
until a negotiation moves the SDP's address (``reset``). From then on RTP
from any other address is dropped: a stranger who finds the port can be
neither heard nor take the call's media away. But a NAT in front of the peer
may give its stream a new public port mid-call (a mapping that timed out, a
router restart, a mobile handover) without any new SDP. Such a stream is
still recognisable: it keeps its SSRC (32 random bits that a stranger off the
path cannot know) and goes on from the sequence numbers already received.

So a packet from a new address is a candidate when its SSRC is the latched
stream's and its sequence number is ahead of the highest received by less
than RFC 3550's MAX_DROPOUT (``may_continue``, from the header alone); when
the leg uses SRTP it must also authenticate. ``PROBATION`` such packets in
sequence from the same address move the latch there (``moved``); until then
they are dropped. A stale duplicate path cannot take the latch back either:
its packets are not ahead of the stream. The session's RtcpLink is told of
each latch (``RtcpLink.rtp_latched``).

Sans-I/O: the leg hands in datagrams, addresses and sequence numbers.
"""

from .rtcplink import Address, RtcpLink
from .rtp import RTP_FIXED_HEADER, RTP_HEADER_LENGTH, seq_diff
from .stats import MAX_DROPOUT, MAX_MISORDER, ReceiverStatistics

__all__ = ["PROBATION", "SourceLatch"]

# in-sequence packets from the new address before the latch moves there
PROBATION = 2


class SourceLatch:
    """Where one RTP session's peer really sends from (see the module docstring)."""

    def __init__(self, receiver: ReceiverStatistics, rtcp: RtcpLink) -> None:
        self.address: Address | None = None
        self._receiver = receiver  # the latched stream's SSRC and sequence numbers
        self._rtcp = rtcp
        self._candidate: Address | None = None
        self._last = 0  # the candidate's last sequence number
        self._count = 0

    def latch(self, addr: Address) -> None:
        """The first packet of the peer's stream came from ``addr``."""
        self.address = addr
        self._rtcp.rtp_latched(addr, moved=False)

    def may_continue(self, data: bytes) -> bool:
        """
        From the RTP header alone (before SRTP is checked): whether a datagram
        from an address other than the latched one could be the latched stream
        going on from there.
        """
        receiver = self._receiver
        if receiver.ssrc is None or len(data) < RTP_HEADER_LENGTH:
            return False
        _, _, sequence_number, _, ssrc = RTP_FIXED_HEADER.unpack_from(data)
        ahead = seq_diff(sequence_number, receiver.max_seq)
        return ssrc == receiver.ssrc and 0 < ahead < MAX_DROPOUT

    def moved(self, addr: Address, sequence_number: int) -> bool:
        """
        A packet that ``may_continue`` (and, with SRTP, authenticated) came from
        ``addr``. True when it completes the probation: the latch has moved to
        ``addr`` and the packet is the first one heard from there. False: drop it.
        """
        delta = seq_diff(sequence_number, self._last)
        if addr == self._candidate and 0 < delta <= MAX_MISORDER:
            self._count += 1
        else:
            self._candidate = addr
            self._count = 1
        self._last = sequence_number
        if self._count < PROBATION:
            return False
        self._forget_candidate()
        self.address = addr
        self._rtcp.rtp_latched(addr, moved=True)
        return True

    def reset(self) -> None:
        """A negotiation moved the SDP's address: latch onto the next first packet."""
        self.address = None
        self._forget_candidate()

    def _forget_candidate(self) -> None:
        self._candidate = None
        self._count = 0
