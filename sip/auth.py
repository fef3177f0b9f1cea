"""HTTP digest authentication for SIP (RFC 2617, RFC 7616, RFC 8760): UAC answers and UAS checks.

The client nonce is passed in by the caller so the module stays deterministic.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

from sipmessage import AuthChallenge, AuthCredentials, AuthParameters

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}


class AuthError(ValueError):
    pass


_PARAM = re.compile(r'\s*([A-Za-z][A-Za-z0-9_.-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]+)\s*(,|$)')
_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9_.-]*)\s+")


def parse_auth_header(value: str) -> tuple[str, dict[str, str]]:
    """Split a challenge/credentials header into scheme and parameters.

    Done here rather than with `sipmessage.AuthParameters`, which splits on commas
    inside quoted strings (qop="auth,auth-int").
    """
    scheme_match = _SCHEME.match(value)
    if scheme_match is None:
        raise AuthError("no auth scheme")
    params: dict[str, str] = {}
    pos = scheme_match.end()
    while pos < len(value):
        match = _PARAM.match(value, pos)
        if match is None:
            raise AuthError("bad auth parameters")
        key, raw = match.group(1).lower(), match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key] = raw
        pos = match.end()
    return scheme_match.group(1), params


def pick_challenge(values: list[str]) -> DigestChallenge | None:
    """The first challenge among several headers that we can answer."""
    for value in values:
        try:
            return DigestChallenge.from_header(value)
        except AuthError:
            continue
    return None


def _hash_for(algorithm: str) -> tuple[Callable[[bytes], str], bool]:
    upper = algorithm.upper()
    session = upper.endswith("-SESS")
    base = upper[:-5] if session else upper
    if base not in _HASHES:
        raise AuthError(f"unsupported digest algorithm {algorithm}")
    return _HASHES[base], session


def _h(fn: Callable[[bytes], str], *parts: str) -> str:
    return fn(":".join(parts).encode("utf-8"))


@dataclass(frozen=True)
class DigestChallenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def from_header(cls, challenge: AuthChallenge | str) -> DigestChallenge:
        """Parse a WWW-/Proxy-Authenticate value; AuthError when unusable."""
        if isinstance(challenge, str):
            scheme, params = parse_auth_header(challenge)
        else:
            scheme, params = challenge.scheme, dict(challenge.parameters)
        if scheme.lower() != "digest":
            raise AuthError(f"unsupported scheme {scheme}")
        if "nonce" not in params:
            raise AuthError("challenge without nonce")
        algorithm = params.get("algorithm", "MD5")
        _hash_for(algorithm)
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        return cls(
            realm=params.get("realm", ""),
            nonce=params["nonce"],
            algorithm=algorithm,
            qop=qop,
            opaque=params.get("opaque"),
            stale=params.get("stale", "").lower() == "true",
        )


def digest_response(
    *,
    username: str,
    password: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The `response` value of RFC 2617 §3.2.2.1 / RFC 7616 §3.4.1."""
    return response_from_ha1(
        ha1=compute_ha1(username, realm, password, algorithm),
        nonce=nonce,
        method=method,
        uri=uri,
        algorithm=algorithm,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        body=body,
    )


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password): what a directory may store instead of the password."""
    fn, _ = _hash_for(algorithm)
    return _h(fn, username, realm, password)


def response_from_ha1(
    *,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
    body: bytes = b"",
) -> str:
    """The digest `response` from a stored HA1 (RFC 7616 §3.4.1, -sess variants included)."""
    fn, session = _hash_for(algorithm)
    if session:
        ha1 = _h(fn, ha1, nonce, cnonce)
    if qop == "auth-int":
        ha2 = _h(fn, method, uri, fn(body))
    else:
        ha2 = _h(fn, method, uri)
    if qop:
        return _h(fn, ha1, nonce, nc, cnonce, qop, ha2)
    return _h(fn, ha1, nonce, ha2)


def build_credentials(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str,
    nonce_count: int = 1,
    body: bytes = b"",
) -> AuthCredentials:
    """An Authorization/Proxy-Authorization value answering `challenge`."""
    qop: str | None = None
    if "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    nc = f"{nonce_count:08x}"
    response = digest_response(
        username=username,
        password=password,
        realm=challenge.realm,
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc if qop else "",
        cnonce=cnonce if qop else "",
        body=body,
    )
    params: dict[str, str] = {
        "username": username,
        "realm": challenge.realm,
        "nonce": challenge.nonce,
        "uri": uri,
        "response": response,
        "algorithm": challenge.algorithm,
    }
    if challenge.opaque is not None:
        params["opaque"] = challenge.opaque
    if qop:
        params.update(qop=qop, nc=nc, cnonce=cnonce)
    return AuthCredentials("Digest", AuthParameters(**params))


class DigestClient:
    """Answers challenges for one set of credentials, counting nonce uses (nc)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self._counts: dict[str, int] = {}

    def answer(
        self,
        challenge: AuthChallenge | str | DigestChallenge,
        *,
        method: str,
        uri: str,
        cnonce: str,
        body: bytes = b"",
    ) -> AuthCredentials:
        if isinstance(challenge, DigestChallenge):
            digest = challenge
        else:
            digest = DigestChallenge.from_header(challenge)
        count = self._counts.get(digest.nonce, 0) + 1
        self._counts[digest.nonce] = count
        return build_credentials(
            digest,
            username=self.username,
            password=self.password,
            method=method,
            uri=uri,
            cnonce=cnonce,
            nonce_count=count,
            body=body,
        )


def check_credentials(
    credentials: AuthCredentials | str,
    *,
    method: str,
    password: str,
    realm: str,
    nonce: str,
    body: bytes = b"",
) -> bool:
    """UAS side: does `credentials` prove knowledge of `password` for our nonce and realm?"""
    try:
        if isinstance(credentials, str):
            scheme, params = parse_auth_header(credentials)
        elif credentials.parameters is not None:
            scheme, params = credentials.scheme, dict(credentials.parameters)
        else:
            return False
    except AuthError:
        return False
    if scheme.lower() != "digest":
        return False
    try:
        if params["realm"] != realm or params["nonce"] != nonce:
            return False
        qop = params.get("qop")
        expected = digest_response(
            username=params["username"],
            password=password,
            realm=realm,
            nonce=nonce,
            method=method,
            uri=params["uri"],
            algorithm=params.get("algorithm", "MD5"),
            qop=qop,
            nc=params.get("nc", "") if qop else "",
            cnonce=params.get("cnonce", "") if qop else "",
            body=body,
        )
    except (KeyError, AuthError):
        return False
    return hmac.compare_digest(expected, params["response"])


_UNQUOTED = frozenset({"algorithm", "qop", "nc", "stale"})


def credentials_header(credentials: AuthCredentials) -> str:
    """Serialise credentials with qop/nc/algorithm unquoted, as RFC 7616 §3.4 requires.

    `sipmessage` quotes qop, which some registrars reject.
    """
    params = credentials.parameters
    if params is None:
        return str(credentials)
    parts = []
    for key, value in params.items():
        if key in _UNQUOTED:
            parts.append(f"{key}={value}")
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key}="{escaped}"')
    return f"{credentials.scheme} " + ", ".join(parts)
