"""ICE restart on WebRtcLeg (rtc.icerestart): new credentials, new checks, same DTLS."""

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rtc import icerestart
from rtc.webrtcleg import WebRtcLeg
from tests.audio import dominant_frequency

from .conftest import wait_for
from .test_webrtcleg import connect
from .test_webrtcleg_hold import exchange


@contextlib.asynccontextmanager
async def connected_legs(**b_options: Any) -> AsyncIterator[tuple[WebRtcLeg, WebRtcLeg]]:
    """Two WebRtcLegs connected to each other (a offered first), closed afterwards."""
    a, b = WebRtcLeg(), WebRtcLeg(**b_options)
    try:
        await connect(a, b)
        yield a, b
    finally:
        await a.close()
        await b.close()


def _ufrag(sdp: str) -> str:
    found = re.search(r"a=ice-ufrag:(\S+)", sdp)
    assert found is not None, sdp
    return found.group(1)


def _connection(leg: WebRtcLeg) -> Any:
    return leg._ice_transports()[0]._connection


async def _restart(offerer: WebRtcLeg, answerer: WebRtcLeg) -> None:
    offerer_before = _connection(offerer).local_username
    answerer_before = _connection(answerer).local_username
    pair_before = _connection(answerer)._nominated[1]
    dtls_before = answerer._ice_transports()[0]
    offer = await offerer.create_offer(ice_restart=True)
    assert _ufrag(offer) != offerer_before
    answer = await answerer.accept_offer(offer)
    assert _ufrag(answer) != answerer_before
    await offerer.accept_answer(answer)
    await wait_for(lambda: not offerer._restarts and not answerer._restarts, 10)
    for leg in (offerer, answerer):
        connection = _connection(leg)
        assert connection._nominated.get(1) is not None, "no pair nominated by the restart"
        assert "recvfrom" not in vars(connection) and "sendto" not in vars(connection)
        assert connection._query_consent_task is not None  # consent checks run again
        assert leg.connection_state == "connected"
    assert _connection(answerer)._nominated[1] is not pair_before  # checked anew
    assert answerer._ice_transports()[0] is dtls_before  # same transports, same DTLS


async def _both_ways(a: WebRtcLeg, b: WebRtcLeg) -> None:
    at_b, at_a = await exchange(a, b, 1.0)
    assert dominant_frequency(at_b[-24000:], 48000) == pytest.approx(1000, abs=5)
    assert dominant_frequency(at_a[-24000:], 48000) == pytest.approx(600, abs=5)


async def test_ice_restart_from_either_side_keeps_audio_both_ways() -> None:
    async with connected_legs() as (a, b):
        await _both_ways(a, b)
        await _restart(a, b)  # the side that offered first restarts
        await _both_ways(a, b)
        await _restart(b, a)  # the other side (as a browser's restartIce())
        await _both_ways(a, b)
        sent = a.direct_sent
        await asyncio.sleep(0.3)
        assert a.direct_sent > sent  # still the direct path, on the new pair


async def test_audio_keeps_flowing_while_the_restart_checks_run() -> None:
    """Between the restart offer and its answer the previous pair carries the audio."""
    async with connected_legs() as (a, b):
        offer = await a.create_offer(ice_restart=True)
        assert a._restarts and _connection(a)._nominated == {}
        await _both_ways(a, b)  # only the previous pair can carry it
        await a.accept_answer(await b.accept_offer(offer))
        await wait_for(lambda: not a._restarts and not b._restarts, 10)
        await _both_ways(a, b)


async def test_restart_whose_checks_fail_fails_the_leg(monkeypatch: pytest.MonkeyPatch) -> None:
    """The far end accepts the restart offer but its answer never arrives: its checks get
    no nomination, and when they time out the leg reports failure (as a lost consent)."""
    monkeypatch.setattr(icerestart, "RESTART_TIMEOUT", 1.0)
    failed: list[bool] = []
    async with connected_legs(on_failed=lambda: failed.append(True)) as (a, b):
        await b.accept_offer(await a.create_offer(ice_restart=True))
        await wait_for(lambda: bool(failed), 10)
        assert b.connection_state in ("failed", "closed")


async def test_restart_refused_before_ice_completes_and_while_one_runs() -> None:
    a, b = WebRtcLeg(), WebRtcLeg()
    try:
        with pytest.raises(ValueError, match="ICE restart"):
            await a.create_offer(ice_restart=True)
        await connect(a, b)
        offer = await a.create_offer(ice_restart=True)
        with pytest.raises(ValueError, match="in progress"):
            await a.create_offer(ice_restart=True)
        await a.accept_answer(await b.accept_offer(offer))
        await wait_for(lambda: not a._restarts and not b._restarts, 10)
        await _both_ways(a, b)
    finally:
        await a.close()
        await b.close()


async def test_dtls_restart_is_still_refused_and_nothing_changes() -> None:
    async with connected_legs() as (a, b):
        offer = await a.create_offer()
        restarted = re.sub(r"a=fingerprint:sha-256 \S+", "a=fingerprint:sha-256 00:11", offer)
        restarted = re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:Rstr", restarted)
        with pytest.raises(ValueError, match="DTLS restart"):
            await b.accept_offer(restarted)
        assert not b._restarts
        await _both_ways(a, b)


async def test_an_abandoned_restart_goes_back_to_the_previous_path() -> None:
    """A restart begun whose description is never applied (accept_offer failing after
    the new credentials were made): the old credentials, candidates and pair are back,
    with consent checks, and a later restart works."""
    async with connected_legs() as (a, b):
        connection = _connection(b)
        before = (connection.local_username, connection.remote_username)
        pair = connection._nominated[1]
        b._begin_ice_restart()
        assert connection.local_username != before[0] and connection._nominated == {}
        b._abandon_ice_restart()
        assert not b._restarts
        assert (connection.local_username, connection.remote_username) == before
        assert connection._nominated == {1: pair}
        assert "recvfrom" not in vars(connection) and "sendto" not in vars(connection)
        assert connection._query_consent_task is not None
        await _both_ways(a, b)
        await _restart(a, b)
        await _both_ways(a, b)


async def test_restart_and_video_added_in_the_same_offer() -> None:
    """One re-offer restarting ICE and adding video (as a browser may send after a
    network change with the camera turned on meanwhile): both are done."""
    async with connected_legs() as (a, b):
        offer = await a.create_offer(video=True, ice_restart=True)
        await a.accept_answer(await b.accept_offer(offer))
        await wait_for(lambda: not a._restarts and not b._restarts, 10)
        await wait_for(lambda: a.has_video and b.has_video, 10)
        for leg in (a, b):
            assert all(t.state == "completed" for t in leg._ice_transports())
        await _both_ways(a, b)
