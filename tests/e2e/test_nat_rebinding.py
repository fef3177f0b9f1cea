"""A SIP peer behind a NAT whose mapping changes mid-call (rtc.latch), seen from
outside: a web client calls a sipp UAS through the running gateway; sipp's RTP crosses
a NAT in this process (tests/nat.py), whose public port the gateway latches onto. Mid-call
the NAT gives the mapping a new public port, with no re-INVITE: the gateway must follow
the phone's stream there, and the audio must go on both ways.

The peer is sipp (tests/e2e/scenarios/uas_nat_stream.xml): it answers PCMA with a
private, unreachable SDP address (a port the test holds and drops), and after the ACK
plays a 500 Hz tone (rtp_stream) to the audio address of the gateway's offer, which
`SdpToNat` points at the NAT's inside port on its way to sipp. The client sends 900 Hz;
what it hears is analysed before and after the rebinding, and the gateway's A-law on each
public port is decoded by the test. After the ACK sipp expects nothing but the BYE: a
re-INVITE would fail its scenario. A stranger sending RTP of another tone to the
gateway's port mid-call (another SSRC) must not be heard, nor answered.
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from rtc.g711 import alaw_encode
from tests.audio import band_energy_ratio, rms_dbfs, sine
from tests.e2e.client import RATE, Call
from tests.e2e.conftest import HOST, Gateway, SippFactory, SippProcess, free_port
from tests.e2e.sipp_calls import SIPP_TIMEOUT
from tests.e2e.test_sip_media import (
    FAR_NUMBER,
    alaw_decode,
    assert_tone,
    audio_between,
    expect_exit,
    logged_in,
    wait_active,
)
from tests.nat import Address, Mapping, Nat, through_nat

pytestmark = pytest.mark.e2e

WEB_FREQ = 900.0  # the web client's tone
PHONE_FREQ = 500.0  # sipp's (a whole number of periods in TONE_FILE's second: loops cleanly)
STRANGER_FREQ = 1700.0
TONE_FILE = "nat-tone.alaw"  # in sipp's working directory, as the scenario names it
PCMA = 8
FRAME = 160  # samples (20 ms) of an 8 kHz packet


# --------------------------------------------------------------------------- the network


class SdpToNat(asyncio.DatagramProtocol):
    """The gateway's [pbx] uri: passes the gateway's SIP on to sipp, with the audio port
    of an SDP body replaced by the NAT's inside port, so sipp's RTP goes through the NAT
    (which sends it on to the gateway's real port, learnt here), and sipp's answers back
    to the gateway. The gateway's ACK and BYE go to sipp's Contact, not through here."""

    def __init__(self, port: int, sipp_port: int, nat: Nat) -> None:
        self.port = port
        self.sipp = (HOST, sipp_port)
        self.nat = nat
        self.gateway: Address | None = None  # the gateway's SIP address
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> SdpToNat:
        self.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self, local_addr=(HOST, self.port)
        )
        return self

    def datagram_received(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        if addr == self.sipp:
            if self.gateway is not None:
                self.transport.sendto(data, self.gateway)
            return
        self.gateway = addr
        head, blank, body = data.partition(b"\r\n\r\n")
        audio = re.search(rb"^m=audio (\d+) ", body, re.M)
        if audio:
            self.nat.gateway = (HOST, int(audio[1]))
            body = through_nat(body, self.nat)
            head = re.sub(
                rb"(?im)^(content-length|l)[ \t]*:[ \t]*\d+",
                b"Content-Length: %d" % len(body),
                head,
            )
        self.transport.sendto(head + blank + body, self.sipp)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Sink(asyncio.DatagramProtocol):
    """A UDP port that counts what arrives and answers nothing."""

    def __init__(self) -> None:
        self.count = 0
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, port: int) -> Sink:
        sink = cls()
        sink.transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: sink, local_addr=(HOST, port)
        )
        return sink

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.count += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def send_stranger(sink: Sink, target: Address, seconds: float) -> None:
    """RTP of another stream (another SSRC, its own sequence) carrying STRANGER_FREQ as
    A-law, 20 ms packets in real time, from `sink`'s port to `target`."""
    assert sink.transport is not None
    rng = random.Random(6170)
    ssrc, seq, ts = rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(32)
    payload = alaw_encode(sine(STRANGER_FREQ, seconds, 8000, amplitude=0.5))
    start = time.monotonic()
    for n in range(len(payload) // FRAME):
        header = struct.pack(
            "!BBHII", 0x80, PCMA, (seq + n) & 0xFFFF, (ts + n * FRAME) & 0xFFFFFFFF, ssrc
        )
        sink.transport.sendto(header + payload[n * FRAME : (n + 1) * FRAME], target)
        await asyncio.sleep(max(0.0, start + (n + 1) * FRAME / 8000 - time.monotonic()))


def gateway_audio(mapping: Mapping, start: float, end: float = float("inf")) -> np.ndarray:
    """The A-law the gateway sent to a public port in [start, end) (monotonic), decoded."""
    payloads = [
        data[12 + 4 * (data[0] & 0x0F) :]
        for t, data in mapping.received
        if start <= t < end and len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == PCMA
    ]
    return alaw_decode(b"".join(payloads))


async def until(check: Callable[[], bool], what: Callable[[], str], timeout: float = 20.0) -> None:
    """Wait (generously) for `check`; fail with `what()` (the state seen) if it never holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s: {what()}")
        await asyncio.sleep(0.05)


async def until_flowing(
    call: Call, mapping: Mapping, since: float, state: Callable[[], str]
) -> None:
    """Until the gateway has sent 100 packets to a public port of the NAT and the client
    has had 3 s of audio since `since`; `state` describes what was seen if never."""
    await until(lambda: len(mapping.received) >= 100 and received_since(call, since) >= 3.0, state)


def received_since(call: Call, start: float) -> float:
    """Seconds of audio the client received since monotonic `start`."""
    return call.recorder.audio(since=start).size / RATE


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def nat() -> AsyncIterator[Nat]:
    n = await Nat.open(HOST, port=lambda: free_port(tcp=False))
    try:
        yield n
    finally:
        n.close()


def phone_behind_nat(sipp: SippFactory, workdir: Path, port: int, private_port: int) -> SippProcess:
    """sipp running uas_nat_stream.xml on SIP port `port`, its SDP giving `private_port`
    (where the gateway cannot reach it)."""
    tone = sine(PHONE_FREQ, 1.0, 8000, amplitude=0.3)
    (workdir / TONE_FILE).write_bytes(alaw_encode(tone))
    sp = sipp.scenario(
        "uas_nat_stream",
        "uas_nat_stream.xml",
        None,
        port=port,
        timeout=SIPP_TIMEOUT,
        extra=["-key", "rtp_port", str(private_port)],
    )
    sipp.wait_bound(sp, port)
    return sp


# --------------------------------------------------------------------------- the test


async def test_audio_goes_on_both_ways_when_the_peer_nat_rebinds(
    gateway: Gateway, sipp: SippFactory, clients, nat: Nat, e2e_dir: Path
) -> None:
    private_port = free_port(tcp=False, span=2)
    private = [await Sink.open(private_port + i) for i in (0, 1)]  # RTP, RTCP
    stranger = await Sink.open(free_port(tcp=False))
    sipp_port = free_port()
    far = phone_behind_nat(sipp, e2e_dir, sipp_port, private_port)
    sip = await SdpToNat(gateway.pbx_port, sipp_port, nat).start()
    try:
        alice = await logged_in(clients, gateway)
        call = await alice.dial(FAR_NUMBER, freq=WEB_FREQ)
        await wait_active(call)
        active_at = call.active_at
        assert active_at is not None
        first = nat.public

        # ---- before: the gateway latched onto the NAT's first public port
        await until_flowing(
            call,
            first,
            active_at,
            lambda: (
                f"{len(first.received)} packets from the gateway at the NAT's public port "
                f"({first.sent} of sipp's sent from there, {private[0].count} to the private "
                f"address); {received_since(call, active_at):.1f} s of audio at the client"
            ),
        )
        now = time.monotonic()
        heard = audio_between(call, active_at + 1.0, now)
        assert_tone(heard, PHONE_FREQ, "the phone's tone at the client, before")
        sent = gateway_audio(first, now - 1.5, now)
        assert_tone(sent, WEB_FREQ, "the client's tone toward the phone, before", rate=8000)

        # ---- a stranger sends another stream to the gateway's port: not heard, not answered
        assert nat.gateway is not None
        stranger_at = time.monotonic()
        await send_stranger(stranger, nat.gateway, 1.5)
        stranger_end = time.monotonic()
        await until(
            lambda: received_since(call, stranger_end) >= 0.5,
            lambda: f"{received_since(call, stranger_end):.1f} s of audio after the stranger",
        )
        heard = audio_between(call, stranger_at + 0.3, stranger_end + 0.3)
        assert_tone(heard, PHONE_FREQ, "the phone's tone at the client, while a stranger sends")
        leak = band_energy_ratio(heard, RATE, STRANGER_FREQ, 30.0)
        assert leak < 0.01, f"the stranger's {STRANGER_FREQ:.0f} Hz is heard ({leak:.1%})"
        assert stranger.count == 0, f"the gateway sent {stranger.count} packets to the stranger"

        # ---- the NAT's mapping changes: a new public port, no new SDP
        rebound_at = time.monotonic()
        second = await nat.rebind()
        await until_flowing(
            call,
            second,
            rebound_at,
            lambda: (
                f"{len(second.received)} packets from the gateway at the new public port, "
                f"{sum(t >= rebound_at for t, _ in first.received)} at the old one since the "
                f"rebinding ({second.sent} of sipp's sent from the new one); "
                f"{received_since(call, rebound_at):.1f} s of audio at the client since"
            ),
        )
        moved_at = second.received[0][0]
        now = time.monotonic()
        heard = audio_between(call, rebound_at + 1.0, now)
        assert_tone(heard, PHONE_FREQ, "the phone's tone at the client, after the rebinding")
        sent = gateway_audio(second, now - 1.5, now)
        assert_tone(sent, WEB_FREQ, "the client's tone toward the phone, after", rate=8000)
        late = [t - moved_at for t, _ in first.received if t > moved_at + 0.2]
        assert not late, f"{len(late)} packets still went to the old port, up to {max(late):.1f} s"
        moved = f"RTP source moved from {(HOST, first.port)} to {(HOST, second.port)}"
        assert f"{moved} (NAT rebinding)" in gateway.log(), f"no '{moved}' in the gateway's log"

        # what the rebinding cost, for the record (shown with -s, or when the test fails)
        lost = sum(rebound_at <= t for t, _ in first.received)
        blocks = audio_between(call, rebound_at - 0.5, rebound_at + 1.0)
        levels = [rms_dbfs(blocks[i : i + 960]) for i in range(0, blocks.size - 959, 960)]
        print(
            f"\n[nat] gateway -> phone: {lost} packets to the old port after the rebinding, "
            f"the new one reached {moved_at - rebound_at:.3f} s after it; "
            f"phone -> client: {sum(v < -40 for v in levels)} quiet 20 ms blocks of "
            f"{len(levels)} around it; {private[0].count} RTP and {private[1].count} RTCP "
            f"packets to the phone's private address"
        )

        await call.hangup()
        await call.wait_state("terminated", timeout=10)
        await expect_exit(far)
    finally:
        sip.close()
        stranger.close()
        for sink in private:
            sink.close()
