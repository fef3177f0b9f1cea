"""End-to-end SIP signalling and media details against real sipp peers.

Covers what a PBX does between the INVITE and the 200 (ringback on 180, early media on
183 with SDP), codec choice (a PCMA-only far end, both directions), digest challenges
(401 and 407) and how failures and cancellations map to json-v1 reasons (§6, §9).

Every sipp runs a scenario from tests/e2e/scenarios/ and is started/stopped by PID by the
`sipp` fixture; the audio each aiortc client receives is analysed (frequency, level,
cadence), never assumed. For the PCMA tests a small UDP relay in this process sits
between the gateway and sipp's RTP echo: it records payload types on the wire and lets
the test decode the gateway's A-law itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from tests.audio import band_energy_ratio, dominant_frequency, rms_dbfs
from tests.e2e.client import RATE, Call, JsonV1Client, max_playback_rate
from tests.e2e.conftest import (
    HOST,
    Gateway,
    SippFactory,
    SippProcess,
    _failed,
    free_port,
    free_udp_range,
    start_gateway,
    stop_process,
    write_config,
)
from tests.e2e.sipp_calls import SIPP_TIMEOUT, call_from_sipp

pytestmark = pytest.mark.e2e

FAR_NUMBER = "5555"  # not a web user: goes to the [pbx] uri, where sipp listens
MIN_LEVEL_DBFS = -40.0
FREQ_TOLERANCE_HZ = 20.0

PBX_USER = "gw-e2e"  # what tests/e2e/scenarios/uas_auth_*.xml expect
PBX_PASSWORD = "s3cret-e2e"


# --------------------------------------------------------------------------- audio helpers


def assert_tone(audio: np.ndarray, freq: float, what: str, rate: int = RATE) -> None:
    """The audio is a tone at `freq` (+-20 Hz) above -40 dBFS, at least 0.5 s of it."""
    assert audio.size >= rate // 2, f"{what}: only {audio.size / rate:.2f} s of audio"
    level = rms_dbfs(audio)
    peak = dominant_frequency(audio, rate)
    assert level > MIN_LEVEL_DBFS, f"{what}: level {level:.1f} dBFS (silence?), peak {peak:.0f} Hz"
    assert abs(peak - freq) <= FREQ_TOLERANCE_HZ, (
        f"{what}: dominant frequency {peak:.1f} Hz, expected {freq:.0f} Hz (level {level:.1f} dBFS)"
    )


async def check_echo_after_active(call: Call, freq: float, seconds: float = 2.0) -> None:
    """After `active`: skip 1 s, then `seconds` of the client's own tone must come back."""
    await call.wait_audio(1.0 + seconds, timeout=20.0)
    assert_tone(call.received_audio(since=call.active_at, skip=1.0), freq, "echo after active")


def audio_between(call: Call, start: float, end: float) -> np.ndarray:
    """Received samples whose chunks arrived in [start, end) (monotonic times)."""
    parts = [a for t, a in call.recorder.chunks if start <= t < end]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)


def block_levels(audio: np.ndarray, block: float = 0.05) -> np.ndarray:
    """RMS level (dBFS) of consecutive `block`-second pieces."""
    n = int(block * RATE)
    count = audio.size // n
    return np.array([rms_dbfs(audio[i * n : (i + 1) * n]) for i in range(count)])


def message_time(call: Call, action: str, **fields: str) -> float:
    """Monotonic time at which the client first received `action` for this call with
    these fields (e.g. status with state="active", or the offering: start)."""
    client = call.client
    for t, direction, item in client.log:
        if direction != "<" or not isinstance(item, str):
            continue
        try:
            msg = json.loads(item)
        except ValueError:
            continue
        if (
            isinstance(msg, dict)
            and msg.get("action") == action
            and msg.get("identifier") == call.identifier
            and all(msg.get(key) == value for key, value in fields.items())
        ):
            return client._t0 + t
    raise AssertionError(f"no {action} {fields} in the transcript: {call.states}")


