"""
rtc.circuit: a steady pass-through stream relayed in one step. Pure tests of what a
circuit takes and hands back, then real calls (browser <-WebRTC-> gateway <-RTP-> phone)
in which circuits engage both ways: the audio, every counter and statistic, and the
streams on the wire (no loss, no sequence or timestamp jump) are as without them, also
across what releases them (DTMF, a lost packet, hold, a re-INVITE).

The tests run with each circuit class there is: PyCircuit (the per-packet step
in Python, the reference) and NativeCircuit (the same step in C, rtc._relay, when
built); test_the_c_step_does_what_the_python_step_does compares the two packet by
packet, and ..._with_any_datagram over random datagrams. The calls that check the
legs' paths rather than the step (bad input, losses, stalls, syncs) run with one
(one_step), for the suite's time.
"""

import asyncio
import contextlib
import gc
import os
import random
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pylibsrtp
import pytest

import rtc.bridge
import rtc.circuit
from rtc.circuit import Circuit, Inbound, Outbound
from rtc.ports import frame_samples
from rtc.rtp import RTP_FIXED_HEADER, RtpPacket
from rtc.rtpleg import RtpLeg

from .test_passthrough import Call

SSRC = 0x1111
IMPLEMENTATIONS = [rtc.circuit.PyCircuit] + (
    [rtc.circuit.NativeCircuit] if hasattr(rtc.circuit, "NativeCircuit") else []
)


@pytest.fixture(autouse=True, params=IMPLEMENTATIONS, ids=lambda c: c.__name__)
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """
    The circuit class the gateway uses in this test. PyCircuit runs as in an
    install without rtc._relay: the legs' sockets call their own callbacks
    (rtc.circuit.tap), which offer each datagram to the circuit.
    """
    if request.param is rtc.circuit.PyCircuit:
        monkeypatch.setattr(rtc.circuit, "_relay", None)
        monkeypatch.setattr(rtc.circuit, "NATIVE", False)
    monkeypatch.setattr(rtc.circuit, "Circuit", request.param)
    monkeypatch.setattr(rtc.bridge, "Circuit", request.param)
    return request.param  # type: ignore[no-any-return]


class Leg:
    """A leg as a circuit sees it: records what is synced."""

    def __init__(self) -> None:
        self._circuit_in: Circuit | None = None
        self._circuit_out: Circuit | None = None
        self.synced_in: list[tuple[int, int, int, int]] = []
        self.synced_out: list[tuple[int, int, int]] = []

    def circuit_synced_in(self, circuit: Circuit) -> None:
        self.synced_in.append(
            (circuit.packets, circuit.octets, circuit.sequence_number, circuit.wraps)
        )

    def circuit_synced_out(self, circuit: Circuit) -> None:
        self.synced_out.append((circuit.packets, circuit.out_sequence, circuit.out_timestamp))


