"""Property tests: no input bytes make the core raise (parse errors never escape)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sip.framing import FramingError, StreamFramer
from sip.messages import ParseError, parse

from .test_core import INVITE, PHONE, CoreHarness, in_dialog

VALID = [INVITE, in_dialog("BYE", 5, "t", "z9hG4bKx"), in_dialog("ACK", 5, "t", "z9hG4bKy")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(base) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert"]))
        if op == "flip":
            base[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del base[pos]
        else:
            base[pos:pos] = draw(st.sampled_from([b":", b";", b",", b"<", b'"', b"\r\n", b" "]))
    return bytes(base)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), mutated()))
def test_core_never_raises(data: bytes):
    h = CoreHarness()
    h.receive(data, PHONE)
    for _, _, sent in h.sent:
        assert sent.startswith(b"SIP/2.0 ")


@settings(max_examples=300, deadline=None)
@given(mutated())
def test_parse_raises_only_parse_error(data: bytes):
    try:
        parse(data)
    except ParseError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_framer_raises_only_framing_error(chunks: list[bytes]):
    framer = StreamFramer(max_message=2048, max_headers=1024)
    try:
        for chunk in chunks:
            framer.feed(chunk)
    except FramingError:
        pass
