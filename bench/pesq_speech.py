"""
Speech quality of the media path: PESQ (ITU-T P.862, MOS-LQO) of speech sent
through the gateway's audio processing and back.

PESQ of a codec depends a lot on the talker: G.711 alone scores from about 3.1
to 4.5 on the synthetic voices available here. So every path is measured on
several samples (espeak-ng and the flite voices that are installed:
apt-get install espeak-ng flite), each resampled to 8 kHz (16 kHz for the
wideband paths) and set to an active level of -26 dBov, and two figures are
printed per path:

- "vs original": reference = the sample before any coding. Bounded by the
  SIP side's own codec (the "G.711 once" row), which the gateway cannot change.
- "vs as sent": reference = the sample as the SIP peer sends it (decoded
  G.711/G.722). This is what the gateway adds: a relayed payload scores as
  the codec itself, a transcoded path loses what Opus and the second encoding
  lose.

Paths (SIP -> gateway -> browser -> gateway -> SIP, the browser returning the
packets it gets):

- G.711 once: the codec's ceiling. Pass-through calls (the browser also
  negotiated PCMU/PCMA) relay the payload bytes unchanged, so their round
  trip is exactly this (tests/rtc/test_passthrough.py proves no frame is
  decoded or encoded).
- G.711 -> Opus 8 kHz -> G.711: the transcoded call as the gateway runs it
  (rtc.opus fed at 8 kHz, no resampler), at 32 kb/s and 64 kb/s.
- older pipelines kept for comparison: resampler 8k->48k->8k alone, G.711 with
  the resampler, and with Opus 48 kHz in the middle.
- live: two RtpLegs on loopback (PCMU, jitter buffer at its minimum).
- wideband (PESQ-WB): G.722 once, and G.722 -> Opus 16 kHz -> G.722.

    .venv/bin/pip install pesq   # builds from C source
    .venv/bin/python bench/pesq_speech.py [--quick]
"""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np
import numpy.typing as npt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEXT = (
    "The quick brown fox jumps over the lazy dog. Please call me back at "
    "five five five, one two three four, before noon tomorrow. Thank you."
)

Pcm = npt.NDArray[np.int16]


ACTIVE_LEVEL_DBOV = -26.0


def speech_samples(rate: int) -> list[tuple[str, Pcm]]:
    """(name, int16 PCM at `rate`) for every speech synthesiser and voice installed."""
    commands: list[tuple[str, list[str]]] = []
    if shutil.which("espeak-ng"):
        commands.append(("espeak-ng en-us", ["espeak-ng", "-v", "en-us", "-s", "150", "-w"]))
    if shutil.which("flite"):
        for voice in ("kal16", "awb", "rms", "slt"):
            commands.append((f"flite {voice}", ["flite", "-voice", voice, "-t", TEXT, "-o"]))
    if not commands:
        sys.exit("no speech synthesiser: apt-get install espeak-ng flite")
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in commands:
            path = os.path.join(tmp, "speech.wav")
            args = [*command, path] + ([TEXT] if command[0] == "espeak-ng" else [])
            subprocess.run(args, check=True, capture_output=True)
            samples.append((name, _load(path, rate)))
    return samples


def _load(path: str, rate: int) -> Pcm:
    import av

    with wave.open(path) as w:
        source_rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = source_rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    pcm = np.concatenate(out).astype(np.float64)
    # active level (samples above -50 dBFS) to -26 dBov, as P.862 expects
    active = pcm[np.abs(pcm) > 32767 * 10 ** (-50 / 20)]
    gain = 32767 * 10 ** (ACTIVE_LEVEL_DBOV / 20) / float(np.sqrt(np.mean(active**2)))
    pcm = np.clip(np.rint(pcm * gain), -32768, 32767).astype(np.int16)
    size = rate // 50
    return pcm[: len(pcm) - len(pcm) % size]


def frames(pcm: Pcm, n: int) -> list[Pcm]:
    return [pcm[i : i + n] for i in range(0, len(pcm) - len(pcm) % n, n)]


def g711(pcm: Pcm) -> Pcm:
    from rtc.g711 import ulaw_decode, ulaw_encode

    return np.concatenate([ulaw_decode(ulaw_encode(f)) for f in frames(pcm, 160)])


