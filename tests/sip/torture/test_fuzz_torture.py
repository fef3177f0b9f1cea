"""Property test: RFC 4475 messages, mutated, through framer + parser + transaction layer
+ core, several per core and with time passing: only FramingError may escape the framer,
nothing escapes the core, and everything the core sends is a response or a stateless reply."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.framing import FramingError, StreamFramer

from . import messages as m
from .test_rfc4475 import ALL, TCP, UDP, Harness

SEEDS = [data for data, _ in ALL.values()] + [m.DBLREQ_REGISTER]
PIECES = [b":", b";", b",", b"<", b">", b'"', b"\r\n", b" ", b"\r\n ", b"%", b"\x00", b"=", b"/"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        if not base:
            break
        pos = draw(st.integers(0, len(base) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert", "cut", "dup"]))
        if op == "flip":
            base[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del base[pos : pos + draw(st.integers(1, 8))]
        elif op == "insert":
            base[pos:pos] = draw(st.sampled_from(PIECES))
        elif op == "cut":
            del base[pos:]
        else:
            end = min(len(base), pos + draw(st.integers(1, 40)))
            base[pos:pos] = base[pos:end]
    return bytes(base)


def _check_sent(h: Harness) -> None:
    for _, data in h.sent:
        assert data.startswith(b"SIP/2.0 ")


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=5), st.sampled_from([UDP, TCP]))
def test_datagrams_never_raise(datagrams: list[bytes], peer: object):
    h = Harness(digest=True)
    for data in datagrams:
        h.receive(data, peer)  # type: ignore[arg-type]
        h.advance(1.0)
    h.advance(64)
    _check_sent(h)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=4), st.lists(st.integers(1, 64), max_size=8))
def test_stream_never_raises(messages: list[bytes], cuts: list[int]):
    stream = b"".join(messages)
    chunks, pos = [], 0
    for cut in cuts:
        chunks.append(stream[pos : pos + cut])
        pos += cut
    chunks.append(stream[pos:])
    framer = StreamFramer(max_message=8192, max_headers=4096)
    h = Harness()
    try:
        for chunk in chunks:
            for message in framer.feed(chunk):
                h.receive(message, TCP)
    except FramingError:
        pass
    h.advance(64)
    _check_sent(h)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_inside_an_answered_call(data: bytes):
    """A call in progress (INVITE answered) keeps working whatever arrives next."""
    h = Harness()
    h.receive(m.ESC01)
    (call,) = h.calls
    h.apply(h.core.answer(call.session_id, b"v=0\r\n"))
    h.receive(data)
    h.apply(h.core.bye(call.session_id))
    h.advance(64)
    assert any(data.startswith(b"BYE ") for _, data in h.sent)
