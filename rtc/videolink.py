"""
Video between two WebRTC legs of one call (web-to-web), between a WebRTC
leg and a SIP phone's video stream (rtpvideo.RtpVideo), or between two SIP
phones' streams (a call the gateway joins between two phones): each end's
received video becomes the other's outgoing video, once both negotiated video.
The SIP side is relayed only when both ends share the codec (no transcoding);
its b=AS/b=TIAS, or our own b=AS toward it when lower, caps the browser's
bitrate (REMB).

When both legs negotiated the same codec (the usual case: VP8 on both) the
encoded frames are forwarded as they are (no transcoding; keyframe requests
are passed back to the sending browser). When they differ, the pictures are
decoded and re-encoded by aiortc, at a CPU cost of about 15% of a core per
direction at 640x480, 30 frames/s, 40% at 1280x720 (see webrtcvideo).
"""

import logging
from typing import TYPE_CHECKING

from aiortc import MediaStreamTrack

from .rtpvideo import RtpVideo

if TYPE_CHECKING:
    from .webrtcleg import WebRtcLeg

__all__ = ["VideoLink"]

logger = logging.getLogger(__name__)


def _same_codec(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


class _Direction:
    """Video from one end to the other."""

    def __init__(self, source: "WebRtcLeg | RtpVideo", sink: "WebRtcLeg | RtpVideo") -> None:
        self.source = source
        self.sink = sink
        self.track: MediaStreamTrack | None = None
        self.codecs: tuple[str | None, str | None] | None = None

    def update(self) -> None:
        if not (self.source.has_video and self.sink.has_video):
            self.stop()
            return
        codecs = (self.source.video_codec, self.sink.video_codec)
        if self.track is not None and self.track.readyState == "live" and codecs == self.codecs:
            return
        self.stop()
        self.codecs = codecs
        source = self.source
        if isinstance(source, RtpVideo):
            subscribe_encoded, subscribe_decoded = source.subscribe_encoded, None
        elif source.video is not None:
            subscribe_encoded = source.video.subscribe_encoded
            subscribe_decoded = source.video.subscribe_decoded
        else:
            return
        if _same_codec(*codecs):
            self.track = subscribe_encoded()
        elif subscribe_decoded is not None and not isinstance(self.sink, RtpVideo):
            logger.info("video transcoded from %s to %s", codecs[0], codecs[1])
            self.track = subscribe_decoded()
        else:
            # the SIP side relays video as it is: no transcoding for it
            logger.warning("video not relayed: %s one way, %s the other", *codecs)
            return
        self.sink.set_video_source(self.track)

    def _sink_source(self) -> MediaStreamTrack | None:
        sink = self.sink
        if isinstance(sink, RtpVideo):
            return sink.video_source
        return sink.video.outgoing.source if sink.video is not None else None

    def stop(self) -> None:
        track, self.track = self.track, None
        self.codecs = None
        if track is None:
            return
        if self._sink_source() is track:
            self.sink.set_video_source(None)
        track.stop()


class VideoLink:
    """
    Links the video of legs ``a`` and ``b`` both ways. It follows their
    negotiations by itself (a leg that negotiates video later, a re-offer
    changing the codec, a leg closing): create it once for the call and
    ``close()`` it when the call ends or the legs part (hold, transfer).
    Without video on either side it does nothing.
    """

    def __init__(self, a: "WebRtcLeg | RtpVideo", b: "WebRtcLeg | RtpVideo") -> None:
        self.a = a
        self.b = b
        self._directions = (_Direction(a, b), _Direction(b, a))
        self._closed = False
        self._cap: int | None = None
        a.add_video_listener(self.update)
        b.add_video_listener(self.update)
        self.update()

    @property
    def active(self) -> bool:
        """True while video is linked in at least one direction."""
        return any(d.track is not None for d in self._directions)

    @property
    def forwarding(self) -> bool:
        """True while every linked direction forwards encoded frames (no transcoding)."""
        return self.active and all(
            d.track is None or d.codecs is None or d.codecs[0] == d.codecs[1]
            for d in self._directions
        )

    def update(self) -> None:
        """Link or unlink per the legs' current negotiation (called on their changes)."""
        if self._closed:
            return
        for direction in self._directions:
            direction.update()
        self._cap_bitrate()

    def _cap_bitrate(self) -> None:
        """A SIP phone's b=AS/TIAS (or our b=AS toward it, when lower) limits what the
        browser sends us for it (REMB)."""
        if not isinstance(self.b, RtpVideo) or isinstance(self.a, RtpVideo) or self.a.video is None:
            return  # phone to phone: no REMB to give; each phone keeps to our b=AS
        cap = self.b.max_bitrate if self.active else None
        if cap != self._cap:
            self._cap = cap
            self.a.video.set_max_bitrate(cap)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.a.remove_video_listener(self.update)
        self.b.remove_video_listener(self.update)
        for direction in self._directions:
            direction.stop()
        if self._cap is not None and not isinstance(self.a, RtpVideo) and self.a.video is not None:
            self.a.video.set_max_bitrate(None)
