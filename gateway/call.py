"""Pure call logic: client-visible states, disconnect reasons and their SIP origins.

No I/O here; the core feeds events in and acts on what comes out.
"""

from __future__ import annotations

import enum


class CallState(enum.StrEnum):
    """Client-visible call states (json-v1 §5). OFFERED/DIALING never go on the wire."""

    DIALING = "dialing"
    OFFERED = "offered"
    RINGING = "ringing"
    ACTIVE = "active"
    HOLDING = "holding"
    HELD = "held"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class Reason(enum.StrEnum):
    """Disconnect and failure reasons (json-v1 §6)."""

    SUCCESS = "success"
    DIAL_STRING = "dialString"
    PERMISSION = "permission"
    CONGESTION = "congestion"
    EQUIPMENT = "equipment"
    BUSY = "busy"
    REDIRECTED = "redirected"
    NOT_RESPONDING = "notResponding"
    NOT_SELECTED = "notSelected"
    REJECTED = "rejected"
    USER_TERMINATED = "userTerminated"
    MEDIA = "media"
    ERROR = "error"

    @classmethod
    def from_wire(cls, value: object) -> Reason:
        """Unknown reasons map to `error` (json-v1 §6)."""
        if isinstance(value, str) and value in cls._value2member_map_:
            return cls(value)
        return cls.ERROR


_SIP_REASONS: dict[int, Reason] = {
    401: Reason.PERMISSION,
    403: Reason.PERMISSION,
    404: Reason.DIAL_STRING,
    407: Reason.PERMISSION,
    408: Reason.NOT_RESPONDING,
    415: Reason.MEDIA,
    484: Reason.DIAL_STRING,
    486: Reason.BUSY,
    488: Reason.MEDIA,
    500: Reason.EQUIPMENT,
    502: Reason.EQUIPMENT,
    503: Reason.CONGESTION,
    504: Reason.EQUIPMENT,
    600: Reason.BUSY,
    603: Reason.REJECTED,
    604: Reason.DIAL_STRING,
    606: Reason.MEDIA,
}


def reason_from_sip(code: int, alerted: bool) -> Reason:
    """Map a final SIP failure response to a client reason.

    480 means "no resources" before the far end alerted and "nobody answered"
    after it did, so the caller's experience decides the reason.
    """
    if code == 480:
        return Reason.NOT_RESPONDING if alerted else Reason.CONGESTION
    if 300 <= code < 400:
        return Reason.REDIRECTED
    return _SIP_REASONS.get(code, Reason.ERROR)


def sip_for_reason(reason: Reason) -> tuple[int, str]:
    """The SIP final response that tells a caller why a web-side call failed."""
    return {
        Reason.BUSY: (486, "Busy Here"),
        Reason.REJECTED: (603, "Decline"),
        Reason.NOT_RESPONDING: (480, "Temporarily Unavailable"),
        Reason.DIAL_STRING: (404, "Not Found"),
        Reason.PERMISSION: (403, "Forbidden"),
        Reason.CONGESTION: (503, "Service Unavailable"),
        Reason.MEDIA: (488, "Not Acceptable Here"),
        Reason.USER_TERMINATED: (480, "Temporarily Unavailable"),
    }.get(reason, (500, "Server Internal Error"))


# Which client commands each state admits; anything else is answered with the
# unchanged state and reason `error` (json-v1 §9).
_ALLOWED: dict[CallState, frozenset[str]] = {
    CallState.DIALING: frozenset({"terminate"}),
    CallState.OFFERED: frozenset({"accept", "answer", "terminate"}),
    CallState.RINGING: frozenset({"accept", "answer", "terminate"}),
    CallState.ACTIVE: frozenset({"terminate", "hold", "transfer", "renegotiate"}),
    CallState.HOLDING: frozenset({"terminate", "hold", "transfer", "renegotiate"}),
    CallState.HELD: frozenset({"terminate", "retrieve", "transfer", "renegotiate"}),
    # Only while a failed call's tone plays (json-v1 §5); a hang-up ends the tone.
    CallState.TERMINATING: frozenset({"terminate"}),
    CallState.TERMINATED: frozenset(),
}


def allows(state: CallState, action: str) -> bool:
    return action in _ALLOWED[state]
