from __future__ import annotations

import pytest

from sip.framing import FramingError, StreamFramer

MSG = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5\r\nCall-ID: x\r\n\r\nhello"
NOBODY = b"SIP/2.0 200 OK\r\nl: 0\r\n\r\n"


def test_byte_by_byte():
    framer = StreamFramer()
    out: list[bytes] = []
    for i in range(len(MSG)):
        out += framer.feed(MSG[i : i + 1])
    assert out == [MSG]


def test_several_in_one_chunk_with_keepalives():
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + MSG + NOBODY + b"\r\n\r\n" + MSG[:10]) == [MSG, NOBODY]
    assert framer.keepalives == 2
    assert framer.feed(MSG[10:]) == [MSG]


def test_missing_content_length_means_empty_body():
    framer = StreamFramer()
    assert framer.feed(b"SIP/2.0 200 OK\r\nCall-ID: y\r\n\r\n") == [
        b"SIP/2.0 200 OK\r\nCall-ID: y\r\n\r\n"
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"X" * 2000,  # header section never ends
        b"SIP/2.0 200 OK\r\nContent-Length: 999999\r\n\r\n",
        b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"SIP/2.0 200 OK\r\nContent-Length: abc\r\n\r\n",
    ],
)
def test_caps_and_bad_lengths(data: bytes):
    framer = StreamFramer(max_message=4096, max_headers=1024)
    with pytest.raises(FramingError):
        framer.feed(data)
