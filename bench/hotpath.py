"""
CPU per packet of the gateway's media hot path, in one process, without the
noise of a load test: one call (WebRtcLeg <-> MediaBridge <-> RtpLeg, the
gateway's classes) is set up against an aiortc peer on loopback, then packets
are handed straight to the legs' datagram callbacks in a tight loop, as the
event loop would hand them over, on a simulated clock that advances 20 ms per
packet: per iteration one browser packet (SRTP, protected with the peer's
DTLS session, into the ICE socket's callback) and one SIP packet (plain RTP
into the RtpLeg's socket callback). Everything the legs do per packet runs
for real, including SRTP and the `sendto` of what they send (to sockets
nobody reads while the loop runs: the kernel drops what does not fit).

    .venv/bin/python bench/hotpath.py [--packets 20000] [--calls 1] [--browser-codec opus|pcmu]
                                      [--uvloop] [--profile] [--direction both|to-sip|to-browser]

Prints CPU microseconds (user + system, and each) per iteration, i.e. per
relayed packet pair (per direction when ``--direction`` picks one), over the
whole run and for the best and the median block of 500 iterations (the best
block is the figure least disturbed by other work on the machine: compare
builds by it, run back to back).
``--profile`` runs the loop under cProfile and prints the functions with the
most own time per iteration (cProfile's per-call overhead inflates code made
of many small calls; use it as a ranking). Not in it: the event loop's own
work (epoll, recvfrom), timers (filler, playout deadlines, RTCP) and aiortc's
background tasks, which bench/media_load.py includes.
"""

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import random
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RTP_HEADER = struct.Struct("!BBHII")
COUNTERS = ("browser_received", "browser_sent", "sip_sent", "sip_received")
FRAME = 0.02
BLOCK = 500  # iterations timed together


