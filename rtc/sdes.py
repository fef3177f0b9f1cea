"""
SRTP keyed by SDP Security Descriptions (SDES, RFC 4568) for the SIP side.

``CryptoAttribute`` is one ``a=crypto`` line (tag, suite, inline key||salt);
``SrtpContext`` protects what we send with our key and unprotects what we
receive with the peer's, RTP and RTCP, with libsrtp (pylibsrtp).

Supported suites: AES_CM_128_HMAC_SHA1_80 (offered) and
AES_CM_128_HMAC_SHA1_32 (accepted), both with a 16-byte key and 14-byte salt.
Lines with an MKI, several keys or session parameters (KDR, UNENCRYPTED_SRTP,
...) are not used: libsrtp's defaults are what we can honour.
"""

import base64
import binascii
import os
from dataclasses import dataclass

from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session

__all__ = [
    "DEFAULT_SUITE",
    "KEY_LENGTH",
    "SRTP_MAX_PACKET",
    "SUITES",
    "CryptoAttribute",
    "SrtpContext",
    "SrtpError",
    "generate_key",
]

KEY_LENGTH = 30  # 128-bit master key || 112-bit master salt
# the longest packet pylibsrtp unprotects (the size of its buffer)
SRTP_MAX_PACKET = 1500
DEFAULT_SUITE = "AES_CM_128_HMAC_SHA1_80"
SUITES = {
    "AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}


def generate_key() -> bytes:
    """A fresh random master key || salt."""
    return os.urandom(KEY_LENGTH)


@dataclass(frozen=True)
class CryptoAttribute:
    tag: int
    suite: str
    key: bytes  # master key || master salt

    def __str__(self) -> str:
        """The value of ``a=crypto:``."""
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"

    @classmethod
    def parse(cls, value: str) -> "CryptoAttribute":
        """
        Parse the value of ``a=crypto:``; ValueError when it is malformed or
        not something we can use (unknown suite, MKI, session parameters).
        """
        bits = value.split()
        if len(bits) < 3:
            raise ValueError(f"Invalid crypto attribute: {value!r}")
        if len(bits) > 3:
            raise ValueError(f"Unsupported crypto session parameters: {value!r}")
        tag_str, suite, key_params = bits
        if not tag_str.isdigit() or len(tag_str) > 9:
            raise ValueError(f"Invalid crypto tag: {value!r}")
        if suite not in SUITES:
            raise ValueError(f"Unsupported crypto suite {suite!r}")
        if ";" in key_params:
            raise ValueError("Several master keys are not supported")
        method, _, info = key_params.partition(":")
        if method != "inline":
            raise ValueError(f"Unsupported key method {method!r}")
        parts = info.split("|")
        for extra in parts[1:]:
            if ":" in extra:
                raise ValueError("MKI is not supported")
            # a lifetime ("2^31" or a number) is fine: libsrtp re-keys nothing
            # itself and no call lives that long
        try:
            key = base64.b64decode(parts[0], validate=True)
        except binascii.Error as exc:
            raise ValueError(f"Invalid inline key: {value!r}") from exc
        if len(key) != KEY_LENGTH:
            raise ValueError(f"Inline key of {len(key)} bytes, {KEY_LENGTH} expected")
        return cls(int(tag_str), suite, key)


def find_crypto(attributes: list[tuple[str, str | None]]) -> list[CryptoAttribute]:
    """The usable ``a=crypto`` lines of a media section, in their order."""
    result = []
    for name, value in attributes:
        if name == "crypto" and value is not None:
            try:
                result.append(CryptoAttribute.parse(value))
            except ValueError:
                continue
    return result


class SrtpContext:
    """
    The SRTP/SRTCP state of one leg: ``suite``, our ``local_key`` for what we
    send, the peer's ``remote_key`` for what we receive. The unprotect methods
    raise SrtpError for packets that fail authentication or replay checks
    (and for datagrams too long to be SRTP, SRTP_MAX_PACKET).
    """

    def __init__(
        self, suite: str, local_key: bytes, remote_key: bytes, *, _tx: Session | None = None
    ) -> None:
        self.suite = suite
        self.local_key = local_key
        self.remote_key = remote_key
        profile = SUITES[suite]
        self._tx = _tx or Session(
            Policy(key=local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        )
        self._rx = Session(
            Policy(key=remote_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile)
        )

    def rekeyed(self, suite: str, remote_key: bytes) -> "SrtpContext":
        """
        After a re-negotiation: self when nothing changed (rollover counters,
        SRTCP index and replay windows carry on); with a new remote key only
        the receiving side starts afresh, our sending side carries on.
        """
        if suite == self.suite and remote_key == self.remote_key:
            return self
        tx = self._tx if suite == self.suite else None
        return SrtpContext(suite, self.local_key, remote_key, _tx=tx)

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def unprotect(self, packet: bytes) -> bytes:
        try:
            return self._rx.unprotect(packet)
        except ValueError as exc:
            raise _too_long(exc) from None

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._rx.unprotect_rtcp(packet)
        except ValueError as exc:
            raise _too_long(exc) from None


def _too_long(exc: ValueError) -> SrtpError:
    # pylibsrtp unprotects in a buffer of SRTP_MAX_PACKET bytes and raises ValueError, not
    # its Error, for a longer datagram: one that cannot be ours, dropped like a forgery
    return SrtpError(f"{exc} (more than {SRTP_MAX_PACKET} bytes)")


def negotiated_context(
    current: SrtpContext | None, local_key: bytes, crypto: CryptoAttribute | None
) -> SrtpContext | None:
    """
    A stream's SRTP context once a negotiation chose ``crypto`` (None: plain
    RTP): a new one, or ``current`` rekeyed (carrying on what did not change).
    """
    if crypto is None:
        return None
    if current is None:
        return SrtpContext(crypto.suite, local_key, crypto.key)
    return current.rekeyed(crypto.suite, crypto.key)