def resampled(pcm: Pcm, opus: bool) -> Pcm:
    import av

    from rtc.g711 import ulaw_decode, ulaw_encode
    from rtc.resample import Resampler

    up, down = Resampler(8000, 48000), Resampler(48000, 8000)
    encoder = decoder = None
    if opus:
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate = 48000
        encoder.layout = "stereo"
        encoder.format = "s16"
        encoder.bit_rate = 96000
        encoder.options = {"application": "voip"}
        decoder = av.CodecContext.create("opus", "r")
        decoder.sample_rate = 48000
        decoder.layout = "stereo"
    out: list[Pcm] = []
    pending = np.zeros(0, dtype=np.int16)
    for k, f in enumerate(frames(pcm, 160)):
        wide = up.process(ulaw_decode(ulaw_encode(f)))
        if encoder is not None and decoder is not None:
            frame = av.AudioFrame.from_ndarray(
                np.repeat(wide, 2).reshape(1, -1), format="s16", layout="stereo"
            )
            frame.sample_rate = 48000
            frame.pts = k * 960
            for packet in encoder.encode(frame):
                for decoded in decoder.decode(packet):
                    data = decoded.to_ndarray()
                    mono = data[0] if decoded.format.is_planar else data.reshape(-1)[::2]
                    if mono.dtype.kind == "f":
                        mono = np.rint(np.clip(mono, -1, 1) * 32767)
                    pending = np.concatenate((pending, mono.astype(np.int16)))
            while len(pending) >= 960:
                wide, pending = pending[:960], pending[960:]
                out.append(ulaw_decode(ulaw_encode(down.process(wide))))
        else:
            out.append(ulaw_decode(ulaw_encode(down.process(wide))))
    return np.concatenate(out)


def opus_8k(pcm: Pcm, bit_rate: int = 32000, complexity: int = 5) -> Pcm:
    """The gateway's G.711 <-> Opus path since issue 4: u-law, then rtc.opus at 8 kHz
    (as the WebRTC leg encodes and the browser decodes), then u-law again; no resampler."""
    from rtc.g711 import ulaw_decode, ulaw_encode
    from rtc.opus import OpusDecoder, OpusEncoder

    encoder, decoder = OpusEncoder(8000, bit_rate, complexity), OpusDecoder(8000)
    return np.concatenate(
        [
            ulaw_decode(ulaw_encode(decoder.decode(encoder.encode(ulaw_decode(ulaw_encode(f))))))
            for f in frames(pcm, 160)
        ]
    )


def g722(pcm: Pcm) -> Pcm:
    from rtc.g722 import G722Decoder, G722Encoder

    encoder, decoder = G722Encoder(), G722Decoder()
    return np.concatenate([decoder(encoder(f)) for f in frames(pcm, 320)])


def opus_16k(pcm: Pcm, bit_rate: int = 32000) -> Pcm:
    """G.722 -> rtc.opus at 16 kHz -> G.722: the transcoded wideband call."""
    from rtc.g722 import G722Decoder, G722Encoder
    from rtc.opus import OpusDecoder, OpusEncoder

    first, second = (G722Encoder(), G722Decoder()), (G722Encoder(), G722Decoder())
    encoder, decoder = OpusEncoder(16000, bit_rate), OpusDecoder(16000)
    out = []
    for f in frames(pcm, 320):
        sent = first[1](first[0](f))
        out.append(second[1](second[0](decoder.decode(encoder.encode(sent)))))
    return np.concatenate(out)


async def live_rtp(pcm: Pcm) -> Pcm:
    from rtc.rtpleg import RtpLeg

    a = await RtpLeg.open()
    b = await RtpLeg.open()
    try:
        a.apply_answer(b.create_answer(a.create_offer()))
        loop = asyncio.get_running_loop()
        received: list[Pcm] = []

        async def reader() -> None:
            while True:
                received.append(await b.read())

        task = loop.create_task(reader())
        await asyncio.sleep(0.2)
        start = loop.time()
        chunks = frames(pcm, 160)
        for n, f in enumerate(chunks):
            a.write(f)
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))
        await asyncio.sleep(0.3)
        task.cancel()
        return np.concatenate(received) if received else np.zeros(0, np.int16)
    finally:
        await a.close()
        await b.close()


