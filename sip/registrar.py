"""Registrar bindings (RFC 3261 §10.3): address-of-record user -> contacts with expiry.

Sans-I/O: `register()` takes a parsed REGISTER and returns the status and the headers
of the response; the clock is injected. Bindings are keyed by the user part of the
To URI (the gateway's directory works with numbers/users, not domains).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sipmessage import Address, Request

from .peer import Peer

MAX_BINDINGS_PER_AOR = 10
MAX_AORS = 100000


@dataclass(frozen=True)
class Binding:
    aor: str
    contact: str  # the Contact URI, as registered
    expires_at: float
    call_id: str
    cseq: int
    source: Peer  # where the REGISTER came from (the flow to reach a NATed phone)
    q: float = 1.0


@dataclass(frozen=True)
class RegisterOutcome:
    code: int
    headers: list[tuple[str, str]] = field(default_factory=list)


class Registrar:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        min_expires: int = 60,
        max_expires: int = 3600,
        default_expires: int = 3600,
    ) -> None:
        self._clock = clock
        self.min_expires = min_expires
        self.max_expires = max_expires
        self.default_expires = default_expires
        self._bindings: dict[str, dict[str, Binding]] = {}

    # -- queries ---------------------------------------------------------------------

    def bindings(self, aor: str) -> list[Binding]:
        """Live bindings of `aor`, highest q first, then the most recent."""
        now = self._clock()
        table = self._bindings.get(aor, {})
        for contact in [c for c, b in table.items() if b.expires_at <= now]:
            del table[contact]
        if not table:
            self._bindings.pop(aor, None)
        return sorted(table.values(), key=lambda b: (-b.q, -b.expires_at))

    def lookup(self, aor: str) -> list[str]:
        """Contact URIs registered for `aor` (usable as `UserAgent.invite` targets)."""
        return [binding.contact for binding in self.bindings(aor)]

    def remove(self, aor: str) -> None:
        self._bindings.pop(aor, None)

    # -- REGISTER --------------------------------------------------------------------

    def register(self, request: Request, source: Peer) -> RegisterOutcome:
        """Apply a REGISTER (already authenticated by the caller) to the bindings."""
        aor = request.to_address.uri.user or ""
        if not aor:
            return RegisterOutcome(404)
        header_expires = _int(request.headers.get("Expires"))
        values = request.headers.getlist("Contact")
        call_id, cseq = request.call_id, request.cseq.sequence
        if any(value.strip() == "*" for value in values):
            # Remove all bindings: only alone and with Expires: 0 (RFC 3261 §10.3 step 6).
            if len(values) != 1 or header_expires != 0:
                return RegisterOutcome(400)
            self.remove(aor)
            return RegisterOutcome(200)
        contacts: list[tuple[str, int, float]] = []
        for value in values:
            if "<" not in value and "?" in value:
                # A URI with headers must be inside <> (RFC 3261 §20.10; RFC 4475 regbadct).
                return RegisterOutcome(400)
            try:
                addresses = Address.parse_many(value)
            except ValueError:
                return RegisterOutcome(400)
            for address in addresses:
                expires = _int(address.parameters.get("expires"))
                if expires is None:
                    expires = header_expires if header_expires is not None else self.default_expires
                if 0 < expires < self.min_expires:
                    return RegisterOutcome(423, [("Min-Expires", str(self.min_expires))])
                q = _float(address.parameters.get("q"))
                contacts.append((str(address.uri), min(expires, self.max_expires), q))
        now = self._clock()
        table = {b.contact: b for b in self.bindings(aor)}
        for contact, _, _ in contacts:
            old = table.get(contact)
            if old is not None and old.call_id == call_id and old.cseq >= cseq:
                return RegisterOutcome(500)  # out of order (RFC 3261 §10.3 step 7)
        for contact, expires, q in contacts:
            if expires == 0:
                table.pop(contact, None)
            else:
                table[contact] = Binding(aor, contact, now + expires, call_id, cseq, source, q)
        if len(table) > MAX_BINDINGS_PER_AOR:
            return RegisterOutcome(503, [("Retry-After", "60")])
        if table:
            if aor not in self._bindings and len(self._bindings) >= MAX_AORS:
                return RegisterOutcome(503, [("Retry-After", "60")])
            self._bindings[aor] = table
        else:
            self._bindings.pop(aor, None)
        headers = [
            ("Contact", f"<{b.contact}>;expires={max(0, int(b.expires_at - now))}")
            for b in self.bindings(aor)
        ]
        return RegisterOutcome(200, headers)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        return None
    return min(int(value), 2**32 - 1)


def _float(value: str | None) -> float:
    try:
        q = float(value) if value is not None else 1.0
    except ValueError:
        return 1.0
    return q if 0.0 <= q <= 1.0 else 1.0