def status_time(call: Call, state: str) -> float:
    """Monotonic time at which the client received the first status `state` of this call."""
    return message_time(call, "status", state=state)


def alaw_decode(data: bytes) -> np.ndarray:
    """G.711 A-law bytes -> int16 (ITU-T G.711, independent of the gateway's tables)."""
    a = np.frombuffer(data, dtype=np.uint8).astype(np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


# --------------------------------------------------------------------------- RTP relay


class RtpRelay(asyncio.DatagramProtocol):
    """A UDP relay between the gateway and sipp's -rtp_echo port.

    The far end's SDP advertises this relay's port (sipp `-key rtp_port`); packets from
    the gateway go to sipp's echo port, sipp's echo goes back to the gateway. Each packet
    is recorded as (payload type, payload) per direction.
    """

    def __init__(self) -> None:
        self.port = free_port(tcp=False)
        self.echo_port: int | None = None
        self.gateway: tuple[str, int] | None = None
        self.to_far: list[tuple[int, bytes]] = []  # gateway -> sipp
        self.from_far: list[tuple[int, bytes]] = []  # sipp echo -> gateway
        self.transport: asyncio.DatagramTransport | None = None

    async def start(self) -> RtpRelay:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=(HOST, self.port)
        )
        return self

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is None or self.echo_port is None or len(data) < 12:
            return
        pt, payload = data[1] & 0x7F, data[12 + 4 * (data[0] & 0x0F) :]
        if addr[1] == self.echo_port:
            self.from_far.append((pt, payload))
            if self.gateway is not None:
                self.transport.sendto(data, self.gateway)
        else:
            self.gateway = addr
            self.to_far.append((pt, payload))
            self.transport.sendto(data, (HOST, self.echo_port))

    def follow(self, sp: SippProcess) -> None:
        """Relay to this sipp's RTP echo (its media port): call it as soon as sipp runs."""
        self.echo_port = sp.media_port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def check_pcma(self, freq: float) -> None:
        """Gateway -> far: payload type 8 only, and the A-law decodes to the client's tone;
        the echo that went back was type 8 as well."""
        assert len(self.to_far) >= 50, f"only {len(self.to_far)} RTP packets from the gateway"
        types = {pt for pt, _ in self.to_far}
        assert types == {8}, f"gateway sent payload types {sorted(types)}, only PCMA (8) agreed"
        back = {pt for pt, _ in self.from_far}
        assert back == {8}, f"echoed payload types {sorted(back)}"
        # the last 1.5 s the gateway sent (skip the start, where the tone may not have begun)
        pcm = alaw_decode(b"".join(p for _, p in self.to_far[-75:]))
        assert_tone(pcm, freq, "gateway's PCMA decoded by the test", rate=8000)


@pytest.fixture
async def relay() -> AsyncIterator[RtpRelay]:
    r = await RtpRelay().start()
    try:
        yield r
    finally:
        r.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def pbx_auth_gateway(request: pytest.FixtureRequest, e2e_dir: Path):
    """Like the `gateway` fixture, with [pbx] username/password set (PBX_USER/PBX_PASSWORD)."""
    gw = Gateway(
        http_port=free_port(),
        sip_port=free_port(),
        pbx_port=free_port(),
        rtp_range=free_udp_range(40),
        config_path=e2e_dir / "gateway.toml",
        log_path=e2e_dir / "gateway.log",
        workdir=e2e_dir,
    )
    write_config(gw)
    text = gw.config_path.read_text()
    uri_line = f'uri = "sip:{gw.host}:{gw.pbx_port}"\n'
    assert uri_line in text, text
    gw.config_path.write_text(
        text.replace(
            uri_line, uri_line + f'username = "{PBX_USER}"\npassword = "{PBX_PASSWORD}"\n', 1
        )
    )
    try:
        start_gateway(gw)
        yield gw
    finally:
        if gw.proc is not None:
            code = stop_process(gw.proc)
            if code not in (0, -signal.SIGTERM, None):
                print(f"\n[e2e] gateway pid {gw.proc.pid} exited with {code}")
        if _failed(request.node):
            print(f"\n===== gateway log ({gw.log_path}) =====\n{gw.log()}")


