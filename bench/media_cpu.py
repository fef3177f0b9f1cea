#!/usr/bin/env python3
"""CPU cost of the media hot path, per 20 ms frame.

Measures the per-frame work of a transcoded call (DESIGN.md §4, §8) with the project's own
functions and PyAV's codecs:

    WebRTC -> SIP: Opus decode (48 kHz) -> resample 48k->8k -> G.711 encode
    SIP -> WebRTC: G.711 decode -> resample 8k->48k -> Opus encode (48 kHz)

and prints a table (CPU µs per frame: mean from the thread's CPU clock; wall-clock p50/p99
from per-frame timing) plus the number of transcoded calls one core could carry if this
were all the work. It is an upper bound: RTP/SRTP, ICE, the jitter buffer, Python's event
loop and the kernel's UDP work are not included.

    .venv/bin/python bench/media_cpu.py [--frames 3000] [--channels 2] [--json]

Not a pass/fail test: it prints numbers (DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from rtc.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
    from rtc.resample import Resampler
except ImportError as e:  # rtc is written in parallel; say so instead of a traceback
    sys.exit(
        f"bench/media_cpu.py: cannot import the media functions ({e}).\n"
        "It needs rtc.g711 (ulaw_encode/ulaw_decode/alaw_encode/alaw_decode) and "
        "rtc.resample.Resampler(in_rate, out_rate).process(); see /work/contracts.md."
    )

import av  # noqa: E402 - after the clear message above

FRAME_MS = 20
WIDE = 48000
NARROW = 8000


def tone(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    """Speech-like test signal: two tones plus a little noise, int16."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(7)
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1230 * t)
    x += 0.02 * rng.standard_normal(t.size)
    y = np.clip(x * 32767, -32768, 32767).astype(np.int16)
    return np.repeat(y[:, None], channels, axis=1) if channels > 1 else y


def frames_of(signal: np.ndarray, size: int) -> list[np.ndarray]:
    n = signal.shape[0] // size
    return [signal[i * size : (i + 1) * size] for i in range(n)]


class Result:
    def __init__(self, name: str, cpu_us: float, wall: np.ndarray) -> None:
        self.name = name
        self.cpu_us = cpu_us
        self.p50 = float(np.percentile(wall, 50))
        self.p99 = float(np.percentile(wall, 99))


def measure(name: str, inputs: list, fn: Callable, warmup: int = 50) -> Result:
    """Run fn over every input; CPU mean from the thread clock, wall percentiles per call."""
    for x in inputs[:warmup]:
        fn(x)
    wall = np.empty(len(inputs))
    cpu0 = time.thread_time_ns()
    for i, x in enumerate(inputs):
        t0 = time.perf_counter_ns()
        fn(x)
        wall[i] = time.perf_counter_ns() - t0
    cpu = (time.thread_time_ns() - cpu0) / len(inputs) / 1000.0
    return Result(name, cpu, wall / 1000.0)


def opus_encoder(channels: int, bit_rate: int, complexity: int | None = None) -> av.CodecContext:
    enc = av.CodecContext.create("libopus", "w")
    if complexity is not None:  # libopus default 10 (aiortc keeps it)
        enc.options = {"compression_level": str(complexity)}
    enc.sample_rate = WIDE
    enc.layout = "stereo" if channels == 2 else "mono"
    enc.format = "s16"
    enc.bit_rate = bit_rate
    enc.time_base = Fraction(1, WIDE)
    return enc


def opus_decoder(channels: int) -> av.CodecContext:
    dec = av.CodecContext.create("opus", "r")
    dec.sample_rate = WIDE
    dec.layout = "stereo" if channels == 2 else "mono"
    dec.format = "s16"
    return dec


