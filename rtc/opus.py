"""
Opus (RFC 6716) encoder and decoder, the one implementation both legs use.

They call libopus directly (ctypes), the copy bundled with the PyAV wheel
(``av.libs/libopus-*.so``) or else the system's ``libopus.so.0``. Not through
PyAV's codec contexts, because FFmpeg's libopus decoder always outputs
48 kHz, whereas libopus itself decodes (and encodes) at 8, 12, 16, 24 or
48 kHz natively: a G.711 call then needs no 8k <-> 48k resampling at all,
and the per-frame AVFrame/AVPacket round trip is gone too (measured on the
development machine at complexity 5, 20 ms mono frames: encode 8 kHz
~70 us through ctypes vs ~200 us through PyAV, decode ~15 us vs ~70 us).

Mono only: the browser leg and the SIP leg carry mono audio. The RTP clock of
Opus is 48 kHz whatever the audio rate (RFC 7587 section 4.1), and the SDP
always says opus/48000/2; a mono decoder down-mixes a stereo stream.
"""

import ctypes
import ctypes.util
import glob
import os

import numpy as np
import numpy.typing as npt

__all__ = [
    "OPUS_CLOCK_RATE",
    "OPUS_RATES",
    "OpusDecoder",
    "OpusEncoder",
    "OpusError",
    "packet_samples",
]

OPUS_CLOCK_RATE = 48000  # RTP clock of Opus, whatever the audio rate
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
DEFAULT_BIT_RATE = 32000
DEFAULT_COMPLEXITY = 5
MAX_PACKET = 1500
MAX_FRAME_MS = 120  # the longest Opus packet

# opus_defines.h
_OPUS_APPLICATION_VOIP = 2048
_OPUS_SET_BITRATE = 4002
_OPUS_SET_COMPLEXITY = 4010
_OPUS_SET_INBAND_FEC = 4012
_OPUS_SET_PACKET_LOSS_PERC = 4014


class OpusError(Exception):
    """libopus is missing or reported an error."""


def _load() -> ctypes.CDLL:
    candidates: list[str] = []
    try:
        import av

        libs = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
        candidates += sorted(glob.glob(os.path.join(libs, "libopus*.so*")))
    except ImportError:  # pragma: no cover - PyAV is a dependency
        pass
    system = ctypes.util.find_library("opus")
    candidates += [system] if system else []
    candidates.append("libopus.so.0")
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        _declare(lib)
        return lib
    raise OpusError("libopus not found (neither PyAV's bundled copy nor libopus.so.0)")


def _declare(lib: ctypes.CDLL) -> None:
    c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
    lib.opus_encoder_create.restype = c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, c_int, c_int, ctypes.POINTER(c_int)]
    lib.opus_encoder_destroy.argtypes = [c_void_p]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_encode.argtypes = [c_void_p, c_void_p, c_int, c_void_p, ctypes.c_int32]
    lib.opus_decoder_create.restype = c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, c_int, ctypes.POINTER(c_int)]
    lib.opus_decoder_destroy.argtypes = [c_void_p]
    lib.opus_decode.restype = c_int
    lib.opus_decode.argtypes = [c_void_p, ctypes.c_char_p, ctypes.c_int32, c_void_p, c_int, c_int]
    lib.opus_packet_get_nb_samples.restype = c_int
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [c_int]


_lib: ctypes.CDLL | None = None


def _opus() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _check(code: int) -> int:
    if code < 0:
        raise OpusError(_opus().opus_strerror(code).decode())
    return code


def _check_rate(sample_rate: int) -> None:
    if sample_rate not in OPUS_RATES:
        raise ValueError(f"Opus sample rate must be one of {OPUS_RATES}, not {sample_rate}")


def packet_samples(payload: bytes, sample_rate: int = OPUS_CLOCK_RATE) -> int:
    """Audio samples (at ``sample_rate``) in an Opus packet; -1 when it is malformed."""
    if not payload:
        return -1
    return int(_opus().opus_packet_get_nb_samples(payload, len(payload), sample_rate))