def uas(sipp: SippFactory, gw: Gateway, xml: str, *, extra: list[str] | None = None) -> SippProcess:
    """A sipp UAS scenario on the gateway's [pbx] port, bound before the test goes on."""
    sp = sipp.scenario(
        xml.removesuffix(".xml"), xml, None, port=gw.pbx_port, timeout=SIPP_TIMEOUT, extra=extra
    )
    sipp.wait_bound(sp, gw.pbx_port)
    return sp


async def wait_active(call: Call, timeout: float = 20.0) -> None:
    """Wait for `active`; fail at once (with the reason) if the call ends first."""
    await call._until(
        lambda: {"active", "terminated"} & set(call.states), timeout, "status 'active'"
    )
    assert "active" in call.states, f"call ended before `active`: {call.statuses}"


async def expect_exit(sp: SippProcess, code: int = 0, timeout: float = 15.0) -> None:
    got = await sp.wait(timeout)
    assert got == code, f"sipp {sp.name} exited with {got}, expected {code}"


async def logged_in(clients: Callable[..., Awaitable[JsonV1Client]], gw: Gateway) -> JsonV1Client:
    alice = await clients(gw, name="alice")
    await alice.login("1001", "Alice")
    return alice


# --------------------------------------------------------------------------- 1. ringback


