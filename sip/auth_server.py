"""Digest authentication as UAS (RFC 3261 §22, RFC 7616, RFC 8760): challenges and checks.

Nonces are self-validating: "<issued>.<random>.<mac>" where mac is an HMAC-SHA-256 of
the first two parts under a key from injected randomness, so no state is needed to
recognise our own nonces; an expired one is answered with stale=true. Nonce counts
are tracked per nonce (bounded) so a replayed response is refused. The clock is
injected; nothing here reads time or randomness itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .auth import AuthError, compute_ha1, parse_auth_header, response_from_ha1

# Challenged (and accepted) algorithms, one WWW-Authenticate each, preferred first
# (RFC 8760). The default is MD5 alone: libre-based phones (baresip 1.0) fail the whole
# request when any challenge names an algorithm they lack, even next to an MD5 one.
# Configure ("SHA-256", "MD5") or ("SHA-256",) when every phone supports SHA-256.
ALGORITHMS = ("MD5",)
BOTH_ALGORITHMS = ("SHA-256", "MD5")
MAX_TRACKED_NONCES = 10000


@dataclass(frozen=True)
class Secret:
    """A directory entry for digest: the password, or HA1 values per algorithm.

    HA1 = H(username:realm:password) with H = MD5 or SHA-256, in lower-case hex.
    """

    password: str | None = None
    ha1_md5: str | None = None
    ha1_sha256: str | None = None

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        base = algorithm.upper().removesuffix("-SESS")
        if self.password is not None:
            return compute_ha1(username, realm, self.password, base)
        return self.ha1_sha256 if base == "SHA-256" else self.ha1_md5


# username -> password (str), a Secret, or None for an unknown user.
CredentialLookup = Callable[[str], "str | Secret | None"]


@dataclass(frozen=True)
class AuthResult:
    """Outcome of checking a request's credentials.

    `username` is set when they are valid; `stale` asks for a fresh challenge with
    stale=true (RFC 7616 §3.3: right password, expired nonce); otherwise missing or
    wrong credentials.
    """

    username: str | None = None
    stale: bool = False
    present: bool = False  # some credentials for our realm were sent

    @property
    def ok(self) -> bool:
        return self.username is not None


class DigestServer:
    def __init__(
        self,
        realm: str,
        lookup: CredentialLookup,
        *,
        key: bytes,
        clock: Callable[[], float],
        random_hex: Callable[[int], str],
        algorithms: tuple[str, ...] = ALGORITHMS,
        nonce_ttl: float = 300.0,
    ) -> None:
        if not key:
            raise ValueError("the nonce key must not be empty")
        for algorithm in algorithms:
            if algorithm.upper() not in ("MD5", "SHA-256"):
                raise ValueError(f"unsupported digest algorithm {algorithm}")
        self.realm = realm
        self.lookup = lookup
        self.algorithms = algorithms
        self.nonce_ttl = nonce_ttl
        self._key = key
        self._clock = clock
        self._hex = random_hex
        self._counts: OrderedDict[str, int] = OrderedDict()  # nonce -> highest nc seen

    # -- nonces ----------------------------------------------------------------------

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def new_nonce(self) -> str:
        text = f"{int(self._clock() * 1000):x}.{self._hex(12)}"
        return f"{text}.{self._mac(text)}"

    def _nonce_age(self, nonce: str) -> float | None:
        """Seconds since we issued `nonce`; None when it is not one of ours."""
        issued, _, rest = nonce.partition(".")
        random_part, _, mac = rest.partition(".")
        if not issued or not random_part or not mac:
            return None
        if not hmac.compare_digest(mac, self._mac(f"{issued}.{random_part}")):
            return None
        try:
            return self._clock() - int(issued, 16) / 1000
        except ValueError:
            return None

    # -- challenges ------------------------------------------------------------------

    def challenges(self, stale: bool = False) -> list[str]:
        """WWW-Authenticate (or Proxy-Authenticate) values, one per algorithm."""
        nonce = self.new_nonce()
        values = []
        for algorithm in self.algorithms:
            value = (
                f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'
            )
            if stale:
                value += ", stale=true"
            values.append(value)
        return values

    # -- verification ----------------------------------------------------------------

    def verify(self, values: list[str], method: str) -> AuthResult:
        """Check Authorization values of a request for `method` against the directory."""
        present = False
        stale = False
        for value in values:
            try:
                scheme, params = parse_auth_header(value)
            except AuthError:
                continue
            if scheme.lower() != "digest" or params.get("realm") != self.realm:
                continue
            present = True
            result = self._verify_one(params, method)
            if result.ok:
                return result
            stale = stale or result.stale
        return AuthResult(stale=stale, present=present)

    def _verify_one(self, params: dict[str, str], method: str) -> AuthResult:
        try:
            username = params["username"]
            nonce = params["nonce"]
            uri = params["uri"]
            response = params["response"].lower()
        except KeyError:
            return AuthResult()
        algorithm = params.get("algorithm", "MD5")
        if algorithm.upper() not in (a.upper() for a in self.algorithms):
            return AuthResult()
        qop = params.get("qop")
        nc_text = params.get("nc", "")
        cnonce = params.get("cnonce", "")
        if qop != "auth" or not cnonce:
            return AuthResult()  # we always challenge with qop=auth (RFC 7616 §3.3)
        try:
            nc = int(nc_text, 16)
        except ValueError:
            return AuthResult()
        age = self._nonce_age(nonce)
        if age is None or age < -1.0:
            return AuthResult()
        found = self.lookup(username)
        if found is None:
            return AuthResult()
        secret = Secret(password=found) if isinstance(found, str) else found
        ha1 = secret.ha1(username, self.realm, algorithm)
        if ha1 is None:
            return AuthResult()
        try:
            expected = response_from_ha1(
                ha1=ha1,
                nonce=nonce,
                method=method,
                uri=uri,
                algorithm=algorithm,
                qop=qop,
                nc=nc_text,
                cnonce=cnonce,
            )
        except AuthError:
            return AuthResult()
        if not hmac.compare_digest(expected, response):
            return AuthResult()
        if age > self.nonce_ttl:
            return AuthResult(stale=True)
        if nc <= self._counts.get(nonce, 0):
            return AuthResult()  # replayed (or reordered) nonce count
        self._remember(nonce, nc)
        return AuthResult(username=username, present=True)

    def _remember(self, nonce: str, nc: int) -> None:
        self._counts[nonce] = nc
        self._counts.move_to_end(nonce)
        while len(self._counts) > MAX_TRACKED_NONCES:
            self._counts.popitem(last=False)
