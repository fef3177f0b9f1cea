"""DTMF interworking through the whole gateway, every digit 0-9 * # A-D, each exactly once
and in order (and a digit pressed twice arriving twice, where the peer allows a free
sequence), with real peers (DESIGN §4: RFC 4733 on both legs when negotiated; SIP
INFO or generated in-band tones where the SIP side lacks telephone-event).

Browser -> SIP (the browser calls a sipp UAS through the [pbx] uri):
- RFC 4733 to a far end that negotiated telephone-event: one event per digit, three end
  packets, sane durations, timestamps and volume, nothing in-band besides;
- INFO application/dtmf-relay to a far end without telephone-event whose Allow lists
  INFO: sipp checks 16 INFOs, Signal= in order, and nothing else arrives;
- in-band tones to a far end with neither: the recorded audio holds exactly the 16
  digits (the gateway's Goertzel detector and an independent FFT check agree).

SIP -> browser (a sipp UAC calls the browser): RFC 4733 events, INFO dtmf-relay and
in-band tones (after speech-like audio: talk-off) all reach the browser as RFC 4733
telephone-event packets on the WebRTC leg, which is how the gateway delivers DTMF to a
browser (its RTCDTMFSender counterpart; json-v1 has no DTMF message). The browser then
sends its digits back over the same incoming call.

The "browser" is the aiortc json-v1 client with the gateway's own telephone-event graft
(rtc/webrtcdtmf.py) on its transceiver, recording every event packet it receives. Two
more tests use the real things: headless Chromium's RTCDTMFSender sends every digit,
and a SIP phone (baresip, registered at the gateway) reports every digit it gets. The
SIP far end's RTP is `FarMedia`: the SDP names its port (sipp `-key rtp_port`); it
records what the gateway sends and plays a PCMU stream (silence, speech, tones or
events) back.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiortc.codecs
import numpy as np
import pytest

from rtc.dtmf import DIGITS, TelephoneEvent
from rtc.dtmfdetect import DtmfDetector
from rtc.g711 import ulaw_encode
from rtc.webrtcdtmf import TELEPHONE_EVENT, TransceiverDtmf, register_telephone_event
from tests.audio import speech_like
from tests.e2e.client import Call
from tests.e2e.conftest import HOST, SCENARIOS, SippFactory, SippProcess, free_port
from tests.e2e.test_sip_media import FAR_NUMBER, SIPP_TIMEOUT, expect_exit, logged_in, uas
from tests.e2e.test_sip_media import wait_active as _wait_active

pytestmark = pytest.mark.e2e

# The aiortc client offers/accepts telephone-event like a browser (process-wide; the
# gateway runs in its own process and does this itself).
register_telephone_event()

PCMU, EVENT_PT = 0, 101  # as in tests/e2e/scenarios/*_dtmf_*.xml
FRAME = 160  # 20 ms at 8 kHz
ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
KEYS = ("123A", "456B", "789C", "*0#D")
# Every digit, then one pressed twice: two presses, two digits (where the sequence is
# free: the INFO scenarios expect the 16)
PRESSED = DIGITS + "55"


# --------------------------------------------------------------------------- far-end RTP


@dataclass
class Packet:
    at: float
    pt: int
    marker: bool
    seq: int
    ts: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes, at: float) -> Packet | None:
    """RFC 3550 header, parsed here (independent of the gateway's rtc/rtp.py)."""
    if len(data) < 12 or data[0] >> 6 != 2 or 192 <= data[1] <= 223:  # not RTP, or RTCP
        return None
    first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    payload = data[offset:]
    if first & 0x20 and payload:  # padding
        payload = payload[: -payload[-1]]
    return Packet(at, second & 0x7F, bool(second & 0x80), seq, ts, ssrc, payload)


class FarMedia(asyncio.DatagramProtocol):
    """The SIP far end's RTP port: records every packet the gateway sends, and sends a
    20 ms PCMU stream to where they come from (silence unless something is queued)."""

    def __init__(self) -> None:
        self.port = free_port(tcp=False, span=2)  # and port + 1 for RTCP
        self.received: list[Packet] = []
        self.gateway: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self._queue: deque[tuple[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._seq = 1000
        self._ts = 48000
        self._ssrc = 0x0D7F0D7F
        self._event_ts = 0
        self.sent_events = 0

    async def start(self) -> FarMedia:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(HOST, self.port)
        )
        self._task = loop.create_task(self._run())
        return self

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = parse_rtp(data, time.monotonic())
        if packet is not None:
            self.received.append(packet)
            self.gateway = addr

    # what the gateway sent

    def events(self) -> list[Packet]:
        return [p for p in self.received if p.pt == EVENT_PT]

    def audio(self) -> np.ndarray:
        """The PCMU the gateway sent, in sequence order, decoded independently."""
        pcmu = [p for p in self.received if p.pt == PCMU]
        if not pcmu:
            return ulaw_decode(b"")
        # counted from the first one to arrive: the random start may wrap within a test
        first = pcmu[0].seq
        packets = sorted(pcmu, key=lambda p: (p.seq - first) & 0xFFFF)
        return ulaw_decode(b"".join(p.payload for p in packets))

    # what we send

    def play(self, samples: np.ndarray) -> None:
        """Queue 8 kHz int16 audio (padded to whole 20 ms frames)."""
        padded = np.zeros(-(-len(samples) // FRAME) * FRAME, dtype=np.int16)
        padded[: len(samples)] = samples
        self._queue.extend(("audio", f) for f in padded.reshape(-1, FRAME))

    def silence(self, ms: int) -> None:
        self.play(np.zeros(8 * ms, dtype=np.int16))

    def event(self, digit: str, ms: int = 100) -> None:
        """Queue one RFC 4733 event as a phone sends it: an update every 20 ms carrying
        the duration so far (the first with the marker bit), then three end packets; all
        with the timestamp of the event's start, replacing the audio meanwhile."""
        code = DIGITS.index(digit)
        frames = ms // 20
        for k in range(1, frames):
            self._queue.append(("event", (k == 1, TelephoneEvent(code, False, 10, k * FRAME))))
        for _ in range(3):
            self._queue.append(("event", (False, TelephoneEvent(code, True, 10, frames * FRAME))))

    @property
    def idle(self) -> bool:
        return not self._queue

    async def drained(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue:
            assert time.monotonic() < deadline, "far-end RTP still queued"
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_time = loop.time()
        while True:
            next_time += 0.02
            await asyncio.sleep(max(0.0, next_time - loop.time()))
            if self.gateway is None or self.transport is None:
                continue  # nothing to send to before the gateway's first packet
            kind, item = self._queue.popleft() if self._queue else ("audio", None)
            item = cast(Any, item)
            if kind == "audio":
                samples = np.zeros(FRAME, np.int16) if item is None else item
                header = struct.pack("!BBHII", 0x80, PCMU, self._seq, self._ts, self._ssrc)
                data = header + ulaw_encode(samples)
            else:
                first, event = item
                if first:
                    self._event_ts = self._ts
                marker = 0x80 if first else 0
                header = struct.pack(
                    "!BBHII", 0x80, marker | EVENT_PT, self._seq, self._event_ts, self._ssrc
                )
                data = header + bytes(event)
                self.sent_events += 1
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + FRAME) & 0xFFFFFFFF
            self.transport.sendto(data, self.gateway)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.transport is not None:
            self.transport.close()


@pytest.fixture
async def far() -> AsyncIterator[FarMedia]:
    media = await FarMedia().start()
    try:
        yield media
    finally:
        await media.close()


# --------------------------------------------------------------------------- audio checks


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes -> int16 (ITU-T G.711, independent of the gateway's tables)."""
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def dtmf_audio(digit: str, ms: int = 100, level: float = 0.25) -> np.ndarray:
    """The dual tone of `digit` made here with numpy (not the gateway's rtc/tones.py)."""
    row = next(i for i, keys in enumerate(KEYS) if digit in keys)
    column = KEYS[row].index(digit)
    t = np.arange(8 * ms) / 8000
    tone = np.sin(2 * np.pi * ROWS[row] * t) + np.sin(2 * np.pi * COLUMNS[column] * t)
    return np.round(tone * level * 32767).astype(np.int16)


def fft_digits(pcm: np.ndarray) -> list[str]:
    """Digits in 8 kHz audio by FFT peak picking, independent of rtc/dtmfdetect.py: 40 ms
    Hann windows every 20 ms; a window is a digit when its strongest peak below 1.1 kHz
    and its strongest above are each within 2 % of a DTMF frequency and the two carry
    most of the energy; a digit is two or more consecutive windows of it."""
    x = pcm.astype(np.float64) / 32768
    size, hop = 320, 160
    window = np.hanning(size)
    freqs = np.fft.rfftfreq(8000, 1 / 8000)  # 1 Hz bins (zero padded)
    low = (freqs > 600) & (freqs < 1100)
    high = (freqs > 1100) & (freqs < 1800)
    labels: list[str | None] = []
    for start in range(0, len(x) - size + 1, hop):
        frame = x[start : start + size]
        if np.sqrt(np.mean(frame**2)) < 0.005:
            labels.append(None)
            continue
        power = np.abs(np.fft.rfft(frame * window, 8000)) ** 2
        f_low = freqs[low][np.argmax(power[low])]
        f_high = freqs[high][np.argmax(power[high])]
        row = min(range(4), key=lambda i: abs(ROWS[i] - f_low))
        column = min(range(4), key=lambda i: abs(COLUMNS[i] - f_high))
        near = abs(ROWS[row] - f_low) < 0.02 * ROWS[row] and (
            abs(COLUMNS[column] - f_high) < 0.02 * COLUMNS[column]
        )
        band = sum(power[(freqs > f - 60) & (freqs < f + 60)].sum() for f in (f_low, f_high))
        labels.append(KEYS[row][column] if near and band > 0.8 * power.sum() else None)
    digits, previous, run = [], None, 0
    for label in labels:
        run = run + 1 if label == previous else 1
        previous = label
        if label is not None and run == 2:
            digits.append(label)
    return digits


def goertzel_digits(pcm: np.ndarray) -> list[str]:
    detector = DtmfDetector()
    found: list[str] = []
    for start in range(0, len(pcm), FRAME):
        found += detector.process(pcm[start : start + FRAME])
    return found


# --------------------------------------------------------------------------- the client


class ClientDtmf:
    """RFC 4733 on the aiortc client's audio transceiver, as a browser has it: `send`
    like RTCDTMFSender.insertDTMF, `digits` as the browser would report them (once per
    event), and every telephone-event packet received in `packets`."""

    def __init__(self, call: Call) -> None:
        transceiver = next(t for t in call.pc.getTransceivers() if t.kind == "audio")
        self.transceiver = transceiver
        self.digits: list[str] = []
        self.packets: list[tuple[int, bool, int, TelephoneEvent]] = []  # ts, marker, seq, ev
        self.dtmf = TransceiverDtmf(transceiver, on_packet=lambda: None)
        self.dtmf.on_dtmf = self.digits.append
        receiver = transceiver.receiver
        handle = receiver._handle_rtp_packet  # the graft's, which takes events out

        async def record(packet: Any, arrival_time_ms: int) -> None:
            if packet.payload_type in self._event_types():
                event = TelephoneEvent.parse(packet.payload)
                self.packets.append(
                    (packet.timestamp, packet.marker, packet.sequence_number, event)
                )
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = record  # type: ignore[method-assign]

    def _event_types(self) -> set[int]:
        return {
            c.payloadType
            for c in self.transceiver._codecs
            if c.mimeType.lower() == TELEPHONE_EVENT and c.payloadType is not None
        }

    def send(self, digits: str, ms: int = 100) -> None:
        assert self.dtmf.negotiated, "telephone-event not negotiated with the gateway"
        self.dtmf.send(digits, ms)

    async def wait_digits(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.digits) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # late duplicates would show up now

    def check_packets(self, expected: str = PRESSED) -> None:
        """Every event on the WebRTC leg: one timestamp per digit, all packets of one
        event carry its code, the first has the marker, it ends with end packets."""
        by_start: dict[int, list[tuple[bool, int, TelephoneEvent]]] = {}
        for ts, marker, seq, event in self.packets:
            by_start.setdefault(ts, []).append((marker, seq, event))
        codes = "".join(DIGITS[group[0][2].event] for group in by_start.values())
        assert codes == expected, f"events on the WebRTC leg (by timestamp): {codes!r}"
        for ts, group in by_start.items():
            assert len({e.event for _, _, e in group}) == 1, (ts, group)
            assert group[0][0], f"event at {ts}: first packet without the marker bit"
            ends = [e for _, _, e in group if e.end]
            assert len(ends) == 3, f"event at {ts}: {len(ends)} end packets"


async def answered(call: Call) -> ClientDtmf:
    """Right after the SDP exchange (before any event can arrive), DTMF on the client's
    transceiver; then wait for `active`."""
    dtmf = ClientDtmf(call)
    await _wait_active(call)
    return dtmf


def assert_digits(got: list[str], where: str, expected: str = PRESSED) -> None:
    assert "".join(got) == expected, f"{where}: {''.join(got)!r}, expected {expected!r}"


# --------------------------------------------------------------------------- sipp helpers


def uac(sipp: SippFactory, gw: Any, xml: str, extra: list[str]) -> SippProcess:
    """A sipp UAC scenario calling 1001 (alice) at the gateway."""
    return sipp.scenario(
        xml.removesuffix(".xml"),
        xml,
        gw.sip_target,
        port=gw.pbx_port,
        number="1001",
        timeout=SIPP_TIMEOUT,
        extra=extra,
    )


def received_info_signals(sp: SippProcess) -> list[str]:
    """Signal= of every INFO sipp received (its -trace_msg log), retransmissions once."""
    log = sp.files[1].read_text(errors="replace")
    seen: dict[str, str] = {}
    for message in re.split(r"\n-{10,}.*\n", log):
        if not re.search(r"^\s*INFO sip:", message, re.M) or "message received" not in message:
            continue
        cseq = re.search(r"^\s*CSeq:\s*(\d+)", message, re.M | re.I)
        signal = re.search(r"^\s*Signal=\s*(\S+)", message, re.M)
        if cseq and signal:
            seen.setdefault(cseq.group(1), signal.group(1))
    return list(seen.values())


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        await asyncio.sleep(0.05)


async def hang_up(call: Call, sp: SippProcess) -> None:
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    await expect_exit(sp)


async def browser_sends(
    gateway: Any,
    clients: Any,
    far: FarMedia,
    sp: SippProcess,
    digits: str,
    done: Callable[[], bool],
    what: str,
) -> None:
    """Browser -> SIP: alice calls the far end (sipp `sp` on the [pbx] port, its RTP at
    `far`), sends `digits` once the gateway's RTP reaches the far end, waits until
    `done()` holds (`what`: for the failure message) and half a second more for
    anything extra, then hangs up; sipp must then exit with 0."""
    alice = await logged_in(clients, gateway)
    call = await alice.dial(FAR_NUMBER, freq=1000.0)
    dtmf = await answered(call)
    await until(lambda: far.gateway is not None, 10, "RTP from the gateway")
    dtmf.send(digits)
    await until(done, 20, what)
    await asyncio.sleep(0.5)
    await hang_up(call, sp)


def far_events_done(far: FarMedia) -> bool:
    """The far end has the end packets of every event pressed."""
    ends = {p.ts for p in far.events() if TelephoneEvent.parse(p.payload).end}
    return len(ends) >= len(PRESSED)


def far_tones_done(far: FarMedia) -> bool:
    """The far end's audio holds as many tones as keys were pressed."""
    return len(goertzel_digits(far.audio())) >= len(PRESSED)


def assert_far_rfc4733(far: FarMedia) -> None:
    """What the gateway sent the far end carries each digit as exactly one RFC 4733
    event (one timestamp, marker on its first packet, growing durations, three end
    packets, a sane volume) in the audio's sequence and timestamp space."""
    packets = far.received
    assert len({p.ssrc for p in packets}) == 1, "events and audio from one SSRC"
    seqs = [p.seq for p in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False)), (
        "sequence numbers run on through audio and events"
    )
    groups: dict[int, list[int]] = {}  # event timestamp -> indexes into packets
    for i, p in enumerate(packets):
        if p.pt == EVENT_PT:
            groups.setdefault(p.ts, []).append(i)
    codes = "".join(
        DIGITS[TelephoneEvent.parse(packets[g[0]].payload).event] for g in groups.values()
    )
    assert codes == PRESSED, f"events at the far end, one per timestamp: {codes!r}"
    starts = list(groups)
    assert starts == sorted(starts), "event timestamps increase"
    for start, indexes in groups.items():
        events = [TelephoneEvent.parse(packets[i].payload) for i in indexes]
        digit = DIGITS[events[0].event]
        assert indexes == list(range(indexes[0], indexes[-1] + 1)), f"{digit}: audio inside"
        assert [packets[i].marker for i in indexes] == [True] + [False] * (len(indexes) - 1)
        assert {e.event for e in events} == {events[0].event}
        ends = [e for e in events if e.end]
        assert len(ends) == 3 and events[-3:] == ends, f"{digit}: end packets {events}"
        durations = [e.duration for e in events]
        assert durations == sorted(durations), f"{digit}: durations {durations}"
        assert len({e.duration for e in ends}) == 1
        assert 320 <= ends[0].duration <= 8000, f"{digit}: {ends[0].duration / 8:.0f} ms"
        assert all(e.volume <= 36 for e in events), f"{digit}: volume {events[0].volume}"
        # the event sits in the audio's RTP clock: after the audio before it (audio may
        # pause around events, as when relaying a browser that sends events instead of
        # audio), and the audio after it resumes no earlier than the event's end
        before, after = packets[indexes[0] - 1], packets[indexes[-1] + 1]
        assert before.pt == PCMU and after.pt == PCMU
        assert 0 < (start - before.ts) & 0xFFFFFFFF <= 10 * FRAME, (before.ts, start)
        assert (after.ts - start) & 0xFFFFFFFF >= ends[0].duration, (start, after.ts)
    # and that clock keeps time: the audio's timestamps follow the arrival times (within
    # what a loaded machine's scheduling allows; 18 events not counted would be 1.8 s)
    audio = [p for p in packets if p.pt == PCMU]
    drift = [((p.ts - audio[0].ts) & 0xFFFFFFFF) / 8000 - (p.at - audio[0].at) for p in audio]
    assert max(drift) - min(drift) < 0.5, (
        f"RTP clock vs arrival: {min(drift):.3f}..{max(drift):.3f} s"
    )


# --------------------------------------------------------------------------- browser -> SIP


async def test_rfc4733_browser_to_sip(gateway, sipp, clients, far):
    """Telephone-event negotiated on both legs: each digit leaves the gateway as one
    RFC 4733 event (one timestamp, marker on its first packet, growing durations, three
    end packets), in the audio's sequence and timestamp space, and nothing in-band."""
    sp = uas(sipp, gateway, "uas_dtmf_rfc4733.xml", extra=["-key", "rtp_port", str(far.port)])
    await browser_sends(
        gateway,
        clients,
        far,
        sp,
        PRESSED,
        lambda: far_events_done(far),
        "every event at the far end",
    )

    assert_far_rfc4733(far)
    assert goertzel_digits(far.audio()) == [], "digits sent in-band as well"


async def test_info_browser_to_sip(gateway, sipp, clients, far):
    """A far end without telephone-event whose Allow lists INFO gets every digit as one
    INFO application/dtmf-relay, Signal= in order (checked by the sipp scenario and in
    its message log), and no tones in the audio."""
    sp = uas(sipp, gateway, "uas_dtmf_info.xml", extra=["-key", "rtp_port", str(far.port)])
    # sipp's exit 0: 16 INFOs in order, then the BYE (anything else fails sipp)
    await browser_sends(
        gateway,
        clients,
        far,
        sp,
        DIGITS,
        lambda: len(received_info_signals(sp)) >= len(DIGITS),
        "16 INFOs at sipp",
    )
    assert "".join(received_info_signals(sp)) == DIGITS
    assert not far.events()
    assert goertzel_digits(far.audio()) == [], "digits sent in-band as well"


async def test_inband_browser_to_sip(gateway, sipp, clients, far):
    """A far end with neither telephone-event nor INFO hears the digits as dual tones:
    the gateway's Goertzel detector and an independent FFT check find exactly the 16."""
    sp = uas(sipp, gateway, "uas_dtmf_inband.xml", extra=["-key", "rtp_port", str(far.port)])
    # sipp's exit 0: an INFO would have failed the scenario
    await browser_sends(
        gateway, clients, far, sp, PRESSED, lambda: far_tones_done(far), "every tone at the far end"
    )
    assert not far.events()
    audio = far.audio()
    assert_digits(goertzel_digits(audio), "Goertzel detector on the far end's audio")
    assert_digits(fft_digits(audio), "FFT check on the far end's audio")


# --------------------------------------------------------------------------- per-peer mode
# [pbx] dtmf overrides the automatic choice; each test uses a far end for which "auto"
# would choose something else (and whose scenario fails on an unexpected INFO).


def scenario_variant(e2e_dir, name: str, *replacements: tuple[str, str]):
    """A copy of a scenario in the test's directory with some text replaced."""
    text = (SCENARIOS / name).read_text()
    for old, new in replacements:
        assert old in text, (name, old)
        text = text.replace(old, new)
    path = e2e_dir / f"variant_{name}"
    path.write_text(text)
    return path


def uas_variant(sipp: SippFactory, gw: Any, path: Any, far: FarMedia) -> SippProcess:
    """`uas` for a scenario written by scenario_variant."""
    sp = sipp.scenario(
        path.stem,
        str(path),
        None,
        port=gw.pbx_port,
        timeout=SIPP_TIMEOUT,
        extra=["-key", "rtp_port", str(far.port)],
    )
    sipp.wait_bound(sp, gw.pbx_port)
    return sp


@pytest.mark.parametrize("gateway", ['\n[pbx]\ndtmf = "inband"\n'], indirect=True)
async def test_pbx_dtmf_inband_overrides_telephone_event(gateway, sipp, clients, far):
    """The far end negotiated telephone-event, but [pbx] dtmf = "inband": tones only."""
    sp = uas(sipp, gateway, "uas_dtmf_rfc4733.xml", extra=["-key", "rtp_port", str(far.port)])
    await browser_sends(
        gateway, clients, far, sp, PRESSED, lambda: far_tones_done(far), "every tone at the far end"
    )
    assert not far.events(), "telephone-event sent although [pbx] dtmf = inband"
    assert_digits(goertzel_digits(far.audio()), "Goertzel detector on the far end's audio")


@pytest.mark.parametrize("gateway", ['\n[pbx]\ndtmf = "info"\n'], indirect=True)
async def test_pbx_dtmf_info_overrides_telephone_event(gateway, sipp, clients, far, e2e_dir):
    """The far end negotiated telephone-event and allows INFO; [pbx] dtmf = "info": every
    digit as one INFO, no events and no tones."""
    xml = scenario_variant(
        e2e_dir,
        "uas_dtmf_info.xml",
        ("m=audio [rtp_port] RTP/AVP 0\n", "m=audio [rtp_port] RTP/AVP 0 101\n"),
        (
            "a=rtpmap:0 PCMU/8000\n",
            "a=rtpmap:0 PCMU/8000\n      a=rtpmap:101 telephone-event/8000\n"
            "      a=fmtp:101 0-16\n",
        ),
    )
    sp = uas_variant(sipp, gateway, xml, far)
    await browser_sends(
        gateway,
        clients,
        far,
        sp,
        DIGITS,
        lambda: len(received_info_signals(sp)) >= len(DIGITS),
        "16 INFOs at sipp",
    )
    assert "".join(received_info_signals(sp)) == DIGITS
    assert not far.events(), "telephone-event sent although [pbx] dtmf = info"
    assert goertzel_digits(far.audio()) == [], "digits sent in-band as well"


@pytest.mark.parametrize("gateway", ['\n[pbx]\ndtmf = "rfc4733"\n'], indirect=True)
async def test_pbx_dtmf_rfc4733_never_sends_info(gateway, sipp, clients, far, e2e_dir):
    """A far end without telephone-event whose Allow lists INFO ("auto" would send INFO);
    [pbx] dtmf = "rfc4733": no INFO (the scenario fails on one), tones instead."""
    xml = scenario_variant(
        e2e_dir,
        "uas_dtmf_inband.xml",
        (
            "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\n",
            "Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO\n",
        ),
    )
    sp = uas_variant(sipp, gateway, xml, far)
    # sipp's exit 0: an INFO would have failed the scenario
    await browser_sends(
        gateway, clients, far, sp, PRESSED, lambda: far_tones_done(far), "every tone at the far end"
    )
    assert not far.events()
    assert_digits(goertzel_digits(far.audio()), "Goertzel detector on the far end's audio")


# --------------------------------------------------------------------------- SIP -> browser
# A sipp UAC calls the browser; once the SIP side's 16 digits have arrived, the browser
# sends 16 back, so the incoming call's path is checked toward SIP as well.


@pytest.fixture(params=["opus", "pcmu"])
def client_codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The browser's audio codec. With PCMU on both legs the gateway relays the audio
    payloads undecoded (pass-through) and must still put DTMF in and take it out."""
    if request.param == "pcmu":  # aiortc in this process (the client) offers/accepts PCMU
        audio = [
            c
            for c in aiortc.codecs.CODECS["audio"]
            if c.mimeType.lower() in ("audio/pcmu", TELEPHONE_EVENT)
        ]
        monkeypatch.setitem(aiortc.codecs.CODECS, "audio", audio)
    return request.param


async def incoming_call(
    clients, gateway, sipp, xml: str, far: FarMedia, codec: str = "opus"
) -> tuple[Call, SippProcess]:
    alice = await logged_in(clients, gateway)
    sp = uac(sipp, gateway, xml, ["-key", "rtp_port", str(far.port)])
    call = await alice.wait_incoming(timeout=15)
    await call.answer()
    sdp = call.pc.localDescription.sdp
    m_line = next(line for line in sdp.splitlines() if line.startswith("m=audio"))
    assert m_line.split()[3] == {"opus": "96", "pcmu": "0"}[codec], m_line
    return call, sp


async def test_rfc4733_sip_to_browser_and_back(gateway, sipp, clients, far, client_codec):
    """RFC 4733 events from the SIP side reach the browser as telephone-event packets,
    one event per digit, each digit once; the browser's digits go back as RFC 4733."""
    xml = "uac_dtmf_rfc4733.xml"
    call, sp = await incoming_call(clients, gateway, sipp, xml, far, client_codec)
    dtmf = await answered(call)
    await until(lambda: far.gateway is not None, 10, "RTP from the gateway")
    far.silence(500)
    for digit in PRESSED:
        far.event(digit, 100)
        far.silence(100)
    await far.drained()
    await dtmf.wait_digits(len(PRESSED))
    assert_digits(dtmf.digits, "digits at the browser")
    dtmf.check_packets()

    dtmf.send(PRESSED)
    await until(lambda: far_events_done(far), 20, "every event at the far end")
    await asyncio.sleep(0.5)
    await hang_up(call, sp)
    assert_far_rfc4733(far)
    assert goertzel_digits(far.audio()) == [], "digits sent in-band as well"


async def test_info_sip_to_browser_and_back(gateway, sipp, clients, far):
    """INFO application/dtmf-relay from the SIP side (sipp sends the 16, then Cisco's
    Signal=11 for #) reaches the browser as telephone-event packets, each digit once;
    the browser's digits go back as 16 INFOs (sipp checks them) and not in-band."""
    call, sp = await incoming_call(clients, gateway, sipp, "uac_dtmf_info.xml", far)
    dtmf = await answered(call)
    await dtmf.wait_digits(len(DIGITS) + 1, timeout=25)
    assert_digits(dtmf.digits, "digits at the browser", DIGITS + "#")
    dtmf.check_packets(DIGITS + "#")

    dtmf.send(DIGITS)
    await until(lambda: len(received_info_signals(sp)) >= len(DIGITS), 20, "16 INFOs at sipp")
    await asyncio.sleep(0.5)
    await hang_up(call, sp)  # every INFO answered 200, the gateway's 16 checked
    assert "".join(received_info_signals(sp)) == DIGITS
    assert not far.events()
    assert goertzel_digits(far.audio()) == [], "digits sent in-band as well"


async def test_inband_sip_to_browser_and_back(gateway, sipp, clients, far, client_codec):
    """Dual tones in the SIP side's audio (no telephone-event) are detected by the
    gateway and reach the browser as telephone-event packets, each digit once; the
    speech-like audio before and after them produces none (talk-off). The browser's
    digits go back as tones (no INFO: the caller's Allow leaves it out)."""
    xml = "uac_dtmf_inband.xml"
    call, sp = await incoming_call(clients, gateway, sipp, xml, far, client_codec)
    dtmf = await answered(call)
    await until(lambda: far.gateway is not None, 10, "RTP from the gateway")
    far.play(speech_like(2.0, seed=4))
    for digit in PRESSED:
        far.play(dtmf_audio(digit, 100))
        far.silence(100)
    far.play(speech_like(1.0, seed=5))
    await far.drained()
    await dtmf.wait_digits(len(PRESSED))
    assert_digits(dtmf.digits, "digits at the browser")
    dtmf.check_packets()

    dtmf.send(PRESSED)
    await until(lambda: far_tones_done(far), 20, "every tone at the far end")
    await asyncio.sleep(0.5)
    await hang_up(call, sp)  # an INFO would have failed the scenario
    assert not far.events()
    audio = far.audio()
    assert_digits(goertzel_digits(audio), "Goertzel detector on the far end's audio")
    assert_digits(fft_digits(audio), "FFT check on the far end's audio")


# --------------------------------------------------------------------------- Chromium


async def test_chromium_rtcdtmfsender_to_sip(gateway, sipp, e2e_dir, far):
    """The real thing: Chromium's RTCDTMFSender (through the JS library's sendDigit)
    sends all 16 digits; each leaves the gateway as exactly one RFC 4733 event."""
    from tests.e2e.test_webphone_library import bench_dial, bench_login
    from tests.e2e.webphone_helpers import (
        call_state_js,
        launch,
        login_js,
        open_bench,
        wait_bench,
    )

    sp = uas(sipp, gateway, "uas_dtmf_rfc4733.xml", extra=["-key", "rtp_port", str(far.port)])
    async with launch(e2e_dir) as browser:
        page = await browser.page("bench")
        await open_bench(page, gateway.http_url)
        await bench_login(page, "a", "1001")
        await wait_bench(page, login_js("SUCCESS", "a"))
        call = await bench_dial(page, "a", FAR_NUMBER)
        # Every digit in the same task as the CONNECTED state change, when Chromium's
        # RTCDTMFSender may not take digits yet: the library keeps them and sends them
        # in order once it does.
        sent = await page.evaluate(
            """([call, digits]) => new Promise((resolve) => {
              const c = window.bench.calls[call];
              const send = () => resolve([...digits].map((d) => c.sendDigit(d)));
              if (c.getState() === "CONNECTED") { send(); return; }
              const timer = setInterval(() => {
                if (c.getState() === "CONNECTED") { clearInterval(timer); send(); }
              }, 1);
            })""",
            [call, PRESSED],
        )
        assert all(sent), f"sendDigit refused: {sent}"
        await until(lambda: far.gateway is not None, 10, "RTP from the gateway")

        await until(
            lambda: far_events_done(far), 20, "16 events at the far end"
        )  # 16 x (100 + 70) ms
        await asyncio.sleep(0.5)
        await page.evaluate(f"() => window.bench.calls[{call}].disconnect()")
        await wait_bench(page, call_state_js("DISCONNECTED", call))
    await expect_exit(sp)
    assert_far_rfc4733(far)


# --------------------------------------------------------------------------- baresip


async def test_baresip_gets_every_digit(gateway, clients, e2e_dir):
    """A real SIP phone: baresip, registered at the gateway's registrar (it offers
    telephone-event), reports each of the browser's digits as one event: one start and
    one end per key press, in order (its log: "received event: '5' (end=0)")."""
    from tests.e2e.test_sip_phone import BARESIP, Phone

    if BARESIP is None:
        pytest.skip("baresip missing")
    phone = Phone(e2e_dir, gateway.sip_port, "1002", "bob-secret")

    def reported() -> list[tuple[str, str]]:
        return re.findall(r"received event: '(.)' \(end=([01])\)", phone.log())

    try:
        phone.start()
        await phone.wait_log("200 OK")  # registered
        alice = await logged_in(clients, gateway)
        call = await alice.dial("1002", freq=1000.0)  # bob is not on the web: his phone
        dtmf = await answered(call)
        dtmf.send(PRESSED)
        await until(lambda: len(reported()) >= 2 * len(PRESSED), 20, "every event at baresip")
        await asyncio.sleep(0.5)
        await call.hangup()
        await call.wait_state("terminated", timeout=10)
    finally:
        phone.stop()
    events = reported()
    assert "".join(d for d, _ in events[0::2]) == PRESSED, events
    assert [end for _, end in events] == ["0", "1"] * len(PRESSED), events
    assert "".join(d for d, _ in events[1::2]) == PRESSED, events
