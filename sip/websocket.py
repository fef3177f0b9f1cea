"""SIP over WebSocket (RFC 7118) framing, sans-I/O.

One WebSocket message carries exactly one SIP message, so no stream reframing is
needed: Content-Length may be absent (the body is the rest of the message). SIP text
goes out as a text message when it is valid UTF-8, else as a binary message (§5.1).
Bounds: messages beyond `max_message` bytes are refused.

Addressing (§5.2, §5.3): our Via reads `SIP/2.0/WS` (`WSS` over TLS) and Contacts
carry `;transport=ws`/`wss`. A client's Via host is usually a made-up `.invalid`
name, so the server always stamps `received` (and `rport` when asked) with the
connection's address and answers on the connection the request came in on, never
the Via address: the transaction layer does both for every reliable transport,
WS and WSS included (`sip.transaction_layer.response_peer`/`stamp_via`).
"""

from __future__ import annotations

from .messages import MAX_MESSAGE
from .peer import Peer

WS = "WS"
WSS = "WSS"
SUBPROTOCOL = "sip"  # the Sec-WebSocket-Protocol value a SIP WebSocket must negotiate


class WebSocketFramingError(ValueError):
    pass


def transport_name(secure: bool) -> str:
    return WSS if secure else WS


def is_websocket(peer: Peer) -> bool:
    return peer.transport in (WS, WSS)


def decode_message(message: str | bytes, max_message: int = MAX_MESSAGE) -> bytes | None:
    """The SIP message a WebSocket message carries; None for a keep-alive (blank).

    Raises WebSocketFramingError for a message over `max_message` bytes.
    """
    data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
    if len(data) > max_message:
        raise WebSocketFramingError(f"WebSocket message of {len(data)} bytes")
    if not data.strip(b"\r\n\t "):
        return None
    # Leading CRLFs before a message are tolerated as on streams (RFC 3261 §7.5).
    return data.lstrip(b"\r\n")


def encode_message(data: bytes) -> str | bytes:
    """A SIP message as the WebSocket message to send: text when UTF-8, else binary."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data
