"""
The event loop's receive path for relayed packets, in isolation: how much CPU
a datagram that an engaged circuit relays costs from the socket's readiness
to the relayed packet's sendto, with the loop's own UDP transport (uvloop's,
as before rtc.udp) and with rtc.udp.SocketTransport (rtc._relay.Reader).

A receiver process pinned to core 0 opens ``--sockets`` UDP sockets, each
with an engaged circuit (rtc.circuit, the C step; plain PCMU in and out, as
the SIP -> browser way of a pass-through call without SRTP), all sending on
one socket to a sink. This process, on core 1, sends each socket one packet
per 20 ms (spread over 20 slots of the period, as bench/media_load.py's
--stagger 20) and drains the sink. Each transport runs in turn, ``--rounds``
times, in a fresh receiver each time; the receiver's CPU over ``--seconds``
is divided by the packets its circuits relayed.

    .venv/bin/python bench/receive_path.py [--sockets 600] [--seconds 5] [--rounds 3]

The media_load figures move by 10-15 % from one run to the next on a shared
host; this one compares the two receive paths back to back, in the same
conditions, with nothing else in the receiver.
"""

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAYLOAD = b"\xff" * 160
PERIOD = 0.02
SLOTS = 20


class Leg:
    """What a circuit needs of a leg: where it is kept, and nothing to sync into."""

    _circuit_in: Any = None
    _circuit_out: Any = None

    def circuit_synced_in(self, circuit: Any) -> None:
        pass

    def circuit_synced_out(self, circuit: Any) -> None:
        pass


async def receiver(args: argparse.Namespace) -> None:
    from rtc import _relay
    from rtc.circuit import Circuit, Inbound, Outbound
    from rtc.udp import open_endpoint

    loop = asyncio.get_running_loop()
    peer = (args.peer_host, args.peer_port)
    sink = (args.sink_host, args.sink_port)
    tx, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    declined = [0]

    def fallback(data: bytes, addr: Any) -> None:
        declined[0] += 1

    circuits, addresses = [], []
    for index in range(args.sockets):
        leg = Leg()
        protocol = type("Tapped", (asyncio.DatagramProtocol,), {})()
        protocol.datagram_received = _relay.Tap(leg, fallback)  # type: ignore[method-assign]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        addresses.append(sock.getsockname())
        if args.mode == "loop":
            transport, _ = await loop.create_datagram_endpoint(lambda p=protocol: p, sock=sock)
        else:
            transport = await open_endpoint(sock, protocol)
        inbound = Inbound(index + 1, 0, 0, 0, 160, 160, 8000, None, peer=peer, receiver=transport)
        outbound = Outbound(0x80, 0, 0x10000 + index, 0, 0, 160, b"", None, tx.sendto, sink)
        circuits.append(Circuit(leg, inbound, Leg(), outbound))
    print(json.dumps(addresses), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    start, start_relayed = os.times(), 0
    while line := (await reader.readline()).strip():
        relayed = sum(c.packets for c in circuits)
        if line == b"start":
            start, start_relayed = os.times(), relayed
            print("{}", flush=True)
        elif line == b"stop":
            now = os.times()
            user, system = now.user - start.user, now.system - start.system
            figures = {"user": user, "system": system, "relayed": relayed - start_relayed}
            print(json.dumps({**figures, "declined": declined[0]}), flush=True)
            return


def send_for(sender: socket.socket, sink: socket.socket, addresses: list[Any],
             sequence: list[int], seconds: float) -> int:
    """Each address its next packet per 20 ms, over 20 slots; the sink drained: what came back."""
    from rtc.rtp import RTP_FIXED_HEADER

    back = 0
    by_slot = [range(slot, len(addresses), SLOTS) for slot in range(SLOTS)]
    start = time.monotonic()
    tick = 0
    while True:
        due = start + tick * PERIOD / SLOTS
        now = time.monotonic()
        if now - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        for index in by_slot[tick % SLOTS]:
            seq = sequence[index]
            header = RTP_FIXED_HEADER.pack(
                0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, index + 1
            )
            sender.sendto(header + PAYLOAD, addresses[index])
            sequence[index] = seq + 1
        tick += 1
        while True:
            try:
                sink.recv(2048)
            except BlockingIOError:
                break
            back += 1
    return back


def run_round(args: argparse.Namespace, mode: str, sender: socket.socket,
              sink: socket.socket) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--role", "receiver", "--mode", mode,
               "--sockets", str(args.sockets),
               "--peer-host", sender.getsockname()[0], "--peer-port", str(sender.getsockname()[1]),
               "--sink-host", sink.getsockname()[0], "--sink-port", str(sink.getsockname()[1])]
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        command = ["taskset", "-c", "0", *command]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        addresses = [tuple(a) for a in json.loads(proc.stdout.readline())]
        sequence = [0] * len(addresses)
        send_for(sender, sink, addresses, sequence, 1.0)  # the caches warm
        proc.stdin.write(b"start\n")
        proc.stdin.flush()
        proc.stdout.readline()
        back = send_for(sender, sink, addresses, sequence, args.seconds)
        proc.stdin.write(b"stop\n")
        proc.stdin.flush()
        result: dict[str, Any] = json.loads(proc.stdout.readline())
        result["back"] = back
        return result
    finally:
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("sender", "receiver"), default="sender")
    parser.add_argument("--mode", choices=("loop", "socket"), default="socket")
    parser.add_argument("--sockets", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-host", default="127.0.0.1")
    parser.add_argument("--peer-port", type=int, default=0)
    parser.add_argument("--sink-host", default="127.0.0.1")
    parser.add_argument("--sink-port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "receiver":
        import uvloop

        uvloop.run(receiver(args))
        return
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sink.setblocking(False)
    names = {"loop": "uvloop's UDPTransport", "socket": "rtc.udp.SocketTransport"}
    per_packet: dict[str, list[float]] = {mode: [] for mode in names}
    for _ in range(args.rounds):
        for mode in names:
            r = run_round(args, mode, sender, sink)
            cpu, relayed = r["user"] + r["system"], max(r["relayed"], 1)
            us, user, system = (1e6 * t / relayed for t in (cpu, r["user"], r["system"]))
            per_packet[mode].append(us)
            print(
                f"{names[mode]:24} {args.sockets} sockets: receiver CPU"
                f" {100 * cpu / args.seconds:5.1f} %, {us:5.2f} us per relayed packet"
                f" (user {user:5.2f}, system {system:5.2f});"
                f" {r['relayed']} relayed, {r['declined']} declined, {r['back']} at the sink",
                flush=True,
            )
    for mode, figures in per_packet.items():
        median = sorted(figures)[len(figures) // 2]
        print(f"{names[mode]:24} best {min(figures):5.2f} us, median {median:5.2f} us per packet")


if __name__ == "__main__":
    main()
