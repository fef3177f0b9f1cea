"""
Load test of the media path: N concurrent calls through gateway-like pipelines
(WebRtcLeg <-> MediaBridge <-> RtpLeg, transcoding Opus <-> PCMU) in one
process pinned to a core, driven by a light load generator pinned to another.

The generator, per call:
- WebRTC side: an aiortc peer for ICE and DTLS only. Once connected, the
  generator sends pre-encoded Opus packets (PCMU with --browser-codec pcmu;
  no encoding) itself from the shared 20 ms timer below: its own RTP header,
  SRTP with the DTLS transport's session, straight onto the nominated ICE
  pair's UDP socket (aiortc's sender idles on a track that never yields; its
  RTCP goes on). What arrives is recorded from the datagram callback of the
  peer's ICE sockets: the RTP header of SRTP is in the clear, so arrival time
  and timestamp are read without unprotecting or decoding (with --latency,
  the one call's packets are unprotected to keep the payload);
- SIP side: pre-built PCMU RTP packets sent every 20 ms to the call's RtpLeg
  from the same shared timer, and a recorder of what comes back.

So per packet the generator does about what a lean peer must (a header, SRTP,
one sendto; one header read per arrival), and the figures at large N measure
the gateway rather than aiortc's per-packet machinery in the generator.

The audio is a tone burst pattern (400 ms of 1 kHz, 100 ms silence), the same
on both sides. Figures per N:
- gateway CPU: process CPU time (all threads) / wall time over the window,
  and per call;
- loss induced by the gateway: packets missing at each output against one per
  20 ms of the window (the network is loopback), plus frames the gateway
  itself concealed (jitter buffer) or replaced by silence (empty playout queue);
- frame lateness: for each output packet, arrival - (its RTP timestamp in
  seconds), less the stream's minimum; p50/p99/max over all packets;
- with --latency: added one-way latency, from the onset of each tone burst in
  the input packets to its onset in the decoded output packets (packetization
  at both ends removed: codec lookahead, resampling, queues and the jitter
  buffer included), per direction, p50/p99.

    .venv/bin/python bench/media_load.py --calls 20,60,100 [--seconds 10]
    .venv/bin/python bench/media_load.py --calls 1 --latency
    .venv/bin/python bench/media_load.py --calls 50,100 --browser-codec pcmu
    .venv/bin/python bench/media_load.py --calls 16,32 --gateway-uvloop

``--idle``: the generator sends nothing once the calls are up, so each leg sends
filler (silence) on its own timer; the figures are then the cost of idle calls (the
loss and lateness are of the filler).

``--browser-codec pcmu``: the WebRTC peers send and accept PCMU only, so both
legs of each call send PCMU and the gateway relays payloads (pass-through);
the counters then show frames decoded/encoded (should stay ~0) and relayed.

The gateway runs as a child process under ``taskset -c 0``, the generator
under ``taskset -c 1`` (when the machine has two cores).
"""

import argparse
import asyncio
import collections
import fcntl
import gc
import json
import os
import random
import re
import resource
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FRAME = 0.02
PERIOD_FRAMES = 25  # 500 ms: 20 frames of tone, 5 of silence
SAMPLED_CALLS = 32  # calls whose datagrams' wait in the gateway's sockets is timed
TONE_FRAMES = 20
TONE_AMPLITUDE = 0.3
RTP_HEADER = struct.Struct("!BBHII")
RTP_TIMESTAMP = struct.Struct("!I")