class OpusEncoder:
    """
    Mono VoIP encoder at ``sample_rate``: ``encode(samples)`` takes a whole
    Opus frame (20 ms: ``sample_rate // 50`` samples) and returns one packet.
    ``fec``: in-band forward error correction (useinbandfec=1), tuned for
    ``loss_percent`` expected loss.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        bit_rate: int = DEFAULT_BIT_RATE,
        complexity: int = DEFAULT_COMPLEXITY,
        fec: bool = False,
        loss_percent: int = 0,
    ) -> None:
        _check_rate(sample_rate)
        if not 0 <= complexity <= 10:
            raise ValueError("Opus complexity must be 0..10")
        lib = _opus()
        error = ctypes.c_int()
        handle = lib.opus_encoder_create(sample_rate, 1, _OPUS_APPLICATION_VOIP, error)
        _check(error.value)
        self._handle: int | None = handle
        self.sample_rate = sample_rate
        self._ctl(_OPUS_SET_BITRATE, bit_rate)
        self._ctl(_OPUS_SET_COMPLEXITY, complexity)
        if fec:
            self._ctl(_OPUS_SET_INBAND_FEC, 1)
            self._ctl(_OPUS_SET_PACKET_LOSS_PERC, max(0, min(loss_percent, 100)))
        self._buffer = ctypes.create_string_buffer(MAX_PACKET)
        self._encode = lib.opus_encode  # looked up once, called per frame

    def _ctl(self, request: int, value: int) -> None:
        # opus_encoder_ctl is variadic: declare the argument per call
        _check(
            _opus().opus_encoder_ctl(
                ctypes.c_void_p(self._handle), ctypes.c_int(request), ctypes.c_int32(value)
            )
        )

    def encode(self, samples: npt.NDArray[np.int16]) -> bytes:
        if self._handle is None:
            raise OpusError("encoder closed")
        # bytes pass to a void* parameter as they are; ndarray.ctypes would build
        # an object per call (a few microseconds, per frame)
        pcm = np.asarray(samples, dtype=np.int16).tobytes()
        size = _check(self._encode(self._handle, pcm, len(pcm) // 2, self._buffer, MAX_PACKET))
        return self._buffer.raw[:size]

    def close(self) -> None:
        if self._handle is not None:
            _opus().opus_encoder_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


class OpusDecoder:
    """
    Mono decoder producing ``sample_rate`` audio. ``decode(payload)`` gives
    the packet's samples (20 ms of audio for a 20 ms packet, whatever the
    encoder's rate); ``conceal(samples)`` gives libopus' loss concealment for
    a missing stretch of that many samples.
    """

    def __init__(self, sample_rate: int = 48000) -> None:
        _check_rate(sample_rate)
        lib = _opus()
        error = ctypes.c_int()
        handle = lib.opus_decoder_create(sample_rate, 1, error)
        _check(error.value)
        self._handle: int | None = handle
        self.sample_rate = sample_rate
        self._out = np.zeros(sample_rate * MAX_FRAME_MS // 1000, dtype=np.int16)
        self._out_address = self._out.ctypes.data  # the buffer never moves
        self._decode = lib.opus_decode  # looked up once, called per frame

    def decode(self, payload: bytes) -> npt.NDArray[np.int16]:
        return self._run(payload, len(self._out))

    def conceal(self, samples: int) -> npt.NDArray[np.int16]:
        # a multiple of 2.5 ms, at most 120 ms
        step = self.sample_rate // 400
        samples = max(step, min(len(self._out), samples - samples % step))
        return self._run(None, samples)

    def _run(self, payload: bytes | None, room: int) -> npt.NDArray[np.int16]:
        if self._handle is None:
            raise OpusError("decoder closed")
        count = _check(
            self._decode(
                self._handle,
                payload,
                len(payload) if payload is not None else 0,
                self._out_address,
                room,
                0,
            )
        )
        return self._out[:count].copy()

    def close(self) -> None:
        if self._handle is not None:
            _opus().opus_decoder_destroy(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()
