import gc
import os
import struct

import pytest
from pylibsrtp import Error, Policy, Session

from rtc.srtp import direct, protector, unprotector

KEY = bytes(range(30))


def packet(sequence: int, payload: bytes = bytes(160)) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, sequence, sequence * 160, 0x1234) + payload


def outbound() -> Session:
    return Session(policy=Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))


def inbound() -> Session:
    return Session(policy=Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))


def test_the_installed_pylibsrtp_gets_the_direct_calls() -> None:
    # a pylibsrtp that lays its sessions out otherwise still works (the
    # session's methods), only slower: this says so when it happens
    assert direct(outbound()) and direct(inbound())
    assert protector(outbound()).__name__ == "process"


def test_same_bytes_as_the_sessions_own_methods() -> None:
    ours, theirs = protector(outbound()), outbound()
    receiver = unprotector(inbound())
    for sequence in range(1, 40):
        payload = os.urandom(160 + sequence)
        protected = ours(packet(sequence, payload))
        assert protected == theirs.protect(packet(sequence, payload))
        assert receiver(protected) == packet(sequence, payload)


def test_forged_and_replayed_packets_raise_as_the_session_would() -> None:
    protect, unprotect = protector(outbound()), unprotector(inbound())
    first = protect(packet(1))
    assert unprotect(first) == packet(1)
    with pytest.raises(Error, match="replay"):
        unprotect(first)
    forged = bytearray(protect(packet(2)))
    forged[20] ^= 1
    with pytest.raises(Error, match="auth"):
        unprotect(bytes(forged))
    # the session is unharmed: the next packet goes through
    assert unprotect(protect(packet(3))) == packet(3)


def test_a_datagram_longer_than_the_buffer_is_refused_not_copied() -> None:
    session = inbound()
    unprotect = unprotector(session)
    protect = protector(outbound())
    with pytest.raises(ValueError, match="too long"):
        unprotect(packet(1, bytes(2000)))
    with pytest.raises(ValueError, match="too long"):
        protect(packet(1, bytes(1500 - 12)))  # no room left for the tag
    assert unprotect(protect(packet(1))) == packet(1)


def test_another_layout_falls_back_to_the_sessions_methods() -> None:
    class Other:
        def protect(self, data: bytes) -> bytes:
            return b"p" + data

        def unprotect(self, data: bytes) -> bytes:
            return b"u" + data

    other = Other()
    assert not direct(other)  # type: ignore[arg-type]
    assert protector(other)(b"x") == b"px"  # type: ignore[arg-type]
    assert unprotector(other)(b"x") == b"ux"  # type: ignore[arg-type]


def test_the_functions_keep_their_session_alive() -> None:
    # the legs may drop a session (DTLS renegotiated) while a circuit still
    # holds its functions: libsrtp's context must not be freed under them
    protect, unprotect = protector(outbound()), unprotector(inbound())
    gc.collect()
    # a freed context could still appear to work: other sessions, other keys, take
    # its memory first
    others = [
        Session(policy=Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        for _ in range(200)
    ]
    for other in others:
        other.protect(packet(1))
    assert unprotect(protect(packet(7))) == packet(7)
