"""Session timers (RFC 4028) for confirmed INVITE sessions, both sides.

UAC: our INVITEs offer `Supported: timer`, `Session-Expires` and `Min-SE`; a 422 is
retried once with the peer's Min-SE. The 2xx decides the interval and the refresher.
UAS: the INVITE's Session-Expires (or ours, when the caller supports timers) is put in
the 2xx with the refresher: the caller when it supports timers, else us.

The refresher sends a refresh at half the interval: UPDATE without a body when the
peer's Allow lists UPDATE, else a re-INVITE with our current SDP (internal: its result
is not reported to the owner). Every 2xx to a re-INVITE/UPDATE in either direction
restarts the timer. The other side ends the session with BYE and Terminated("timeout")
when no refresh came by interval - min(32, interval/3) seconds (RFC 4028 §10).

Refresher parameters are relative to the transaction carrying them ("uac" = whoever
sent that request). A mixin of `sip.core.UserAgentCore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sipmessage import Request, Response

from .effects import CancelTimer, StartTimer
from .invite_session import IncomingSession, OutgoingSession, Session, SessionTimer
from .ua_effects import Effect

if TYPE_CHECKING:
    from .core import CoreConfig

TIMER = "timer"
ST_TIMER = "st"


def parse_session_expires(value: str | None) -> tuple[int, str | None] | None:
    """Session-Expires "1800;refresher=uac" -> (1800, "uac"); None when absent/bad."""
    if not value:
        return None
    head, *params = value.split(";")
    head = head.strip()
    if not head.isdigit():
        return None
    refresher = None
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return int(head), refresher


def parse_min_se(value: str | None) -> int | None:
    if not value:
        return None
    head = value.split(";")[0].strip()
    return int(head) if head.isdigit() else None


def supports_timer(message: Request | Response) -> bool:
    tags = [t.lower() for t in (*message.supported, *message.require)]
    return TIMER in tags


def allowed_methods(message: Request | Response) -> frozenset[str]:
    methods: set[str] = set()
    for value in message.headers.getlist("Allow"):
        methods.update(m.strip().upper() for m in value.split(",") if m.strip())
    return frozenset(methods)


class SessionTimers:
    config: CoreConfig
    sessions: dict[str, Session]

    if TYPE_CHECKING:  # provided by sip.in_dialog.InDialogOperations

        def _hang_up(self, s: Session, reason: str) -> list[Effect]: ...

        def _refresh_session(self, s: Session) -> list[Effect]: ...

    # -- UAC: the initial INVITE ---------------------------------------------------------

    def _st_invite_headers(self, s: OutgoingSession) -> list[tuple[str, str]]:
        if not s.session_expires:
            return []
        return [("Session-Expires", str(s.session_expires)), ("Min-SE", str(s.min_se))]

    def _st_retry_422(self, s: OutgoingSession, response: Response) -> bool:
        """422 Session Interval Too Small: raise our interval to the peer's Min-SE."""
        wanted = parse_min_se(response.headers.get("Min-SE"))
        if not s.session_expires or wanted is None or wanted <= s.session_expires:
            return False
        s.session_expires = wanted
        s.min_se = max(s.min_se, wanted)
        return True

    def _st_uac_answered(self, s: OutgoingSession, response: Response) -> list[Effect]:
        u = s.usage
        u.peer_allow = allowed_methods(response)
        u.peer_timer = supports_timer(response)
        parsed = parse_session_expires(response.headers.get("Session-Expires"))
        if not s.session_expires or parsed is None:
            return []
        interval, refresher = parsed
        # RFC 4028 §7.2: no refresher in the 2xx means the UAC (we) refreshes.
        u.timer = SessionTimer(max(interval, 1), refresher != "uas")
        return self._st_restart(s)

    # -- UAS: the initial INVITE ---------------------------------------------------------

    def _st_too_small(self, request: Request) -> int | None:
        """Our Min-SE when the request's Session-Expires is below it (reply 422)."""
        if not self.config.session_expires:
            return None
        parsed = parse_session_expires(request.headers.get("Session-Expires"))
        if parsed is not None and parsed[0] < self.config.min_se:
            return self.config.min_se
        return None

    def _st_uas_answer(self, s: IncomingSession) -> list[tuple[str, str]]:
        """Negotiate the timer for our 2xx to the initial INVITE; its extra headers."""
        invite = s.invite
        u = s.usage
        u.peer_allow = allowed_methods(invite)
        u.peer_timer = supports_timer(invite)
        if not self.config.session_expires:
            return []
        parsed = parse_session_expires(invite.headers.get("Session-Expires"))
        if parsed is not None:
            interval, refresher = parsed
            ours = self.config.session_expires
            if ours < interval:
                # We may shorten it, not below the request's Min-SE (RFC 4028 §9).
                floor = parse_min_se(invite.headers.get("Min-SE")) or 90
                interval = max(ours, floor)
            if refresher is None:
                refresher = "uac" if u.peer_timer else "uas"
        elif u.peer_timer:
            interval, refresher = self.config.session_expires, "uac"
        else:
            return []
        if not u.peer_timer:
            refresher = "uas"  # a caller without timer support cannot refresh
        u.timer = SessionTimer(interval, refresher == "uas")
        headers = [("Session-Expires", f"{interval};refresher={refresher}")]
        if u.peer_timer:
            headers.append(("Require", TIMER))
        return headers

    # -- refreshes in the dialog -------------------------------------------------------

    def _st_request_headers(self, s: Session) -> list[tuple[str, str]]:
        """Session-Expires for our re-INVITE/UPDATE (every one of them is a refresh)."""
        timer = s.usage.timer
        if timer is None:
            return []
        refresher = "uac" if timer.we_refresh else "uas"
        return [
            ("Session-Expires", f"{timer.interval};refresher={refresher}"),
            ("Supported", TIMER),
        ]

    def _st_answered_ours(self, s: Session, response: Response) -> list[Effect]:
        """A 2xx to our re-INVITE/UPDATE refreshed the session."""
        timer = s.usage.timer
        if timer is None:
            return []
        parsed = parse_session_expires(response.headers.get("Session-Expires"))
        if parsed is not None:
            timer.interval = max(parsed[0], 1)
            timer.we_refresh = parsed[1] != "uas"
        return self._st_restart(s)

    def _st_incoming_refresh(self, s: Session, request: Request) -> list[tuple[str, str]]:
        """We answer a re-INVITE/UPDATE with 2xx: adopt its timer; headers for the 2xx."""
        timer = s.usage.timer
        parsed = parse_session_expires(request.headers.get("Session-Expires"))
        if parsed is not None and self.config.session_expires:
            interval, refresher = parsed
            peer_timer = supports_timer(request)
            if refresher is None:
                refresher = "uac" if peer_timer else "uas"
            if not peer_timer:
                refresher = "uas"
            if timer is None:
                timer = s.usage.timer = SessionTimer(interval, refresher == "uas")
            timer.interval = max(interval, 1)
            timer.we_refresh = refresher == "uas"
        if timer is None:
            return []
        refresher = "uas" if timer.we_refresh else "uac"
        headers = [("Session-Expires", f"{timer.interval};refresher={refresher}")]
        if parsed is not None and supports_timer(request):
            headers.append(("Require", TIMER))
        return headers

    def _st_restart(self, s: Session) -> list[Effect]:
        timer = s.usage.timer
        effects: list[Effect] = [
            CancelTimer((ST_TIMER, s.id, "refresh")),
            CancelTimer((ST_TIMER, s.id, "expire")),
        ]
        if timer is None or s.ended:
            return effects
        if timer.we_refresh:
            effects.append(StartTimer((ST_TIMER, s.id, "refresh"), timer.interval / 2))
        else:
            grace = min(32.0, timer.interval / 3)
            effects.append(StartTimer((ST_TIMER, s.id, "expire"), timer.interval - grace))
        return effects

    def _st_stop(self, s: Session) -> list[Effect]:
        return [CancelTimer((ST_TIMER, s.id, "refresh")), CancelTimer((ST_TIMER, s.id, "expire"))]

    def _st_timer(self, s: Session, what: str) -> list[Effect]:
        if s.ended or s.dialog is None or s.usage.timer is None:
            return []
        if what == "expire":
            return self._hang_up(s, "timeout")
        if what == "refresh":
            return self._refresh_session(s)
        return []
