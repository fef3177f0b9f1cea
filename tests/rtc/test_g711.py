import numpy as np
import pytest

from rtc.g711 import (
    ALAW_DECODE_TABLE,
    ULAW_DECODE_TABLE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from tests.audio import SineSource

ALL_CODES = bytes(range(256))
ALL_LINEAR = np.arange(-32768, 32768, dtype=np.int16)


def enc(fn, *values: int) -> list[int]:  # type: ignore[no-untyped-def]
    return list(fn(np.array(values, dtype=np.int16)))


def test_ulaw_known_code_words() -> None:
    # G.711 table 2a: 0 is 0xFF (and -0 0x7F), the extremes are 0x80 / 0x00
    assert enc(ulaw_encode, 0, -1, 32767, -32768) == [0xFF, 0x7E, 0x80, 0x00]
    assert enc(ulaw_encode, 8159 * 4, -8159 * 4) == [0x80, 0x00]
    assert list(ulaw_decode(bytes([0x00, 0x80, 0xFF, 0x7F, 0x7E, 0xFE]))) == [
        -32124,
        32124,
        0,
        0,
        -8,
        8,
    ]


def test_alaw_known_code_words() -> None:
    # G.711 table 1a: even bits inverted, so +0 is 0xD5 and -0 is 0x55
    assert enc(alaw_encode, 0, -1, 32767, -32768) == [0xD5, 0x55, 0xAA, 0x2A]
    assert list(alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A]))) == [8, -8, 32256, -32256]


def test_decode_then_encode_is_identity() -> None:
    codes = np.arange(256, dtype=np.uint8)
    alaw = np.frombuffer(alaw_encode(alaw_decode(ALL_CODES)), dtype=np.uint8)
    assert np.array_equal(alaw, codes)
    ulaw = np.frombuffer(ulaw_encode(ulaw_decode(ALL_CODES)), dtype=np.uint8)
    # mu-law has two zeros; -0 (0x7F) decodes to 0, which encodes as +0 (0xFF)
    assert np.array_equal(np.delete(ulaw, 0x7F), np.delete(codes, 0x7F))
    assert ulaw[0x7F] == 0xFF


def test_decode_tables_are_monotonic_per_sign() -> None:
    # mu-law: 0x00..0x7F are negative and 0x80..0xFF positive, both running
    # from the largest magnitude down to zero
    assert np.all(np.diff(ULAW_DECODE_TABLE[:128].astype(int)) > 0)
    assert np.all(np.diff(ULAW_DECODE_TABLE[128:].astype(int)) < 0)
    magnitudes = np.abs(ALAW_DECODE_TABLE.astype(int))
    assert magnitudes.max() == 32256 and magnitudes.min() == 8


@pytest.mark.parametrize(
    ("encode", "decode", "lin2", "law2lin"),
    [
        (ulaw_encode, ulaw_decode, "lin2ulaw", "ulaw2lin"),
        (alaw_encode, alaw_decode, "lin2alaw", "alaw2lin"),
    ],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_matches_reference_implementation(encode, decode, lin2, law2lin) -> None:  # type: ignore[no-untyped-def]
    audioop = pytest.importorskip("audioop")  # stdlib until Python 3.13
    assert encode(ALL_LINEAR) == getattr(audioop, lin2)(ALL_LINEAR.tobytes(), 2)
    assert decode(ALL_CODES).tobytes() == getattr(audioop, law2lin)(ALL_CODES, 2)


@pytest.mark.parametrize(
    ("encode", "decode"), [(ulaw_encode, ulaw_decode), (alaw_encode, alaw_decode)]
)
def test_sine_signal_to_noise(encode, decode) -> None:  # type: ignore[no-untyped-def]
    # 1013 Hz: not a divisor of 8 kHz, so quantisation noise is not periodic
    x = SineSource(1013, 8000, 0.5).frame(8000)
    y = decode(encode(x))
    noise = y.astype(float) - x
    snr = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum(noise**2))
    assert snr > 35  # G.711 gives ~38 dB for a loud sine


def test_accepts_bytearray_and_arrays() -> None:
    frame = np.zeros(160, dtype=np.int16)
    assert ulaw_encode(frame) == b"\xff" * 160
    assert alaw_encode(frame) == b"\xd5" * 160
    assert np.array_equal(ulaw_decode(bytearray(b"\xff" * 4)), np.zeros(4, dtype=np.int16))
    assert np.array_equal(
        alaw_decode(np.full(4, 0xD5, dtype=np.uint8)), np.full(4, 8, dtype=np.int16)
    )
