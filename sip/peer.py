"""Where a message goes or came from: a transport name and an address."""

from __future__ import annotations

from dataclasses import dataclass, field

from sipmessage import URI

RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "WS", "WSS"})


@dataclass(frozen=True)
class Peer:
    transport: str  # "UDP" | "TCP" (upper case, as written in Via)
    host: str
    port: int
    # A flow (RFC 5626 sense): the connection a peer opened to us, or the UDP address
    # its requests come from. A TCP/TLS/WS flow is only ever written to, never dialled:
    # its port is the peer's ephemeral one, so a send after it closed fails at once.
    # Not part of equality: a flow and a plain peer with the same address are one peer.
    flow: bool = field(default=False, compare=False)

    @property
    def reliable(self) -> bool:
        return self.transport in RELIABLE_TRANSPORTS

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


def transport_of_uri(uri: URI) -> str:
    value = uri.parameters.get("transport")
    if value and value.upper() in RELIABLE_TRANSPORTS:
        return value.upper()
    if uri.scheme == "sips":
        return "TLS"
    return "UDP"


def peer_for_uri(uri: URI) -> Peer:
    """The next hop for a URI without DNS: the host must be an address (RFC 3263 not done)."""
    transport = transport_of_uri(uri)
    port = uri.port or (5061 if transport == "TLS" else 5060)
    host = uri.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Peer(transport, host, port)
