"""Effects of the user agent core beyond sending and timers: what its owner must know or do.

`UserAgentCore` returns these mixed with `Transmit`/`StartTimer`/`CancelTimer`; the
runner performs them strictly in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import events
from .effects import CancelTimer, StartTimer, Transmit
from .invite_session import IncomingCall
from .registration import RegistrationUpdate


@dataclass(frozen=True)
class SessionUpdate:
    session_id: str
    event: events.SessionEvent


@dataclass(frozen=True)
class InviteReceived:
    call: IncomingCall


@dataclass(frozen=True)
class SessionForgotten:
    """The core dropped all state of a session; its owner may drop its handle too."""

    session_id: str


@dataclass(frozen=True)
class OfferReceived:
    """A re-INVITE or UPDATE carried an SDP offer and the owner asked to answer offers
    itself (`UserAgentCore.delegate_offers`): call `answer_offer(session_id, sdp)`
    (None rejects it with 488) before anything else happens in this session."""

    session_id: str
    sdp: bytes


@dataclass(frozen=True)
class OfferWanted:
    """A re-INVITE came without SDP (late offer, RFC 3261 §14.2) and the owner answers
    offers itself (`delegate_offers`): call `answer_offer(session_id, offer)` with an offer
    of what the session should be now (None rejects the re-INVITE with 488). The offer
    goes in our 2xx; the peer's answer arrives in the ACK as a RemoteAnswer event."""

    session_id: str


@dataclass(frozen=True)
class ReinviteDone:
    """Our re-INVITE number `op` of the session finished.

    `code` is the final status (2xx: answered and ACKed, `sdp` is the answer; else the
    failure: 408 for no answer, 491 when glare retries gave up).
    """

    session_id: str
    op: int
    code: int
    sdp: bytes | None


@dataclass(frozen=True)
class MessageDone:
    """Our in-dialog MESSAGE number `op` got its final status `code` (408: no answer,
    503: transport failure, 481: the session had ended)."""

    session_id: str
    op: int
    code: int


@dataclass(frozen=True)
class ReferProgress:
    """Progress of our REFER number `op`: a NOTIFY sipfrag status (100, 180, 200, 503...)
    or the REFER's own failure (405, 501, 603, 408...). `final` is True for the last one."""

    session_id: str
    op: int
    code: int
    final: bool


@dataclass(frozen=True)
class ResolveTargets:
    """Resolve these URIs (RFC 3263, in order, concatenating the targets) and hand the
    (uri, peer) list to `UserAgentCore.targets_resolved(session_id, ...)`."""

    session_id: str
    uris: tuple[str, ...]


@dataclass(frozen=True)
class OptionsResult:
    """Outcome of an out-of-dialog OPTIONS (qualify) number `op`: the peer's final
    `code` when `responded`, else 408 (no answer) or 503 (transport failure)."""

    op: int
    code: int
    responded: bool

    @property
    def reachable(self) -> bool:
        """The peer is up: it answered, and not with 503 Service Unavailable."""
        return self.responded and self.code != 503


Effect = (
    Transmit
    | StartTimer
    | CancelTimer
    | SessionUpdate
    | InviteReceived
    | SessionForgotten
    | OfferReceived
    | OfferWanted
    | ReinviteDone
    | MessageDone
    | ReferProgress
    | OptionsResult
    | RegistrationUpdate
    | ResolveTargets
)
