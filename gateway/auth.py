"""Client authentication at the WebSocket upgrade and the token endpoint (json-v1 §2).

`Authenticator.check_upgrade(path_query, headers, remote_addr)` decides one upgrade
request and returns either an `AuthResult` (who logged in, and how) or an `AuthFailure`
(the HTTP status, headers and text to answer with; no WebSocket). gateway/http.py turns
failures into responses and stores the result on the connection as `connection.auth`.

Methods, by `[auth] mode`:

- none: every upgrade is accepted anonymously (`AuthResult(None, "none")`).
- password: HTTP Basic (RFC 7617) or Digest (RFC 7616, MD5 and SHA-256, qop=auth) in the
  Authorization header, checked against the directory's passwords; or an
  `access_token` issued by this gateway (POST /api/token), since browsers cannot set
  headers on a WebSocket.
- token: a JWT in the `access_token` query parameter. HS256 with `[auth.jwt]
  hs256_secret` (or, without one, the gateway's own random key, i.e. tokens from POST
  /api/token) and RS256 with `[auth.jwt] rs256_public_key`. Each key is used with
  exactly its own algorithm, so an HS256 token "signed" with the RSA public key is
  refused; `none` and every other alg are refused before any key is touched. `exp` is
  required (10 s leeway), `iss` must equal `[auth.jwt] issuer` when one is configured,
  `username` (else `sub`) binds the login to that user, and the JOSE header `nonce` is
  returned for token-refresh takeover. Basic/Digest credentials get 403 in this mode.
- both: either of the above.

Digest nonces are `base64url(time_ms | 8 random bytes | HMAC-SHA256(key, both)[:16])`
with a random per-process key: no server state until a nonce is used. A nonce older than
`NONCE_LIFETIME` gets `stale=true` when the response was otherwise right; `nc` must grow
per nonce (replays are refused). The nc table is bounded; when its oldest entry is
evicted, every nonce at least as old counts as stale from then on, so an evicted nonce
cannot be replayed.

Failures (wrong password, unknown user, bad digest, bad token) are counted per source
address and, for passwords, per user name; 5 failures within 60 s block that key for
30 s, doubling with each further block up to 15 min (`Throttle`); blocked requests get
429 with Retry-After and are not checked. A missing Authorization header (the first
round trip of Basic/Digest) and a stale digest nonce are not failures.

Clock and randomness are injectable (`clock`, `random_bytes`) for tests. Credentials come
from a callable `passwords(username) -> str | StoredCredentials | None`: a plain password,
or what the directory stores (a password and/or HA1 values, see `StoredCredentials`).

Users with only HA1 values stored (HA1 = H(number ":" SIP realm ":" password), the hash
SIP phones use) log in as follows:

- Basic (and POST /api/token with Basic): the typed password is hashed the same way
  (with the stored SHA-256 value if there is one, else MD5) and compared in constant time.
- Digest: the browser hashes H(username ":" [auth] realm ":" password), which is the
  stored HA1 only when the login user name is the number and `[auth] realm` is the SIP
  realm; then the stored value of the algorithm used checks the response. Otherwise the
  login is refused like a wrong password (401, counted by the throttle; the answer does
  not tell that the user exists) and a warning names the user and the reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization

from gateway.config import AuthConfig

__all__ = [
    "DEFAULT_ISSUER",
    "AuthFailure",
    "AuthResult",
    "Authenticator",
    "StoredCredentials",
    "Throttle",
    "TokenGrant",
]

#: `iss` of the tokens the gateway issues when `[auth.jwt] issuer` is not configured.
DEFAULT_ISSUER: Final[str] = "webrtc-gateway"
#: Seconds a Digest nonce is good for; older ones get `stale=true`.
NONCE_LIFETIME: Final[float] = 300.0
#: Most Digest nonces whose `nc` is remembered.
MAX_NONCES: Final[int] = 10000
#: Clock skew allowed on `exp`/`nbf`, seconds.
JWT_LEEWAY: Final[float] = 10.0
#: Longest token, user name, nonce or Authorization header we look at.
MAX_TOKEN_CHARS: Final[int] = 8192
MAX_NAME_CHARS: Final[int] = 256
DIGEST_ALGORITHMS: Final[dict[str, Callable[..., Any]]] = {
    "SHA-256": hashlib.sha256,
    "MD5": hashlib.md5,
}

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredCredentials:
    """What the directory stores for a web login: the password and/or HA1 values.

    `ha1_md5`/`ha1_sha256` (lower-case hex) are H(ha1_username ":" ha1_realm ":"
    password): the user's number and the SIP realm (gateway/config.py `user_ha1`).
    `ha1_realm` None: unknown, so HA1 values cannot check a typed password.
    """

    password: str | None = None
    ha1_md5: str | None = field(default=None, repr=False)
    ha1_sha256: str | None = field(default=None, repr=False)
    ha1_username: str = ""
    ha1_realm: str | None = None

    def ha1(self, algorithm: str) -> str | None:
        """The stored HA1 of `algorithm` ("MD5" | "SHA-256"), or None."""
        return self.ha1_sha256 if algorithm == "SHA-256" else self.ha1_md5


Passwords = Callable[[str], "str | StoredCredentials | None"]


@dataclass(frozen=True, slots=True)
class AuthResult:
    """A successful authentication.

    username: the directory user (Basic/Digest), the token's `username`/`sub` claim, or
        None (mode none, or a token without either: outgoing-only use).
    method: "none" | "basic" | "digest" | "token".
    token_nonce: the JOSE header `nonce` of the token (token refresh), else None.
    claims: the verified token claims (tokens only).
    """

    username: str | None
    method: str
    token_nonce: str | None = None
    claims: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """An HTTP answer instead of a WebSocket: 401, 403 or 429."""

    status: int
    reason: str  # one line, sent as the body and logged
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """The answer of POST /api/token."""

    access_token: str
    expires_in: int
    username: str

    def body(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "expires_in": self.expires_in}


class TokenError(Exception):
    """A token that is refused; str() is the reason."""


# --------------------------------------------------------------------------- throttling


@dataclass(slots=True)
class _Record:
    failures: list[float]
    blocked_until: float = 0.0
    strikes: int = 0  # blocks so far; the next block lasts base * 2**strikes
    last: float = 0.0


class Throttle:
    """Failed attempts per key ("addr 192.0.2.1", "user alice"), with growing blocks.

    `max_failures` failures within `window` seconds block the key for `base_block`
    seconds, then twice as long for each further block, at most `max_block`. A key
    idle for `forget_after` seconds is forgotten; at most `max_keys` keys are kept.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        max_failures: int = 5,
        window: float = 60.0,
        base_block: float = 30.0,
        max_block: float = 900.0,
        forget_after: float = 3600.0,
        max_keys: int = 100_000,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.base_block = base_block
        self.max_block = max_block
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def blocked_for(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may now."""
        record = self._records.get(key)
        if record is None:
            return 0.0
        return max(0.0, record.blocked_until - self.clock())

    def failure(self, key: str) -> None:
        now = self.clock()
        record = self._records.get(key)
        if record is None or now - record.last > self.forget_after:
            record = _Record(failures=[])
            self._records[key] = record
        self._records.move_to_end(key)
        record.last = now
        record.failures = [t for t in record.failures if now - t < self.window]
        record.failures.append(now)
        if len(record.failures) >= self.max_failures:
            block = min(self.base_block * 2**record.strikes, self.max_block)
            record.blocked_until = now + block
            record.strikes += 1
            record.failures.clear()
        self._prune(now)

    def success(self, key: str) -> None:
        self._records.pop(key, None)

    def _prune(self, now: float) -> None:
        while self._records:
            key, record = next(iter(self._records.items()))
            idle = now - record.last > self.forget_after and record.blocked_until <= now
            if not idle and len(self._records) <= self.max_keys:
                break
            del self._records[key]


# --------------------------------------------------------------------------- helpers


def _header(headers: Any, name: str) -> str | None:
    """The one value of a header; None when absent; "" (malformed) when repeated."""
    get_all = getattr(headers, "get_all", None)
    if get_all is not None:
        values = list(get_all(name))
    else:
        value = headers.get(name)
        values = [] if value is None else [value]
    if not values:
        return None
    if len(values) > 1:
        return ""
    return str(values[0])


_TOKEN68_OR_PARAMS = re.compile(
    r"\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s,\"]*)\s*(?:,|$)"
)


def parse_auth_params(text: str) -> dict[str, str] | None:
    """`a=b, c="d"` -> {"a": "b", "c": "d"} (keys lower case); None when malformed."""
    params: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN68_OR_PARAMS.match(text, pos)
        if match is None or match.end() == pos:
            return None
        key = match.group(1).lower()
        value = match.group(2)
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if key in params:
            return None
        params[key] = value
        pos = match.end()
    return params


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    digest = DIGEST_ALGORITHMS[algorithm]
    return str(digest(f"{username}:{realm}:{password}".encode()).hexdigest())


def digest_response(
    algorithm: str,
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str = "auth",
) -> str:
    """RFC 7616 §3.4.1 `response` for qop=auth from HA1."""
    digest = DIGEST_ALGORITHMS[algorithm]
    ha2 = digest(f"{method}:{uri}".encode()).hexdigest()
    return str(digest(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode()).hexdigest())


def _decode_ext_value(value: str) -> str | None:
    """RFC 8187 `UTF-8''%c3%a9` -> str (for Digest `username*`)."""
    charset, sep, rest = value.partition("'")
    _lang, sep2, encoded = rest.partition("'")
    if not (sep and sep2) or charset.lower() != "utf-8":
        return None
    from urllib.parse import unquote

    try:
        return unquote(encoded, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        return None


def _valid_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME_CHARS
        and not any(ord(c) < 32 or ord(c) == 127 for c in value)
    )


# --------------------------------------------------------------------------- authenticator


class Authenticator:
    def __init__(
        self,
        config: AuthConfig,
        passwords: Passwords,
        *,
        clock: Clock = time.time,
        random_bytes: RandomBytes = secrets.token_bytes,
        throttle: Throttle | None = None,
    ) -> None:
        self.mode = config.mode
        self.realm = config.realm
        self.passwords = passwords
        self.clock = clock
        self.random_bytes = random_bytes
        self.throttle = throttle if throttle is not None else Throttle(clock)
        jwt_config = config.jwt
        self.configured_issuer = jwt_config.issuer
        #: `iss` of the tokens we issue.
        self.issuer = jwt_config.issuer or DEFAULT_ISSUER
        self.token_lifetime = jwt_config.token_lifetime
        #: Signs our tokens and checks HS256 tokens: the shared secret, else random.
        self._hs256_key: bytes = (
            jwt_config.hs256_secret.encode()
            if jwt_config.hs256_secret is not None
            else random_bytes(32)
        )
        self._rs256_key: Any = (
            serialization.load_pem_public_key(jwt_config.rs256_public_key_pem)
            if jwt_config.rs256_public_key_pem is not None
            else None
        )
        self._nonce_key = random_bytes(32)
        self._nc_seen: OrderedDict[str, int] = OrderedDict()  # nonce -> highest nc
        self._stale_before_ms = 0  # nonces issued at or before this are stale

    # ------------------------------------------------------------------ entry points

    @property
    def accepts_password(self) -> bool:
        return self.mode in ("password", "both")

    @property
    def accepts_token(self) -> bool:
        return self.mode in ("token", "both")

    def check_upgrade(
        self, path_query: str, headers: Any, remote_addr: str | None
    ) -> AuthResult | AuthFailure:
        """Authenticate a WebSocket upgrade (GET `path_query` with `headers`)."""
        if self.mode == "none":
            return AuthResult(None, "none")
        addr_key = f"addr {remote_addr}"
        blocked = self.throttle.blocked_for(addr_key)
        if blocked > 0:
            return self._too_many(blocked)
        tokens = parse_qs(urlsplit(path_query).query, keep_blank_values=True).get(
            "access_token"
        )
        authorization = _header(headers, "Authorization")
        if tokens is not None:
            if len(tokens) != 1:
                return self._token_failure(addr_key, "more than one access_token")
            try:
                result = self.verify_token(tokens[0], own_only=not self.accepts_token)
            except TokenError as e:
                return self._token_failure(addr_key, str(e))
            self.throttle.success(addr_key)
            return result
        if authorization is None:
            return self._challenge("credentials required")
        if not self.accepts_password:
            return AuthFailure(403, "password authentication is not enabled; use access_token")
        return self.check_password(path_query, "GET", headers, remote_addr)

    def issue_token(
        self, path_query: str, method: str, headers: Any, remote_addr: str | None
    ) -> TokenGrant | AuthFailure:
        """POST /api/token: authenticate with Basic/Digest, then issue a token.

        An optional `nonce` query parameter (1..128 of A-Z a-z 0-9 - _ . ~) is put in
        the JOSE header, for token refresh.
        """
        if self.mode == "token":
            return AuthFailure(403, "password login is not enabled (mode token)")
        nonce: str | None = None
        nonces = parse_qs(urlsplit(path_query).query, keep_blank_values=True).get("nonce")
        if nonces is not None:
            if len(nonces) != 1 or not re.fullmatch(r"[A-Za-z0-9._~-]{1,128}", nonces[0]):
                return AuthFailure(400, "nonce: 1 to 128 of A-Z a-z 0-9 - _ . ~")
            nonce = nonces[0]
        addr_key = f"addr {remote_addr}"
        blocked = self.throttle.blocked_for(addr_key)
        if blocked > 0:
            return self._too_many(blocked)
        if _header(headers, "Authorization") is None:
            return self._challenge("credentials required", bearer=False)
        result = self.check_password(path_query, method, headers, remote_addr)
        if isinstance(result, AuthFailure):
            return result
        assert result.username is not None
        return TokenGrant(self.mint_token(result.username, nonce), self.token_lifetime,
                          result.username)

    # ------------------------------------------------------------------ passwords

    def check_password(
        self, uri: str, method: str, headers: Any, remote_addr: str | None
    ) -> AuthResult | AuthFailure:
        """Basic or Digest in the Authorization header of a `method` request for `uri`."""
        addr_key = f"addr {remote_addr}"
        authorization = _header(headers, "Authorization")
        if not authorization or len(authorization) > MAX_TOKEN_CHARS:
            return self._password_failure(addr_key, None, "malformed Authorization header")
        scheme, _, rest = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return self._check_basic(rest.strip(), addr_key)
        if scheme == "digest":
            return self._check_digest(rest, method, uri, addr_key)
        return self._password_failure(addr_key, None, f"unsupported scheme {scheme[:20]!r}")

    def _credentials(self, username: str) -> StoredCredentials | None:
        found = self.passwords(username)
        if isinstance(found, str):
            return StoredCredentials(password=found) if found else None
        return found

    def _password_ok(self, username: str, password: str) -> bool:
        stored = self._credentials(username)
        if stored is not None and stored.password is None:
            # Only HA1 values: hash the typed password as the SIP phones do.
            for algorithm in ("SHA-256", "MD5"):
                expected_ha1 = stored.ha1(algorithm)
                if expected_ha1 is not None and stored.ha1_realm is not None:
                    ha1 = _ha1(algorithm, stored.ha1_username, stored.ha1_realm, password)
                    return hmac.compare_digest(ha1, expected_ha1) and bool(password)
            return False
        expected = stored.password if stored is not None else None
        # Compare even for unknown users so the answer takes the same time.
        ok = hmac.compare_digest(
            password.encode(), (expected if expected is not None else "\0" * 16).encode()
        )
        return ok and expected is not None

    def _check_basic(self, credentials: str, addr_key: str) -> AuthResult | AuthFailure:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return self._password_failure(addr_key, None, "malformed Basic credentials")
        username, sep, password = decoded.partition(":")
        if not sep or not _valid_name(username):
            return self._password_failure(addr_key, None, "malformed Basic credentials")
        user_key = f"user {username}"
        blocked = self.throttle.blocked_for(user_key)
        if blocked > 0:
            return self._too_many(blocked)
        if not self._password_ok(username, password):
            return self._password_failure(addr_key, user_key, "wrong user name or password")
        self.throttle.success(user_key)
        return AuthResult(username, "basic")

    def _check_digest(
        self, text: str, method: str, request_uri: str, addr_key: str
    ) -> AuthResult | AuthFailure:
        params = parse_auth_params(text)
        if params is None:
            return self._password_failure(addr_key, None, "malformed Digest credentials")
        username = params.get("username")
        if username is None and "username*" in params:
            username = _decode_ext_value(params["username*"])
        if params.get("userhash", "false").lower() != "false":
            return self._password_failure(addr_key, None, "userhash is not supported")
        missing = [k for k in ("realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
                   if k not in params]
        if username is None or not _valid_name(username) or missing:
            return self._password_failure(
                addr_key, None, f"Digest credentials lack {', '.join(missing) or 'username'}"
            )
        algorithm = next(
            (a for a in DIGEST_ALGORITHMS if a.lower() == params.get("algorithm", "MD5").lower()),
            None,
        )
        if algorithm is None:
            return self._password_failure(addr_key, None, "unsupported Digest algorithm")
        if params["realm"] != self.realm:
            return self._password_failure(addr_key, None, "wrong realm")
        if params["qop"] != "auth":
            return self._password_failure(addr_key, None, "qop must be auth")
        if params["uri"] != request_uri:
            return self._password_failure(addr_key, None, "Digest uri does not match")
        if not re.fullmatch(r"[0-9a-fA-F]{8}", params["nc"]):
            return self._password_failure(addr_key, None, "malformed nc")
        if not re.fullmatch(r"[0-9a-fA-F]{1,128}", params["response"]):
            return self._password_failure(addr_key, None, "malformed response")
        nonce = params["nonce"]
        issued_ms = self._nonce_time(nonce)
        if issued_ms is None:
            return self._password_failure(addr_key, None, "not a nonce of ours")
        user_key = f"user {username}"
        blocked = self.throttle.blocked_for(user_key)
        if blocked > 0:
            return self._too_many(blocked)
        stored = self._credentials(username)
        known = stored is not None
        ha1: str | None
        if stored is None or stored.password is not None:
            password = stored.password if stored is not None else None
            ha1 = _ha1(algorithm, username, self.realm, password if password is not None else "")
        elif (username, self.realm) == (stored.ha1_username, stored.ha1_realm):
            # H(username:realm:password) is the stored H(number:SIP realm:password).
            ha1 = stored.ha1(algorithm)
        else:
            ha1 = None
        if ha1 is None:
            assert stored is not None
            logger.warning(
                "Digest %s login as %r refused: only HA1 values are stored for this user, "
                "%s; log in with Basic (or store the password)",
                algorithm,
                username,
                f"and none for {algorithm}"
                if (username, self.realm) == (stored.ha1_username, stored.ha1_realm)
                else f"hashed with number {stored.ha1_username!r} and SIP realm "
                f"{stored.ha1_realm!r}, not user name {username!r} and realm {self.realm!r}",
            )
            ha1 = _ha1(algorithm, username, self.realm, "")  # same work as a wrong password
            known = False
        expected = digest_response(
            algorithm, ha1, method, params["uri"], nonce, params["nc"], params["cnonce"]
        )
        if not hmac.compare_digest(expected, params["response"].lower()) or not known:
            return self._password_failure(addr_key, user_key, "wrong user name or password")
        now_ms = int(self.clock() * 1000)
        if now_ms - issued_ms > NONCE_LIFETIME * 1000 or (
            issued_ms <= self._stale_before_ms and nonce not in self._nc_seen
        ):
            return self._challenge("stale nonce", stale=True)
        nc = int(params["nc"], 16)
        if nc <= self._nc_seen.get(nonce, 0):
            return self._password_failure(addr_key, user_key, "nonce count replayed")
        self._remember_nc(nonce, nc, now_ms)
        self.throttle.success(user_key)
        return AuthResult(username, "digest")

    def _remember_nc(self, nonce: str, nc: int, now_ms: int) -> None:
        """Record the highest nc of a nonce; evict expired entries and, beyond
        MAX_NONCES, the earliest used, raising the stale floor to their issue time so
        that an evicted nonce is stale rather than replayable."""
        self._nc_seen[nonce] = nc
        self._nc_seen.move_to_end(nonce)
        while self._nc_seen:
            oldest = next(iter(self._nc_seen))
            oldest_ms = self._nonce_time(oldest) or 0
            expired = now_ms - oldest_ms > NONCE_LIFETIME * 1000
            if not expired and len(self._nc_seen) <= MAX_NONCES:
                break
            del self._nc_seen[oldest]
            self._stale_before_ms = max(self._stale_before_ms, oldest_ms)

    # ------------------------------------------------------------------ nonces

    def new_nonce(self) -> str:
        stamp = int(self.clock() * 1000).to_bytes(8, "big") + self.random_bytes(8)
        mac = hmac.new(self._nonce_key, stamp, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(stamp + mac).decode().rstrip("=")

    def _nonce_time(self, nonce: str) -> int | None:
        """Issue time (ms) of a nonce we made; None for anything else."""
        if len(nonce) != 43:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except (binascii.Error, ValueError):
            return None
        stamp, mac = raw[:16], raw[16:]
        good = hmac.new(self._nonce_key, stamp, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, good):
            return None
        return int.from_bytes(stamp[:8], "big")

    # ------------------------------------------------------------------ tokens

    def verify_token(self, token: str, *, own_only: bool = False) -> AuthResult:
        """Check a JWT; `own_only` accepts only tokens this gateway issued."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise TokenError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256":
            key = self._hs256_key
        elif alg == "RS256" and self._rs256_key is not None and not own_only:
            key = self._rs256_key
        else:
            raise TokenError(f"algorithm {str(alg)[:20]!r} is not accepted")
        issuer = self.issuer if own_only else self.configured_issuer
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],  # exactly the algorithm of this key
                issuer=issuer,
                options={
                    "require": ["exp"] + (["iss"] if issuer is not None else []),
                    "verify_exp": False,  # checked below with our clock
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenError(f"missing claim {e.claim}") from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong issuer") from None
        except jwt.PyJWTError as e:
            raise TokenError(f"invalid token: {str(e)[:100]}") from None
        now = self.clock()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or not math.isfinite(exp):
            raise TokenError("exp is not a number")
        if now > exp + JWT_LEEWAY:
            raise TokenError("token expired")
        nbf = claims.get("nbf")
        if nbf is not None:
            if not isinstance(nbf, int | float) or isinstance(nbf, bool):
                raise TokenError("nbf is not a number")
            if now + JWT_LEEWAY < nbf:
                raise TokenError("token not yet valid")
        username: str | None = None
        for claim in ("username", "sub"):
            if claim in claims:
                if not _valid_name(claims[claim]):
                    raise TokenError(f"{claim} is not a valid user name")
                username = claims[claim]
                break
        nonce = header.get("nonce")
        if nonce is not None and not _valid_name(nonce):
            raise TokenError("nonce is not a short string")
        return AuthResult(username, "token", nonce, claims)

    def mint_token(self, username: str, nonce: str | None = None) -> str:
        now = int(self.clock())
        claims = {
            "iss": self.issuer,
            "sub": username,
            "iat": now,
            "exp": now + self.token_lifetime,
            "jti": base64.urlsafe_b64encode(self.random_bytes(12)).decode(),
        }
        headers = {"nonce": nonce} if nonce is not None else None
        return jwt.encode(claims, self._hs256_key, algorithm="HS256", headers=headers)

    # ------------------------------------------------------------------ answers

    def challenges(self, *, stale: bool = False, bearer: bool | None = None) -> list[str]:
        """WWW-Authenticate values for this mode (strongest first)."""
        values: list[str] = []
        realm = _quote(self.realm)
        if self.mode != "token":
            for algorithm in DIGEST_ALGORITHMS:
                values.append(
                    f"Digest realm={realm}, qop=\"auth\", algorithm={algorithm}, "
                    f"nonce=\"{self.new_nonce()}\""
                    + (", stale=true" if stale else "")
                )
            values.append(f'Basic realm={realm}, charset="UTF-8"')
        if bearer if bearer is not None else self.mode != "password":
            values.append(f"Bearer realm={realm}")
        return values

    def _challenge(
        self, reason: str, *, stale: bool = False, bearer: bool | None = None
    ) -> AuthFailure:
        return AuthFailure(
            401,
            reason,
            tuple(("WWW-Authenticate", v) for v in self.challenges(stale=stale, bearer=bearer)),
        )

    def _too_many(self, seconds: float) -> AuthFailure:
        return AuthFailure(
            429, "too many failed attempts", (("Retry-After", str(math.ceil(seconds))),)
        )

    def _password_failure(self, addr_key: str, user_key: str | None, reason: str) -> AuthFailure:
        self.throttle.failure(addr_key)
        if user_key is not None:
            self.throttle.failure(user_key)
        return self._challenge(reason)

    def _token_failure(self, addr_key: str, reason: str) -> AuthFailure:
        self.throttle.failure(addr_key)
        failure = self._challenge(reason)
        realm = _quote(self.realm)
        headers = tuple(
            (k, f'Bearer realm={realm}, error="invalid_token"' if v.startswith("Bearer") else v)
            for k, v in failure.headers
        )
        return AuthFailure(401, reason, headers)
