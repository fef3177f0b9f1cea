"""[media] codecs: Opus may be listed (any case); the default stays G.711 only. [media]
jitter bounds and video_bit_rate reach the RTP legs the core opens."""

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


async def test_video_bit_rate_is_the_b_as_of_the_core_s_video_toward_sip() -> None:
    from gateway.core import Core
    from rtc.rtpvideo import VideoRtpLeg

    assert MediaConfig().video_bit_rate == 2000 == parse_config({}, SRC).media.video_bit_rate
    config = parse_config({"media": {"video_bit_rate": 750}}, SRC)
    assert config.media.video_bit_rate == 750
    core = Core(config, None)
    leg = await core._open_rtp()
    try:
        assert isinstance(leg, VideoRtpLeg)
        core._enable_sip_video(leg)
        offer = leg.create_offer().decode()
        video = offer[offer.index("m=video") :]
        assert "\r\nb=AS:750\r\n" in video and "AS:2000" not in offer
        # the phone asks for more than we announced: the browser is capped at ours
        answer = offer.replace("b=AS:750", "b=AS:4000")
        leg.apply_answer(answer.encode())
        assert leg.video is not None and leg.video.max_bitrate == 750_000
    finally:
        await leg.close()