def run(
    frames: int, channels: int, bit_rate: int, complexity: int | None = None
) -> tuple[list[Result], dict[str, float]]:
    seconds = frames * FRAME_MS / 1000 + 1.5
    wide_n = WIDE * FRAME_MS // 1000  # 960
    narrow_n = NARROW * FRAME_MS // 1000  # 160
    wide_mono = frames_of(tone(WIDE, seconds), wide_n)[:frames]
    narrow = frames_of(tone(NARROW, seconds), narrow_n)[:frames]
    ulaw = [ulaw_encode(f) for f in narrow]
    alaw = [alaw_encode(f) for f in narrow]

    down = Resampler(WIDE, NARROW)
    up = Resampler(NARROW, WIDE)

    # Opus: av frames prepared up front so only the codec call is timed.
    enc = opus_encoder(channels, bit_rate, complexity)
    wide_pcm = frames_of(tone(WIDE, seconds, channels), wide_n)[:frames]
    av_frames = []
    for i, pcm in enumerate(wide_pcm):
        f = av.AudioFrame.from_ndarray(
            pcm.reshape(1, -1), format="s16", layout="stereo" if channels == 2 else "mono"
        )
        f.sample_rate = WIDE
        f.pts = i * wide_n
        f.time_base = Fraction(1, WIDE)
        av_frames.append(f)
    packets: list[bytes] = []

    def encode(frame: av.AudioFrame) -> None:
        for p in enc.encode(frame):
            packets.append(bytes(p))

    results = [
        measure("G.711 u-law encode (160 samples)", narrow, ulaw_encode),
        measure("G.711 u-law decode (160 bytes)", ulaw, ulaw_decode),
        measure("G.711 A-law encode (160 samples)", narrow, alaw_encode),
        measure("G.711 A-law decode (160 bytes)", alaw, alaw_decode),
        measure("resample 48k -> 8k (960 -> 160)", wide_mono, down.process),
        measure("resample 8k -> 48k (160 -> 960)", narrow, up.process),
        measure(f"Opus encode 48k {channels}ch {bit_rate // 1000} kb/s", av_frames, encode),
    ]

    dec = opus_decoder(channels)
    av_packets = [av.Packet(p) for p in packets]

    def decode(packet: av.Packet) -> None:
        dec.decode(packet)

    # Packets are decoded in order; the warm-up must not skip or replay any, so no warm-up.
    results.append(measure(f"Opus decode 48k {channels}ch", av_packets, decode, warmup=0))

    # the gateway's own pipeline since issue 4: libopus (rtc.opus) at 8 kHz mono,
    # 32 kb/s, complexity 5 on a G.711 call; no resampler
    from rtc.opus import OpusDecoder, OpusEncoder

    enc8 = OpusEncoder(NARROW, 32000, 5 if complexity is None else complexity)
    packets8: list[bytes] = []

    def encode8(pcm: np.ndarray) -> None:
        packets8.append(enc8.encode(pcm))

    results.append(measure("rtc.opus encode 8k mono 32 kb/s", narrow, encode8))
    dec8 = OpusDecoder(NARROW)
    results.append(measure("rtc.opus decode 8k mono", packets8, dec8.decode, warmup=0))

    by = {r.name.split(" (")[0]: r.cpu_us for r in results}
    opus_enc = results[6].cpu_us
    opus_dec = results[7].cpu_us
    gateway_per_call = (
        by["rtc.opus encode 8k mono 32 kb/s"]
        + by["rtc.opus decode 8k mono"]
        + by["G.711 u-law encode"]
        + by["G.711 u-law decode"]
    )
    to_sip = opus_dec + by["resample 48k -> 8k"] + by["G.711 u-law encode"]
    to_web = by["G.711 u-law decode"] + by["resample 8k -> 48k"] + opus_enc
    per_call = to_sip + to_web
    summary = {
        "webrtc_to_sip_us": to_sip,
        "sip_to_webrtc_us": to_web,
        "per_call_us_per_20ms": per_call,
        "transcoded_calls_per_core": FRAME_MS * 1000 / per_call,
        "gateway_8k_per_call_us_per_20ms": gateway_per_call,
        "gateway_8k_calls_per_core": FRAME_MS * 1000 / gateway_per_call,
        "g711_only_calls_per_core": FRAME_MS
        * 1000
        / (by["G.711 u-law encode"] + by["G.711 u-law decode"]),
    }
    return results, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="20 ms frames per stage")
    parser.add_argument(
        "--channels", type=int, choices=(1, 2), default=2, help="Opus channels (aiortc: 2)"
    )
    parser.add_argument("--bit-rate", type=int, default=96000, help="Opus bit rate (aiortc: 96k)")
    parser.add_argument(
        "--complexity", type=int, choices=range(11), default=None, help="Opus complexity 0-10"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    results, summary = run(args.frames, args.channels, args.bit_rate, args.complexity)
    if args.json:
        print(
            json.dumps(
                {
                    "frames": args.frames,
                    "stages": {
                        r.name: {"cpu_us": r.cpu_us, "p50_us": r.p50, "p99_us": r.p99}
                        for r in results
                    },
                    **summary,
                },
                indent=2,
            )
        )
        return 0

    print(f"media hot path, per {FRAME_MS} ms frame ({args.frames} frames per stage)")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, PyAV {av.__version__}, "
        f"{platform.machine()} {platform.processor() or ''}".rstrip()
    )
    print()
    print(f"{'stage':<40} {'CPU us':>9} {'p50 us':>9} {'p99 us':>9}")
    print("-" * 70)
    for r in results:
        print(f"{r.name:<40} {r.cpu_us:9.1f} {r.p50:9.1f} {r.p99:9.1f}")
    print("-" * 70)
    print(
        f"{'WebRTC -> SIP (Opus dec + 48k->8k + u-law enc)':<50} "
        f"{summary['webrtc_to_sip_us']:9.1f} us"
    )
    print(
        f"{'SIP -> WebRTC (u-law dec + 8k->48k + Opus enc)':<50} "
        f"{summary['sip_to_webrtc_us']:9.1f} us"
    )
    print(
        f"{'one transcoded call, both directions':<50} "
        f"{summary['per_call_us_per_20ms']:9.1f} us per 20 ms"
    )
    print(
        f"{'gateway: Opus 8k (rtc.opus) <-> u-law, both ways':<50} "
        f"{summary['gateway_8k_per_call_us_per_20ms']:9.1f} us per 20 ms"
    )
    print()
    print(
        f"estimate: {summary['transcoded_calls_per_core']:.0f} transcoded calls per core "
        "with 48 kHz Opus and resampling, "
        f"{summary['gateway_8k_calls_per_core']:.0f} with the gateway's 8 kHz pipeline "
        "(codec work only; RTP/SRTP, ICE, jitter buffer and event loop not included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
