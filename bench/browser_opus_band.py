#!/usr/bin/env python3
"""What band Chromium's Opus encoder uses, with and without maxplaybackrate.

The gateway's SDP toward a browser whose call goes to a G.711 (or G.722) SIP peer says
``maxplaybackrate=8000`` (16000) for Opus (RFC 7587 section 7). This shows that Chromium
honours it: two peer connections in one headless Chromium page (Debian's
/usr/bin/chromium), the sender's microphone a synthetic voiced signal, the answer given
to the sender with or without the parameter; the receiver reads the TOC byte of every
Opus frame it gets (encoded insertable streams) and this prints the Opus configurations
(RFC 6716 section 3.1: 0-3 SILK narrowband, 8-11 SILK wideband, 12-15 hybrid, 16-31
CELT) and the time libopus takes to decode such frames to 8 kHz.

    .venv/bin/python bench/browser_opus_band.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import wave
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtc.opus import OpusDecoder  # noqa: E402

PAGE = """<script>
async function run(rate, ms) {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const pc1 = new RTCPeerConnection();
  const pc2 = new RTCPeerConnection({encodedInsertableStreams: true});
  pc1.onicecandidate = e => e.candidate && pc2.addIceCandidate(e.candidate);
  pc2.onicecandidate = e => e.candidate && pc1.addIceCandidate(e.candidate);
  const frames = [];
  pc2.ontrack = e => {
    const {readable, writable} = e.receiver.createEncodedStreams();
    readable.pipeThrough(new TransformStream({transform(f, c) {
      frames.push(Array.from(new Uint8Array(f.data)));
      c.enqueue(f);
    }})).pipeTo(writable);
  };
  stream.getTracks().forEach(t => pc1.addTrack(t, stream));
  await pc1.setLocalDescription(await pc1.createOffer());
  await pc2.setRemoteDescription(pc1.localDescription);
  const answer = await pc2.createAnswer();
  await pc2.setLocalDescription(answer);
  let sdp = answer.sdp;
  if (rate) sdp = sdp.replace(/a=fmtp:(\\d+) ([^\\r\\n]*)/, `a=fmtp:$1 $2;maxplaybackrate=${rate}`);
  await pc1.setRemoteDescription({type: 'answer', sdp});
  await new Promise(r => setTimeout(r, ms));
  pc1.close(); pc2.close();
  return {fmtp: (sdp.match(/a=fmtp:\\d+ [^\\r\\n]*/) || [''])[0], frames};
}
</script>"""


def voiced(path: str, seconds: float = 6.0, rate: int = 48000) -> None:
    """A speech-like test signal: a gliding 120 Hz buzz, syllable bursts, a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / rate
    y = sum(np.sin(k * phase) / k for k in range(1, 30))
    y = y * (np.sin(2 * np.pi * 2.5 * t) > -0.3) * 0.15
    y += 0.01 * np.random.default_rng(0).standard_normal(len(t))
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(y, -1, 1) * 32767).astype(np.int16).tobytes())


def decode_us(frames: list[bytes]) -> float:
    decoder = OpusDecoder(8000)
    start = time.thread_time()
    for _ in range(5):
        for frame in frames:
            decoder.decode(frame)
    return 1e6 * (time.thread_time() - start) / (5 * len(frames))


async def main() -> None:
    from playwright.async_api import async_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "voiced.wav")
        voiced(wav)
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=[
                    "--no-sandbox",
                    "--disable-background-networking",
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}",
                ],
            )
            page = await browser.new_page()
            await page.route(
                "http://localhost/",
                lambda route: route.fulfill(body=PAGE, content_type="text/html"),
            )
            await page.goto("http://localhost/")
            heading = f"{'maxplaybackrate':>15}  {'frames':>6}  {'Opus configurations':<24}"
            print(f"{heading} decode to 8 kHz")
            for rate in (None, 16000, 8000):
                result = await page.evaluate("([r, ms]) => run(r, ms)", [rate, args.seconds * 1000])
                frames = [bytes(f) for f in result["frames"] if f]
                configs = Counter(f[0] >> 3 for f in frames)
                print(
                    f"{rate or '-':>15}  {len(frames):>6}  {dict(configs)!s:<24} "
                    f"{decode_us(frames):.1f} us per frame"
                )
            await browser.close()


if __name__ == "__main__":
    asyncio.run(main())