def pattern(rate: int) -> np.ndarray:
    """One period of the burst pattern as int16 at ``rate``."""
    n = rate * PERIOD_FRAMES // 50
    t = np.arange(n) / rate
    y = TONE_AMPLITUDE * np.sin(2 * np.pi * 1000 * t)
    y[rate * TONE_FRAMES // 50 :] = 0
    return np.rint(y * 32767).astype(np.int16)


def browser_opus(pcm48: np.ndarray, max_playback_rate: int | None = None) -> list[bytes]:
    """
    ``pcm48`` (int16 at 48 kHz, whole 20 ms frames) as Opus packets, one per frame, as
    Chrome sends by default: mono (the SDP says stereo=0), 32 kb/s, VoIP; band-limited
    as Chrome does when the answer gives ``maxplaybackrate`` (RFC 7587; Chromium's
    behaviour is shown by bench/browser_opus_band.py).
    """
    import av

    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.options = {"application": "voip"}
    if max_playback_rate is not None:
        # libopus' encoder bandwidth as libwebrtc chooses it from maxplaybackrate
        cutoff = next(
            c
            for rate, c in (
                (8000, 4000),
                (12000, 6000),
                (16000, 8000),
                (24000, 12000),
                (48000, 20000),
            )
            if max_playback_rate <= rate
        )
        encoder.options = {**encoder.options, "cutoff": str(cutoff)}
    frames = len(pcm48) // 960
    packets: list[bytes] = []
    for k in range(frames):
        mono = pcm48[k * 960 : (k + 1) * 960]
        frame = av.AudioFrame.from_ndarray(mono.reshape(1, -1), "s16", "mono")
        frame.sample_rate = 48000
        frame.pts = k * 960
        packets.extend(bytes(p) for p in encoder.encode(frame))
    while len(packets) < frames:
        packets.extend(bytes(p) for p in encoder.encode(None))
    return packets[:frames]


def use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def context_switches() -> tuple[int, int]:
    """(voluntary, involuntary): the process waited for input / was held off its core."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw, usage.ru_nivcsw


# --- the gateway side --------------------------------------------------------


class Sampler:
    """
    BENCH_SAMPLE=path: a statistical profile of the gateway over the measurement
    window. A SIGPROF timer (process CPU time, user + system) interrupts every
    millisecond of CPU (asked for) and the Python stack at that moment is counted:
    unlike cProfile, no cost is added per call, so the shares are those of the
    real run (C time counts toward the Python function that called it; time
    inside the event loop's own C code, e.g. uvloop's recvfrom, is counted when
    Python runs next: in the datagram callback it leads to). The kernel's timer
    tick limits the rate to about one sample per 4 ms of CPU here. Written as
    JSON: samples per leaf function ("self") and per function anywhere on the
    stack ("total").
    """

    INTERVAL = 0.001

    def __init__(self, path: str) -> None:
        self.path = path
        self.own: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.samples = 0

    def _sample(self, signum: int, frame: Any) -> None:
        self.samples += 1
        seen = set()
        leaf = True
        while frame is not None:
            code = frame.f_code
            name = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}({code.co_name})"
            if leaf:
                self.own[name] = self.own.get(name, 0) + 1
                leaf = False
            if name not in seen:
                seen.add(name)
                self.total[name] = self.total.get(name, 0) + 1
            frame = frame.f_back

    def start(self) -> None:
        import signal

        self.own.clear()
        self.total.clear()
        self.samples = 0
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.INTERVAL, self.INTERVAL)

    def stop(self) -> None:
        import signal

        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        with open(self.path, "w") as f:
            json.dump({"samples": self.samples, "self": self.own, "total": self.total}, f)


async def gateway_main() -> None:
    from rtc.bridge import MediaBridge
    from rtc.rtpleg import RtpLeg
    from rtc.webrtcleg import WebRtcLeg

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    calls: list[tuple[WebRtcLeg, RtpLeg, MediaBridge]] = []
    mark = (0.0, 0.0, {})
    switches = context_switches()
    sample_path = os.environ.get("BENCH_SAMPLE")
    sampler = Sampler(sample_path) if sample_path else None

    # as gateway/app.py does once started: what exists now is never collected
    gc.collect()
    gc.freeze()
    # the collector's passes stop every call's media while they run: time them
    pauses: list[tuple[int, float]] = []  # generation, seconds
    started = [0.0]
    collecting: list[asyncio.TimerHandle | None] = [None]
    pause_mark: tuple[int, int, int, int] | None = None
    relay: Any = None

    def gc_pause(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], time.perf_counter() - started[0]))

    gc.callbacks.append(gc_pause)

    # How long a datagram waited in its socket before the gateway's callback ran
    # (the kernel's arrival stamp against the clock when the callback starts), on a
    # sample of the calls: the gateway's own part of the lateness, apart from the
    # generator's (whose sending can be late at large N).
    waits: list[float] = []
    stamp = bytearray(16)

    def waited(protocol: Any, transport: Any) -> Callable[[bytes, Any], None]:
        original = protocol.datagram_received
        fd = transport.get_extra_info("socket").fileno()

        def datagram_received(data: bytes, addr: Any) -> None:
            now = time.time()
            fcntl.ioctl(fd, SIOCGSTAMPNS, stamp, True)
            seconds, nanoseconds = struct.unpack_from("qq", stamp)
            waits.append(now - seconds - nanoseconds * 1e-9)
            original(data, addr)

        return datagram_received

    def counters() -> dict[str, int]:
        total = {"jb_played": 0, "jb_concealed": 0, "jb_late": 0, "webrtc_filled": 0}
        total["rtp_filled"] = 0
        for key in ("decoded", "encoded", "passed", "relayed"):
            total[key] = 0
        for web, rtp, _ in calls:
            web._sync_circuits()  # what circuits relayed since their last sync
            rtp._sync_circuits()
            total["decoded"] += web.decoded + rtp.frames_decoded
            total["encoded"] += web._track.encoded + rtp.frames_encoded
            total["passed"] += web.frames_passed + rtp.frames_passed
            total["relayed"] += web._track.relayed + rtp.frames_relayed
            jb = rtp.jitter_buffer
            total["jb_played"] += jb.played
            total["jb_concealed"] += jb.concealed
            total["jb_late"] += jb.late
            # silence the legs sent themselves because nothing was written for 60 ms
            total["webrtc_filled"] += web._track.filled + web._playout.underruns
            total["rtp_filled"] += rtp.frames_filled
        return total

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "call":
            # as the gateway's core makes it for a call to a G.711 SIP peer
            web = WebRtcLeg(playback_rate=8000)
            answer = await web.accept_offer(cmd["offer"])
            rtp = await RtpLeg.open("127.0.0.1", 20000, 40000)
            sip_answer = rtp.create_answer(cmd["sip_offer"].encode())
            bridge = MediaBridge(web)
            bridge.connect(rtp)
            calls.append((web, rtp, bridge))
            reply({"answer": answer, "sip_answer": sip_answer.decode()})
        elif cmd["cmd"] == "mark":
            import rtc.circuit

            relay = rtc.circuit._relay
            if not cmd.get("pause_relay", True) and rtc.circuit._collector in gc.callbacks:
                gc.callbacks.remove(rtc.circuit._collector)
            pause_mark = relay.pause_figures() if relay is not None else None
            every = cmd.get("collect", 0.0)
            if every > 0:
                # full passes of the collector, as calls coming and going bring them on
                def collect_now(every: float = every) -> None:
                    gc.collect()
                    collecting[0] = loop.call_later(every, collect_now)

                collecting[0] = loop.call_later(every, collect_now)
            mark = (loop.time(), cpu_seconds(), counters())
            switches = context_switches()
            pauses.clear()
            waits.clear()
            for web, rtp, _ in calls[:: max(1, len(calls) // SAMPLED_CALLS)]:
                timed = [(rtp._transport.get_protocol(), rtp._transport)] if rtp._transport else []
                if web._hooked is not None:
                    timed += [(p, p.transport) for p in web._hooked[0]._protocols if p.transport]
                for protocol, transport in timed:
                    protocol.datagram_received = waited(protocol, transport)
                    transport.set_protocol(protocol)  # rtc.udp: the callback as it is now
            if sampler is not None:
                sampler.start()
            reply({})
        elif cmd["cmd"] == "report":
            if sampler is not None:
                sampler.stop()
            if collecting[0] is not None:
                collecting[0].cancel()
            pause_end = relay.pause_figures() if relay is not None else None
            wall = loop.time() - mark[0]
            cpu = cpu_seconds() - mark[1]
            ended = context_switches()
            voluntary, involuntary = ended[0] - switches[0], ended[1] - switches[1]
            now = counters()
            # after the window: what a full pass of the collector costs with N calls
            # (call set-up and tear-down in a real gateway bring one on now and then)
            full = time.perf_counter()
            gc.collect()
            full = time.perf_counter() - full
            pauses.pop()  # that pass, timed by the callback too
            reply(
                {
                    "wall": wall,
                    "cpu": cpu,
                    "counters": {k: now[k] - mark[2].get(k, 0) for k in now},
                    "gc_full_passes": sum(1 for g, _ in pauses if g == 2),
                    "gc_max_pause_ms": 1000 * max((d for _, d in pauses), default=0.0),
                    "gc_passes": [sum(1 for g, _ in pauses if g == k) for k in range(3)],
                    "gc_max_ms": [
                        1000 * max((d for g, d in pauses if g == k), default=0.0) for k in range(3)
                    ],
                    "gc_full_ms": 1000 * full,
                    "gc_tracked": len(gc.get_objects()),
                    "switches": [voluntary, involuntary],
                    # in the collector's passes: passes served, packets relayed by
                    # rtc._relay's thread, datagrams it left for Python
                    "pause_relay": (
                        [b - a for a, b in zip(pause_mark[:3], pause_end[:3], strict=True)]
                        if pause_mark is not None and pause_end is not None
                        else None
                    ),
                    "waits": [float(np.percentile(waits or [0.0], q)) for q in (50, 99, 99.9)]
                    + [max(waits, default=0.0)],
                }
            )
        elif cmd["cmd"] == "quit":
            for web, rtp, bridge in calls:
                await bridge.close()
                await web.close()
                await rtp.close()
            reply({})
            return


# --- the generator side ------------------------------------------------------


@dataclass
class Stream:
    """What arrived on one output: (arrival time, RTP timestamp, payload)."""

    clock: int
    arrivals: list[tuple[float, int, bytes]] = field(default_factory=list)
    keep_payload: bool = False
    # how long after the kernel's arrival stamp the generator's loop handled each packet
    handling: list[float] = field(default_factory=list)

    def add(self, arrival: float, timestamp: int, payload: bytes) -> None:
        self.arrivals.append((arrival, timestamp, payload if self.keep_payload else b""))


SIOCGSTAMPNS = 0x8907  # Linux: when the kernel received a socket's last datagram
SO_TIMESTAMPNS = 35  # Linux (x86, arm): each datagram comes with that stamp (SCM_TIMESTAMPNS)
STAMP_SPACE = socket.CMSG_SPACE(16)


class KernelClock:
    """
    Arrival times as the kernel stamped them (SIOCGSTAMPNS, read right after the
    loop's recvfrom handed the datagram over), on the loop's clock. The generator
    handles as many packets as the gateway; the moments its own loop was busy
    elsewhere must not count as the gateway's lateness.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.offset = time.time() - loop.time()  # CLOCK_REALTIME -> the loop's clock
        self._now = loop.time
        self._buffer = bytearray(16)

        # the stamp that came with the datagram being handled (Poller's recvmsg)
        self.given: bytes | None = None

    def arrival(self, fd: int, handling: list[float]) -> float:
        """The kernel's arrival time; the delay until now is appended to ``handling``."""
        stamp = self.given
        if stamp is None:
            fcntl.ioctl(fd, SIOCGSTAMPNS, self._buffer, True)
            stamp = self._buffer
        self.given = None
        seconds, nanoseconds = struct.unpack_from("qq", stamp)
        arrival = seconds + nanoseconds * 1e-9 - self.offset
        handling.append(self._now() - arrival)
        return arrival


def unwrap(timestamps: list[int]) -> np.ndarray:
    ts = np.array(timestamps, dtype=np.int64)
    return ts[0] + np.cumsum(np.concatenate(([0], ((np.diff(ts) + 2**31) % 2**32) - 2**31)))


def lateness(stream: Stream, start: float, end: float) -> np.ndarray:
    window = [(a, ts) for a, ts, _ in stream.arrivals if start <= a < end]
    if len(window) < 2:
        return np.zeros(0)
    arrival = np.array([a for a, _ in window])
    ts = unwrap([t for _, t in window]) / stream.clock
    delay = arrival - ts
    return delay - delay.min()


def onsets(signal: np.ndarray, rate: int) -> list[int]:
    """Sample indices where a burst starts after at least 60 ms of quiet."""
    loud = np.abs(signal.astype(np.int32)) > 0.05 * 32767
    quiet_needed = rate * 60 // 1000
    result = []
    last_loud = -quiet_needed - 1
    for i in np.flatnonzero(loud):
        if i - last_loud > quiet_needed:
            result.append(int(i))
        last_loud = i
    return result


def output_onset_times(stream: Stream, decode: Callable[[bytes], np.ndarray]) -> list[float]:
    """Time each burst onset left the gateway: its packet's arrival less the
    part of the packet that follows the onset (packetization removed)."""
    if not stream.arrivals:
        return []
    arrivals = sorted(stream.arrivals, key=lambda x: x[0])
    ts = unwrap([t for _, t, _ in arrivals])
    base = int(ts.min())
    frames = [decode(p) for _, _, p in arrivals]
    size = max(len(f) for f in frames)
    signal = np.zeros(int(ts.max() - base) + size, dtype=np.int16)
    for (_, _, _), t, frame in zip(arrivals, ts, frames, strict=True):
        signal[int(t) - base : int(t) - base + len(frame)] = frame
    times = []
    starts = ts - base
    for onset in onsets(signal, stream.clock):
        k = int(np.searchsorted(starts, onset, side="right")) - 1
        if k < 0:
            continue
        offset = onset - int(starts[k])
        packet_len = len(frames[k])
        times.append(arrivals[k][0] - (packet_len - offset) / stream.clock)
    return times


def pair_latencies(inputs: list[float], outputs: list[float]) -> list[float]:
    """Each output onset against the latest input onset before it."""
    result = []
    ins = np.array(sorted(inputs))
    for t in outputs:
        k = int(np.searchsorted(ins, t)) - 1
        if k >= 0 and t - ins[k] < 0.25:
            result.append(t - ins[k])
    return result


class SipSide(asyncio.DatagramProtocol):
    def __init__(self, stream: Stream, clock: KernelClock) -> None:
        self.stream = stream
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self.remote: tuple[str, int] | None = None
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fd = transport.get_extra_info("socket").fileno()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[1] & 0x7F != 0:
            return
        timestamp = struct.unpack_from("!I", data, 4)[0]
        self.stream.add(self.clock.arrival(self.fd, self.stream.handling), timestamp, data[12:])


class WebSide:
    """
    One call's WebRTC audio once DTLS is up, without aiortc's per-packet path:
    ``send`` builds the RTP header (the negotiated payload type, the aiortc
    sender's SSRC and mid header extension, sequence numbers and timestamps of
    our own), protects it with the DTLS transport's SRTP session and sends it
    on the nominated ICE pair's socket; ``datagram_received`` shadows each of
    the ICE connection's StunProtocol objects and records the SRTP audio
    packets from the clear-text header (everything else goes on to aioice).
    """

    def __init__(self, pc: Any, stream: Stream, step: int, clock: KernelClock) -> None:
        from aiortc.rtp import RtpPacket

        transceiver = pc.getTransceivers()[0]
        sender = transceiver.sender
        self.dtls = sender.transport
        assert self.dtls._tx_srtp is not None, "DTLS not connected"
        connection = self.dtls.transport._connection
        pair = connection._nominated[1]
        self.socket = pair.protocol.transport
        self.remote = pair.remote_addr
        codec = transceiver._codecs[0]
        self.payload_type: int = codec.payloadType
        probe = RtpPacket(payload_type=self.payload_type)
        probe.extensions.mid = sender._RTCRtpSender__mid
        raw = probe.serialize(sender._RTCRtpSender__rtp_header_extensions_map)
        self.first = raw[0]  # V=2 and the extension bit
        self.extension = raw[12:]
        self.ssrc: int = sender._ssrc
        self.sequence0 = random.getrandbits(16)
        self.timestamp0 = random.getrandbits(32)
        self.step = step  # RTP clock units per 20 ms
        self.stream = stream
        self.protect = self.dtls._tx_srtp.protect
        self.clock = clock
        self.protocols = list(connection._protocols)
        for protocol in self.protocols:
            fd = protocol.transport.get_extra_info("socket").fileno()
            protocol.datagram_received = self._hook(protocol.datagram_received, fd)

    def send(self, n: int, payload: bytes) -> None:
        header = RTP_HEADER.pack(
            self.first,
            self.payload_type | 0x80 if n == 0 else self.payload_type,
            (self.sequence0 + n) & 0xFFFF,
            (self.timestamp0 + n * self.step) & 0xFFFFFFFF,
            self.ssrc,
        )
        self.socket.sendto(self.protect(header + self.extension + payload), self.remote)

    def _hook(
        self, original: Callable[[bytes, Any], None], fd: int
    ) -> Callable[[bytes, Any], None]:
        payload_type = self.payload_type
        stream = self.stream
        arrival = self.clock.arrival
        handling = stream.handling
        unpack = RTP_TIMESTAMP.unpack_from

        def datagram_received(data: bytes, addr: Any) -> None:
            # SRTP (version 2) of our audio payload type; RTCP's packet types
            # (200-204) never match it, with or without the marker bit
            if len(data) > 12 and 127 < data[0] < 192 and data[1] & 0x7F == payload_type:
                when = arrival(fd, handling)
                if stream.keep_payload:
                    self._keep(data, when)
                else:
                    stream.arrivals.append((when, unpack(data, 4)[0], b""))
                return
            original(data, addr)

        return datagram_received

    def _keep(self, data: bytes, arrival: float) -> None:
        """--latency: the payload too, unprotected with the DTLS transport's session."""
        from rtc.rtp import parse_received

        try:
            packet = parse_received(self.dtls._rx_srtp.unprotect(data))
        except Exception:  # pylibsrtp.Error: dropped, as aiortc would
            return
        if packet is not None:
            self.stream.add(arrival, packet.timestamp, packet.payload)


class Poller:
    """
    --poll: the generator reads its sockets when its send timer wakes (each slot)
    instead of waiting for them in the event loop. On loopback, a datagram sent to
    a socket a process sleeps on wakes that process inside the sender's sendto,
    on the sender's core: ~6 us more per datagram here (3 us to a socket nobody
    waits on, 9-13 us to one a process waits on in epoll on the other core). With
    a real network between them, the gateway never pays for waking its peers; with
    a polling generator it does not here either, and what its sendto still costs
    (the loopback's transmit and the generator socket's receive path) stands in
    for the NIC's transmit and the gateway's own receive path, which loopback
    charges to the sender. Arrival times stay the kernel's stamps; the
    generator's "handling" delay then includes the wait for its next slot.
    """

    def __init__(self, endpoints: list[tuple[Any, Any]], clock: KernelClock) -> None:
        self._clock = clock
        self._epoll = select.epoll()
        # by file descriptor: the transport, our socket on it, the protocol
        self._endpoints: dict[int, tuple[Any, socket.socket, Any]] = {}
        for transport, protocol in endpoints:
            self.add(transport, protocol)

    def add(self, transport: Any, protocol: Any) -> None:
        """Stop the loop reading ``transport``; ``poll`` hands its datagrams to ``protocol``."""
        transport.pause_reading()
        fd = transport.get_extra_info("socket").fileno()
        # a socket object of our own on the same kernel socket (the transport's
        # wrapper has no recvfrom)
        own = socket.socket(fileno=os.dup(fd))
        own.setblocking(False)
        own.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._endpoints[fd] = (transport, own, protocol)
        self._epoll.register(fd, select.EPOLLIN)

    def poll(self) -> None:
        # Nobody sleeps on this epoll: arrivals wake no one. One datagram per
        # ready socket and poll, with its arrival stamp, in one system call (a
        # read until EAGAIN and a stamp ioctl were two more per datagram, at 600
        # calls the generator's bottleneck); the epoll is level-triggered, so
        # a second one waiting is read at the next slot, its stamp unchanged.
        clock = self._clock
        for fd, _ in self._epoll.poll(0):
            _, own, protocol = self._endpoints[fd]
            try:
                data, ancillary, _, addr = own.recvmsg(4096, STAMP_SPACE)
            except (BlockingIOError, InterruptedError):
                continue
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    clock.given = value
            protocol.datagram_received(data, addr)
            clock.given = None

    def close(self) -> None:
        """The loop reads the sockets again (for DTLS's goodbye and the like)."""
        for transport, own, _ in self._endpoints.values():
            if not transport.is_closing():
                transport.resume_reading()
            own.close()
        self._epoll.close()


async def generator_main(args: argparse.Namespace, calls: int) -> dict[str, Any]:
    import av
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from rtc.g711 import ulaw_decode, ulaw_encode
    from rtc.webrtcrtcp import pace_reports

    loop = asyncio.get_running_loop()
    clock = KernelClock(loop)
    gateway_cmd = [sys.executable, os.path.abspath(__file__), "--role", "gateway"]
    if args.uvloop or args.gateway_uvloop:
        gateway_cmd.append("--uvloop")
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        gateway_cmd = ["taskset", "-c", "0", *gateway_cmd]
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def command(obj: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        await proc.stdin.drain()
        return json.loads(await proc.stdout.readline())  # type: ignore[no-any-return]

    # pre-encoded inputs: one period of PCMU payloads, and one of Opus packets once the
    # gateway's answer tells their band
    pcm8 = pattern(8000)
    pcmu_payloads = [ulaw_encode(pcm8[k * 160 : (k + 1) * 160]) for k in range(PERIOD_FRAMES)]
    pcmu_browser = args.browser_codec == "pcmu"

    # --latency: when each input burst of call 0 began, per side (its SIP packets go out
    # in slot 0, its browser packets half a period later: see send_rtp)
    sip_onsets: list[float] = []
    web_onsets: list[float] = []
    receivers: dict[int, Stream] = {}

    # what reaches aiortc's receivers before WebSide hooks the ICE sockets
    # (before the measurement) is recorded here, never decoded
    async def record(self: RTCRtpReceiver, packet: Any, arrival_time_ms: int) -> None:
        stream = receivers.get(id(self))
        if stream is not None and packet.payload_type != 101:
            stream.add(loop.time(), packet.timestamp, packet.payload)

    RTCRtpReceiver._handle_rtp_packet = record  # type: ignore[method-assign]

    class Idle(MediaStreamTrack):
        """aiortc's sender waits on it for ever: WebSide sends the audio."""

        kind = "audio"

        async def recv(self) -> av.Packet:
            await loop.create_future()
            raise AssertionError("never")

    pcs = []
    sip_sides: list[SipSide] = []
    web_streams: list[Stream] = []
    setup_start = time.monotonic()
    for i in range(calls):
        pc = RTCPeerConnection()
        transceiver = pc.addTransceiver(Idle(), direction="sendrecv")
        # its RTCP as a browser paces audio reports (every ~5 s), not aiortc's every ~1 s
        pace_reports(transceiver)
        codecs = [c for c in transceiver.sender.getCapabilities("audio").codecs]
        if pcmu_browser:
            codecs = [c for c in codecs if c.mimeType.lower() == "audio/pcmu"]
        codecs.sort(key=lambda c: c.mimeType.lower() != "audio/opus")
        transceiver.setCodecPreferences(codecs)
        web_stream = Stream(8000 if pcmu_browser else 48000, keep_payload=args.latency and i == 0)
        receivers[id(transceiver.receiver)] = web_stream
        web_streams.append(web_stream)
        await pc.setLocalDescription(await pc.createOffer())
        sip_stream = Stream(8000, keep_payload=args.latency and i == 0)
        side = SipSide(sip_stream, clock)
        await loop.create_datagram_endpoint(lambda side=side: side, local_addr=("127.0.0.1", 0))
        assert side.transport is not None
        port = side.transport.get_extra_info("sockname")[1]
        sip_offer = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=ptime:20\r\na=sendrecv\r\n"
        )
        reply = await command(
            {"cmd": "call", "offer": pc.localDescription.sdp, "sip_offer": sip_offer}
        )
        await pc.setRemoteDescription(RTCSessionDescription(reply["answer"], "answer"))
        playback_rate = re.search(r"maxplaybackrate=(\d+)", reply["answer"])
        sip_port = int(reply["sip_answer"].split("m=audio ")[1].split()[0])
        side.remote = ("127.0.0.1", sip_port)
        pcs.append(pc)
        sip_sides.append(side)
        if (i + 1) % 100 == 0:
            print(
                f"   {i + 1} calls offered ({time.monotonic() - setup_start:.0f} s)",
                file=sys.stderr,
            )
    # a peer that never connects (ICE checks starved at large N) must not hang the run
    connect_deadline = time.monotonic() + 60 + calls / 10
    while any(pc.connectionState != "connected" for pc in pcs):
        states = collections.Counter(pc.connectionState for pc in pcs)
        if states["failed"] or states["closed"] or time.monotonic() > connect_deadline:
            # a peer closes when its ICE consent expires (no answer for 30 s): the
            # gateway or the generator is past its core while the calls are set up
            raise RuntimeError(
                f"WebRTC peers did not all connect: {dict(states)} after "
                f"{time.monotonic() - setup_start:.0f} s of set-up; at this many calls "
                "the gateway or the generator is past its core on this machine"
            )
        await asyncio.sleep(0.1)
    setup = time.monotonic() - setup_start
    # The tone bursts come out of libopus as speech would: hybrid full band, or SILK
    # narrowband once the answer's maxplaybackrate limits the band (as Chrome does).
    opus_packets = browser_opus(pattern(48000), int(playback_rate[1]) if playback_rate else None)
    browser_packets = pcmu_payloads if pcmu_browser else opus_packets
    webs = [
        WebSide(pc, stream, 160 if pcmu_browser else 960, clock)
        for pc, stream in zip(pcs, web_streams, strict=True)
    ]

    poller = Poller([(side.transport, side) for side in sip_sides], clock) if args.poll else None
    if poller is not None:
        for web in webs:
            for protocol in web.protocols:
                poller.add(protocol.transport, protocol)

    # both sides: one timer for every call's packets
    ssrc = 0x1234
    header = bytearray(12)

    slots = max(1, min(args.stagger, calls))
    send_late: list[tuple[float, float]] = []  # (when, how late the generator sent a slot)

    # --idle: the calls are up and nobody sends
    sip_senders = [] if args.idle else sip_sides
    web_senders = [] if args.idle else webs

    async def send_rtp() -> None:
        # Real calls start at unrelated moments: call i's SIP packets go out in slot
        # i % slots of each 20 ms period and its browser packets half a period later,
        # rather than every packet of every call in one burst.
        n = 0
        start = loop.time()
        while True:
            k = n % PERIOD_FRAMES
            payload = pcmu_payloads[k]
            browser_payload = browser_packets[k]
            for slot in range(slots):
                if poller is not None:
                    poller.poll()
                now = loop.time()
                send_late.append((now, now - (start + n * FRAME + slot * FRAME / slots)))
                if k == 0 and slot == 0:
                    sip_onsets.append(now - FRAME)
                if k == 0 and slot == (slots - slots // 2) % slots:
                    web_onsets.append(now - FRAME)
                for i in range(slot, len(sip_senders), slots):
                    side = sip_senders[i]
                    struct.pack_into("!BBHII", header, 0, 0x80, 0, n & 0xFFFF, n * 160, ssrc + i)
                    assert side.transport is not None and side.remote is not None
                    side.transport.sendto(bytes(header) + payload, side.remote)
                for i in range((slot + slots // 2) % slots, len(web_senders), slots):
                    web_senders[i].send(n, browser_payload)
                due = start + n * FRAME + (slot + 1) * FRAME / slots
                await asyncio.sleep(max(0.0, due - loop.time()))
            n += 1

    sender = loop.create_task(send_rtp())
    gen_cpu0 = cpu_seconds()
    # the generator is measuring equipment: its own collector pauses (tens of ms with
    # dozens of aiortc peers) would show as lateness of the gateway's packets
    gc.collect()
    gc.freeze()
    gc.disable()
    await asyncio.sleep(args.warmup)
    await command({"cmd": "mark", "collect": args.collect, "pause_relay": not args.no_pause_relay})
    t0 = loop.time()
    gen_mark = cpu_seconds()
    await asyncio.sleep(args.seconds)
    t1 = loop.time()
    report = await command({"cmd": "report"})
    gen_cpu = cpu_seconds() - gen_mark
    sender.cancel()
    if poller is not None:
        poller.close()
    gc.enable()
    gc.unfreeze()
    del gen_cpu0

    expected = (t1 - t0) / FRAME
    sip_streams = [side.stream for side in sip_sides]

    def loss(streams: list[Stream]) -> float:
        missing = 0.0
        for s in streams:
            got = sum(1 for a, _, _ in s.arrivals if t0 <= a < t1)
            missing += max(0.0, expected - got)
        return missing / (expected * len(streams))

    # allow for the one frame the window boundaries may cut
    late_web = np.concatenate([lateness(s, t0, t1) for s in web_streams])
    late_sip = np.concatenate([lateness(s, t0, t1) for s in sip_streams])
    result: dict[str, Any] = {
        "calls": calls,
        "setup_s": round(setup, 1),
        "gateway_cpu_pct": 100 * report["cpu"] / report["wall"],
        "cpu_ms_per_call_per_s": 1000 * report["cpu"] / report["wall"] / calls,
        "generator_cpu_pct": 100 * gen_cpu / (t1 - t0),
        "loss_to_browser_pct": 100 * loss(web_streams),
        "loss_to_sip_pct": 100 * loss(sip_streams),
        "late_web_p50_ms": 1000 * float(np.percentile(late_web, 50)),
        "late_web_p99_ms": 1000 * float(np.percentile(late_web, 99)),
        "late_sip_p50_ms": 1000 * float(np.percentile(late_sip, 50)),
        "late_sip_p99_ms": 1000 * float(np.percentile(late_sip, 99)),
        "generator_send_late_p99_ms": 1000
        * float(np.percentile([late for when, late in send_late if t0 <= when < t1], 99)),
        "generator_handling_p99_ms": 1000
        * float(np.percentile(np.concatenate([s.handling for s in web_streams + sip_streams]), 99)),
        "counters": report["counters"],
        "gc_full_passes": report["gc_full_passes"],
        "gc_max_pause_ms": report["gc_max_pause_ms"],
        "gc_passes": report["gc_passes"],
        "gc_max_ms": report["gc_max_ms"],
        "gc_full_ms": report["gc_full_ms"],
        "gc_tracked": report["gc_tracked"],
        "pause_relay": report["pause_relay"],
        "gateway_switches": report["switches"],
    }
    for name, value in zip(("p50", "p99", "p99.9", "max"), report["waits"], strict=True):
        result[f"gateway_wait_{name}_ms"] = 1000 * value
    c = report["counters"]
    frames = max(1, calls * expected)
    result["jb_concealed_pct"] = 100 * c["jb_concealed"] / frames
    result["filled_to_browser_pct"] = 100 * c["webrtc_filled"] / frames
    result["filled_to_sip_pct"] = 100 * c["rtp_filled"] / frames

    if args.latency:
        decoder = av.CodecContext.create("opus", "r")
        decoder.sample_rate = 48000
        decoder.layout = "stereo"

        def decode_opus(payload: bytes) -> np.ndarray:
            out = []
            for frame in decoder.decode(av.Packet(payload)):
                data = frame.to_ndarray().reshape(-1)
                if frame.format.is_planar:
                    data = frame.to_ndarray()[0]
                else:
                    data = data[:: frame.layout.nb_channels]
                if data.dtype.kind == "f":
                    data = np.rint(data * 32767)
                out.append(data.astype(np.int16))
            return np.concatenate(out) if out else np.zeros(960, np.int16)

        to_browser = pair_latencies(
            sip_onsets,
            output_onset_times(web_streams[0], ulaw_decode if pcmu_browser else decode_opus),
        )
        to_sip = pair_latencies(web_onsets, output_onset_times(sip_streams[0], ulaw_decode))
        for name, values in (("sip_to_browser", to_browser), ("browser_to_sip", to_sip)):
            if values:
                result[f"latency_{name}_p50_ms"] = 1000 * float(np.percentile(values, 50))
                result[f"latency_{name}_p99_ms"] = 1000 * float(np.percentile(values, 99))
                result[f"latency_{name}_n"] = len(values)

    await command({"cmd": "quit"})
    await proc.wait()
    for pc in pcs:
        await pc.close()
    for side in sip_sides:
        if side.transport is not None:
            side.transport.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("generator", "gateway"), default="generator")
    parser.add_argument("--calls", default="10,50,100", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--latency", action="store_true", help="also measure added latency")
    parser.add_argument("--uvloop", action="store_true", help="uvloop in both processes")
    parser.add_argument(
        "--gateway-uvloop",
        action="store_true",
        help="uvloop in the gateway process only (as gateway/cli.py runs it)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--stagger",
        type=int,
        default=4,
        help="spread the calls' packets over this many slots of each 20 ms period "
        "(1: every packet of every call at once)",
    )
    parser.add_argument(
        "--idle",
        action="store_true",
        help="set the calls up but send no media: what the gateway's legs cost by "
        "themselves (filler both ways, timers)",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        help="the generator reads its sockets on its send timer, so that the gateway's "
        "sendto does not wake it (see Poller)",
    )
    parser.add_argument(
        "--collect",
        type=float,
        default=0.0,
        help="a full pass of the gateway's collector every this many seconds in the "
        "window (gc.collect(), as calls coming and going bring them on)",
    )
    parser.add_argument(
        "--no-pause-relay",
        action="store_true",
        help="the gateway's circuits are not relayed by rtc._relay's thread during "
        "the collector's passes (rtc.circuit's gc callback removed)",
    )
    parser.add_argument(
        "--browser-codec",
        choices=("opus", "pcmu"),
        default="opus",
        help="what the WebRTC peers send (pcmu: the gateway relays payloads)",
    )
    args = parser.parse_args()
    loop_name = use_uvloop() if args.uvloop else "asyncio"
    if args.gateway_uvloop and not args.uvloop:
        loop_name = "uvloop in the gateway"
    if args.role == "gateway":
        profile = os.environ.get("BENCH_PROFILE")
        if profile:
            import cProfile

            cProfile.run("asyncio.run(gateway_main())", profile)
        else:
            asyncio.run(gateway_main())
        return
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    results = []
    for n in [int(x) for x in args.calls.split(",")]:
        result = asyncio.run(generator_main(args, n))
        result["loop"] = loop_name
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
            continue
        print(
            f"N={n:4d} [{loop_name}] gateway CPU {result['gateway_cpu_pct']:5.1f}% "
            f"({result['cpu_ms_per_call_per_s']:.2f} ms/s per call), "
            f"generator {result['generator_cpu_pct']:5.1f}%, setup {result['setup_s']} s\n"
            f"   loss to browser {result['loss_to_browser_pct']:.3f}% "
            f"to SIP {result['loss_to_sip_pct']:.3f}%; "
            f"concealed {result['jb_concealed_pct']:.3f}%, silence filled to browser "
            f"{result['filled_to_browser_pct']:.3f}% to SIP "
            f"{result['filled_to_sip_pct']:.3f}%\n"
            f"   lateness to browser p50/p99 {result['late_web_p50_ms']:.1f}/"
            f"{result['late_web_p99_ms']:.1f} ms, to SIP {result['late_sip_p50_ms']:.1f}/"
            f"{result['late_sip_p99_ms']:.1f} ms (kernel arrival stamps); generator late "
            f"sending p99 {result['generator_send_late_p99_ms']:.1f} ms, handling "
            f"arrivals p99 {result['generator_handling_p99_ms']:.1f} ms; gateway GC: "
            f"{result['gc_full_passes']} full passes, longest pause "
            f"{result['gc_max_pause_ms']:.1f} ms (passes per generation "
            f"{result['gc_passes']}, longest {[round(x, 1) for x in result['gc_max_ms']]} ms)\n"
            f"   datagrams' wait in the gateway's sockets (kernel stamp -> callback, "
            f"{SAMPLED_CALLS} calls) p50/p99/p99.9/max {result['gateway_wait_p50_ms']:.2f}/"
            f"{result['gateway_wait_p99_ms']:.2f}/{result['gateway_wait_p99.9_ms']:.2f}/"
            f"{result['gateway_wait_max_ms']:.1f} ms; the gateway waited for input "
            f"{result['gateway_switches'][0]} times and was held off its core "
            f"{result['gateway_switches'][1]} times\n"
            f"   after the window, a full GC pass took {result['gc_full_ms']:.1f} ms "
            f"({result['gc_tracked']} objects tracked, frozen ones apart)",
            flush=True,
        )
        if result.get("pause_relay"):
            served, relayed, waited = result["pause_relay"]
            print(
                f"   in the collector's passes ({served} served): {relayed} packets relayed "
                f"by rtc._relay's thread, {waited} datagrams left for Python",
                flush=True,
            )
        c = result["counters"]
        print(
            f"   frames decoded {c['decoded']}, encoded {c['encoded']}, "
            f"passed through {c['passed']}, relayed {c['relayed']}",
            flush=True,
        )
        for name in ("sip_to_browser", "browser_to_sip"):
            key = f"latency_{name}_p50_ms"
            if key in result:
                print(
                    f"   added latency {name.replace('_', ' ')}: p50 {result[key]:.1f} ms, "
                    f"p99 {result[f'latency_{name}_p99_ms']:.1f} ms "
                    f"({result[f'latency_{name}_n']} bursts)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
