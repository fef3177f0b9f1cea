"""Media-port fuzzing: malformed datagrams at a running gateway's media ports while a call
runs (DESIGN §9: bad input never crashes the gateway or affects other calls).

A browser (the aiortc json-v1 client, sending a 1 kHz tone) calls a sipp UAS that answers
PCMA with telephone-event and echoes RTP through the RtpRelay of test_sip_media, which
records what the gateway sends toward SIP. Once the echo is heard, a bounded burst of
malformed datagrams (tests/malformed_media.py: truncated headers, wrong versions, CSRC,
extension and padding lengths past the packet, unknown payload types, broken comfort
noise and telephone-event payloads, broken RTCP of every type, SRTP/SRTCP that cannot
authenticate, STUN- and DTLS-looking garbage, 65000-byte datagrams and seeded random
bytes) goes from 127.0.0.1 to the gateway's SIP-side RTP and RTCP ports (from its SDP
in sipp's message log) and to its WebRTC ICE port (from the candidates of its answer).
Meanwhile a stranger sends RTP of the negotiated payload type (a 2.5 kHz tone) from
another port. Then the peer itself goes wrong: the relay (the source the gateway latched)
sends the RTP-port garbage, which the gateway therefore parses, decodes and plays.

After each burst: the gateway is alive and logged no traceback; the fuzzing sockets'
telephone-events were not taken as digits and the browser never heard the stranger
(rtc/rtpleg.py, Latching: once the peer's audio latched, RTP from elsewhere is dropped);
the gateway still sends to the relay, never to the fuzzing sockets; audio crosses both
ways (the relay decodes the gateway's A-law to the browser's tone, and the browser hears
its tone echoed back). A second call, made after the bursts, works both ways too.

By design (rtc/rtcplink.py) the first well-formed RTCP on the RTCP port latches where
our reports go; the burst has well-formed RTCP among its broken packets, so reports from
the gateway's RTCP port to the fuzzing socket are expected and not checked here (that
garbage which is not RTCP never latches is tests/rtc/test_malformed_media.py's).

The gateway's ICE sockets are bound to its host candidates' addresses (aioice leaves out
127.0.0.1), so the ICE port is reached at its candidate address, and only when that
address is one of this machine's own (checked by binding to it): the datagrams never
leave the host, and they are sent from 127.0.0.1 like all others.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections.abc import Callable

import pytest

from rtc.g711 import alaw_encode
from rtc.rtp import RtpPacket
from tests.audio import SineSource, band_energy_ratio
from tests.e2e.client import RATE, Call
from tests.e2e.conftest import HOST, Gateway, SippFactory, SippProcess
from tests.e2e.sipp_calls import SIPP_TIMEOUT
from tests.e2e.test_dtmf import ClientDtmf, scenario_variant
from tests.e2e.test_sip_media import (
    FAR_NUMBER,
    RtpRelay,
    assert_tone,
    audio_between,
    check_echo_after_active,
    expect_exit,
    logged_in,
    wait_active,
)
from tests.malformed_media import (
    corpus,
    huge_datagrams,
    malformed_rtcp,
    malformed_rtp,
    random_datagrams,
)

pytestmark = pytest.mark.e2e

SEED = 20261124
PCMA, EVENT_PT = 8, 101
TONE, STRANGER_TONE = 1000.0, 2500.0
MAX_DATAGRAMS = 5000  # the burst is bounded


def pcma_with_events(e2e_dir) -> str:
    """tests/e2e/scenarios/uas_pcma.xml answering PCMA and telephone-event/8000."""
    return str(
        scenario_variant(
            e2e_dir,
            "uas_pcma.xml",
            ("m=audio [rtp_port] RTP/AVP 8\n", "m=audio [rtp_port] RTP/AVP 8 101\n"),
            (
                "a=rtpmap:8 PCMA/8000\n",
                "a=rtpmap:8 PCMA/8000\n      a=rtpmap:101 telephone-event/8000\n"
                "      a=fmtp:101 0-16\n",
            ),
        )
    )


def start_far(sipp: SippFactory, gw: Gateway, xml: str, relay: RtpRelay) -> SippProcess:
    """The sipp UAS on the gateway's [pbx] port; its SDP names the relay, which forwards to
    sipp's RTP echo."""
    far = sipp.scenario(
        "uas_pcma_events",
        xml,
        None,
        port=gw.pbx_port,
        timeout=SIPP_TIMEOUT,
        extra=["-rtp_echo", "-key", "rtp_port", str(relay.port)],
    )
    sipp.wait_bound(far, gw.pbx_port)
    relay.follow(far)
    return far


