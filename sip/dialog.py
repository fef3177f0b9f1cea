"""Dialog state (RFC 3261 §12): identity, sequence numbers, route set, remote target.

A dialog builds its in-dialog requests (BYE, ACK for 2xx, re-INVITE) and checks the
remote CSeq of the requests it receives. Via is left to the caller, which knows the
transport the request will leave on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sipmessage import URI, Address, CSeq, Request, Response

from .messages import MAX_FORWARDS, tag_of


@dataclass(frozen=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


def _addresses(message: Request | Response, header: str) -> list[Address]:
    """Contact/Record-Route values; a malformed header counts as absent rather than fatal."""
    result: list[Address] = []
    for value in message.headers.getlist(header):
        try:
            result += Address.parse_many(value)
        except ValueError:
            return []
    return result


def with_tag(address: Address, tag: str) -> Address:
    return replace(address, parameters=address.parameters.replace(tag=tag))


class Dialog:
    def __init__(
        self,
        *,
        call_id: str,
        local: Address,
        remote: Address,
        local_seq: int,
        remote_seq: int | None,
        remote_target: URI,
        route_set: list[Address],
    ) -> None:
        self.call_id = call_id
        self.local = local
        self.remote = remote
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.remote_target = remote_target
        self.route_set = route_set

    @classmethod
    def from_uac(cls, request: Request, response: Response) -> Dialog:
        """The dialog a 2xx (or 1xx with a tag) to our INVITE creates (RFC 3261 §12.1.2)."""
        contacts = _addresses(response, "Contact")
        return cls(
            call_id=request.call_id,
            local=request.from_address,
            remote=response.to_address,
            local_seq=request.cseq.sequence,
            remote_seq=None,
            remote_target=contacts[0].uri if contacts else request.uri,
            route_set=list(reversed(_addresses(response, "Record-Route"))),
        )

    @classmethod
    def from_uas(cls, request: Request, local_tag: str) -> Dialog:
        """The dialog our 2xx to an INVITE creates (RFC 3261 §12.1.1)."""
        contacts = _addresses(request, "Contact")
        return cls(
            call_id=request.call_id,
            local=with_tag(request.to_address, local_tag),
            remote=request.from_address,
            local_seq=0,
            remote_seq=request.cseq.sequence,
            remote_target=contacts[0].uri if contacts else request.from_address.uri,
            route_set=_addresses(request, "Record-Route"),
        )

    @property
    def local_tag(self) -> str:
        return tag_of(self.local) or ""

    @property
    def remote_tag(self) -> str:
        return tag_of(self.remote) or ""

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    def next_hop(self) -> URI:
        """Where in-dialog requests are sent: the first loose route, else the remote target."""
        if self.route_set:
            return self.route_set[0].uri
        return self.remote_target

    def _build(self, method: str, sequence: int, body: bytes, content_type: str | None) -> Request:
        request = Request(method, self.remote_target, body)
        headers = request.headers
        headers.set("Max-Forwards", str(MAX_FORWARDS))
        if self.route_set:
            request.route = list(self.route_set)
        request.from_address = self.local
        request.to_address = self.remote
        request.call_id = self.call_id
        request.cseq = CSeq(sequence, method)
        if body and content_type:
            headers.set("Content-Type", content_type)
        return request

    def create_request(
        self, method: str, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """A new in-dialog request, taking the next local CSeq number."""
        self.local_seq += 1
        return self._build(method, self.local_seq, body, content_type)

    def create_ack(
        self, invite_sequence: int, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """The ACK for a 2xx: same CSeq number as the INVITE, its own transaction (§13.2.2.4)."""
        return self._build("ACK", invite_sequence, body, content_type)

    def accept_remote_cseq(self, cseq: CSeq) -> bool:
        """Check and record the CSeq of an incoming in-dialog request (§12.2.2)."""
        if cseq.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and cseq.sequence <= self.remote_seq:
            return False
        self.remote_seq = cseq.sequence
        return True
