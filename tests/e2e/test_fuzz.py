"""Protocol fuzzing (issue 5): thousands of random and mutated json-v1 messages from several
clients while another client's call runs. That call's audio never stops, the gateway stays
up, and its memory stays bounded."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.audio import dominant_frequency, rms_dbfs
from tests.e2e.client import RATE, JsonV1Client

pytestmark = pytest.mark.e2e

FUZZ_CLIENTS = 4
MESSAGES_PER_CLIENT = 800
SEED = 20261123

VALID = [
    {"operation": "register", "action": "start", "localAddress": {"dialString": "1002"}},
    {"operation": "register", "action": "status"},
    {"operation": "register", "action": "terminate"},
    {
        "operation": "signaling",
        "action": "start",
        "identifier": "c1",
        "remoteAddress": {"dialString": "9000"},
    },
    {"operation": "signaling", "action": "start", "identifier": "c2", "remoteAddress": "1001"},
    {"operation": "signaling", "action": "accept", "identifier": "c1"},
    {"operation": "signaling", "action": "answer", "identifier": "c1"},
    {"operation": "signaling", "action": "hold", "identifier": "c1"},
    {
        "operation": "signaling",
        "action": "transfer",
        "identifier": "c1",
        "transferIdentifier": "c2",
    },
    {"operation": "signaling", "action": "terminate", "identifier": "c1", "reason": "busy"},
    {"operation": "media", "action": "offer", "identifier": "c1", "sdp": "v=0\r\n"},
    {
        "operation": "media",
        "action": "answer",
        "identifier": "c1",
        "ice": [{"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}],
    },
]
JUNK_VALUES = [
    None,
    True,
    0,
    -1,
    2**63,
    1.5,
    "",
    "x" * 300,
    "é\u0000\ud7ff",
    [],
    {},
    [1, {}],
    {"dialString": 5},
    {"candidate": None},
]


def mutate(rng: random.Random, msg: dict) -> str | bytes:
    """A message broken in one or a few of the ways a buggy or hostile client would."""
    msg = json.loads(json.dumps(msg))
    msg.setdefault("version", 1)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        keys = list(msg)
        if choice < 0.35 and keys:
            msg[rng.choice(keys)] = rng.choice(JUNK_VALUES)
        elif choice < 0.5 and keys:
            del msg[rng.choice(keys)]
        elif choice < 0.6:
            msg[rng.choice(["identifier", "sdp", "ice", "reason", "zzz"])] = rng.choice(JUNK_VALUES)
        elif choice < 0.7:
            msg["identifier"] = "".join(
                rng.choice("ab-_/ %.\n") for _ in range(rng.randint(0, 140))
            )
    text = json.dumps(msg)
    roll = rng.random()
    if roll < 0.03:
        return text[: rng.randint(0, len(text))]  # truncated JSON: the server closes 1007
    if roll < 0.04:
        return b"\x00\x01binary"  # binary frame: the server closes 1003
    return text


async def fuzz_client(url: str, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    counts = {"sent": 0, "reconnects": 0}
    sent = 0
    while sent < MESSAGES_PER_CLIENT:
        try:
            async with connect(url, open_timeout=10, max_size=2**20) as ws:
                reader = asyncio.ensure_future(_drain(ws))
                try:
                    while sent < MESSAGES_PER_CLIENT:
                        await ws.send(mutate(rng, rng.choice(VALID)))
                        sent += 1
                        if sent % 50 == 0:
                            await asyncio.sleep(0.01)
                finally:
                    reader.cancel()
        except ConnectionClosed:
            counts["reconnects"] += 1
    counts["sent"] = sent
    return counts


async def _drain(ws) -> None:
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_fuzzing_other_clients_never_disturbs_a_call(gateway, clients):
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("9000", freq=800.0)  # the built-in echo
    await call.wait_state("active", timeout=20)
    await call.wait_audio(2.0, timeout=20)
    rss_before = rss_kib(gateway.pid)

    started = time.monotonic()
    results = await asyncio.gather(
        *(fuzz_client(gateway.ws_url, SEED + i) for i in range(FUZZ_CLIENTS))
    )
    fuzz_seconds = time.monotonic() - started
    assert sum(r["sent"] for r in results) == FUZZ_CLIENTS * MESSAGES_PER_CLIENT

    # The call is untouched: still active, and its echo kept coming the whole time.
    await asyncio.sleep(1.0)
    assert gateway.alive, "gateway died under fuzzing"
    assert call.state == "active", call.statuses
    audio = call.received_audio(since=started)
    assert audio.size >= RATE * (fuzz_seconds * 0.9), "audio stopped during the fuzzing"
    frames = audio[: audio.size // 960 * 960].reshape(-1, 960)
    levels = np.array([rms_dbfs(f) for f in frames])
    # Allow the odd lost frame, never a stretch of silence (>= 10 frames = 200 ms).
    silent = levels < -50
    longest = max(
        (len(run) for run in "".join("1" if s else "0" for s in silent).split("0")), default=0
    )
    assert longest < 10, f"{longest * 20} ms of silence in the echo during fuzzing"
    assert abs(dominant_frequency(audio, RATE) - 800.0) <= 20

    rss_after = rss_kib(gateway.pid)
    assert rss_after - rss_before < 80 * 1024, f"RSS grew {rss_before} -> {rss_after} KiB"
    # A fresh client still gets service.
    bob: JsonV1Client = await clients(gateway, name="bob")
    await bob.login("1002", "Bob")
    await call.hangup()
    await call.wait_state("terminated", timeout=10)


async def test_oversized_frame_closes_1009_and_nothing_else(gateway, clients):
    """json-v1 §1: a frame above the limit (64 KiB by default) closes that connection with
    1009; another client's call goes on."""
    alice: JsonV1Client = await clients(gateway, name="alice")
    await alice.login("1001", "Alice")
    call = await alice.dial("9000", freq=700.0)
    await call.wait_state("active", timeout=20)
    big: JsonV1Client = await clients(gateway, name="big")
    await big.send_raw('{"version": 1, "operation": "register", "pad": "' + "x" * 70000 + '"}')
    assert await big.wait_closed() == 1009
    assert alice.is_open and call.state == "active"
    await call.wait_audio(1.0, timeout=10)
