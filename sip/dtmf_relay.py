"""application/dtmf-relay INFO bodies (the de-facto Cisco format): "Signal=5\\r\\nDuration=160"."""

from __future__ import annotations

from dataclasses import dataclass

CONTENT_TYPE = "application/dtmf-relay"
SIGNALS = frozenset("0123456789*#ABCD")
MAX_BODY = 1024


@dataclass(frozen=True)
class DtmfRelay:
    signal: str  # one of 0-9 * # A-D
    duration: int = 160  # milliseconds

    def encode(self) -> bytes:
        return f"Signal={self.signal}\r\nDuration={self.duration}\r\n".encode()


def parse_dtmf_relay(body: bytes) -> DtmfRelay | None:
    """The digit of a dtmf-relay body; None when it is not one. Tolerates LF line ends,
    spaces, case, lower-case a-d, "Signal= 10/11" (Cisco's * and #) and a missing or bad
    Duration (default 160 ms, capped at 10 s)."""
    if len(body) > MAX_BODY:
        return None
    fields: dict[str, str] = {}
    for line in body.decode("latin-1").splitlines():
        name, sep, value = line.partition("=")
        if sep:
            fields[name.strip().lower()] = value.strip()
    signal = fields.get("signal", "").upper()
    signal = {"10": "*", "11": "#"}.get(signal, signal)
    if signal not in SIGNALS or len(signal) != 1:
        return None
    duration_text = fields.get("duration", "")
    # isdigit() alone also accepts Latin-1 superscripts ("\xb2"), which int() rejects:
    # a bad Duration must cost the default, never the digit
    duration = int(duration_text) if duration_text.isascii() and duration_text.isdigit() else 160
    return DtmfRelay(signal, min(max(duration, 1), 10000))