def gateway_rtp_ports(far: SippProcess) -> tuple[int, int]:
    """The gateway's RTP and RTCP ports toward SIP, from the SDP of the INVITE sipp got
    (RTCP: a=rtcp when given, else RTP + 1)."""
    invites = [m for m in re.split(r"^-{20,}.*$", far.logs(), flags=re.M) if "INVITE sip:" in m]
    assert invites, f"no INVITE in sipp's message log:\n{far.logs()[-3000:]}"
    sdp = invites[-1].replace("\r\n", "\n")
    m_line = re.search(r"^m=audio (\d+) ", sdp, re.M)
    assert m_line, sdp
    rtp = int(m_line.group(1))
    rtcp = re.search(r"^a=rtcp:(\d+)", sdp, re.M)
    return rtp, int(rtcp.group(1)) if rtcp else rtp + 1


def local_address(address: str) -> bool:
    """True when `address` is one of this machine's (a socket can be bound to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def gateway_ice_targets(call: Call) -> tuple[list[tuple[str, int]], int]:
    """The gateway's IPv4 host candidates on this machine, and its Opus payload type, from
    its answer to the browser."""
    assert call.answer_sdp is not None
    candidates = re.findall(
        r"^a=candidate:\S+ 1 udp \d+ (\d+\.\d+\.\d+\.\d+) (\d+) typ host", call.answer_sdp, re.M
    )
    targets = sorted({(a, int(p)) for a, p in candidates if local_address(a)})
    opus = re.search(r"^a=rtpmap:(\d+) opus/48000", call.answer_sdp, re.M)
    assert opus, call.answer_sdp
    return targets, int(opus.group(1))


def udp_socket() -> socket.socket:
    """A non-blocking UDP socket on 127.0.0.1: every datagram of this test comes from one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


Send = Callable[[bytes, tuple[str, int]], object]


async def send_all(
    send: Send, datagrams: list[tuple[bytes, tuple[str, int]]], *, batch: int = 40
) -> None:
    """Send them in batches with a short pause between (a burst, not a flood)."""
    for i, (data, target) in enumerate(datagrams):
        for _ in range(50):
            try:
                send(data, target)
                break
            except BlockingIOError:
                await asyncio.sleep(0.002)
        if i % batch == batch - 1:
            await asyncio.sleep(0.01)


async def stranger_stream(sock: socket.socket, target: tuple[str, int], seconds: float) -> None:
    """RTP of the negotiated payload type (PCMA, a 2.5 kHz tone) in its own stream, paced
    in real time, from another port than the peer's."""
    tone = SineSource(STRANGER_TONE, 8000, 0.5)
    ssrc = random.Random(SEED).getrandbits(32)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(int(seconds * 50)):
        payload = alaw_encode(tone.frame(160))
        packet = RtpPacket(PCMA, n, n * 160, ssrc, payload=payload, marker=n == 0)
        with contextlib.suppress(BlockingIOError):
            sock.sendto(bytes(packet), target)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


def sent_from(sock: socket.socket, ports: set[int]) -> list[int]:
    """Source ports (among `ports`) of what arrived at this socket."""
    found: list[int] = []
    while True:
        try:
            _, (_, port) = sock.recvfrom(70000)
        except BlockingIOError:
            return found
        if port in ports:
            found.append(port)


def assert_no_traceback(gw: Gateway, what: str) -> None:
    """No record of an exception in the whole gateway log (one record per line): no
    traceback at WARNING or above (aiortc's dying transport, logger.exception), nor
    asyncio's reports of an exception a callback or task let through. Tracebacks at
    DEBUG are allowed: websockets logs the readiness probe's empty HTTP request so."""
    bad = []
    for line in gw.log_path.read_text(errors="replace").splitlines():
        warning = re.match(r"\S+ (WARNING|ERROR|CRITICAL) ", line) is not None
        if (warning and "Traceback" in line) or any(
            marker in line for marker in ("Exception in callback", "Fatal error", "never retrieved")
        ):
            bad.append(line)
    assert not bad, f"{what}: exceptions in the gateway log:\n" + "\n".join(bad)[-6000:]


async def two_way_audio(call: Call, relay: RtpRelay, since: float, what: str) -> None:
    """After `since`: the browser hears its tone echoed (SIP -> browser), and the gateway's
    last 1.5 s of A-law toward SIP decode to it (browser -> SIP)."""
    await call.wait_audio(2.5, since=since, timeout=20)
    assert_tone(call.received_audio(since=since, skip=1.0), TONE, f"{what}: echo at the browser")
    relay.check_pcma(TONE)


