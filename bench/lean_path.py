#!/usr/bin/env python3
"""The floor: how many transcoded calls one core carries with a lean per-packet path.

media_load.py measures the gateway's real classes (aiortc's RTP sender/receiver, the
bridge's tasks and clocks). This benchmark measures what the same work costs when each
datagram is handled synchronously in its protocol callback, with nothing but the work a
transcoded call cannot avoid:

    browser -> SIP: SRTP unprotect, RTP header, Opus decode (at 8 kHz), u-law encode,
                    RTP header, sendto
    SIP -> browser: RTP header, u-law decode, Opus encode (8 kHz in, complexity C),
                    RTP header, SRTP protect, sendto

With ``--passthrough`` both sides send PCMU and the call relays payloads undecoded:
browser -> SIP is SRTP unprotect, a new RTP header, sendto; SIP -> browser a new RTP
header, SRTP protect, sendto. That is the floor of a pass-through call.

N such calls run in a child process pinned to core 0 (`taskset -c 0`), each with two UDP
sockets on loopback; the generator on core 1 sends every call pre-encrypted Opus (as a
browser would) and PCMU (as a SIP peer would) every 20 ms and counts what comes back. It
prints the child's CPU per call and the loss, for a list of N. Stock asyncio or uvloop.

The gap between this figure and media_load.py's is the price of the general-purpose
machinery; the gap between this and the 100-calls target (DESIGN.md §8) is what no Python
restructuring can remove.

    .venv/bin/python bench/lean_path.py --calls 25,50,100 [--seconds 5] [--complexity 0]
                                        [--uvloop] [--passthrough] [--stagger K] [--json]

``--stagger K`` sends call c's packets in slot c % K of each 20 ms period instead of all
at once (media_load.py's default is 4).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pylibsrtp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rtc.g711 import ulaw_decode, ulaw_encode  # noqa: E402

KEY_TO_GATEWAY = bytes(range(30))  # SRTP master key + salt, browser -> gateway
KEY_FROM_GATEWAY = bytes(range(30, 60))
OPUS_PT = 111
PCMU_PT = 0
HEADER = struct.Struct("!BBHII")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def srtp_session(key: bytes, inbound: bool) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=key,
        ssrc_type=(
            pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        ),
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    return pylibsrtp.Session(policy=policy)


def tone(rate: int, frames: int) -> np.ndarray:
    t = np.arange(rate * frames // 50) / rate
    return np.rint(0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


# --- the lean gateway ---------------------------------------------------------------


class LeanCall:
    """Both directions of one transcoded call, one datagram at a time."""

    def __init__(
        self,
        complexity: int,
        browser: tuple[str, int],
        sip: tuple[str, int],
        ssrc: int,
        passthrough: bool = False,
    ) -> None:
        self.ssrc = ssrc
        if passthrough:
            # PCMU both ways: the payload crosses undecoded, only the headers change
            self.from_browser = self.pass_from_browser  # type: ignore[method-assign]
            self.from_sip = self.pass_from_sip  # type: ignore[method-assign]
        self.decoder = av.CodecContext.create("libopus", "r")
        self.decoder.sample_rate = 8000
        self.decoder.layout = "mono"
        self.decoder.format = "s16"
        self.encoder = av.CodecContext.create("libopus", "w")
        self.encoder.sample_rate = 8000
        self.encoder.layout = "mono"
        self.encoder.format = "s16"
        self.encoder.bit_rate = 20000
        self.encoder.time_base = Fraction(1, 8000)
        self.encoder.options = {"application": "voip", "compression_level": str(complexity)}
        self.encoder.open()
        self.rx = srtp_session(KEY_TO_GATEWAY, inbound=True)
        self.tx = srtp_session(KEY_FROM_GATEWAY, inbound=False)
        self.browser_addr = browser
        self.sip_addr = sip
        self.browser_sock: asyncio.DatagramTransport | None = None
        self.sip_sock: asyncio.DatagramTransport | None = None
        self.seq_to_sip = 0
        self.ts_to_sip = 0
        self.seq_to_browser = 0
        self.ts_to_browser = 0
        self.pts = 0

    def from_browser(self, data: bytes) -> None:
        plain = self.rx.unprotect(data)
        payload = plain[12:]
        for frame in self.decoder.decode(av.Packet(payload)):
            pcm = frame.to_ndarray().reshape(-1).astype(np.int16, copy=False)
            self.seq_to_sip = (self.seq_to_sip + 1) & 0xFFFF
            self.ts_to_sip = (self.ts_to_sip + pcm.size) & 0xFFFFFFFF
            header = HEADER.pack(0x80, PCMU_PT, self.seq_to_sip, self.ts_to_sip, self.ssrc)
            assert self.sip_sock is not None
            self.sip_sock.sendto(header + ulaw_encode(pcm), self.sip_addr)

    def pass_from_browser(self, data: bytes) -> None:
        plain = self.rx.unprotect(data)
        self.seq_to_sip = (self.seq_to_sip + 1) & 0xFFFF
        self.ts_to_sip = (self.ts_to_sip + 160) & 0xFFFFFFFF
        header = HEADER.pack(0x80, PCMU_PT, self.seq_to_sip, self.ts_to_sip, self.ssrc)
        assert self.sip_sock is not None
        self.sip_sock.sendto(header + plain[12:], self.sip_addr)

    def pass_from_sip(self, data: bytes) -> None:
        self.seq_to_browser = (self.seq_to_browser + 1) & 0xFFFF
        self.ts_to_browser = (self.ts_to_browser + 160) & 0xFFFFFFFF
        header = HEADER.pack(0x80, PCMU_PT, self.seq_to_browser, self.ts_to_browser, self.ssrc)
        assert self.browser_sock is not None
        self.browser_sock.sendto(self.tx.protect(header + data[12:]), self.browser_addr)

    def from_sip(self, data: bytes) -> None:
        pcm = ulaw_decode(np.frombuffer(data, np.uint8, offset=12))
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        frame.pts = self.pts
        self.pts += pcm.size
        for packet in self.encoder.encode(frame):
            self.seq_to_browser = (self.seq_to_browser + 1) & 0xFFFF
            self.ts_to_browser = (self.ts_to_browser + 960) & 0xFFFFFFFF
            header = HEADER.pack(0x80, OPUS_PT, self.seq_to_browser, self.ts_to_browser, self.ssrc)
            assert self.browser_sock is not None
            self.browser_sock.sendto(self.tx.protect(header + bytes(packet)), self.browser_addr)


class Receiver(asyncio.DatagramProtocol):
    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.handler(data)


async def gateway_main(complexity: int, passthrough: bool) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    calls: list[LeanCall] = []
    mark = (0.0, 0.0)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "call":
            call = LeanCall(
                complexity,
                tuple(cmd["browser"]),
                tuple(cmd["sip"]),
                0x6000 + len(calls),
                passthrough,
            )
            call.browser_sock, _ = await loop.create_datagram_endpoint(
                functools.partial(Receiver, call.from_browser), local_addr=("127.0.0.1", 0)
            )
            call.sip_sock, _ = await loop.create_datagram_endpoint(
                functools.partial(Receiver, call.from_sip), local_addr=("127.0.0.1", 0)
            )
            calls.append(call)
            reply(
                {
                    "browser": call.browser_sock.get_extra_info("sockname")[:2],
                    "sip": call.sip_sock.get_extra_info("sockname")[:2],
                }
            )
        elif cmd["cmd"] == "mark":
            mark = (loop.time(), cpu_seconds())
            reply({})
        elif cmd["cmd"] == "report":
            reply({"wall": loop.time() - mark[0], "cpu": cpu_seconds() - mark[1]})
        elif cmd["cmd"] == "quit":
            reply({})
            return


# --- the generator ------------------------------------------------------------------


def opus_packets(count: int) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = 32000
    encoder.time_base = Fraction(1, 48000)
    encoder.open()
    pcm = tone(48000, count)
    out: list[bytes] = []
    for i in range(count):
        frame = av.AudioFrame.from_ndarray(
            pcm[i * 960 : (i + 1) * 960].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = i * 960
        out += [bytes(p) for p in encoder.encode(frame)]
    return out


class Child:
    def __init__(self, complexity: int, use_uvloop: bool, passthrough: bool) -> None:
        args = [sys.executable, __file__, "--role", "gateway", "--complexity", str(complexity)]
        if use_uvloop:
            args.append("--uvloop")
        if passthrough:
            args.append("--passthrough")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.ask(cmd="quit")
        self.proc.wait(10)


def run(
    calls: int,
    seconds: float,
    complexity: int,
    use_uvloop: bool,
    passthrough: bool,
    slots: int = 1,
) -> dict[str, Any]:
    child = Child(complexity, use_uvloop, passthrough)
    pcmu = [ulaw_encode(p) for p in tone(8000, 50).reshape(50, 160)]
    browser_pt, browser_step = (PCMU_PT, 160) if passthrough else (OPUS_PT, 960)
    browser_payloads = pcmu if passthrough else opus_packets(50)
    tx = srtp_session(KEY_TO_GATEWAY, inbound=False)
    rx = srtp_session(KEY_FROM_GATEWAY, inbound=True)
    browsers: list[socket.socket] = []
    sips: list[socket.socket] = []
    targets: list[tuple[tuple[str, int], tuple[str, int]]] = []
    for _ in range(calls):
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for sock in (b, s):
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        answer = child.ask(cmd="call", browser=b.getsockname(), sip=s.getsockname())
        browsers.append(b)
        sips.append(s)
        targets.append((tuple(answer["browser"]), tuple(answer["sip"])))
    received = {"to_sip": 0, "to_browser": 0}

    def drain() -> None:
        for b in browsers:
            while True:
                try:
                    data = b.recv(2048)
                except BlockingIOError:
                    break
                rx.unprotect(data)
                received["to_browser"] += 1
        for s in sips:
            while True:
                try:
                    s.recv(2048)
                except BlockingIOError:
                    break
                received["to_sip"] += 1

    # Each call's packets are pre-built for one second (SRTP's replay window needs
    # increasing sequence numbers, so the browser side is protected per send).
    warmup = 1.0
    total = int((warmup + seconds) * 50)
    start = time.monotonic()
    sent = 0
    marked = False
    for i in range(total):
        if i == int(warmup * 50):
            drain()
            received = {"to_sip": 0, "to_browser": 0}
            child.ask(cmd="mark")
            marked = True
            sent = 0
        for slot in range(slots):
            # call c's packets go out in slot c % slots of each 20 ms period
            for c in range(slot, calls, slots):
                header = HEADER.pack(0x80, browser_pt, i & 0xFFFF, i * browser_step, 0x1000 + c)
                browsers[c].sendto(tx.protect(header + browser_payloads[i % 50]), targets[c][0])
                header = HEADER.pack(0x80, PCMU_PT, i & 0xFFFF, i * 160, 0x2000 + c)
                sips[c].sendto(header + pcmu[i % 50], targets[c][1])
            drain()
            delay = start + i * 0.02 + (slot + 1) * 0.02 / slots - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent += 1
    assert marked
    time.sleep(0.1)
    drain()
    report = child.ask(cmd="report")
    child.close()
    for sock in browsers + sips:
        sock.close()
    expected = sent * calls
    return {
        "calls": calls,
        "loop": "uvloop" if use_uvloop else "asyncio",
        "complexity": complexity,
        "path": "pass-through" if passthrough else "transcoded",
        "cpu_percent": 100 * report["cpu"] / report["wall"],
        "ms_per_call_second": 1000 * report["cpu"] / report["wall"] / calls,
        "loss_to_sip_percent": 100 * max(0, expected - received["to_sip"]) / expected,
        "loss_to_browser_percent": 100 * max(0, expected - received["to_browser"]) / expected,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("generator", "gateway"), default="generator")
    parser.add_argument("--calls", default="25,50,100")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--complexity", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--stagger",
        type=int,
        default=1,
        help="spread the calls' packets over this many slots of each 20 ms period",
    )
    parser.add_argument(
        "--passthrough", action="store_true", help="PCMU both ways, relayed undecoded"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.role == "gateway":
        asyncio.run(gateway_main(args.complexity, args.passthrough))
        return 0
    for n in (int(x) for x in args.calls.split(",")):
        result = run(n, args.seconds, args.complexity, args.uvloop, args.passthrough, args.stagger)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"N={n:4d} [{result['loop']}, {result['path']}, complexity {args.complexity}]"
                f" gateway CPU "
                f"{result['cpu_percent']:5.1f}% ({result['ms_per_call_second']:.2f} ms/s per call)"
                f", loss to SIP {result['loss_to_sip_percent']:.3f}%"
                f" to browser {result['loss_to_browser_percent']:.3f}%"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
