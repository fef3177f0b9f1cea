import pytest

from rtc.sdp import (
    Codec,
    MediaDescription,
    Origin,
    SdpError,
    SessionDescription,
    answer_direction,
    find_codec,
    select_codec,
    with_opus_parameter,
)

ASTERISK_OFFER = (
    "v=0\r\n"
    "o=- 1234 1235 IN IP4 192.0.2.10\r\n"
    "s=Asterisk\r\n"
    "c=IN IP4 192.0.2.10\r\n"
    "t=0 0\r\n"
    "m=audio 16384 RTP/AVP 8 0 9 101\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=maxptime:150\r\n"
    "a=sendrecv\r\n"
)

GOLDEN = (
    "v=0\r\n"
    "o=- 42 7 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 10000 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)


def test_parse_asterisk_offer() -> None:
    sdp = SessionDescription.parse(ASTERISK_OFFER.encode())
    assert sdp.origin == Origin("-", 1234, 1235, "192.0.2.10")
    assert sdp.name == "Asterisk"
    assert sdp.connection == "192.0.2.10"
    audio = sdp.audio()
    assert (audio.kind, audio.port, audio.proto) == ("audio", 16384, "RTP/AVP")
    assert audio.payload_types == [8, 0, 9, 101]
    assert [c.name for c in audio.codecs] == ["PCMA", "PCMU", "G722", "telephone-event"]
    assert audio.fmtp == {101: "0-16"}
    assert audio.ptime == 20
    assert audio.direction == "sendrecv"
    assert audio.attributes == [("maxptime", "150")]
    assert sdp.media_connection(audio) == "192.0.2.10"


def test_round_trip_is_exact_for_canonical_sdp() -> None:
    assert str(SessionDescription.parse(ASTERISK_OFFER)) == ASTERISK_OFFER
    assert str(SessionDescription.parse(GOLDEN)) == GOLDEN


def test_build_golden() -> None:
    media = MediaDescription("audio", 10000, ptime=20, direction="sendrecv")
    media.add_codec(Codec(0, "PCMU", 8000))
    media.add_codec(Codec(8, "PCMA", 8000))
    media.add_codec(Codec(101, "telephone-event", 8000, fmtp="0-16"))
    sdp = SessionDescription(Origin("-", 42, 7, "127.0.0.1"), connection="127.0.0.1", media=[media])
    assert bytes(sdp) == GOLDEN.encode()


def test_round_trip_preserves_unknown_lines() -> None:
    text = (
        "v=0\no=alice 1 1 IN IP6 ::1\ns=talk\ni=info\nc=IN IP6 ::1\nb=AS:64\nt=0 0\n"
        "a=group:BUNDLE 0\na=recvonly\n"
        "m=audio 5004 RTP/AVP 96 13\nb=TIAS:64000\na=rtpmap:96 opus/48000/2\n"
        "a=fmtp:96 minptime=10;useinbandfec=1\na=rtcp-mux\na=mid:0\n"
        "m=video 0 RTP/AVP 31\nc=IN IP4 192.0.2.1/127\n"
    )
    sdp = SessionDescription.parse(text)
    assert sdp.direction == "recvonly"
    assert sdp.media_direction(sdp.media[0]) == "recvonly"
    assert sdp.media[0].codecs[0] == Codec(96, "opus", 48000, 2, "minptime=10;useinbandfec=1")
    assert sdp.media[0].codecs[1].name == "CN"
    assert sdp.media[1].connection == "192.0.2.1"
    again = SessionDescription.parse(str(sdp))
    assert again == sdp
    assert "a=rtpmap:96 opus/48000/2\r\n" in str(sdp)
    assert "i=info\r\n" in str(sdp)


def test_audio_skips_rejected_and_non_rtp_streams() -> None:
    sdp = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n"
        "m=audio 0 RTP/AVP 0\r\nm=image 6000 udptl t38\r\nm=audio 7000 RTP/AVP 8\r\n"
    )
    assert sdp.audio().port == 7000
    with pytest.raises(SdpError):
        SessionDescription.parse("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n").audio()


