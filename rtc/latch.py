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

A negotiation that moves the media (a re-INVITE from a media relay to the
phone itself, from a music-on-hold server back to the phone, early media
from one source and the answer from another) leaves packets of the old
source in flight, and the new source has its own SSRC. The first packet
after the reset, a straggler of the old source, would latch, and the new
stream, a stranger with another SSRC, would be dropped for the rest of the
call: audio dead both ways. So after a negotiation two more moves are
allowed, each after ``TAKEOVER`` packets in sequence from one address:

- to the address the SDP names, from a latch elsewhere: where the signalling
  says the peer is (a packet spoofed from there would only send our media
  where the SDP already does);
- away from the address latched before the negotiation (the stale source) by
  any stream, while that latch is tentative (its first SETTLE packets) and
  the stale source sends nothing meanwhile: the new source behind a NAT.

Sans-I/O: the leg hands in datagrams, addresses and sequence numbers.
"""

from .rtcplink import Address, RtcpLink
from .rtp import RTP_FIXED_HEADER, RTP_HEADER_LENGTH, seq_diff
from .stats import MAX_DROPOUT, MAX_MISORDER, ReceiverStatistics

__all__ = ["PROBATION", "SETTLE", "TAKEOVER", "SourceLatch"]

# in-sequence packets from the new address before the latch moves there
PROBATION = 2
# packets of a latch onto the stale source (see the module docstring) before
# it is settled: 200 ms of a 20 ms stream
SETTLE = 10
# in-sequence packets of another stream before it takes the latch over
TAKEOVER = PROBATION + 1


class SourceLatch:
    """Where one RTP session's peer really sends from (see the module docstring)."""

    def __init__(self, receiver: ReceiverStatistics, rtcp: RtcpLink) -> None:
        self.address: Address | None = None
        self._receiver = receiver  # the latched stream's SSRC and sequence numbers
        self._rtcp = rtcp
        self._candidate: Address | None = None
        self._last = 0  # the candidate's last sequence number
        self._count = 0
        # the address latched before the last negotiation moved the SDP's
        self._stale: Address | None = None
        # while a latch onto the stale source is tentative: the latched
        # stream's packet count at which it settles
        self._settles_at: int | None = None
        self._heard = 0  # the latched stream's packet count when the candidate began
        self._continues = False  # may_continue's packet goes on from the latched stream

    def latch(self, addr: Address) -> None:
        """The first packet of the peer's stream came from ``addr``."""
        self.address = addr
        if addr == self._stale:
            self._settles_at = self._receiver.total_packets_received + SETTLE
        self._rtcp.rtp_latched(addr, moved=False)

    def _tentative(self) -> bool:
        settles_at = self._settles_at
        if settles_at is None:
            return False
        if self._receiver.total_packets_received >= settles_at:
            self._settles_at = None
            return False
        return True

    def may_continue(self, data: bytes) -> bool:
        """
        From the RTP header alone (before SRTP is checked): whether a datagram
        from an address other than the latched one could be the latched stream
        going on from there, or, while the latch is tentative, another stream
        that may take it over.
        """
        receiver = self._receiver
        if len(data) < RTP_HEADER_LENGTH:
            return False
        _, _, sequence_number, _, ssrc = RTP_FIXED_HEADER.unpack_from(data)
        ahead = seq_diff(sequence_number, receiver.max_seq)
        self._continues = (
            receiver.ssrc is not None and ssrc == receiver.ssrc and 0 < ahead < MAX_DROPOUT
        )
        return self._continues or self._tentative() or self._off_sdp()

    def _off_sdp(self) -> bool:
        sdp_address = self._rtcp.sdp_address
        return sdp_address is not None and self.address != sdp_address

    def moved(self, addr: Address, sequence_number: int) -> bool:
        """
        A packet that ``may_continue`` (and, with SRTP, authenticated) came from
        ``addr``. True when it completes the probation: the latch has moved to
        ``addr`` and the packet is the first one heard from there. False: drop it.
        """
        delta = seq_diff(sequence_number, self._last)
        heard = self._receiver.total_packets_received
        if addr == self._candidate and 0 < delta <= MAX_MISORDER:
            self._count += 1
        else:
            self._candidate = addr
            self._count = 1
            self._heard = heard
        self._last = sequence_number
        if not self._continues:
            # another stream (see the module docstring): to the SDP's address,
            # or away from a tentative latch onto the stale source that has
            # stopped sending meanwhile
            to_sdp = addr == self._rtcp.sdp_address and self._off_sdp()
            if not to_sdp and (not self._tentative() or heard != self._heard):
                self._forget_candidate()
                return False
            if self._count < TAKEOVER:
                return False
        elif self._count < PROBATION:
            return False
        self._forget_candidate()
        self._settles_at = None
        self.address = addr
        self._rtcp.rtp_latched(addr, moved=True)
        return True

    def reset(self) -> None:
        """A negotiation moved the SDP's address: latch onto the next first packet."""
        if self.address is not None:
            self._stale = self.address
        self.address = None
        self._settles_at = None
        self._forget_candidate()

    def _forget_candidate(self) -> None:
        self._candidate = None
        self._count = 0
