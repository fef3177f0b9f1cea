"""
G.711 PCMU (mu-law) and PCMA (A-law) with numpy lookup tables.

The tables are derived once at import time from the segment/quantisation
algorithm of ITU-T G.711 (as in the classic Sun reference code), so encoding or
decoding a 20 ms frame is a single table lookup (``ndarray.take``, which skips
the index parsing of ``table[index]``: about 1 us less per 20 ms frame).
"""

import numpy as np
import numpy.typing as npt

__all__ = ["alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # in 14-bit units, so that clip + bias fits in the top segment
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _all_int16() -> npt.NDArray[np.int32]:
    # Ordered by the uint16 bit pattern so that tables can be indexed with
    # ``samples.view(np.uint16)`` without any arithmetic.
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16() >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> (seg + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    pcm = _all_int16() >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    # A-law is sign-magnitude with no negative zero: -1 maps next to +0.
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, mag)
    shift = np.where(seg < 2, 1, seg)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_ENCODE_TABLE = _build_ulaw_encode()
ULAW_DECODE_TABLE = _build_ulaw_decode()
ALAW_ENCODE_TABLE = _build_alaw_encode()
ALAW_DECODE_TABLE = _build_alaw_decode()


Encoded = bytes | bytearray | memoryview | npt.NDArray[np.uint8]


def _as_codes(data: Encoded) -> npt.NDArray[np.uint8]:
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False)
    return np.frombuffer(data, dtype=np.uint8)


def _as_index(pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint16]:
    return np.ascontiguousarray(pcm, dtype=np.int16).view(np.uint16)


def ulaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode int16 linear samples to mu-law bytes."""
    return ULAW_ENCODE_TABLE.take(_as_index(pcm)).tobytes()


def ulaw_decode(
    data: Encoded,
) -> npt.NDArray[np.int16]:
    """Decode mu-law bytes to int16 linear samples."""
    return ULAW_DECODE_TABLE.take(_as_codes(data))


def alaw_encode(pcm: npt.NDArray[np.int16]) -> bytes:
    """Encode int16 linear samples to A-law bytes."""
    return ALAW_ENCODE_TABLE.take(_as_index(pcm)).tobytes()


def alaw_decode(
    data: Encoded,
) -> npt.NDArray[np.int16]:
    """Decode A-law bytes to int16 linear samples."""
    return ALAW_DECODE_TABLE.take(_as_codes(data))
