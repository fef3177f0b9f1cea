"""[media] codecs: Opus may be listed (any case); the default stays G.711 only."""

from gateway.config import MediaConfig, parse_config
from rtc.rtpleg import RtpLeg

SRC = "test.toml"


def test_opus_is_accepted_in_any_case() -> None:
    c = parse_config({"media": {"codecs": ["PCMU", "opus", "g722"]}}, SRC)
    assert c.media.codecs == ("PCMU", "OPUS", "G722")


def test_default_is_g711_only() -> None:
    assert parse_config({}, SRC).media.codecs == ("PCMU", "PCMA") == MediaConfig().codecs


async def test_configured_names_open_an_rtp_leg_offering_opus() -> None:
    codecs = parse_config({"media": {"codecs": ["opus", "PCMA"]}}, SRC).media.codecs
    leg = await RtpLeg.open(codecs=codecs)
    try:
        assert leg.codecs == ("opus", "PCMA")
        assert b"a=rtpmap:111 opus/48000/2" in leg.create_offer()
    finally:
        await leg.close()


async def test_jitter_bounds_reach_the_rtp_legs_the_core_opens() -> None:
    from gateway.core import Core

    config = parse_config({"media": {"jitter_min_ms": 60, "jitter_max_ms": 120}}, SRC)
    assert (config.media.jitter_min_ms, config.media.jitter_max_ms) == (60, 120)
    assert (MediaConfig().jitter_min_ms, MediaConfig().jitter_max_ms) == (20, 200)
    leg = await Core(config, None)._open_rtp()
    try:
        assert leg.jitter_buffer.delay == 0.06
        assert leg.jitter_buffer.max_frames * 20 == 120
    finally:
        await leg.close()