def srtp_session(direction: int) -> pylibsrtp.Session:
    """A libsrtp session (AES128_CM_SHA1_80, the tests' key) for ``direction``."""
    policy = pylibsrtp.Policy(
        key=bytes(range(30)),
        ssrc_type=direction,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    return pylibsrtp.Session(policy)


def rtp(seq: int, ts: int, payload: bytes = b"\xff" * 160, ssrc: int = SSRC, pt: int = 0) -> bytes:
    return bytes(RtpPacket(pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, payload=payload))


def circuit(
    sent: list[tuple[bytes, Any]], seq: int = 100, ts: int = 8000
) -> tuple[Circuit, Leg, Leg]:
    a, b = Leg(), Leg()
    inbound = Inbound(SSRC, 0, seq, ts, 160, 160, 8000, None, peer=("192.0.2.1", 4000))
    outbound = Outbound(
        0x80, 8, 0x2222, 65534, 0xFFFFFF00, 160, b"", None, lambda d, a: sent.append((d, a)), "far"
    )
    return rtc.circuit.Circuit(a, inbound, b, outbound), a, b


def test_a_circuit_relays_only_what_continues_the_stream() -> None:
    sent: list[tuple[bytes, Any]] = []
    c, a, b = circuit(sent)
    peer = ("192.0.2.1", 4000)
    assert a._circuit_in is c and b._circuit_out is c and c.engaged
    assert c.take(rtp(100, 8000), peer)
    # the sending leg's header: its payload type, SSRC, next sequence number and timestamp
    out = [RTP_FIXED_HEADER.unpack_from(data) for data, _ in sent]
    assert out == [(0x80, 8, 65534, 0xFFFFFF00, 0x2222)] and sent[0][1] == "far"
    assert sent[0][0][12:] == b"\xff" * 160
    declined = [
        rtp(102, 8320),  # a packet lost before it
        rtp(101, 8320, ssrc=SSRC + 1),  # another stream
        rtp(101, 8480),  # a timestamp jump
        rtp(101, 8160, pt=8),  # another codec
        rtp(101, 8160, payload=b"\xff" * 80),  # not 20 ms
        bytes(RtpPacket(0, 101, 8160, SSRC, payload=b"\xff" * 160, marker=True)),
        b"\x80\x00",  # not even a header
    ]
    for data in declined:
        assert not c.take(data, peer)
    assert not c.take(rtp(101, 8160), ("192.0.2.1", 4001))  # from elsewhere
    assert len(sent) == 1
    # the wraps of both sides' sequence numbers and timestamps
    for k in range(1, 4):
        assert c.take(rtp(100 + k, 8000 + 160 * k), peer)
    out = [RTP_FIXED_HEADER.unpack_from(data)[2:4] for data, _ in sent]
    assert out == [(65534, 0xFFFFFF00), (65535, 0xFFFFFFA0), (0, 0x40), (1, 0xE0)]
    c.sync()
    assert a.synced_in == [(4, 640, 104, 0)] and b.synced_out == [(4, 2, 0x180)]
    c.sync()  # nothing new: nothing handed back
    assert len(a.synced_in) == 1
    c.release()
    assert a._circuit_in is None and b._circuit_out is None and not c.engaged
    c.release()


def test_received_sequence_wraps_are_counted_for_the_statistics() -> None:
    sent: list[tuple[bytes, Any]] = []
    c, a, _ = circuit(sent, seq=0xFFFE, ts=0)
    for k in range(4):
        assert c.take(rtp(0xFFFE + k, 160 * k), ("192.0.2.1", 4000))
    c.release()
    assert a.synced_in == [(4, 640, 2, 1)]


# --------------------------------------------------------------------------- real calls


def engaged(call: Call) -> tuple[bool, bool]:
    """(browser -> SIP, SIP -> browser) relayed by circuits now."""
    return call.client._circuit_in is not None, call.far._circuit_in is not None


async def steady(call: Call, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """
    ``call.exchange(seconds)``, then on a second at a time (up to 5 more) until
    circuits relay both ways, as they do once the streams are steady: on a
    busy machine a packet late by more than the reorder wait releases one,
    and it takes 50 packets in order to engage again. The audio of the last
    exchange.
    """
    audio = await call.exchange(seconds)
    for _ in range(5):
        if engaged(call) == (True, True):
            break
        audio = await call.exchange(1.0)
    return audio


@contextlib.asynccontextmanager
async def relayed_pcmu() -> AsyncIterator[Call]:
    """A PCMU call (browser and phone), relayed both ways by circuits."""
    call = Call("0", ("PCMU",))
    await call.setup()
    try:
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        assert engaged(call) == (True, True)
        yield call
    finally:
        await call.close()


async def stream_stats(call: Call) -> dict[str, Any]:
    browser, phone = await call.browser.stats(), call.phone.stats()
    client, far = await call.client.stats(), call.far.stats()
    return {
        "browser_lost": browser.packets_lost,
        "phone_lost": phone.packets_lost,
        "browser_received": browser.packets_received,
        "phone_received": phone.packets_received,
        "client_received": client.packets_received,
        "client_lost": client.packets_lost,
        "far_received": far.packets_received,
        "far_lost": far.packets_lost,
        "far_sent": far.packets_sent,
        "client_sent": client.packets_sent,
        "phone_jitter": phone.jitter_ms,
        "far_jitter": far.jitter_ms,
    }


@pytest.mark.parametrize(("browser_pt", "codec"), [("0", "PCMU"), (None, "opus")])
async def test_circuits_engage_both_ways_and_the_call_is_the_same(
    browser_pt: str | None, codec: str, implementation: type
) -> None:
    call = Call(browser_pt, (codec,))
    await call.setup()
    try:
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        assert engaged(call) == (True, True)
        if implementation is not rtc.circuit.PyCircuit:
            # each way's steps all in C: the browser's SRTP unprotected, plain RTP
            # sent to the phone; the phone's RTP protected for the browser
            assert call.client._circuit_in.native == (True, False, True)  # type: ignore[union-attr]
            assert call.far._circuit_in.native == (False, True, True)  # type: ignore[union-attr]
            # and both receiving sockets are read in the collector's pauses
            assert call.client._circuit_in.receiving  # type: ignore[union-attr]
            assert call.far._circuit_in.receiving  # type: ignore[union-attr]
            # which the loop reads with an rtc._relay.Reader (rtc.udp): the ICE
            # connection's sockets were moved onto it
            sockets = [p.transport for p in call.client._hooked[0]._protocols]  # type: ignore[index]
            sockets.append(call.far._transport)
            assert {type(t).__name__ for t in sockets} == {"SocketTransport"}, sockets
        decoded = call.client.decoded + call.far.frames_decoded
        at_phone, at_browser = await steady(call, 1.5)
        assert engaged(call) == (True, True)
        call.check(at_phone, at_browser, 1000, 700)
        assert call.client.decoded + call.far.frames_decoded == decoded
        stats = await stream_stats(call)
        # on loopback: nothing lost, every packet sent counted where it arrived
        assert stats["browser_lost"] == 0 and stats["phone_lost"] == 0, stats
        assert stats["client_lost"] == 0 and stats["far_lost"] == 0, stats
        assert stats["far_received"] >= 140 and stats["client_received"] >= 140, stats
        assert abs(stats["far_received"] - stats["browser_received"]) <= 5, stats
        assert abs(stats["client_received"] - stats["phone_received"]) <= 5, stats
        assert abs(stats["far_sent"] - stats["phone_received"]) <= 3, stats
        assert abs(stats["client_sent"] - stats["browser_received"]) <= 3, stats
        assert stats["far_jitter"] is not None and stats["far_jitter"] < 10, stats
    finally:
        await call.close()


async def test_what_releases_a_circuit_leaves_the_streams_whole() -> None:
    """
    DTMF toward the browser and toward SIP, and a hold and resume of the phone by
    re-INVITE, each release the circuits; the legs' own paths go on from where the
    circuits left (the far ends see no loss and no repeated sequence number), and
    the circuits engage again once the stream is steady.
    """
    call = Call("0", ("PCMU",))
    await call.setup()
    digits_at_browser: list[str] = []
    call.browser.on_dtmf = digits_at_browser.append
    try:
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        assert engaged(call) == (True, True)
        call.client.send_dtmf("1")  # toward the browser: the SIP -> browser circuit goes
        assert not engaged(call)[1]
        call.far.send_dtmf("2")  # toward the phone: browser -> SIP's
        assert not engaged(call)[0]
        await call.exchange(1.5)
        assert digits_at_browser == ["1"]
        assert engaged(call) == (True, True)
        # the phone holds and resumes (re-INVITEs): negotiations release
        call.far.apply_answer(call.phone.create_answer(call.far.create_offer("sendonly")))
        assert engaged(call) == (False, False)
        await call.exchange(0.5)
        call.far.apply_answer(call.phone.create_answer(call.far.create_offer("sendrecv")))
        at_phone, at_browser = await steady(call, 2.0)
        assert engaged(call) == (True, True)
        call.check(at_phone, at_browser, 1000, 700)
        stats = await stream_stats(call)
        assert stats["browser_lost"] == 0, stats
        assert stats["client_lost"] == 0 and stats["far_lost"] == 0, stats
    finally:
        await call.close()


async def test_passes_of_the_collector_mid_call_leave_the_streams_whole() -> None:
    """
    Full passes of the collector while circuits relay (with rtc._relay, its thread
    serves them and takes what waits in the sockets): the streams come through whole
    (no loss, no repeated sequence number), and the circuits, engaged after. A long
    pass in this process stops the test's peers too (they are in it), which may let a
    leg's filler tick release its circuit after it: they engage again once the
    stream is steady.
    """
    call = Call("0", ("PCMU",))
    await call.setup()
    loop = asyncio.get_running_loop()
    try:
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        assert engaged(call) == (True, True)
        relay = rtc.circuit._relay
        passes = relay.pause_figures()[0] if relay is not None else 0
        for k in range(8):
            loop.call_later(0.1 + 0.17 * k, gc.collect)
        await call.exchange(1.5)
        if relay is not None:
            assert relay.pause_figures()[0] > passes  # the first, at least, while engaged
        at_phone, at_browser = await steady(call, 1.5)
        assert engaged(call) == (True, True)
        call.check(at_phone, at_browser, 1000, 700)
        stats = await stream_stats(call)
        assert stats["browser_lost"] == 0 and stats["phone_lost"] == 0, stats
        assert stats["client_lost"] == 0 and stats["far_lost"] == 0, stats
    finally:
        await call.close()


class DropOne:
    """A transport that loses the ``nth`` datagram sent through it."""

    def __init__(self, transport: Any, nth: int) -> None:
        self._transport = transport
        self._nth = nth
        self.sent = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        if self.sent != self._nth:
            self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_a_lost_packet_releases_and_the_gap_is_passed_on(implementation: type) -> None:
    """A packet lost on the way from the phone: the circuit declines the next one, the
    leg's own path takes it (the loss is counted, the browser's decoder conceals the
    gap), and a circuit engages again once the stream is steady."""
    one_step(implementation)
    call = Call("0", ("PCMU",))
    await call.setup()
    try:
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        assert engaged(call)[1]
        lossy = DropOne(call.phone._transport, 10)
        call.phone._transport = lossy  # type: ignore[assignment]
        await call.exchange(0.5)
        assert lossy.sent > 10
        await steady(call, 1.5)
        assert engaged(call)[1]
        assert call.far.stats().packets_lost == 1
        stats = await stream_stats(call)
        assert stats["browser_lost"] == 0, stats
    finally:
        await call.close()


def one_step(implementation: type) -> None:
    """
    For the calls that check the legs' paths with bad input: with the C step
    where it is built (the two steps do the same with any datagram: the
    differential tests below), else the Python one; not both, for the suite's
    time.
    """
    if implementation is not IMPLEMENTATIONS[-1]:
        pytest.skip("the legs' paths, with one step (the C one)")


class Inflate:
    """
    A transport that sends datagrams ``first`` to ``first + count - 1`` with
    their RTP header and a 20 ms Opus payload of ``size`` bytes: longer than
    any encoder makes (RFC 6716 frames end at 1275 bytes), too long for SRTP.
    """

    def __init__(self, transport: Any, first: int, count: int, size: int) -> None:
        self._transport = transport
        self._inflated = range(first, first + count)
        self._payload = bytes((0x08,)) + bytes(size - 1)
        self.sent = 0

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        if self.sent in self._inflated:
            data = data[:12] + self._payload
        self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.mark.parametrize("circuits", [True, False])
async def test_a_payload_too_long_for_srtp_is_lost_and_the_call_goes_on(
    circuits: bool,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    implementation: type,
) -> None:
    """
    A phone's Opus packets relayed undecoded toward the browser, five of them
    too long to be protected for it: those are lost (the browser counts five),
    with a circuit engaged and on the legs' own paths, and nothing is raised in
    the receive path or logged once per packet. The audio goes on.
    """
    one_step(implementation)
    if not circuits:
        monkeypatch.setattr(rtc.bridge, "ENGAGE_AFTER", 10**9)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    call = Call(None, ("opus",))
    await call.setup()
    try:
        call.bridge.connect(call.far)
        await call.exchange(1.5)
        assert engaged(call)[1] == circuits
        inflate = Inflate(call.phone._transport, 10, 5, 1400)
        call.phone._transport = inflate  # type: ignore[assignment]
        await call.exchange(0.5)
        assert inflate.sent > 15
        at_phone, at_browser = await call.exchange(1.5)
        call.check(at_phone, at_browser, 1000, 700)
        assert errors == [] and "Traceback" not in caplog.text, (errors, caplog.text)
        stats = await stream_stats(call)
        assert stats["browser_lost"] == 5 and stats["phone_lost"] == 0, stats
    finally:
        loop.set_exception_handler(None)
        await call.close()


class Fuzz:
    """
    Before each of packets ``first`` to ``first + count - 1`` that a peer
    sends, a fuzzed one (fuzzed) at the same place in its stream, as a peer
    gone wrong would send it, protected with its SRTP: from a phone
    (``transport``, plain RTP or SDES-SRTP), or a browser (``route``: a
    WebRtcLeg's direct way).
    """

    def __init__(self, first: int, count: int, frame: int) -> None:
        self._fuzzed = range(first, first + count)
        self._frame = frame
        self._rng = random.Random(16)
        self.sent = 0

    def phone(self, leg: RtpLeg) -> None:
        """The phone's ``leg`` sends the fuzzed datagrams too, before its own."""
        transport, srtp, made = leg._transport, leg._srtp, self._made
        assert transport is not None

        class Sending:  # plain RTP: as it goes out
            def sendto(self, data: bytes, addr: Any = None) -> None:
                bad = made(data, None)
                if bad is not None:
                    transport.sendto(bad, addr)
                transport.sendto(data, addr)

            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

        class Protecting:  # SDES-SRTP: before the packet takes its index
            def protect(self, data: bytes) -> bytes:
                assert srtp is not None
                bad = made(data, srtp.protect)
                if bad is not None:
                    transport.sendto(bad, leg.remote_address)
                return srtp.protect(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(srtp, name)

        if srtp is None:
            leg._transport = Sending()  # type: ignore[assignment]
        else:
            leg._srtp = Protecting()  # type: ignore[assignment]

    def browser(self, route: Any) -> None:
        protect, sendto = route.protect, route.sendto

        def protect_and_fuzz(data: bytes) -> bytes:
            bad = self._made(data, protect)
            if bad is not None:
                sendto(bad, route.remote_addr)
            return protect(data)  # (its index taken already: lost, as on a network)

        route.protect = protect_and_fuzz

    def _made(self, data: bytes, protect: Callable[[bytes], bytes] | None) -> bytes | None:
        """The fuzzed datagram to send before ``data``, if any."""
        self.sent += 1
        if self.sent not in self._fuzzed:
            return None
        _, pt, seq, ts, ssrc = RTP_FIXED_HEADER.unpack_from(data)
        where = SimpleNamespace(
            sequence_number=seq, timestamp=ts, ssrc=ssrc, payload_type=pt & 0x7F
        )
        bad = fuzzed(self._rng, where, False, self._frame)[0]
        # with the peer's SRTP, unless that would move its index far (a
        # rollover: its own stream would be lost from then on)
        ahead = (int.from_bytes(bad[2:4]) - seq) & 0xFFFF
        if protect is not None and len(bad) >= 12 and ahead <= 2:
            with contextlib.suppress(ValueError, pylibsrtp.Error):
                bad = protect(bad)  # (too long, or its index taken: as it is)
        return bad


async def test_a_short_packet_from_the_browser_leaves_its_stream_relayed(
    implementation: type,
) -> None:
    """
    A 10 ms packet among the browser's 20 ms ones (what a browser may send, or
    a broken one) is decoded (the circuit drops the first, already unprotected,
    and releases: this is the second), the rest of the stream relayed again:
    what is left of it after the last whole 20 ms frame is dropped rather than
    kept in front of the stream, which would then be decoded for the rest of
    the call.
    """
    one_step(implementation)
    async with relayed_pcmu() as call:
        route = call.browser._direct_path()
        assert route is not None
        protect, count = route.protect, 0

        def shorten(data: bytes) -> bytes:
            nonlocal count
            count += 1
            return protect(data[:-80] if count in (10, 11) else data)  # PCMU: 10 ms

        route.protect = shorten
        at_phone, at_browser = await call.exchange(2.0)
        assert count > 60 and engaged(call) == (True, True)
        call.check(at_phone, at_browser, 1000, 700)


@pytest.mark.parametrize(
    ("side", "browser_pt", "codec", "frame", "srtp"),
    [
        ("phone", "0", "PCMU", 160, "off"),
        ("phone", None, "opus", 0, "mandatory"),
        ("browser", None, "opus", 0, "off"),
        # transcoded: the browser's Opus, the phone's PCMU or G.722
        ("browser", None, "PCMU", 0, "off"),
        ("phone", None, "G722", 160, "off"),
    ],
)
async def test_a_peer_gone_wrong_mid_stream_leaves_the_call_whole(
    side: str,
    browser_pt: str | None,
    codec: str,
    frame: int,
    srtp: str,
    caplog: pytest.LogCaptureFixture,
    implementation: type,
) -> None:
    """
    A call whose phone (or browser) sends, among its stream, 100 datagrams
    broken in every way (fuzzed; with its SRTP when it has it) at the place of
    its next packet: the circuit and the legs' own paths (relaying, or
    decoding and encoding) drop, pass or decode them, nothing is raised or
    logged with a traceback, and once the peer is itself again the audio
    crosses both ways and a relayed call's circuits engage again.
    """
    one_step(implementation)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    call = Call(browser_pt, (codec,), srtp)
    await call.setup()
    try:
        call.bridge.connect(call.far)
        await call.exchange(1.5)
        relayed = codec == "opus" or browser_pt is not None
        assert engaged(call) == (relayed, relayed)
        fuzz = Fuzz(10, 100, frame)
        if side == "phone":
            fuzz.phone(call.phone)
        else:
            fuzz.browser(call.browser._direct_path())
        await call.exchange(2.5)
        assert fuzz.sent > 110
        at_phone, at_browser = await call.exchange(1.5)
        call.check(at_phone, at_browser, 1000, 700)
        assert engaged(call) == (relayed, relayed)
        assert relayed or (call.client.decoded > 100 and call.far.frames_decoded > 100)
        assert errors == [] and "Traceback" not in caplog.text, (errors, caplog.text)
    finally:
        loop.set_exception_handler(None)
        await call.close()


async def test_without_circuits_the_same_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same call with circuits never engaged: counters and statistics agree."""
    monkeypatch.setattr(rtc.bridge, "ENGAGE_AFTER", 10**9)
    call = Call("0", ("PCMU",))
    await call.setup()
    try:
        call.bridge.connect(call.far)
        await call.exchange(3.0)
        assert engaged(call) == (False, False)
        stats = await stream_stats(call)
        assert stats["browser_lost"] == 0 and stats["phone_lost"] == 0, stats
        assert abs(stats["far_received"] - stats["browser_received"]) <= 5, stats
        assert abs(stats["client_received"] - stats["phone_received"]) <= 5, stats
    finally:
        await call.close()


def test_jitter_goes_on_from_the_legs_estimate_and_opus_code_3_is_taken() -> None:
    """An engage does not restart RFC 3550 jitter from nothing (it went out in reports
    and stats() at a fraction of the real value after every release); a 20 ms Opus
    packet of code 3 (padded CBR, as many phones send) is relayed, not lost."""
    sent: list[tuple[bytes, Any]] = []
    a, b = Leg(), Leg()
    inbound = Inbound(SSRC, 111, 100, 0, 960, 0, 48000, None, jitter=96.0, transit=5.0)
    outbound = Outbound(0x80, 96, 0x2222, 1, 0, 960, b"", None, lambda d, a: sent.append((d, a)), 1)
    c = rtc.circuit.Circuit(a, inbound, b, outbound)
    assert c.jitter == 96.0 and c.transit == 5.0
    code3 = bytes((0x0B, 0x81, 7)) + bytes(60)  # SILK WB 20 ms, code 3, one frame, padding
    assert c.take(rtp(100, 0, code3, pt=111))
    assert c.take(rtp(101, 960, bytes((0x08,)) + bytes(40), pt=111))  # code 0
    assert not c.take(rtp(102, 1920, bytes((0x0B, 0x82)) + bytes(60), pt=111))  # 40 ms
    assert len(sent) == 2


def test_what_concerns_the_stream_releases() -> None:
    """Declined datagrams that are of the stream all the same release the circuit:
    its SSRC from anywhere, anything from the latched peer (a new SSRC); not RTCP,
    nor a stranger's other stream."""
    c, _, _ = circuit([])
    peer = ("192.0.2.1", 4000)
    assert c.concerns(rtp(150, 0), ("192.0.2.9", 9))  # our SSRC, another address
    assert c.concerns(rtp(1, 0, ssrc=0x5EED), peer)  # the peer switched sources
    assert not c.concerns(rtp(1, 0, ssrc=0x5EED), ("192.0.2.9", 9))  # a stranger
    rtcp = bytes((0x80, 200)) + bytes(6) + SSRC.to_bytes(4, "big") + bytes(16)
    assert not c.concerns(rtcp, peer)
    unlatched = rtc.circuit.Circuit(
        Leg(),
        Inbound(SSRC, 0, 1, 0, 160, 160, 8000, None),
        Leg(),
        Outbound(0x80, 0, 1, 1, 0, 160, b"", None, lambda d, a: None, 1),
    )
    assert unlatched.concerns(rtp(1, 0, ssrc=0x5EED))  # same payload type, new SSRC
    assert not unlatched.concerns(rtp(1, 0, ssrc=0x5EED, pt=100))  # video bundled


class HoldBurst:
    """A transport that keeps what is sent while ``holding`` and sends it all at once."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.holding = False
        self.held: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any = None) -> None:
        if self.holding:
            self.held.append((data, addr))
        else:
            self._transport.sendto(data, addr)

    def flush(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for data, addr in held:
            self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_a_stall_then_a_burst_and_a_new_source_keep_the_streams_whole(
    implementation: type,
) -> None:
    """
    The phone's packets held 400 ms on the way and then delivered in a burst: the leg
    sends filler meanwhile by itself, which releases the circuit (before, the circuit
    went on afterwards from its old sequence numbers: the browser dropped 9 packets as
    SRTP replays). Then the phone switches sources (new SSRC, sequence numbers and
    timestamps, no re-INVITE): the circuit is released before the leg counts the new
    source (before, the old source's packets were counted into it: thousands "lost").
    """
    one_step(implementation)
    call = Call("0", ("PCMU",))
    await call.setup()
    try:
        burst = HoldBurst(call.phone._transport)
        call.phone._transport = burst  # type: ignore[assignment]
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        assert engaged(call)[1]
        before = await call.browser.stats()
        exchange = asyncio.ensure_future(call.exchange(2.0))
        await asyncio.sleep(0.3)
        burst.holding = True
        await asyncio.sleep(0.4)
        assert call.client._track.filled > 0
        burst.flush()
        await asyncio.sleep(0.5)
        call.phone._ssrc = 0x5EED5EED
        call.phone._sequence_number = 40000
        call.phone._clock._timestamp += 123456 * 160
        await exchange
        after = await call.browser.stats()
        # every packet the client sent reached the browser: none taken for a replay
        sent = (await call.client.stats()).packets_sent
        assert after.packets_received - before.packets_received >= 90
        assert abs(after.packets_received - sent) <= 3, (after.packets_received, sent)
        far = call.far.stats()
        assert 0 <= far.packets_lost <= 2, far
        assert call.far._packets.late == 0
    finally:
        await call.close()


@pytest.mark.parametrize("seed", [1])
async def test_any_sequence_of_what_releases_circuits_leaves_the_streams_whole(
    seed: int, implementation: type
) -> None:
    """
    Seeded random sequences, a few hundred ms apart while audio flows both
    ways, of what releases circuits: DTMF each way, the phone held and resumed
    by re-INVITE, audio written to a leg, a collector pass, the phone's packets
    stalled on the way then delivered in a burst. The streams the gateway
    sends come through whole (nothing lost at the browser or the phone, and no
    sequence number repeated: the browser's SRTP would drop it as a replay),
    every digit arrives once, and at the end the audio crosses both ways and
    circuits relay it again.
    """
    one_step(implementation)
    rng = random.Random(seed)
    call = Call("0", ("PCMU",))
    await call.setup()
    at_browser_digits: list[str] = []
    at_phone_digits: list[str] = []
    call.browser.on_dtmf = at_browser_digits.append
    call.phone.on_dtmf = at_phone_digits.append
    burst = HoldBurst(call.phone._transport)
    call.phone._transport = burst  # type: ignore[assignment]
    to_browser: list[str] = []
    to_phone: list[str] = []
    done: list[str] = []
    try:
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        exchange = asyncio.ensure_future(call.exchange(7.0))
        held = False
        for _ in range(14):
            await asyncio.sleep(rng.uniform(0.15, 0.45))
            action = rng.choice(
                ("dtmf to browser", "dtmf to phone", "hold", "write", "collect", "stall")
            )
            if action == "dtmf to browser":
                digit = rng.choice("0123456789*#ABCD")
                call.client.send_dtmf(digit)
                to_browser.append(digit)
            elif action == "dtmf to phone" and not held:
                digit = rng.choice("0123456789*#ABCD")
                call.far.send_dtmf(digit)
                to_phone.append(digit)
            elif action == "hold":
                held = not held
                direction = "sendonly" if held else "sendrecv"
                call.far.apply_answer(call.phone.create_answer(call.far.create_offer(direction)))
            elif action == "write":
                leg = rng.choice((call.client, call.far))
                leg.write(np.zeros(frame_samples(leg.sample_rate), dtype=np.int16))
            elif action == "collect":
                gc.collect()
            elif action == "stall" and not burst.holding:
                burst.holding = True
                asyncio.get_running_loop().call_later(rng.uniform(0.1, 0.4), burst.flush)
            done.append(action)
        if held:
            call.far.apply_answer(call.phone.create_answer(call.far.create_offer("sendrecv")))
        await exchange
        burst.flush()
        at_phone, at_browser = await steady(call, 2.0)
        assert engaged(call) == (True, True), done
        call.check(at_phone, at_browser, 1000, 700)
        assert at_browser_digits == to_browser and at_phone_digits == to_phone, done
        stats = await stream_stats(call)
        assert stats["browser_lost"] == 0 and stats["phone_lost"] == 0, (stats, done)
        sent = (await call.client.stats()).packets_sent
        assert abs(stats["browser_received"] - sent) <= 3, (stats, sent, done)
    finally:
        await call.close()


async def test_a_finished_ice_restart_releases_the_circuits() -> None:
    """An ICE restart may nominate a new pair: a circuit, which holds the old pair's
    sendto and address, must not go on sending there until the next fill tick."""
    from rtc.webrtcleg import WebRtcLeg

    released: list[str] = []

    class Engaged:
        def __init__(self, name: str) -> None:
            self.name = name

        def release(self) -> None:
            released.append(self.name)

    leg = WebRtcLeg()
    try:
        leg._circuit_in = Engaged("in")  # type: ignore[assignment]
        leg._circuit_out = Engaged("out")  # type: ignore[assignment]
        leg._run_ice_restart()
        assert leg._restart_task is not None
        await leg._restart_task
        assert released == ["in", "out"]
    finally:
        leg._circuit_in = leg._circuit_out = None
        await leg.close()


async def test_audio_written_to_a_leg_releases_only_the_circuit_it_sends_on(
    implementation: type,
) -> None:
    # e.g. a tone mixed toward the browser: the other direction stays a circuit
    one_step(implementation)
    async with relayed_pcmu() as call:
        call.client.write(np.zeros(frame_samples(call.client.sample_rate), dtype=np.int16))
        assert engaged(call) == (True, False)
        await steady(call, 1.5)
        assert engaged(call) == (True, True)
        call.far.write(np.zeros(frame_samples(call.far.sample_rate), dtype=np.int16))
        assert engaged(call) == (False, True)
        call.far.write_gap(1)
        call.client.write_gap(1)
        assert engaged(call) == (False, False)


def test_due_says_when_a_steady_circuit_needs_no_sync(
    monkeypatch: pytest.MonkeyPatch, implementation: type
) -> None:
    """
    The sending leg's filler tick asks ``due``: while packets keep coming and
    the last sync is less than SYNC_EVERY old, only when to look again (the
    last packet plus the fill delay); otherwise its whole work (a sync).
    """
    if implementation is not rtc.circuit.PyCircuit:
        pytest.skip("a fake clock: the C step reads CLOCK_MONOTONIC itself (due is shared)")
    clock = [100.0]
    monkeypatch.setattr(rtc.circuit.time, "monotonic", lambda: clock[0])
    sent: list[tuple[bytes, Any]] = []
    c, _, b = circuit(sent)
    peer = ("192.0.2.1", 4000)
    assert c.due(0.25) is None  # nothing relayed since the last sync
    for i in range(10):
        clock[0] += 0.02
        assert c.take(rtp(100 + i, 8000 + 160 * i), peer)
    assert c.due(0.25) == pytest.approx(0.25)
    clock[0] += 0.1
    assert c.due(0.25) == pytest.approx(0.15)
    clock[0] += 0.2  # the stream paused longer than the fill delay
    assert c.due(0.25) is None
    c.sync()
    assert len(b.synced_out) == 1
    for i in range(10, 10 + 51):  # a second of packets after that sync, and one
        clock[0] += 0.02
        assert c.take(rtp(100 + i, 8000 + 160 * i), peer)
        if clock[0] - 100.5 < rtc.circuit.SYNC_EVERY - 0.01:
            assert c.due(0.25) is not None
    assert c.due(0.25) is None  # SYNC_EVERY since the last sync: time for one


async def test_ticks_between_syncs_only_look(
    monkeypatch: pytest.MonkeyPatch, implementation: type
) -> None:
    """
    While circuits relay, the legs' filler ticks (every 250 ms) sync them only
    every SYNC_EVERY; the SIP leg's media timeout still counts the packets
    relayed since the last sync, and the call is the same.
    """
    one_step(implementation)
    monkeypatch.setattr(rtc.circuit, "SYNC_EVERY", 4.0)
    call = Call("0", ("PCMU",))
    await call.setup()
    syncs = {"client": 0, "far": 0}
    timeouts: list[bool] = []
    for name in syncs:
        leg = getattr(call, name)
        original = leg.circuit_synced_out

        def counted(circuit: Circuit, name: str = name, original: Any = original) -> None:
            syncs[name] += 1
            original(circuit)

        leg.circuit_synced_out = counted
    call.far.media_timeout = 0.6
    call.far.on_timeout = lambda: timeouts.append(True)
    try:
        call.bridge.connect(call.far)
        await steady(call, 1.5)
        assert engaged(call) == (True, True)
        before = dict(syncs)
        at_phone, at_browser = await steady(call, 2.5)
        assert engaged(call) == (True, True)
        # each circuit synced once at most in 2.5 s (ten filler ticks apiece)
        assert all(syncs[name] - before[name] <= 1 for name in syncs), (before, syncs)
        assert timeouts == []
        call.check(at_phone, at_browser, 1000, 700)
        stats = await stream_stats(call)
        assert stats["browser_lost"] == 0 and stats["far_lost"] == 0, stats
    finally:
        await call.close()


PEER = ("192.0.2.1", 4000)


def browser_srtp(data: bytes) -> bytes:
    """SRTP as a browser sends it (a session per packet: the same packet may come
    twice, as a replay, and the index stays below a rollover)."""
    return srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND).protect(data)


def relaying(
    cls: type,
    srtp_in: bool,
    frame: int,
    seq: int = 100,
    ts: int = 8000,
    peer: Any = PEER,
    address: Any = "far",
) -> tuple[Any, Leg, list[bytes]]:
    """
    (circuit, its receiving leg, what it sends to ``address``) of ``cls``:
    PCMU (``frame`` 160) or Opus (0) from ``seq``, ``ts``; SRTP in and plain
    RTP out (``srtp_in``), or plain RTP from ``peer`` in and SRTP out, with
    the native steps where the class has them.
    """
    from rtc.srtp import protector, unprotector

    a, b = Leg(), Leg()
    sent: list[bytes] = []
    inbound = Inbound(
        SSRC, 0 if frame else 111, seq, ts, 160 if frame else 960, frame,
        8000 if frame else 48000,
        unprotector(srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND)) if srtp_in else None,
        peer=None if srtp_in else peer,
    )  # fmt: skip
    outbound = Outbound(
        0x90, 8, 0x2222, 65534, 0xFFFFFF00, 160, bytes((0xBE, 0xDE, 0, 1, 0x10, 0x31, 0, 0)),
        None if srtp_in else protector(srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)),
        lambda d, _: sent.append(d), address,
    )  # fmt: skip
    return cls(a, inbound, b, outbound), a, sent


COUNTED = (
    "packets", "octets", "in_octets", "out_octets", "wraps", "sequence_number", "timestamp",
    "out_sequence", "out_timestamp",
)  # fmt: skip


def test_the_c_step_does_what_the_python_step_does(implementation: type) -> None:
    """
    rtc._relay's take against rtc.circuit's (the reference), packet by packet,
    with real SRTP both ways: what each takes or declines, the bytes each sends,
    what each counts, and when each releases, over a stream with everything a
    circuit must decline or drop in it.
    """
    if implementation is not getattr(rtc.circuit, "NativeCircuit", None):
        pytest.skip("compares both steps, once: with rtc._relay built")

    def stream(srtp_in: bool, frame: int) -> list[tuple[bytes, Any]]:
        payload = b"\xff" * 160 if frame else bytes((0x08,)) + bytes(40)
        pt = 0 if frame else 111
        step = 160 if frame else 960
        out: list[tuple[bytes, Any]] = []

        def add(data: bytes, addr: Any = PEER, protect: bool = True) -> None:
            out.append((browser_srtp(data) if srtp_in and protect else data, addr))

        seq, ts = 100, 8000
        for i in range(30):
            add(rtp(seq, ts, payload, pt=pt))
            seq, ts = seq + 1, ts + step
            if i == 3:
                add(rtp(seq + 1, ts + step, payload, pt=pt))  # ahead: declined
            if i == 4:
                add(rtp(seq, ts, payload, ssrc=0x9999, pt=pt))  # another source
            if i == 5:
                add(rtp(seq, ts, payload, pt=13))  # another payload type
            if i == 6:
                add(b"\x80" + bytes((pt,)) + bytes(5), protect=False)  # too short
            if i == 7:
                add(rtp(seq, ts, payload, pt=pt), addr=("192.0.2.9", 1))  # a stranger
            if i == 8:
                header = bytearray(rtp(seq, ts, b"", pt=pt))
                header[0] |= 0x10  # an extension bit and no extension: no payload
                add(bytes(header) + b"\x00", protect=False)
            if i == 9:
                forged = bytearray(browser_srtp(rtp(seq, ts, payload, pt=pt)) if srtp_in else b"")
                if forged:
                    forged[-1] ^= 1  # a wrong tag: dropped, taken as done
                    out.append((bytes(forged), PEER))
            if i == 10:
                extended = bytearray(rtp(seq, ts, b"", pt=pt))
                extended[0] |= 0x10
                add(bytes(extended) + bytes((0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0)) + payload)
                seq, ts = seq + 1, ts + step
            if i == 12 and not (frame and srtp_in):  # (with SRTP it would release)
                code3 = bytes((0x0B, 0x81, 7)) + bytes(60)
                add(rtp(seq, ts, b"\x00" * 80 if frame else code3, pt=pt))
                if not frame:
                    seq, ts = seq + 1, ts + step  # code 3, one 20 ms frame: taken
        add(rtp(seq, ts, b"\xff" * 320 if frame else bytes((0x0B, 0x82)) + bytes(60), pt=pt))
        add(rtp(seq + 1, ts + step, payload, pt=pt))  # after the release: declined
        return out

    for srtp_in in (True, False):
        for frame in (160, 0):
            python, py_leg, py_sent = relaying(rtc.circuit.PyCircuit, srtp_in, frame)
            native, c_leg, c_sent = relaying(rtc.circuit.NativeCircuit, srtp_in, frame)
            assert native.native == (srtp_in, not srtp_in, False)
            for k, (data, addr) in enumerate(stream(srtp_in, frame)):
                taken = (python.take(data, addr), native.take(data, addr))
                assert taken[0] == taken[1], (srtp_in, frame, k, taken)
                assert py_sent == c_sent, (srtp_in, frame, k)
                assert (py_leg._circuit_in is None) == (c_leg._circuit_in is None), (frame, k)
                for name in COUNTED:
                    assert getattr(python, name) == getattr(native, name), (name, k)
            # the stream's change of packet time: declined, or (already unprotected) released
            assert (py_leg._circuit_in is None) == srtp_in
            assert len(py_sent) >= 31 and py_leg.synced_in == c_leg.synced_in, len(py_sent)
            assert native.transit is not None and native.jitter >= 0


def fuzzed(
    rng: random.Random,
    circuit: Any,
    srtp_in: bool,
    frame: int,
    broken: float = 1.0,
    peer: Any = PEER,
    stranger: Any = None,
) -> tuple[bytes, Any]:
    """
    One datagram for ``circuit`` (relaying's, or what has its stream's
    ``ssrc``, ``payload_type`` and next ``sequence_number`` and ``timestamp``)
    from ``peer`` where its stream stands: the next packet, or (``broken`` of
    the time, most of the rest) that packet broken in one of the ways a peer
    or an attacker may send it: any first byte (CSRC count, padding,
    version), any second byte (marker, payload type), a payload of any length,
    any Opus TOC byte and code 3 frame count, a header extension whose length
    word says anything, a truncated header, the next sequence number or
    timestamp but one, from a stranger (any port of 192.0.2.9 unless given), a
    broken SRTP tag, no SRTP.
    """
    pt, step = circuit.payload_type, 160 if frame else 960
    seq, ts = circuit.sequence_number, circuit.timestamp
    payload = b"\xff" * 160 if frame else bytes((0x08,)) + bytes(40)
    extension = b""
    addr = peer
    kind = rng.randrange(14) if rng.random() < broken else 0
    if kind == 1:
        payload = rng.randbytes(rng.choice((0, 1, 159, 161, 320, rng.randrange(1600))))
    elif kind == 2:  # any TOC byte; for code 3, any frame count byte
        payload = bytes((rng.randrange(256), rng.randrange(256))) + rng.randbytes(rng.randrange(90))
    elif kind == 3:
        extension = bytes((0xBE, 0xDE)) + rng.randbytes(2) + rng.randbytes(rng.randrange(24))
    elif kind == 4:
        seq += rng.choice((-1, 1, 2, 0x8000))
    elif kind == 5:
        ts += rng.choice((-step, 1, step, 0x80000000))
    elif kind == 6:
        addr = stranger or ("192.0.2.9", rng.randrange(1, 65536))
    header = bytearray(rtp(seq, ts, b"", ssrc=circuit.ssrc, pt=pt))
    if kind == 7:
        header[0] = rng.choice((0x90, 0xA0, 0xB0, 0x81, 0x8F, 0xC0, 0x00, rng.randrange(256)))
    elif kind == 8:
        header[1] = rng.randrange(256)
    if extension:
        header[0] |= 0x10
    data = bytes(header) + extension + payload
    if kind == 9:
        return data[: rng.randrange(20)], addr
    if srtp_in and kind != 10:  # (10: not protected)
        try:
            data = browser_srtp(data)
        except (ValueError, pylibsrtp.Error):
            pass  # too long for libsrtp's buffer: goes as it is
        if kind == 11:
            broken = bytearray(data)
            broken[rng.randrange(12, len(broken))] ^= 1 << rng.randrange(8)
            data = bytes(broken)
    return data, addr


def test_the_c_step_does_what_the_python_step_does_with_any_datagram(
    implementation: type,
) -> None:
    """
    The C step against the Python one over seeded random datagrams (fuzzed):
    nothing it is given crashes it or makes it differ from the reference in
    what it takes, sends, counts or releases. A circuit released is made again
    where its stream stands, so the stream goes on.
    """
    if implementation is not getattr(rtc.circuit, "NativeCircuit", None):
        pytest.skip("compares both steps, once: with rtc._relay built")
    PyCircuit, NativeCircuit = rtc.circuit.PyCircuit, rtc.circuit.NativeCircuit
    rng = random.Random(4)
    for srtp_in in (True, False):
        for frame in (160, 0):
            seq, ts = 100, 8000
            python, py_leg, py_sent = relaying(PyCircuit, srtp_in, frame, seq, ts)
            native, c_leg, c_sent = relaying(NativeCircuit, srtp_in, frame, seq, ts)
            for k in range(3000):
                if py_leg._circuit_in is None:
                    python, py_leg, py_sent = relaying(PyCircuit, srtp_in, frame, seq, ts)
                    native, c_leg, c_sent = relaying(NativeCircuit, srtp_in, frame, seq, ts)
                data, addr = fuzzed(rng, python, srtp_in, frame)
                taken = (python.take(data, addr), native.take(data, addr))
                where = (srtp_in, frame, k, data.hex())
                assert taken[0] == taken[1], where
                assert py_sent == c_sent, where
                assert (py_leg._circuit_in is None) == (c_leg._circuit_in is None), where
                for name in COUNTED:
                    assert getattr(python, name) == getattr(native, name), (name, *where)
                seq, ts = python.sequence_number, python.timestamp
            # the stream went on through all of it
            assert seq - 100 > 500, (srtp_in, frame)


def test_the_c_step_is_built() -> None:
    """`make test` installs a C compiler first (the Makefile's build-deps), so the
    suite runs the C step too, not only the Python one."""
    assert hasattr(rtc.circuit, "NativeCircuit"), (
        "rtc._relay is not built: apt-get install gcc python3-dev, then pip install -e ."
    )


def leg_path(circuit: Any, got: list[tuple[bytes, Any]]) -> Any:
    """What a leg does with what its circuit declined: release it if it concerns it."""

    def fallback(data: bytes, addr: Any) -> None:
        got.append((data, addr))
        if circuit.engaged and circuit.concerns(data, addr):
            circuit.release()

    return fallback


def test_in_the_collectors_pauses_the_thread_relays_and_python_gets_the_rest_in_order(
    implementation: type,
) -> None:
    """
    While a pass of the collector holds the interpreter, rtc._relay's thread
    reads an engaged circuit's receiving socket: what continues the stream is
    relayed as the C step would (real sockets, real SRTP from a browser), what
    needs Python (RTCP, a stranger, a lost packet and the stream behind it, an
    Opus code 3 packet that was already unprotected) waits in the socket's tap and
    reaches the leg's callback after the pass, in the order it came. The packets
    at the far end are those the Python step makes of the same datagrams.
    """
    if implementation is rtc.circuit.PyCircuit:
        pytest.skip("rtc._relay's thread")
    from rtc import _relay
    from rtc.srtp import native as srtp_native
    from rtc.srtp import unprotector

    session = srtp_session
    sockets = []
    for _ in range(4):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    rx, tx, far, src = sockets
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))

    def make(cls: type) -> tuple[Any, Leg, list[tuple[bytes, Any]]]:
        a, b = Leg(), Leg()
        sent: list[tuple[bytes, Any]] = []
        unprotect = unprotector(session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
        inbound = Inbound(SSRC, 111, 100, 8000, 960, 0, 48000, unprotect, src.getsockname())
        outbound = Outbound(
            0x80, 0, 0x2222, 65534, 0xFFFFFF00, 160, b"", None,
            lambda d, addr: sent.append((d, addr)), far.getsockname(),
        )  # fmt: skip
        return cls(a, inbound, b, outbound), a, sent

    opus = bytes((0x08,)) + bytes(40)
    code3 = bytes((0x0B, 0x81, 7)) + bytes(60)  # one 20 ms frame, said by its frame count
    rtcp = bytes((0x80, 200, 0, 6)) + bytes(24)

    def plan_of(stray_ssrc: int) -> list[tuple[bytes, socket.socket]]:
        plan: list[tuple[bytes, socket.socket]] = []
        browser = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        seq, ts = 100, 8000
        for i in range(40):
            if i == 10:
                plan.append((rtcp, src))  # not of the stream: waits, the stream goes on
            if i == 14:
                # another source (waits, the stream goes on), or the stream's own SSRC
                # from elsewhere (the leg would release: the rest waits behind it)
                stray = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND).protect(
                    rtp(seq, ts, opus, ssrc=stray_ssrc, pt=111)
                )
                plan.append((stray, stranger))
            if i == 20:
                plan.append((browser.protect(rtp(seq, ts, code3, pt=111)), src))  # Python's
                seq, ts = seq + 1, ts + 960
            if i == 30:
                seq, ts = seq + 1, ts + 960  # a packet lost: the rest waits behind it
            plan.append((browser.protect(rtp(seq, ts, opus, pt=111)), src))
            seq, ts = seq + 1, ts + 960
        return plan

    # (while a circuit is held, as its sync holds it, the thread leaves all to Python)
    for stray_ssrc, during, held in ((0x9999, 20, False), (SSRC, 14, False), (0x9999, 0, True)):
        plan = plan_of(stray_ssrc)
        # the reference: the Python step and the leg's path, one datagram after another
        python, py_leg, py_sent = make(rtc.circuit.PyCircuit)
        py_fallback: list[tuple[bytes, Any]] = []
        py_path = leg_path(python, py_fallback)
        for data, sender in plan:
            if not (python.engaged and python.take(data, sender.getsockname())):
                py_path(data, sender.getsockname())

        native, leg, _ = make(rtc.circuit.NativeCircuit)
        arrived: list[tuple[bytes, Any]] = []
        tap = _relay.Tap(leg, leg_path(native, arrived))
        # sending and receiving on the sockets here (the legs give their transports')
        sockets_here = (tx.fileno(), socket.AF_INET, rx.fileno(), socket.AF_INET, tap)
        assert native._bind_native(*srtp_native(native.unprotect), 0, 0, 0, *sockets_here)
        assert native.receiving and native.native == (True, False, True)
        passes, relayed, _, registered = _relay.pause_figures()
        assert registered >= 1
        try:
            for data, sender in plan:
                sender.sendto(data, rx.getsockname())
            native._hold(held)
            assert _relay.pause_start()
            far.settimeout(2.0)
            received = [far.recv(2048) for _ in range(during)]
            if held:
                time.sleep(0.2)  # time for the thread to read the socket
            assert _relay.pause_stop()  # and datagrams wait for Python
            native._hold(False)
            figures = _relay.pause_figures()
            assert figures[0] == passes + 1 and figures[1] - relayed == during
            assert arrived == []  # nothing for Python while the pass ran
            _relay.drain()
            # then what the thread had not read yet, as the event loop reads it
            rx.setblocking(False)
            while True:
                try:
                    tap(*rx.recvfrom(2048))
                except BlockingIOError:
                    break
            far.settimeout(0.3)
            while True:
                try:
                    received.append(far.recv(2048))
                except TimeoutError:
                    break
            assert received == [data for data, _ in py_sent], stray_ssrc
            assert arrived == py_fallback
            assert arrived[0] == (rtcp, src.getsockname())
            assert arrived[1][1] == stranger.getsockname()
            assert (leg._circuit_in is None) == (py_leg._circuit_in is None)
            for name in ("packets", "octets", "in_octets", "out_sequence", "sequence_number"):
                assert getattr(native, name) == getattr(python, name), name
        finally:
            native.release()
            assert not native.receiving
    for sock in (*sockets, stranger):
        sock.close()


def test_in_the_collectors_pauses_any_datagram_goes_as_in_python(implementation: type) -> None:
    """
    rtc._relay's thread against the Python step and the leg's path, over
    seeded random datagrams on real sockets (fuzzed: one in ten broken, some
    from a stranger), in passes of 30 datagrams each with a new circuit where
    the stream stands: what reaches the far end, what reaches the leg's
    callback after the pass (in order) and what the circuit counts are the
    same, with SRTP in or out, PCMU or Opus.
    """
    if implementation is rtc.circuit.PyCircuit:
        pytest.skip("rtc._relay's thread")
    from rtc import _relay
    from rtc.srtp import native as srtp_native

    PyCircuit, NativeCircuit = rtc.circuit.PyCircuit, rtc.circuit.NativeCircuit
    rng = random.Random(8)
    for srtp_in in (True, False):
        for frame in (160, 0):
            sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            rx, tx, far, src, stranger = sockets
            rx.setblocking(False)
            peer, elsewhere = src.getsockname(), stranger.getsockname()
            ends = {"peer": peer, "address": far.getsockname()}
            seq, ts = 100, 8000
            relayed = 0
            try:
                for round_ in range(20):
                    # the reference, and the datagrams it was given
                    python, _, py_sent = relaying(PyCircuit, srtp_in, frame, seq, ts, **ends)
                    py_fallback: list[tuple[bytes, Any]] = []
                    py_path = leg_path(python, py_fallback)
                    plan: list[tuple[bytes, socket.socket]] = []
                    for _ in range(30):
                        data, addr = fuzzed(rng, python, srtp_in, frame, 0.1, peer, elsewhere)
                        plan.append((data, src if addr == peer else stranger))
                        if not (python.engaged and python.take(data, addr)):
                            py_path(data, addr)

                    native, leg, _ = relaying(NativeCircuit, srtp_in, frame, seq, ts, **ends)
                    arrived: list[tuple[bytes, Any]] = []
                    tap = _relay.Tap(leg, leg_path(native, arrived))
                    steps = (*srtp_native(native.unprotect), *srtp_native(native.protect))
                    sockets_here = (tx.fileno(), socket.AF_INET, rx.fileno(), socket.AF_INET, tap)
                    assert native._bind_native(*steps, *sockets_here) and native.receiving
                    try:
                        assert _relay.pause_start()
                        for data, sender in plan:
                            sender.sendto(data, rx.getsockname())
                        deadline = time.monotonic() + 10
                        while select.select([rx], [], [], 0)[0] and time.monotonic() < deadline:
                            time.sleep(0.005)  # the thread reads all there is
                        _relay.pause_stop()
                        _relay.drain()
                        with contextlib.suppress(BlockingIOError):
                            while True:  # what it left in the socket, as the loop reads it
                                tap(*rx.recvfrom(65536))
                        far.settimeout(2.0)
                        received = [far.recv(2048) for _ in py_sent]
                        far.settimeout(0.01)
                        with contextlib.suppress(TimeoutError):
                            received.append(far.recv(2048))  # one too many
                        where = (srtp_in, frame, round_)
                        assert received == py_sent, where
                        assert arrived == py_fallback, where
                        assert native.engaged == python.engaged, where
                        for name in COUNTED:
                            assert getattr(native, name) == getattr(python, name), (name, *where)
                    finally:
                        native.release()
                    relayed += len(py_sent)
                    seq, ts = python.sequence_number, python.timestamp
                assert relayed > 200, (srtp_in, frame, relayed)
            finally:
                for sock in sockets:
                    sock.close()


@contextlib.contextmanager
def relaying_on_sockets() -> Iterator[tuple[Any, socket.socket, socket.socket, socket.socket]]:
    """
    (circuit, rx, src, far): an engaged circuit with the C step on real sockets,
    plain PCMU both ways. What ``src`` sends to ``rx`` from sequence number 100,
    timestamp 8000 continues its stream and goes out to ``far`` from 7, 70; what
    it declines its tap drops.
    """
    from rtc import _relay

    rx, tx, far, src = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4))
    for sock in (rx, tx, far, src):
        sock.bind(("127.0.0.1", 0))
    far.settimeout(2.0)
    a, b = Leg(), Leg()
    inbound = Inbound(SSRC, 0, 100, 8000, 160, 160, 8000, None, peer=src.getsockname())
    outbound = Outbound(
        0x80, 0, 0x2222, 7, 70, 160, b"", None, lambda d, addr: None, far.getsockname()
    )
    c = rtc.circuit.Circuit(a, inbound, b, outbound)
    tap = _relay.Tap(a, lambda data, addr: None)
    c._bind_native(0, 0, 0, 0, 0, 0, tx.fileno(), socket.AF_INET, rx.fileno(), socket.AF_INET, tap)
    try:
        yield c, rx, src, far
    finally:
        c.release()
        for sock in (rx, tx, far, src):
            sock.close()


def send_stream(src: socket.socket, rx: socket.socket, count: int) -> None:
    """The first ``count`` packets of relaying_on_sockets' stream."""
    for k in range(count):
        src.sendto(rtp(100 + k, 8000 + 160 * k), rx.getsockname())


def sent_on(far: socket.socket, count: int) -> list[tuple[int, int]]:
    """(sequence number, timestamp) of the next ``count`` packets at ``far``."""
    return [RTP_FIXED_HEADER.unpack_from(far.recv(2048))[2:4] for _ in range(count)]


def test_a_pass_of_the_collector_relays_what_waits(implementation: type) -> None:
    """gc.collect() itself: rtc.circuit's gc callback starts and stops the thread."""
    if implementation is rtc.circuit.PyCircuit:
        pytest.skip("rtc._relay's thread")
    from rtc import _relay

    with relaying_on_sockets() as (c, rx, src, far):
        send_stream(src, rx, 5)
        passes = _relay.pause_figures()[0]
        # a pass another thread runs is not served (the loop's thread may be in libsrtp)
        other = threading.Thread(target=gc.collect)
        other.start()
        other.join()
        assert _relay.pause_figures()[0] == passes
        gc.collect()
        assert _relay.pause_figures()[0] == passes + 1
        # sent while the pass ran, or at the latest when it ended
        assert sent_on(far, 5) == [(7 + k, 70 + 160 * k) for k in range(5)]
        assert c.packets == 5


def test_a_forked_child_relays_through_its_own_passes(implementation: type) -> None:
    """
    A child forked after the thread started (the e2e tests fork their gateways
    from one process; an operator's supervisor may too) has none of the
    parent's threads: its passes start a thread of its own rather than wait on
    the parent's lock and condition, and relay as the parent's did.
    """
    if implementation is rtc.circuit.PyCircuit:
        pytest.skip("rtc._relay's thread")
    from rtc import _relay

    with relaying_on_sockets() as (_, rx, src, far):
        gc.collect()  # the parent's thread runs (parked between passes)
        passes = _relay.pause_figures()[0]
        assert passes > 0
        child = os.fork()
        if child == 0:
            code = 1
            try:
                send_stream(src, rx, 5)
                gc.collect()
                served = _relay.pause_figures()[0] == passes + 1
                relayed = sent_on(far, 5) == [(7 + k, 70 + 160 * k) for k in range(5)]
                code = 0 if served and relayed else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(child, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(child, 9)
                os.waitpid(child, 0)
                pytest.fail("the forked child hung in its collector pass")
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's own thread still serves the parent's passes (its circuit,
        # a copy the child's relaying left as it was, waits for the stream's start)
        send_stream(src, rx, 1)
        gc.collect()
        assert _relay.pause_figures()[0] == passes + 1
        assert sent_on(far, 1) == [(7, 70)]