async def test_ringback_on_180_then_echo(gateway, sipp, clients):
    """180 without SDP: the client hears the generated US ringback (440+480 Hz, 2 s on,
    then off) while ringing; after the 200 its own tone comes back through sipp's echo."""
    far = uas(sipp, gateway, "uas_ringback.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)

    call = await alice.dial(FAR_NUMBER, freq=1000.0)
    await wait_active(call)
    states = call.states
    assert "ringing" in states and states.index("ringing") < states.index("active"), states
    ringing_at, active_at = status_time(call, "ringing"), status_time(call, "active")
    assert active_at - ringing_at >= 3.0, f"rang only {active_at - ringing_at:.2f} s (sipp: 3.5)"

    ring = audio_between(call, ringing_at, active_at)
    assert ring.size >= 3.0 * RATE, f"{ring.size / RATE:.2f} s of audio while ringing"
    levels = block_levels(ring)  # 50 ms blocks
    on = np.flatnonzero(levels > -35.0)
    profile = " ".join(f"{x:.0f}" for x in levels)
    assert on.size, f"no ringback at all while ringing; block levels (dBFS): {profile}"
    first, last = on[0] * 0.05, (on[-1] + 1) * 0.05
    assert first <= 0.6, f"ringback began {first:.2f} s after `ringing`; levels: {profile}"
    # US cadence: 2 s on, 4 s off. The window is ~3.5 s: one burst, then quiet.
    assert 1.6 <= last - first <= 2.4, (
        f"ringback burst lasted {last - first:.2f} s, US cadence is 2 s on; levels: {profile}"
    )
    gaps = levels[on[0] : on[-1] + 1] <= -35.0
    assert gaps.sum() <= 2, f"ringback burst has gaps; levels: {profile}"
    tail = levels[on[-1] + 3 :]  # after the burst (150 ms margin) until `active`
    assert tail.size >= 10 and np.all(tail < -50.0), f"no quiet after the burst; levels: {profile}"

    burst = ring[int((first + 0.1) * RATE) : int((last - 0.1) * RATE)]
    level = rms_dbfs(burst)
    r440 = band_energy_ratio(burst, RATE, 440.0, 15.0)
    r480 = band_energy_ratio(burst, RATE, 480.0, 15.0)
    peak = dominant_frequency(burst, RATE)
    what = f"ringback: {level:.1f} dBFS, peak {peak:.0f} Hz, 440 Hz {r440:.2f}, 480 Hz {r480:.2f}"
    assert level > -30.0, what
    assert min(abs(peak - 440.0), abs(peak - 480.0)) <= 10.0, what
    assert r440 > 0.25 and r480 > 0.25 and r440 + r480 > 0.8, what

    await check_echo_after_active(call, 1000.0)
    await call.hangup()
    ended = await call.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "userTerminated", ended
    await expect_exit(far)


# --------------------------------------------------------------------------- 2. early media


async def test_early_media_on_183_before_active(gateway, sipp, clients):
    """183 with SDP then 200 3 s later: the client's tone comes back (sipp echoes from the
    183 on) before `active`, with no generated ringback; `ringing` then `active`."""
    far = uas(sipp, gateway, "uas_early_media.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)

    call = await alice.dial(FAR_NUMBER, freq=700.0)
    await wait_active(call)
    states = call.states
    assert "ringing" in states and states.index("ringing") < states.index("active"), states
    ringing_at, active_at = status_time(call, "ringing"), status_time(call, "active")
    assert active_at - ringing_at >= 2.5, f"early phase only {active_at - ringing_at:.2f} s"

    early = audio_between(call, ringing_at + 0.8, active_at)
    assert_tone(early, 700.0, "early media (own tone echoed before active)")
    r440 = band_energy_ratio(early, RATE, 440.0, 15.0)
    r480 = band_energy_ratio(early, RATE, 480.0, 15.0)
    assert r440 < 0.05 and r480 < 0.05, (
        f"ringback in early media: 440 Hz {r440:.2f}, 480 {r480:.2f}"
    )

    await check_echo_after_active(call, 700.0)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    await expect_exit(far)


# --------------------------------------------------------------------------- 3. PCMA only


async def test_outgoing_pcma_only_far_end(gateway, sipp, clients, relay):
    """The far end answers with PCMA only: the gateway sends A-law (type 8) carrying the
    client's tone, and the echo comes back to the client at the right frequency."""
    far = uas(
        sipp, gateway, "uas_pcma.xml", extra=["-rtp_echo", "-key", "rtp_port", str(relay.port)]
    )
    relay.echo_port = far.media_port
    alice = await logged_in(clients, gateway)

    call = await alice.dial(FAR_NUMBER, freq=900.0)
    await wait_active(call)
    await check_echo_after_active(call, 900.0)
    relay.check_pcma(900.0)

    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    await expect_exit(far)


async def test_incoming_pcma_only_offer(gateway, sipp, clients, relay):
    """A sipp UAC offers PCMA only: the gateway answers PCMA (checked by the scenario), the
    client's tone goes out as A-law and comes back echoed; sipp's BYE ends with success."""
    alice = await logged_in(clients, gateway)
    alice.incoming_freq = 1200.0
    caller, call = await call_from_sipp(
        sipp,
        gateway,
        alice,
        "uac_pcma.xml",
        extra=["-rtp_echo", "-key", "rtp_port", str(relay.port), "-d", "5000"],
        started=relay.follow,
        ringing=True,
    )
    await wait_active(call)
    await check_echo_after_active(call, 1200.0)
    relay.check_pcma(1200.0)

    ended = await call.wait_state("terminated", timeout=15)
    assert ended.get("reason") == "success", ended
    await expect_exit(caller)
    answer = re.search(r"SIP/2.0 200 OK.*?(v=0.*?)(?:\n\n|\Z)", caller.logs(), re.S)
    assert answer and re.search(r"m=audio \d+ RTP/AVP 8\b", answer.group(1)), caller.logs()


# --------------------------------------------------------------------------- 4. digest


def check_digest(log: str, header: str) -> None:
    """Recompute the digest response (RFC 2617, qop=auth, MD5) of the INVITE that carried
    `header` in sipp's message log, with PBX_USER/PBX_PASSWORD."""
    invites = [
        m.replace("\r\n", "\n")
        for m in re.split(r"^-{20,}.*$", log, flags=re.M)
        if re.search(r"^INVITE ", m, re.M) and re.search(rf"^{header}:", m, re.M | re.I)
    ]
    assert invites, f"no INVITE with {header} in sipp's log"
    message = invites[0]
    ruri = re.search(r"^INVITE (\S+) SIP/2\.0$", message, re.M)
    value = re.search(rf"^{header}:\s*Digest\s+(.+)$", message, re.M | re.I)
    assert ruri and value, message
    fields = re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', value.group(1))
    params = {k.lower(): quoted or bare for k, quoted, bare in fields}

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{PBX_USER}:{params['realm']}:{PBX_PASSWORD}")
    ha2 = md5(f"INVITE:{params['uri']}")
    expected = md5(f"{ha1}:{params['nonce']}:{params['nc']}:{params['cnonce']}:auth:{ha2}")
    assert params.get("qop") == "auth", value.group(0)
    assert params.get("response") == expected, f"bad digest response in {value.group(0)!r}"
    assert params["uri"] == ruri.group(1), f"digest uri {params['uri']} != {ruri.group(1)}"


@pytest.mark.parametrize(
    ("xml", "header"),
    [("uas_auth_401.xml", "Authorization"), ("uas_auth_407.xml", "Proxy-Authorization")],
    ids=["401", "407"],
)
async def test_pbx_digest_challenge(pbx_auth_gateway, sipp, clients, xml, header):
    """[pbx] username/password: the challenged INVITE is retried with correct credentials
    (sipp verifies; the test recomputes the hash too) and the call becomes active."""
    gw = pbx_auth_gateway
    far = uas(sipp, gw, xml, extra=["-rtp_echo"])
    alice = await logged_in(clients, gw)

    call = await alice.dial(FAR_NUMBER, freq=1000.0)
    await wait_active(call)
    await check_echo_after_active(call, 1000.0, seconds=1.0)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    await expect_exit(far)
    log = far.logs()
    assert "SIP/2.0 403" not in log, "sipp refused the credentials (403)"
    check_digest(log, header)


# --------------------------------------------------------------------------- 5. failures


@pytest.mark.parametrize(
    ("code", "reason"),
    [(486, "busy"), (404, "dialString"), (603, "rejected")],
    ids=["486-busy", "404-dialString", "603-rejected"],
)
async def test_outgoing_failure_reason(gateway, sipp, clients, code, reason):
    """The far end answers the INVITE with a failure: the client's call ends with the
    json-v1 §6 reason for that code."""
    far = uas(sipp, gateway, f"uas_reject_{code}.xml")
    alice = await logged_in(clients, gateway)

    call = await alice.dial(FAR_NUMBER)
    ended = await call.wait_state("terminated", timeout=15)
    assert ended.get("reason") == reason, f"SIP {code}: {ended} (statuses {call.states})"
    assert "active" not in call.states, call.states
    await expect_exit(far)


@pytest.mark.parametrize("gateway", ["[media]\nfailure_tone_seconds = 3\n"], indirect=True)
async def test_busy_tone_before_terminated(gateway, sipp, clients):
    """[media] failure_tone_seconds: the far end answers the INVITE with 486 (and gets
    its ACK: the scenario waits for it, and ends); the client's call goes `terminating`,
    it hears the US busy tone (480+620 Hz, 0.5 s on, 0.5 s off) from when its media is
    up, and `terminated` `busy` comes 3 s after the failure."""
    far = uas(sipp, gateway, "uas_reject_486.xml")
    alice = await logged_in(clients, gateway)

    call = await alice.dial(FAR_NUMBER)
    await expect_exit(far)  # the 486 was ACKed while the tone plays
    ended = await call.wait_state("terminated", timeout=15)
    assert ended.get("reason") == "busy", ended
    assert call.states[-2:] == ["terminating", "terminated"], call.states
    assert "reason" not in call.statuses[-2], call.statuses
    start, end = status_time(call, "terminating"), status_time(call, "terminated")
    assert 2.9 <= end - start <= 3.5, f"the tone lasted {end - start:.2f} s"

    tone = audio_between(call, start, end)
    levels = block_levels(tone, 0.01)
    on = levels > -40.0
    profile = "".join("#" if x else "." for x in on)
    # runs of tone and silence after the first burst began (the media path may have come
    # up during the first one); the whole ones are 0.5 s each (+-40 ms)
    edges = np.flatnonzero(np.diff(on.astype(int))) + 1
    runs = np.diff(edges) * 0.01
    assert len(runs) >= 3, f"fewer than 2 cycles of busy tone: {profile}"
    assert all(abs(r - 0.5) <= 0.04 for r in runs), f"{runs}: {profile}"
    first = edges[0] if on[edges[0]] else edges[1]  # a whole burst
    burst = tone[(first + 5) * RATE // 100 : (first + 45) * RATE // 100]
    for f in (480.0, 620.0):
        share = band_energy_ratio(burst, RATE, f, 15.0)
        assert share > 0.4, f"{f:.0f} Hz: {share:.2f} of the burst; levels: {profile}"


@pytest.mark.parametrize("gateway", ["[media]\ncall_waiting_tone = true\n"], indirect=True)
async def test_call_waiting_tone(gateway, sipp, clients):
    """[media] call_waiting_tone: Alice talks to sipp (which echoes her 1 kHz) when a
    second SIP call is offered to her: she hears the US call-waiting tone (440 Hz, 0.3 s)
    over the echo at once; she declines the second call as busy (sipp expects 486), and
    the first call goes on."""
    far = sipp.uas_echo(gateway.pbx_port)
    alice = await logged_in(clients, gateway)
    call = await alice.dial(FAR_NUMBER, freq=1000.0)
    await wait_active(call)
    await check_echo_after_active(call, 1000.0, seconds=1.0)

    caller, second = await call_from_sipp(
        sipp, gateway, alice, "uac_expect_486.xml", port=free_port(), accept=False, answer=False
    )
    offered = message_time(second, "start")
    await call.wait_audio(1.2, since=offered)
    heard = audio_between(call, offered, offered + 1.2)
    burst, after = heard[: int(0.35 * RATE)], heard[int(0.5 * RATE) :]
    r440, later = (band_energy_ratio(a, RATE, 440.0, 15.0) for a in (burst, after))
    what = f"440 Hz: {r440:.3f} of the first 0.35 s, {later:.4f} after"
    assert r440 > 0.02, what  # the burst (-20 dBFS), mixed in
    assert band_energy_ratio(burst, RATE, 1000.0, 15.0) > 0.5, what  # over the echo
    assert later < 0.002, what  # the 9.7 s pause
    assert_tone(after, 1000.0, "echo after the burst")

    await second.hangup("busy")
    await expect_exit(caller)
    await check_echo_after_active(call, 1000.0, seconds=1.0)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0


@pytest.mark.parametrize(("reason", "code"), [("busy", 486), ("rejected", 603)])
async def test_incoming_decline(gateway, sipp, clients, reason, code):
    """The offered client declines with `terminate` reason busy/rejected: the SIP caller
    gets 486/603 (the scenario accepts nothing else)."""
    alice = await logged_in(clients, gateway)
    caller, call = await call_from_sipp(
        sipp, gateway, alice, f"uac_expect_{code}.xml", accept=False, answer=False
    )
    await call.hangup(reason)
    await expect_exit(caller)
    assert f"SIP/2.0 {code}" in caller.logs()
    ended = await call.wait_state("terminated", timeout=5)
    assert "active" not in call.states, call.states
    assert "reason" in ended, ended


async def test_incoming_caller_cancels(gateway, sipp, clients):
    """The client accepts (180 to the caller), then the caller CANCELs: 200 + 487 to sipp,
    `terminated` `success` to the client."""
    alice = await logged_in(clients, gateway)
    caller, call = await call_from_sipp(
        sipp, gateway, alice, "uac_cancel.xml", ringing=True, answer=False
    )
    ended = await call.wait_state("terminated", timeout=10)
    assert ended.get("reason") == "success", ended
    await expect_exit(caller)
    log = caller.logs()
    assert "SIP/2.0 487" in log, "no 487 for the cancelled INVITE"
    assert re.search(r"SIP/2.0 200 .*?CSeq: 1 CANCEL", log, re.S), "CANCEL not answered 200"


G722 = '\n[media]\ncodecs = ["G722", "PCMU"]\n'


@pytest.mark.parametrize("gateway", [G722], indirect=True)
async def test_g722_carries_wideband_audio(gateway, sipp, clients):
    """[media] codecs with G722 first: the far end answers G.722 and echoes it; a 5 kHz
    tone, which G.711's 4 kHz band cannot carry, comes back at 5 kHz."""
    far = uas(sipp, gateway, "uas_g722.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)
    call = await alice.dial("5555", freq=5000.0)
    await wait_active(call)
    assert max_playback_rate(call.answer_sdp) == 16000, call.answer_sdp
    await check_echo_after_active(call, 5000.0)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0


async def sipp_call_to_alice(
    sipp,
    gateway,
    alice: JsonV1Client,
    scenario: str,
    duration_ms: int = 1500,
    during: Callable[[Call], Awaitable[None]] | None = None,
) -> dict:
    """sipp runs `scenario` calling 1001; Alice answers (then `during` runs while the call
    is up); the call runs until sipp's BYE, which ends it with `success`. Returns the
    signaling/start Alice was offered."""
    caller, incoming = await call_from_sipp(
        sipp,
        gateway,
        alice,
        f"{scenario}.xml",
        port=free_port(),
        extra=["-rtp_echo", "-d", str(duration_ms)],
    )
    if during is not None:
        await incoming.wait_state("active", timeout=15)
        await during(incoming)
    ended = await incoming.wait_state("terminated", timeout=20)
    assert ended.get("reason") == "success", ended
    assert await caller.wait(15) == 0, caller.logs()[-2000:]
    assert incoming.start_message is not None
    return incoming.start_message


async def test_asserted_identity_both_ways(gateway, sipp, clients):
    """RFC 3325: the PBX hears the web user asserted (number and name), and a trusted
    caller's P-Asserted-Identity is what the web client is shown."""
    far = uas(sipp, gateway, "uas_pai.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)
    call = await alice.dial("5555", freq=1000.0)
    await wait_active(call)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0, far.logs()[-2000:]

    start = await sipp_call_to_alice(sipp, gateway, alice, "uac_pai")
    remote = start["remoteAddress"]
    assert remote == {"dialString": "4711", "displayName": "Carol Caller"}, remote


PASS_HEADERS = '\n[sip]\npass_headers = ["X-Account"]\n'


@pytest.mark.parametrize("gateway", [PASS_HEADERS], indirect=True)
async def test_x_headers_pass_between_legs(gateway, sipp, clients):
    """[sip] pass_headers: a client's sipHeaders reach the INVITE (only listed names), and
    an incoming INVITE's listed headers reach the client's signaling/start."""
    far = uas(sipp, gateway, "uas_xheaders.xml", extra=["-rtp_echo"])
    alice = await logged_in(clients, gateway)
    await alice.send(
        {
            "operation": "signaling",
            "action": "start",
            "identifier": "xh-1",
            "remoteAddress": {"dialString": "5555"},
            "sipHeaders": {"X-Account": "42", "X-Secret": "leak"},
        }
    )
    call = Call(alice, "xh-1", "outgoing", 1000.0)
    alice.calls[call.identifier] = call
    await call._offer()
    await call.wait_answer()
    await wait_active(call)
    await call.hangup()
    await call.wait_state("terminated", timeout=10)
    assert await far.wait(15) == 0, far.logs()[-2000:]

    start = await sipp_call_to_alice(sipp, gateway, alice, "uac_xheaders")
    assert start.get("sipHeaders") == {"X-Account": "7"}, start


async def test_late_offer_invite(gateway, sipp, clients):
    """An INVITE without SDP: the gateway offers in its 200 and takes the answer from the
    ACK; the client's tone goes to sipp and its echo comes back."""
    alice = await logged_in(clients, gateway)
    alice.incoming_freq = 1300.0
    await sipp_call_to_alice(
        sipp,
        gateway,
        alice,
        "uac_late_offer",
        duration_ms=5000,
        during=lambda call: check_echo_after_active(call, 1300.0),
    )