async def test_malformed_media_never_disturbs_calls(gateway, sipp, clients, e2e_dir):
    xml = pcma_with_events(e2e_dir)
    relay = await RtpRelay().start()
    fuzz, stranger = udp_socket(), udp_socket()
    try:
        far = start_far(sipp, gateway, xml, relay)
        alice = await logged_in(clients, gateway)
        call = await alice.dial(FAR_NUMBER, freq=TONE)
        # RFC 4733 on the client, as a browser has it: the broken peer's key presses reach
        # it as events (aiortc alone has no decoder for them)
        ClientDtmf(call)
        await wait_active(call)
        await check_echo_after_active(call, TONE, seconds=1.0)
        relay.check_pcma(TONE)

        rtp_port, rtcp_port = gateway_rtp_ports(far)
        assert relay.gateway == (HOST, rtp_port), (relay.gateway, rtp_port)
        ice, opus_pt = gateway_ice_targets(call)
        assert ice, f"no IPv4 host candidate of this machine in {call.answer_sdp}"

        # 1. strangers: every media port of the call, and RTP of the call's payload type
        rng = random.Random(SEED)
        to_rtp = (
            malformed_rtp(PCMA, EVENT_PT)
            + malformed_rtcp()  # RTCP muxed on the RTP port (RFC 5761)
            + random_datagrams(SEED, 500)
            + huge_datagrams(PCMA)
        )
        to_rtcp = malformed_rtcp() + malformed_rtp(PCMA) + random_datagrams(SEED + 1, 300)
        to_ice = corpus(opus_pt, seed=SEED + 2, random_count=500)
        burst = [(d, (HOST, rtp_port)) for d in to_rtp]
        burst += [(d, (HOST, rtcp_port)) for d in to_rtcp + huge_datagrams()]
        burst += [(d, target) for target in ice for d in to_ice]
        rng.shuffle(burst)
        # 2. the peer itself gone wrong: the same RTP-port garbage from the relay, the
        # latched source, so that it is parsed, decoded and played rather than dropped
        from_peer = malformed_rtp(PCMA, EVENT_PT) + random_datagrams(SEED + 3, 300)
        from_peer += huge_datagrams(PCMA)
        assert len(burst) + len(from_peer) <= MAX_DATAGRAMS, len(burst)

        burst_start = time.monotonic()
        await asyncio.gather(
            send_all(fuzz.sendto, burst), stranger_stream(stranger, (HOST, rtp_port), 1.5)
        )
        burst_end = time.monotonic()

        assert gateway.alive(), f"gateway died under the burst:\n{gateway.log()[-6000:]}"
        assert call.state == "active", call.statuses
        # telephone-events from the fuzzing sockets were not taken as the peer's digits
        # (they would have gone on to the browser in place of the audio)
        log = gateway.log_path.read_text(errors="replace")  # all of it: gateway.log() cuts
        injected = re.findall(r"rtc\.rtpleg: DTMF (.) received", log)
        assert not injected, f"digits {injected} taken from strangers' telephone-events"
        heard = audio_between(call, burst_start + 0.2, burst_end)
        assert heard.size >= RATE // 2, f"{heard.size / RATE:.2f} s of audio during the burst"
        stranger_share = band_energy_ratio(heard, RATE, STRANGER_TONE)
        assert stranger_share < 0.05, f"the stranger's RTP was heard ({stranger_share:.2f})"
        await two_way_audio(call, relay, burst_end, "after the strangers' burst")
        assert_no_traceback(gateway, "after the strangers' burst")

        assert relay.transport is not None
        await send_all(relay.transport.sendto, [(d, (HOST, rtp_port)) for d in from_peer])
        peer_end = time.monotonic()
        assert gateway.alive(), f"gateway died under the peer's burst:\n{gateway.log()[-6000:]}"
        assert call.state == "active", call.statuses
        await two_way_audio(call, relay, peer_end, "after the peer's burst")
        assert relay.gateway == (HOST, rtp_port)
        assert_no_traceback(gateway, "after the peer's burst")

        await call.hangup()
        await call.wait_state("terminated", timeout=10)
        await expect_exit(far)
        # the RTP latch stayed with the peer: no RTP ever went to the fuzzing sockets
        for sock in (fuzz, stranger):
            assert not sent_from(sock, {rtp_port}), "the gateway sent RTP to a fuzzing socket"

        # a new call after the bursts works both ways
        second_relay = await RtpRelay().start()
        try:
            second = start_far(sipp, gateway, xml, second_relay)
            call2 = await alice.dial(FAR_NUMBER, freq=TONE)
            await wait_active(call2)
            assert call2.active_at is not None
            await two_way_audio(call2, second_relay, call2.active_at, "second call")
            await call2.hangup()
            await call2.wait_state("terminated", timeout=10)
            await expect_exit(second)
        finally:
            second_relay.close()
        assert gateway.alive()
        assert_no_traceback(gateway, "at the end")
    finally:
        fuzz.close()
        stranger.close()
        relay.close()