def score(rate: int, ref: Pcm, degraded: Pcm) -> float:
    from pesq import pesq

    # PESQ aligns delays itself; give both the same length
    n = max(len(ref), len(degraded))
    a = np.zeros(n, np.float64)
    b = np.zeros(n, np.float64)
    a[: len(ref)] = ref
    b[: len(degraded)] = degraded
    return float(pesq(rate, a, b, "nb" if rate == 8000 else "wb"))


def main() -> None:
    try:
        import pesq  # noqa: F401
    except ImportError:
        sys.exit("the pesq package is not installed (.venv/bin/pip install pesq)")
    quick = "--quick" in sys.argv
    from rtc.resample import Resampler

    def only_resampler(ref: Pcm) -> Pcm:
        up, down = Resampler(8000, 48000), Resampler(48000, 8000)
        return np.concatenate([down.process(up.process(f)) for f in frames(ref, 160)])

    narrow: list[tuple[str, object]] = [
        ("G.711 u-law once (= pass-through round trip)", g711),
        ("G.711 -> Opus 8 kHz 32 kb/s complexity 5 -> G.711", opus_8k),
        ("G.711 -> Opus 8 kHz 64 kb/s -> G.711", lambda r: opus_8k(r, 64000)),
        ("G.711 -> Opus 8 kHz 32 kb/s complexity 0 -> G.711", lambda r: opus_8k(r, 32000, 0)),
    ]
    if not quick:
        narrow += [
            ("G.711 u-law twice (tandem)", lambda r: g711(g711(r))),
            ("resampler alone 8k->48k->8k", only_resampler),
            ("G.711 + resampler 8k->48k->8k (old path)", lambda r: resampled(r, opus=False)),
            ("G.711 + resampler + Opus 48k (old path)", lambda r: resampled(r, opus=True)),
            ("live RtpLeg -> RtpLeg (PCMU, jitter buffer)", lambda r: asyncio.run(live_rtp(r))),
        ]
    wide: list[tuple[str, object]] = [
        ("G.722 once (= pass-through round trip)", g722),
        ("G.722 -> Opus 16 kHz 32 kb/s -> G.722 (transcoded)", opus_16k),
    ]
    for rate, paths, sent_by in ((8000, narrow, g711), (16000, wide, g722)):
        samples = speech_samples(rate)
        names = [name for name, _ in samples]
        kind = "PESQ-NB" if rate == 8000 else "PESQ-WB"
        print(f"\n{kind} MOS-LQO, samples at {rate} Hz: " + ", ".join(names))
        print(f"{'path':52s} {'vs original':>22s} {'vs as sent':>22s}")
        for label, fn in paths:
            original, as_sent = [], []
            for _, ref in samples:
                degraded = fn(ref)  # type: ignore[operator]
                original.append(score(rate, ref, degraded))
                as_sent.append(score(rate, sent_by(ref), degraded))
            print(f"{label:52s} {_summary(original):>22s} {_summary(as_sent):>22s}")
    browser_to_sip()


def browser_to_sip() -> None:
    """
    Browser -> SIP: the speech at 48 kHz as Chrome encodes it (media_load.browser_opus:
    Opus 32 kb/s VoIP, full band, or band-limited as with the gateway's
    maxplaybackrate=8000), decoded to 8 kHz by the gateway, then G.711; PESQ-NB against
    the original at 8 kHz.
    """
    from media_load import browser_opus

    from rtc.opus import OpusDecoder

    pairs = list(zip(speech_samples(48000), speech_samples(8000), strict=True))
    print(f"\nPESQ-NB, browser -> SIP, samples at 48 kHz: {', '.join(n for (n, _), _ in pairs)}")
    for label, rate in (("full band", None), ("maxplaybackrate=8000", 8000)):
        scores = []
        for (_, speech48), (_, ref) in pairs:
            decoder = OpusDecoder(8000)
            out = np.concatenate([decoder.decode(p) for p in browser_opus(speech48, rate)])
            scores.append(score(8000, ref, g711(out)))
        print(f"{'browser Opus 32 kb/s, ' + label + ' -> G.711':52s} {_summary(scores):>22s}")


def _summary(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