class _FakeClockLoop:
    """The running loop as the legs see it, with ``time()`` on a simulated clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start: float) -> None:
        self._loop = loop
        self.now = start

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)


@dataclass
class Call:
    """One gateway call and the packets to feed it."""

    pc: Any
    web: Any
    rtp: Any
    bridge: Any
    sip_transport: Any
    web_callback: Callable[[bytes, Any], None]
    web_from: tuple[str, int]
    rtp_callback: Callable[[bytes, Any], None]
    sip_addr: tuple[str, int]
    browser_packets: list[bytes]
    sip_packets: list[bytes]

    def counters(self) -> tuple[int, int, int, int]:
        web, rtp = self.web, self.rtp
        # what circuits (rtc.circuit) relayed, counted in the legs
        web._sync_circuits()
        rtp._sync_circuits()
        return web.direct_received, web.direct_sent, rtp.packets_sent, rtp.packets_received

    async def close(self) -> None:
        await self.bridge.close()
        await self.web.close()
        await self.rtp.close()
        await self.pc.close()
        self.sip_transport.close()


async def setup_call(browser_payload: bytes, step: int, pcmu_browser: bool, packets: int) -> Call:
    import av
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
    from aiortc.rtp import RtpPacket

    from rtc.bridge import MediaBridge
    from rtc.g711 import ulaw_encode
    from rtc.rtpleg import RtpLeg
    from rtc.webrtcleg import WebRtcLeg

    loop = asyncio.get_running_loop()

    class Idle(MediaStreamTrack):
        kind = "audio"

        async def recv(self) -> av.Packet:
            await loop.create_future()
            raise AssertionError("never")

    # the browser: aiortc for ICE/DTLS only
    pc = RTCPeerConnection()
    transceiver = pc.addTransceiver(Idle(), direction="sendrecv")
    codecs = list(transceiver.sender.getCapabilities("audio").codecs)
    if pcmu_browser:
        codecs = [c for c in codecs if c.mimeType.lower() == "audio/pcmu"]
    codecs.sort(key=lambda c: c.mimeType.lower() != "audio/opus")
    transceiver.setCodecPreferences(codecs)
    await pc.setLocalDescription(await pc.createOffer())

    # the SIP peer: a socket the RtpLeg sends to (never read)
    sip_transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    sip_addr = sip_transport.get_extra_info("sockname")
    sip_offer = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {sip_addr[1]} RTP/AVP 0\r\na=ptime:20\r\na=sendrecv\r\n"
    )

    web = WebRtcLeg()
    answer = await web.accept_offer(pc.localDescription.sdp)
    rtp = await RtpLeg.open("127.0.0.1", 20000, 40000)
    rtp.create_answer(sip_offer.encode())
    bridge = MediaBridge(web)
    bridge.connect(rtp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    for _ in range(100):
        if pc.connectionState == "connected" and web._direct_path() is not None:
            break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("no DTLS connection")

    # the browser's packets, protected with its DTLS session's SRTP context
    sender = transceiver.sender
    dtls = sender.transport
    codec = transceiver._codecs[0]
    probe = RtpPacket(payload_type=codec.payloadType)
    probe.extensions.mid = sender._RTCRtpSender__mid
    raw = probe.serialize(sender._RTCRtpSender__rtp_header_extensions_map)
    first, extension = raw[0], raw[12:]
    seq0, ts0, ssrc = random.getrandbits(16), random.getrandbits(32), sender._ssrc
    browser_packets = [
        dtls._tx_srtp.protect(
            RTP_HEADER.pack(
                first, codec.payloadType, (seq0 + n) & 0xFFFF, (ts0 + n * step) & 0xFFFFFFFF, ssrc
            )
            + extension
            + browser_payload
        )
        for n in range(packets)
    ]
    sip_payload = ulaw_encode(
        (np.sin(2 * np.pi * 1000 * np.arange(160) / 8000) * 8000).astype(np.int16)
    )
    sip_packets = [
        RTP_HEADER.pack(0x80, 0, n & 0xFFFF, n * 160, 0x5151) + sip_payload for n in range(packets)
    ]
    ice_receive = dtls.transport._connection._nominated[1]
    # the gateway's side of the nominated pair: its protocol's callback (shortcut)
    gateway_pair = web._direct_path()
    assert gateway_pair is not None
    pair = gateway_pair.pair if hasattr(gateway_pair, "pair") else gateway_pair[1]
    assert rtp._transport is not None
    return Call(
        pc=pc,
        web=web,
        rtp=rtp,
        bridge=bridge,
        sip_transport=sip_transport,
        web_callback=pair.protocol.datagram_received,
        web_from=(ice_receive.local_candidate.host, ice_receive.local_candidate.port),
        rtp_callback=rtp._transport.get_protocol().datagram_received,
        sip_addr=sip_addr,
        browser_packets=browser_packets,
        sip_packets=sip_packets,
    )


def browser_input(pcmu_browser: bool) -> tuple[bytes, int]:
    """One browser payload (PCMU, or Opus of a 1 kHz tone) and its timestamp step."""
    from rtc.g711 import ulaw_encode

    if pcmu_browser:
        pcm = (np.sin(2 * np.pi * 1000 * np.arange(160) / 8000) * 8000).astype(np.int16)
        return ulaw_encode(pcm), 160
    from media_load import browser_opus

    pcm48 = (np.sin(2 * np.pi * 1000 * np.arange(960 * 8) / 48000) * 8000).astype(np.int16)
    return browser_opus(pcm48)[-1], 960


async def run(args: argparse.Namespace) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    pcmu_browser = args.browser_codec == "pcmu"
    payload, step = browser_input(pcmu_browser)
    rounds = max(1, args.packets // args.calls)  # packets per call
    calls = [await setup_call(payload, step, pcmu_browser, rounds) for _ in range(args.calls)]
    await asyncio.sleep(0.5)

    before = [call.counters() for call in calls]
    fake = _FakeClockLoop(loop, loop.time())
    real_get_running_loop = asyncio.get_running_loop
    asyncio.get_running_loop = lambda: fake  # type: ignore[assignment]
    to_sip = args.direction in ("both", "to-sip")
    to_browser = args.direction in ("both", "to-browser")
    profiler = cProfile.Profile() if args.profile else None
    # as the gateway does once started (gateway/app.py): what exists now is never
    # collected, so the collector's passes only scan what the loop allocates
    gc.collect()
    gc.freeze()
    try:
        if profiler is not None:
            profiler.enable()
        times0 = os.times()
        # CPU time per block of BLOCK iterations: the best block is the figure
        # least disturbed by whatever else the machine did meanwhile
        # (each round: one packet per direction of every call, 20 ms later)
        blocks: list[float] = []
        block_rounds = max(1, BLOCK // args.calls)
        for start in range(0, rounds, block_rounds):
            block0 = time.thread_time()
            stop = min(start + block_rounds, rounds)
            for n in range(start, stop):
                fake.now += FRAME
                for call in calls:
                    if to_sip:
                        call.web_callback(call.browser_packets[n], call.web_from)
                    if to_browser:
                        call.rtp_callback(call.sip_packets[n], call.sip_addr)
            blocks.append((time.thread_time() - block0) / ((stop - start) * len(calls)))
        times1 = os.times()
        if profiler is not None:
            profiler.disable()
    finally:
        asyncio.get_running_loop = real_get_running_loop  # type: ignore[assignment]
        gc.unfreeze()
    after = [call.counters() for call in calls]
    counts = {
        name: sum(a[k] - b[k] for a, b in zip(after, before, strict=True))
        for k, name in enumerate(COUNTERS)
    }
    iterations = rounds * len(calls)
    user = times1.user - times0.user
    system = times1.system - times0.system
    blocks.sort()
    result = {
        "best_block_us": 1e6 * blocks[0],
        "median_block_us": 1e6 * blocks[len(blocks) // 2],
        "us_per_iteration": 1e6 * (user + system) / iterations,
        "user_us": 1e6 * user / iterations,
        "system_us": 1e6 * system / iterations,
        **counts,
    }
    if profiler is not None:
        stats = pstats.Stats(profiler)
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
        print(f"{'own us':>8} {'cum us':>8} {'calls':>6}  per iteration")
        for (filename, line, name), (_, ncalls, tottime, cumtime, _) in rows[: args.top]:
            where = filename if len(filename) < 50 else "..." + filename[-47:]
            print(
                f"{1e6 * tottime / iterations:8.2f} {1e6 * cumtime / iterations:8.2f} "
                f"{ncalls / iterations:6.2f}  {where}:{line}({name})"
            )
    for call in calls:
        await call.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=20000, help="iterations in all")
    parser.add_argument(
        "--calls",
        type=int,
        default=1,
        help="calls fed in turn (each call's state is then no longer hot in the CPU caches)",
    )
    parser.add_argument("--browser-codec", choices=("opus", "pcmu"), default="opus")
    parser.add_argument("--direction", choices=("both", "to-sip", "to-browser"), default="both")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=1, help="runs; the best is reported")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    best: dict[str, float] | None = None
    for _ in range(args.repeat):
        result = asyncio.run(run(args))
        if best is None or result["best_block_us"] < best["best_block_us"]:
            best = result
    assert best is not None
    print(
        f"{args.browser_codec} browser, {args.direction}, "
        f"{'uvloop' if args.uvloop else 'asyncio'}: {best['us_per_iteration']:.1f} us CPU per "
        f"iteration, best block of {BLOCK} {best['best_block_us']:.1f}, median block "
        f"{best['median_block_us']:.1f} (all: user {best['user_us']:.1f}, "
        f"system {best['system_us']:.1f}; "
        f"{', '.join(f'{k} {v:.0f}' for k, v in best.items() if k in COUNTERS)})"
    )


if __name__ == "__main__":
    main()
