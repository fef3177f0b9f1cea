"""
SRTP protect and unprotect as plain functions for the per-packet paths.

pylibsrtp's ``Session.protect``/``unprotect`` go through a generic
``__process`` that checks the type, allocates an ``int *`` for the length and
calls libsrtp on the session's own 1500-byte buffer. At hundreds of calls per
core every packet pays that twice (in and out), ~0.35 us of ~1.4 us a call
(bench/README.md, round 12). ``protector``/``unprotector`` bind the same
libsrtp call to the session's context, buffer and one length cell made once,
and keep its size check (the buffer is 1500 bytes; a longer datagram from a
peer must not be written past it) and its errors (``pylibsrtp.Error``).

They read the session's attributes (``_srtp``, ``_cdata``, ``_buffer``) as
pylibsrtp 1.0 lays them out (the version checked); with another layout they return the
session's own methods, so nothing breaks, it is only slower
(tests/rtc/test_srtp.py says which one the installed version gets).
"""

from collections.abc import Callable
from typing import Any

from pylibsrtp import Error, Session

__all__ = ["direct", "native", "protector", "unprotector"]

try:
    from pylibsrtp import ERRORS, SRTP_MAX_TRAILER_LEN
    from pylibsrtp._binding import ffi, lib
except ImportError:  # another pylibsrtp: its public methods
    lib = None

# libsrtp 2's srtp_protect/srtp_unprotect as pylibsrtp declares them: the
# signature rtc._relay calls them with
_SRTP_CALL = "<ctype 'srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)'>"


def direct(session: Session) -> bool:
    """Whether this session's layout allows the direct calls."""
    return lib is not None and all(hasattr(session, a) for a in ("_srtp", "_cdata", "_buffer"))


def _bind(session: Session, call: Any, trailer: int) -> Callable[[bytes], bytes]:
    # the pointer that frees libsrtp's context when it goes (ffi.gc), not the
    # context itself: a closure outliving its session must keep it alive
    context = session._srtp  # type: ignore[attr-defined]
    cdata = session._cdata  # type: ignore[attr-defined]
    buffer = session._buffer  # type: ignore[attr-defined]
    room = len(cdata) - trailer
    length = ffi.new("int *")

    def process(data: bytes) -> bytes:
        n = len(data)
        if n > room:
            raise ValueError("packet is too long")
        length[0] = n
        buffer[0:n] = data
        rc = call(context[0], cdata, length)
        if rc:
            raise Error(ERRORS[rc] if rc < len(ERRORS) else f"libsrtp error {rc}")
        return buffer[0 : length[0]]  # type: ignore[no-any-return]

    if str(ffi.typeof(call)) == _SRTP_CALL:
        # for rtc._relay, which makes the same call from C (on its own buffer,
        # with the same room); the closure keeps the context alive
        process.native = (  # type: ignore[attr-defined]
            int(ffi.cast("uintptr_t", call)),
            int(ffi.cast("uintptr_t", context[0])),
            room,
        )
    return process


def native(process: Callable[[bytes], bytes] | None) -> tuple[int, int, int]:
    """
    (the libsrtp function's address, its context's, the longest datagram it
    takes) of a ``protector``/``unprotector``; zeros when there is none (not
    ours, another pylibsrtp, None): rtc._relay then calls ``process`` itself.
    """
    return getattr(process, "native", (0, 0, 0))


def protector(session: Session) -> Callable[[bytes], bytes]:
    """``session.protect``, made cheaper per call where possible."""
    if not direct(session):
        return session.protect
    return _bind(session, lib.srtp_protect, SRTP_MAX_TRAILER_LEN)


def unprotector(session: Session) -> Callable[[bytes], bytes]:
    """``session.unprotect``, made cheaper per call where possible."""
    if not direct(session):
        return session.unprotect
    return _bind(session, lib.srtp_unprotect, 0)
