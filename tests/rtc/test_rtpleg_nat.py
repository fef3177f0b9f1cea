"""RtpLeg behind NAT: the SDP advertises another address than the one bound."""

import asyncio

import pytest

from rtc.rtpleg import RtpLeg
from rtc.sdp import SessionDescription
from tests.audio import SineSource, dominant_frequency

from .conftest import read_for, write_paced

PUBLIC = "203.0.113.7"  # TEST-NET-3: nothing answers there


async def test_advertised_address_in_offer_and_answer() -> None:
    leg = await RtpLeg.open("127.0.0.1", advertised_address=PUBLIC)
    other = await RtpLeg.open("127.0.0.1")
    try:
        for sdp in (leg.create_offer(), leg.create_answer(other.create_offer())):
            session = SessionDescription.parse(sdp)
            assert session.connection == PUBLIC
            assert session.origin.address == PUBLIC
            assert session.origin.address_type == "IP4"
            assert session.audio().port == leg.local_port
            assert b"127.0.0.1" not in sdp
        assert leg.host == "127.0.0.1"
    finally:
        await leg.close()
        await other.close()


async def test_ipv6_advertised_address() -> None:
    leg = await RtpLeg.open("127.0.0.1", advertised_address="2001:db8::1")
    try:
        sdp = leg.create_offer()
        assert b"c=IN IP6 2001:db8::1\r\n" in sdp
        assert SessionDescription.parse(sdp).origin.address_type == "IP6"
    finally:
        await leg.close()


async def test_wildcard_bind_advertises_given_address() -> None:
    leg = await RtpLeg.open("0.0.0.0", advertised_address="127.0.0.1")
    try:
        assert SessionDescription.parse(leg.create_offer()).connection == "127.0.0.1"
    finally:
        await leg.close()


async def test_media_flows_to_a_leg_behind_nat() -> None:
    """
    The "NATed" leg (bound on 0.0.0.0, advertising an unreachable public
    address) answers; the far leg first sends into the void, then latches
    onto the source of the NATed leg's packets and audio flows both ways.
    """
    far = await RtpLeg.open("127.0.0.1")
    nated = await RtpLeg.open("0.0.0.0", advertised_address=PUBLIC)
    try:
        far.apply_answer(nated.create_answer(far.create_offer()))
        assert far.remote_address == (PUBLIC, nated.local_port)
        writers = asyncio.gather(
            write_paced(far, SineSource(1000, 8000, 0.3), 1.0),
            write_paced(nated, SineSource(600, 8000, 0.3), 1.0),
        )
        at_far, at_nated = await asyncio.gather(read_for(far, 1.0), read_for(nated, 1.0))
        await writers
        assert far.latched
        assert far.remote_address == ("127.0.0.1", nated.local_port)
        assert len(at_far) >= 8000 * 0.5
        assert dominant_frequency(at_far[-4000:], 8000) == pytest.approx(600, abs=5)
        assert len(at_nated) >= 8000 * 0.3
        assert dominant_frequency(at_nated[-2400:], 8000) == pytest.approx(1000, abs=5)
    finally:
        await far.close()
        await nated.close()
