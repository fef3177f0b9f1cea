"""
Speech quality of the media path: PESQ (ITU-T P.862, narrowband, MOS-LQO)
of a speech sample sent through the gateway's audio processing and back.

The sample is synthesised with espeak-ng (apt-get install espeak-ng) and
resampled to 8 kHz as the reference. Paths, each a SIP -> browser -> SIP
round trip:

0. the rtc resampler alone, 8k -> 48k -> 8k;
1. G.711 u-law alone (encode, decode): the codec's own ceiling, and twice
   in tandem: a round trip through a gateway encodes twice (PBX -> us,
   us -> PBX);
2. G.711 + the rtc resampler both ways (8k -> 48k -> 8k), as when the
   browser leg is at 48 kHz (two G.711 encodings);
3. 2. with Opus in the middle as aiortc sends and receives it (48 kHz
   stereo, 96 kb/s): the transcoded call;
4. live: two RtpLegs on loopback (PCMU, jitter buffer at its minimum),
   speech written paced into one and read from the other.

    .venv/bin/pip install pesq   # builds from C source
    .venv/bin/python bench/pesq_speech.py
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


def speech_8k() -> Pcm:
    import av

    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", path, TEXT], check=True)
        with wave.open(path) as w:
            rate = w.getframerate()
            data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    pcm = np.concatenate(out).astype(np.int16)
    # -26 dBov-ish active level, 160-sample frames
    pcm = pcm[: len(pcm) - len(pcm) % 160]
    return pcm


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


def main() -> None:
    try:
        from pesq import pesq
    except ImportError:
        sys.exit("the pesq package is not installed (.venv/bin/pip install pesq)")
    ref = speech_8k()
    print(f"reference: espeak-ng, {len(ref) / 8000:.1f} s at 8 kHz")
    from rtc.resample import Resampler

    up, down = Resampler(8000, 48000), Resampler(48000, 8000)
    only_resampler = np.concatenate([down.process(up.process(f)) for f in frames(ref, 160)])
    paths = [
        ("resampler alone 8k->48k->8k", only_resampler),
        ("G.711 u-law alone (one encoding)", g711(ref)),
        ("G.711 u-law twice (tandem, no resampling)", g711(g711(ref))),
        ("G.711 + resampler 8k->48k->8k", resampled(ref, opus=False)),
        ("G.711 + resampler + Opus 48k (transcoded call)", resampled(ref, opus=True)),
        ("G.711 + Opus at 8 kHz 32 kb/s + G.711 (no resampler)", opus_8k(ref)),
        ("live RtpLeg -> RtpLeg (PCMU, jitter buffer)", asyncio.run(live_rtp(ref))),
    ]
    for name, degraded in paths:
        n = min(len(ref), len(degraded))
        # PESQ aligns delays itself; pad the shorter one
        deg = np.zeros(len(ref), dtype=np.int16)
        deg[: min(n, len(degraded))] = degraded[:n]
        if len(degraded) > len(ref):
            deg = degraded[: len(ref) + 4000]
            ref_cmp = np.concatenate((ref, np.zeros(len(deg) - len(ref), np.int16)))
        else:
            ref_cmp = ref
        score = pesq(8000, ref_cmp.astype(np.float64), deg.astype(np.float64), "nb")
        print(f"{name:50s} PESQ-NB MOS-LQO {score:.2f}")


if __name__ == "__main__":
    main()
