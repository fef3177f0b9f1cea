"""
Video between two WebRTC legs of one call (web-to-web): each leg's received
video becomes the other's outgoing video, once both negotiated video.

When both legs negotiated the same codec (the usual case: VP8 on both) the
encoded frames are forwarded as they are (no transcoding; keyframe requests
are passed back to the sending browser). When they differ, the pictures are
decoded and re-encoded by aiortc, at a CPU cost of about 15% of a core per
direction at 640x480, 30 frames/s, 40% at 1280x720 (see webrtcvideo).
"""

import logging
from typing import TYPE_CHECKING

from aiortc import MediaStreamTrack

if TYPE_CHECKING:
    from .webrtcleg import WebRtcLeg

__all__ = ["VideoLink"]

logger = logging.getLogger(__name__)


class _Direction:
    """Video from one leg to the other."""

    def __init__(self, source: "WebRtcLeg", sink: "WebRtcLeg") -> None:
        self.source = source
        self.sink = sink
        self.track: MediaStreamTrack | None = None
        self.codecs: tuple[str | None, str | None] | None = None

    def update(self) -> None:
        video = self.source.video
        if not (self.source.has_video and self.sink.has_video) or video is None:
            self.stop()
            return
        codecs = (self.source.video_codec, self.sink.video_codec)
        if self.track is not None and self.track.readyState == "live" and codecs == self.codecs:
            return
        self.stop()
        self.codecs = codecs
        if codecs[0] is not None and codecs[0] == codecs[1]:
            self.track = video.subscribe_encoded()
        else:
            logger.info("video transcoded from %s to %s", codecs[0], codecs[1])
            self.track = video.subscribe_decoded()
        self.sink.set_video_source(self.track)

    def stop(self) -> None:
        track, self.track = self.track, None
        self.codecs = None
        if track is None:
            return
        video = self.sink.video
        if video is not None and video.outgoing.source is track:
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

    def __init__(self, a: "WebRtcLeg", b: "WebRtcLeg") -> None:
        self.a = a
        self.b = b
        self._directions = (_Direction(a, b), _Direction(b, a))
        self._closed = False
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

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.a.remove_video_listener(self.update)
        self.b.remove_video_listener(self.update)
        for direction in self._directions:
            direction.stop()
