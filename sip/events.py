"""Events delivered to the gateway for one INVITE session (see contracts.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provisional:
    """UAC: 101-199 received (180 Ringing, 183 Session Progress with early media...)."""

    code: int
    reason: str
    sdp: bytes | None


@dataclass(frozen=True)
class Answered:
    """UAC: 2xx received; the dialog has already sent the ACK."""

    sdp: bytes | None


@dataclass(frozen=True)
class Rejected:
    """UAC: final non-2xx (after any digest retry), 408 on Timer B, 503 on transport error."""

    code: int
    reason: str


@dataclass(frozen=True)
class Confirmed:
    """UAS: the ACK for our 2xx arrived.

    `sdp` is the answer the ACK carried when the INVITE had no offer (late offer: our
    2xx held the offer); None otherwise.
    """

    sdp: bytes | None = None


@dataclass(frozen=True)
class Cancelled:
    """UAS: CANCEL before our final answer; 200 to the CANCEL and 487 already sent."""


@dataclass(frozen=True)
class Terminated:
    """The session ended: "bye" (remote BYE, 200 sent), "timeout" (no ACK for our 2xx,
    a BYE or re-INVITE got no answer), "transport", or "gone" (the peer answered an
    in-dialog request with 481: the dialog no longer exists there, RFC 5057)."""

    reason: str


@dataclass(frozen=True)
class InfoReceived:
    """An in-dialog INFO (RFC 6086) arrived and was answered 200."""

    content_type: str
    body: bytes


@dataclass(frozen=True)
class MessageReceived:
    """An in-dialog MESSAGE (RFC 3428) arrived and was answered 200.

    When the owner asked for deferred answers (`UserAgentCore.defer_messages`), it was
    not answered yet: `op` (> 0) is what to pass to `respond_message`.
    """

    content_type: str
    body: bytes
    op: int = 0


@dataclass(frozen=True)
class Referred:
    """An in-dialog REFER (RFC 3515) arrived and was answered 202 Accepted.

    `target` is the Refer-To URI without its header part; `replaces` the value of an
    embedded Replaces header (RFC 3891: "call-id;to-tag=..;from-tag=..") or None.
    The UA already sent NOTIFY "100 Trying"; report progress with notify_refer().
    """

    target: str
    replaces: str | None


@dataclass(frozen=True)
class RemoteAnswer:
    """The SDP answer carried by the ACK of an offer-less (late offer) re-INVITE: our
    2xx carried the offer (the owner's, see OfferWanted, else our current SDP); this
    is the peer's answer to it."""

    sdp: bytes


SessionEvent = (
    Provisional
    | Answered
    | Rejected
    | Confirmed
    | Cancelled
    | Terminated
    | InfoReceived
    | MessageReceived
    | Referred
    | RemoteAnswer
)
