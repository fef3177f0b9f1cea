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
    """UAS: the ACK for our 2xx arrived."""


@dataclass(frozen=True)
class Cancelled:
    """UAS: CANCEL before our final answer; 200 to the CANCEL and 487 already sent."""


@dataclass(frozen=True)
class Terminated:
    """The session ended: "bye" (remote BYE, 200 sent), "timeout" or "transport"."""

    reason: str


SessionEvent = Provisional | Answered | Rejected | Confirmed | Cancelled | Terminated