def test_codec_selection_follows_offer_order() -> None:
    audio = SessionDescription.parse(ASTERISK_OFFER).audio()
    supported = [("PCMU", 8000), ("PCMA", 8000)]
    assert select_codec(audio, supported) == Codec(8, "PCMA", 8000, None)
    assert select_codec(audio, [("pcmu", 8000)]) == Codec(0, "PCMU", 8000, None)
    assert select_codec(audio, [("opus", 48000)]) is None
    event = find_codec(audio, "telephone-event", 8000)
    assert event is not None and event.payload_type == 101 and event.fmtp == "0-16"


def test_static_payload_types_without_rtpmap() -> None:
    audio = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 h\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 18 0 8 99\r\n"
    ).audio()
    # 99 has no rtpmap: unknown, skipped
    assert [(c.payload_type, c.name) for c in audio.codecs] == [
        (18, "G729"),
        (0, "PCMU"),
        (8, "PCMA"),
    ]


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("sendrecv", "sendrecv"),
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
    ],
)
def test_answer_direction(offered: str, answered: str) -> None:
    assert answer_direction(offered) == answered


@pytest.mark.parametrize(
    "text",
    [
        "",
        "o=- 1 1 IN IP4 h\r\n",
        "v=1\r\no=- 1 1 IN IP4 h\r\n",
        "v=0\r\ns=-\r\n",  # no origin
        "v=0\r\no=- x 1 IN IP4 h\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IPX h\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP PCMU\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
        "v=0\r\no=- 1 1 IN IP4 h\r\ngarbage\r\n",
    ],
)
def test_parse_errors(text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


@pytest.mark.parametrize(
    ("lines", "ptime", "maxptime"),
    [
        ("a=ptime:30\r\na=maxptime:40\r\n", 30, 40),
        ("a=ptime:20.5\r\na=maxptime:150\r\n", 20, 150),
        ("a=ptime:0\r\na=maxptime:-10\r\n", 0, -10),  # for the leg to judge
        ("", None, None),
        # not numbers: no preference to take from them, and no reason to refuse the call
        ("a=ptime:abc\r\na=maxptime:x\r\n", None, None),
        # int() of these raised OverflowError, which escaped every caller of the parser
        ("a=ptime:inf\r\na=maxptime:1e999\r\n", None, None),
        ("a=ptime:nan\r\na=maxptime:\r\n", None, None),
    ],
)
def test_ptime_and_maxptime(lines: str, ptime: int | None, maxptime: int | None) -> None:
    text = "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n" + lines
    audio = SessionDescription.parse(text).audio()
    assert (audio.ptime, audio.maxptime) == (ptime, maxptime)
    if ptime is None:
        # what is not understood is kept as written
        assert str(SessionDescription.parse(text)) == text


def test_size_and_media_limits() -> None:
    head = "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\n"
    with pytest.raises(SdpError, match="too large"):
        SessionDescription.parse((head + "a=x:" + "y" * 70000 + "\r\n").encode())
    with pytest.raises(SdpError, match="Too many"):
        SessionDescription.parse(head + "m=audio 4000 RTP/AVP 0\r\n" * 17)
    with pytest.raises(SdpError, match="UTF-8"):
        SessionDescription.parse(b"v=0\r\ns=\xff\r\n")


def test_sdp_error_is_a_value_error() -> None:
    assert issubclass(SdpError, ValueError)


def test_with_opus_parameter() -> None:
    """Added to the Opus fmtp of each audio m-line (wherever that line is), or on a new
    line after its rtpmap; not twice; other m-lines and line endings untouched."""
    sdp = (
        "v=0\r\nm=audio 9 RTP/SAVPF 111 0\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=audio 9 RTP/AVP 98 0\r\na=rtpmap:98 OPUS/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=video 9 RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    )
    out = with_opus_parameter(sdp, "maxplaybackrate", 8000)
    assert out == (
        "v=0\r\nm=audio 9 RTP/SAVPF 111 0\r\n"
        "a=fmtp:111 minptime=10;useinbandfec=1;maxplaybackrate=8000\r\n"
        "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n"
        "m=audio 9 RTP/AVP 98 0\r\na=rtpmap:98 OPUS/48000/2\r\na=fmtp:98 maxplaybackrate=8000\r\n"
        "a=rtpmap:0 PCMU/8000\r\nm=video 9 RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    )
    assert with_opus_parameter(out, "maxplaybackrate", 16000) == out
    g711 = "v=0\nm=audio 9 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
    assert with_opus_parameter(g711, "maxplaybackrate", 8000) == g711
