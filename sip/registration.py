"""REGISTER client (RFC 3261 §10.2): keep an address-of-record bound at a registrar.

Trunk mode (the gateway registers itself at the PBX) and per-user mode (a web user's
AOR registered with that user's credentials) are the same machine with different AORs.
It answers digest challenges (401/407, once per nonce plus once more on stale=true),
follows 423 Min-Expires, refreshes before the granted expiry, retries failures with
exponential back-off (jittered with injected randomness, Retry-After honoured), and
unregisters (Expires: 0) on stop.

A mixin of `sip.core.UserAgentCore`: timers are ("reg", "<op>", what), outcomes are
`RegistrationUpdate` effects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from sipmessage import URI, Address, CSeq, Request, Response

from .auth import DigestChallenge, DigestClient, credentials_header, pick_challenge
from .dialog import with_tag
from .effects import CancelTimer, StartTimer
from .messages import MAX_FORWARDS, reason_phrase
from .peer import Peer, peer_for_uri
from .transaction_layer import LayerEffect, TransactionKey, TransactionLayer

if TYPE_CHECKING:
    from .ua_effects import Effect

REGISTRATION_TIMER = "reg"
RETRY_MIN = 10.0  # first back-off after a failure, seconds
RETRY_MAX = 1800.0  # back-off cap
MAX_AUTH_ROUNDS = 2  # challenges answered in a row (a second one only when stale)


class RegistrationState(StrEnum):
    REGISTERING = "registering"  # first REGISTER (or a retry) in flight
    REGISTERED = "registered"  # bound; refreshes happen in the background
    FAILED = "failed"  # the last attempt failed; a retry is scheduled
    UNREGISTERED = "unregistered"  # stopped: the binding was removed (or never made)


@dataclass(frozen=True)
class RegistrationUpdate:
    """State change of registration `op`. `code` is the last final status (0 before any;
    408 for no answer, 503 for a transport failure); `expires` the granted seconds when
    registered; `retry_in` the back-off before the next attempt when failed."""

    op: int
    state: RegistrationState
    code: int
    reason: str = ""
    expires: int = 0
    retry_in: float = 0.0


@dataclass(eq=False)
class Registration:
    op: int
    aor: Address  # To, and From without tag
    registrar: URI  # Request-URI
    peer: Peer
    contact_user: str
    expires: int
    call_id: str
    local_tag: str
    digest: DigestClient | None
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    cseq: int = 0
    key: TransactionKey | None = None
    state: RegistrationState = RegistrationState.REGISTERING
    granted: int = 0
    ever_registered: bool = False
    stopping: bool = False
    done: bool = False
    failures: int = 0
    auth_rounds: int = 0
    interval_retried: bool = False
    challenge: tuple[str, DigestChallenge] | None = None  # (header, last challenge)
    sent_expires: int = 0  # the Expires of the REGISTER in flight


def granted_expires(response: Response, contact_uri: str, requested: int) -> int:
    """The expiry the registrar granted our contact: its Contact expires parameter,
    else the Expires header, else what we asked for (RFC 3261 §10.2.4)."""
    ours = URI.parse(contact_uri)
    for value in response.headers.getlist("Contact"):
        try:
            addresses = Address.parse_many(value)
        except ValueError:
            continue
        for address in addresses:
            uri = address.uri
            same = (uri.user, uri.host.lower(), uri.port) == (
                ours.user,
                ours.host.lower(),
                ours.port,
            )
            expires = address.parameters.get("expires")
            if same and expires and expires.strip().isdigit():
                return int(expires)
    header = (response.headers.get("Expires") or "").strip()
    if header.isdigit():
        return int(header)
    return requested


def refresh_delay(granted: int) -> float:
    """When to refresh: well before expiry (half the time for short grants, else a
    minute early), never sooner than 1 s."""
    return max(1.0, max(granted / 2, granted - 60.0)) if granted > 0 else 1.0


def retry_delay(failures: int, sample: int, retry_after: int | None = None) -> float:
    """Back-off after `failures` consecutive failures (1 = first): RETRY_MIN doubling up
    to RETRY_MAX, scaled by 0.5-1.0 from `sample` (random 0-255) so that many clients
    do not retry in step (RFC 5626 §4.5). A Retry-After wins when longer."""
    base = min(RETRY_MAX, RETRY_MIN * 2 ** max(0, failures - 1))
    delay = base * (0.5 + (sample % 256) / 510)
    if retry_after is not None:
        delay = max(delay, float(retry_after))
    return delay


class RegistrationClients:
    """REGISTER client operations of the user agent core."""

    layer: TransactionLayer
    _hex: Callable[[int], str]
    _registrations: dict[int, Registration]
    _registration_txns: dict[TransactionKey, int]
    _next_registration: int

    # -- provided by UserAgentCore ---------------------------------------------------

    def _run(self, layer_effects: list[LayerEffect]) -> list[Effect]:
        raise NotImplementedError

    def _via(self, transport: str) -> str:
        raise NotImplementedError

    def _contact(self, user: str, transport: str) -> str:
        raise NotImplementedError

    @property
    def _server_name(self) -> str:
        raise NotImplementedError

    # -- API -------------------------------------------------------------------------

    def register(
        self,
        aor: str,
        registrar: str,
        credentials: tuple[str, str] | None = None,
        *,
        expires: int = 600,
        contact_user: str | None = None,
        peer: Peer | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, list[Effect]]:
        """Bind `aor` ("sip:1001@pbx.example.com") at `registrar` ("sip:pbx.example.com
        [;transport=tcp]") with our Contact (user part `contact_user`, default the AOR's
        user). Returns the op number for RegistrationUpdate effects. `peer` overrides
        where the REGISTERs go (RFC 3263 resolution done by the caller). Raises
        ValueError for unusable URIs."""
        aor_uri = URI.parse(aor)
        registrar_uri = URI.parse(registrar)
        for uri in (aor_uri, registrar_uri):
            if uri.scheme not in ("sip", "sips") or not uri.host:
                raise ValueError(f"cannot register {aor!r} at {registrar!r}")
        if expires <= 0:
            raise ValueError("expires must be positive")
        op = self._next_registration
        self._next_registration += 1
        reg = Registration(
            op=op,
            aor=Address(aor_uri),
            registrar=registrar_uri,
            peer=peer or peer_for_uri(registrar_uri),
            contact_user=aor_uri.user or "" if contact_user is None else contact_user,
            expires=expires,
            call_id=self._hex(16),
            local_tag=self._hex(8),
            digest=DigestClient(*credentials) if credentials else None,
            extra_headers=list(headers or []),
        )
        self._registrations[op] = reg
        return op, self._send_register(reg)

    def unregister(self, op: int) -> list[Effect]:
        """Stop registration `op`: remove the binding (REGISTER Expires: 0) if one may
        exist; the final RegistrationUpdate says UNREGISTERED."""
        reg = self._registrations.get(op)
        if reg is None or reg.stopping or reg.done:
            return []
        reg.stopping = True
        effects: list[Effect] = [
            CancelTimer((REGISTRATION_TIMER, str(op), "refresh")),
            CancelTimer((REGISTRATION_TIMER, str(op), "retry")),
        ]
        if reg.key is not None:
            return effects  # the answer to the REGISTER in flight decides (see _reg_final)
        if not reg.ever_registered:
            return effects + self._reg_finish(reg, 0, "")
        reg.auth_rounds = 0
        return effects + self._send_register(reg)

    def registration(self, op: int) -> Registration | None:
        return self._registrations.get(op)

    # -- machinery -------------------------------------------------------------------

    def _send_register(self, reg: Registration) -> list[Effect]:
        reg.cseq += 1
        transport = reg.peer.transport
        request = Request("REGISTER", reg.registrar)
        headers = request.headers
        headers.set("Via", self._via(transport))
        headers.set("Max-Forwards", str(MAX_FORWARDS))
        request.from_address = with_tag(reg.aor, reg.local_tag)
        request.to_address = reg.aor
        request.call_id = reg.call_id
        request.cseq = CSeq(reg.cseq, "REGISTER")
        expires = 0 if reg.stopping else reg.expires
        reg.sent_expires = expires
        headers.set("Contact", self._contact(reg.contact_user, transport))
        headers.set("Expires", str(expires))
        if reg.challenge is not None and reg.digest is not None:
            # Answer the last challenge again with a higher nonce count: refreshes
            # usually pass without a new 401 round trip.
            header, challenge = reg.challenge
            credentials = reg.digest.answer(
                challenge, method="REGISTER", uri=str(reg.registrar), cnonce=self._hex(8)
            )
            headers.set(header, credentials_header(credentials))
        headers.set("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY")
        headers.set("User-Agent", self._server_name)
        for name, value in reg.extra_headers:
            headers.add(name, value)
        key, layer_effects = self.layer.send_request(request, reg.peer)
        reg.key = key
        self._registration_txns[key] = reg.op
        return self._run(layer_effects)

    def _update(
        self, reg: Registration, code: int, reason: str = "", retry_in: float = 0.0
    ) -> RegistrationUpdate:
        return RegistrationUpdate(
            reg.op,
            reg.state,
            code,
            reason,
            reg.granted if reg.state is RegistrationState.REGISTERED else 0,
            retry_in,
        )

    def _on_registration_response(self, key: TransactionKey, response: Response) -> list[Effect]:
        op = self._registration_txns.get(key)
        reg = self._registrations.get(op) if op is not None else None
        if reg is None or response.code < 200:
            return []
        self._registration_txns.pop(key, None)
        reg.key = None
        code = response.code
        if code in (401, 407) and reg.digest is not None:
            retry = self._reg_credentials(reg, response)
            if retry:
                return self._send_register(reg)
        reg.auth_rounds = 0
        if code == 423 and not reg.interval_retried and not reg.stopping:
            minimum = (response.headers.get("Min-Expires") or "").strip()
            if minimum.isdigit() and int(minimum) > reg.expires:
                reg.interval_retried = True
                reg.expires = int(minimum)
                return self._send_register(reg)
        if 200 <= code < 300:
            return self._reg_success(reg, response)
        retry_after = (response.headers.get("Retry-After") or "").split(";")[0].strip()
        return self._reg_failure(
            reg, code, response.phrase, int(retry_after) if retry_after.isdigit() else None
        )

    def _reg_credentials(self, reg: Registration, response: Response) -> bool:
        assert reg.digest is not None
        if response.code == 401:
            values, header = response.headers.getlist("WWW-Authenticate"), "Authorization"
        else:
            values = response.headers.getlist("Proxy-Authenticate")
            header = "Proxy-Authorization"
        challenge = pick_challenge(values)
        if challenge is None:
            return False
        if reg.auth_rounds >= 1 and not challenge.stale:
            return False  # the same credentials were refused: wrong password
        if reg.auth_rounds >= MAX_AUTH_ROUNDS:
            return False
        reg.auth_rounds += 1
        reg.challenge = (header, challenge)
        return True

    def _reg_success(self, reg: Registration, response: Response) -> list[Effect]:
        if reg.stopping:
            if reg.sent_expires > 0:
                # Stopped while the binding was being made: remove it now.
                reg.ever_registered = True
                return self._send_register(reg)
            return self._reg_finish(reg, response.code, response.phrase)
        contact = self._contact(reg.contact_user, reg.peer.transport)[1:-1]
        reg.granted = granted_expires(response, contact, reg.expires)
        if reg.granted <= 0:
            return self._reg_failure(reg, 500, "registrar granted no time", None)
        reg.state = RegistrationState.REGISTERED
        reg.ever_registered = True
        reg.failures = 0
        reg.interval_retried = False
        return [
            StartTimer((REGISTRATION_TIMER, str(reg.op), "refresh"), refresh_delay(reg.granted)),
            self._update(reg, response.code, response.phrase),
        ]

    def _reg_failure(
        self, reg: Registration, code: int, reason: str, retry_after: int | None
    ) -> list[Effect]:
        if reg.stopping:
            return self._reg_finish(reg, code, reason)
        reg.failures += 1
        reg.state = RegistrationState.FAILED
        reg.challenge = None
        delay = retry_delay(reg.failures, int(self._hex(1), 16), retry_after)
        return [
            StartTimer((REGISTRATION_TIMER, str(reg.op), "retry"), delay),
            self._update(reg, code, reason, delay),
        ]

    def _reg_finish(self, reg: Registration, code: int, reason: str) -> list[Effect]:
        reg.done = True
        reg.state = RegistrationState.UNREGISTERED
        self._registrations.pop(reg.op, None)
        return [self._update(reg, code, reason)]

    def _on_registration_failed(self, key: TransactionKey, timeout: bool) -> list[Effect]:
        op = self._registration_txns.pop(key, None)
        reg = self._registrations.get(op) if op is not None else None
        if reg is None:
            return []
        reg.key = None
        code = 408 if timeout else 503
        return self._reg_failure(reg, code, reason_phrase(code), None)

    def _registration_timer(self, op_text: str, what: str) -> list[Effect]:
        reg = self._registrations.get(int(op_text)) if op_text.isdigit() else None
        if reg is None or reg.stopping or reg.key is not None:
            return []
        if what == "retry":
            reg.state = RegistrationState.REGISTERING
            reg.auth_rounds = 0
            reg.challenge = None
            effects: list[Effect] = [self._update(reg, 0)]
            return effects + self._send_register(reg)
        if what == "refresh":
            reg.auth_rounds = 0
            return self._send_register(reg)  # keeps the nonce: answers the next challenge
        return []
