"""Admission of requests outside dialogs: rate limits, the access policy, digest
challenges (UAS) and REGISTER handed to the built-in registrar.

A mixin of `sip.core.UserAgentCore`. Everything it needs is injected into the core:
the clock (through the limiter, digest server and registrar), the directory lookup
(inside the digest server) and the trusted networks (the policy).
"""

from __future__ import annotations

from collections.abc import Callable

from sipmessage import Request

from .access import AccessPolicy, RateLimiter
from .auth_server import DigestServer
from .in_dialog import ALLOW
from .messages import make_response
from .peer import Peer
from .registrar import Registrar
from .transaction_layer import LayerEffect, TransactionKey, TransactionLayer
from .ua_effects import Effect

RATE_LIMITED = frozenset({"INVITE", "REGISTER"})


class Admission:
    layer: TransactionLayer
    digest: DigestServer | None
    registrar: Registrar | None
    policy: AccessPolicy | None
    rate_limiter: RateLimiter | None
    _hex: Callable[[int], str]

    def _run(self, layer_effects: list[LayerEffect]) -> list[Effect]:
        raise NotImplementedError

    @property
    def _server_name(self) -> str:
        raise NotImplementedError

    def _stateful_reply(
        self,
        key: TransactionKey,
        request: Request,
        code: int,
        headers: list[tuple[str, str]] | None = None,
    ) -> list[Effect]:
        response = make_response(request, code, to_tag=self._hex(8), server=self._server_name)
        for name, value in headers or []:
            response.headers.add(name, value)
        return self._run(self.layer.respond(key, response))

    def _rate_limited(
        self, key: TransactionKey, request: Request, source: Peer
    ) -> list[Effect] | None:
        """503 with Retry-After when `source` sends INVITE/REGISTER too fast."""
        if self.rate_limiter is None or request.method not in RATE_LIMITED:
            return None
        wait = self.rate_limiter.allow(source.host)
        if wait is None:
            return None
        retry_after = str(max(1, int(wait + 0.999)))
        return self._stateful_reply(key, request, 503, [("Retry-After", retry_after)])

    def _challenge(self, key: TransactionKey, request: Request, stale: bool) -> list[Effect]:
        assert self.digest is not None
        challenges = [("WWW-Authenticate", value) for value in self.digest.challenges(stale)]
        return self._stateful_reply(key, request, 401, challenges)

    def _admit_invite(
        self, key: TransactionKey, request: Request, source: Peer
    ) -> tuple[list[Effect] | None, str | None]:
        """(rejection, None) or (None, authenticated user or None) for a new INVITE."""
        if self.policy is None or self.policy.is_trusted(source.host):
            return None, None
        if self.digest is None:
            return self._stateful_reply(key, request, 403), None
        result = self.digest.verify(request.headers.getlist("Authorization"), request.method)
        if result.ok:
            return None, result.username
        if result.present and not result.stale:
            return self._stateful_reply(key, request, 403), None
        return self._challenge(key, request, result.stale), None

    def _on_register(self, key: TransactionKey, request: Request, source: Peer) -> list[Effect]:
        if self.registrar is None:
            return self._stateful_reply(key, request, 405, [("Allow", ALLOW)])
        aor = request.to_address.uri.user or ""
        if self.digest is not None:
            result = self.digest.verify(request.headers.getlist("Authorization"), "REGISTER")
            if not result.ok:
                if result.present and not result.stale:
                    return self._stateful_reply(key, request, 403)
                return self._challenge(key, request, result.stale)
            if result.username != aor:
                return self._stateful_reply(key, request, 403)  # one may not register another
        elif self.policy is not None and not self.policy.is_trusted(source.host):
            return self._stateful_reply(key, request, 403)
        outcome = self.registrar.register(request, source)
        return self._stateful_reply(key, request, outcome.code, outcome.headers)
