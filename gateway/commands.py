"""The vocabulary every front end speaks with the call core.

Front ends translate their wire protocol into these commands and translate the
events back. Nothing here knows about JSON, WebSockets or SIP.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.call import CallState, Reason


@dataclass(frozen=True)
class Party:
    dial_string: str
    display_name: str = ""


# -- commands: front end -> core ------------------------------------------------


@dataclass(frozen=True)
class Dial:
    call_id: str
    remote: Party
    display_name: str = ""
    # X- headers for the SIP INVITE (only the configured names pass).
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Accept:
    call_id: str


@dataclass(frozen=True)
class Answer:
    call_id: str


@dataclass(frozen=True)
class Terminate:
    call_id: str
    reason: Reason = Reason.USER_TERMINATED


@dataclass(frozen=True)
class Hold:
    call_id: str


@dataclass(frozen=True)
class Retrieve:
    call_id: str


@dataclass(frozen=True)
class Transfer:
    """Attended (`other_call_id`: the client's other call) or blind (`target`)."""

    call_id: str
    other_call_id: str | None = None
    target: Party | None = None


@dataclass(frozen=True)
class QueryStatus:
    call_id: str


@dataclass(frozen=True)
class Offer:
    call_id: str
    sdp: str


@dataclass(frozen=True)
class SdpAnswer:
    call_id: str
    sdp: str


@dataclass(frozen=True)
class IceCandidate:
    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


@dataclass(frozen=True)
class Ice:
    call_id: str
    candidates: tuple[IceCandidate, ...] = field(default_factory=tuple)


Command = (
    Dial
    | Accept
    | Answer
    | Terminate
    | Hold
    | Retrieve
    | Transfer
    | QueryStatus
    | Offer
    | SdpAnswer
    | Ice
)


# -- events: core -> front end ----------------------------------------------------


@dataclass(frozen=True)
class CallOffered:
    """An incoming call offered to this client (it has no state yet)."""

    call_id: str
    remote: Party
    local: Party
    # X- headers of the caller's INVITE (or web caller) that are configured to pass.
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CallStatus:
    call_id: str
    state: CallState
    reason: Reason | None = None
    remote: Party | None = None


@dataclass(frozen=True)
class MediaOffer:
    call_id: str
    sdp: str


@dataclass(frozen=True)
class MediaAnswer:
    call_id: str
    sdp: str


@dataclass(frozen=True)
class RegistrationEnded:
    reason: Reason


@dataclass(frozen=True)
class CallMessage:
    """An instant message (SIP MESSAGE, RFC 3428) the far party sent inside the call;
    body and Content-Type as received (the SIP layer bounds the size). A front end whose
    protocol has no message vocabulary drops it."""

    call_id: str
    content_type: str
    body: bytes


ClientEvent = (
    CallOffered | CallStatus | MediaOffer | MediaAnswer | RegistrationEnded | CallMessage
)
