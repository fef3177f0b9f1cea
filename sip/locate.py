"""Locating SIP servers (RFC 3263 §4): NAPTR -> SRV -> A/AAAA, as pure selection logic.

The lookups go through a `Resolver` (fake in tests; `sip.aio.dns.StdlibResolver` in the
shell, run off the event loop) and randomness for the RFC 2782 weighted SRV order is
injected, so the same records always give the same, testable target list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sipmessage import URI

from .peer import Peer

# NAPTR services (RFC 3263 §4.1) and SRV prefixes we can use, by transport.
SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
SRV_PREFIX = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}
MAX_TARGETS = 16


@dataclass(frozen=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str


class Resolver(Protocol):
    """DNS lookups; each returns [] when the name has no such records (or on errors)."""

    def naptr(self, domain: str) -> list[NaptrRecord]: ...

    def srv(self, name: str) -> list[SrvRecord]: ...

    def addresses(self, host: str) -> list[str]: ...


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def order_srv(records: list[SrvRecord], random_int: Callable[[int], int]) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority; within a priority, weighted random selection.
    `random_int(n)` returns an integer in [0, n]. A lone "." target means no service."""
    records = [r for r in records if r.target not in (".", "")]
    out: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = random_int(total) if total > 0 else 0
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    out.append(group.pop(index))
                    break
    return out


def _host(uri: URI) -> str:
    host = uri.parameters.get("maddr") or uri.host
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _allowed(uri: URI) -> set[str]:
    if uri.scheme == "sips":
        return {"TLS"}
    return {"UDP", "TCP", "TLS"}


def _from_srv(
    name: str, transport: str, resolver: Resolver, random_int: Callable[[int], int]
) -> list[Peer]:
    peers: list[Peer] = []
    for record in order_srv(resolver.srv(name), random_int):
        host = record.target.rstrip(".")
        addresses = [host] if is_ip(host) else resolver.addresses(host)
        peers += [Peer(transport, address, record.port) for address in addresses]
    return peers


def locate(uri: URI, resolver: Resolver, random_int: Callable[[int], int]) -> list[Peer]:
    """The ordered targets to try for `uri` (RFC 3263 §4.1 transport, §4.2 port and
    address); [] when nothing resolves. Each target is tried until one answers with
    something other than 503 / a timeout / a transport error (§4.3)."""
    host = _host(uri)
    param = (uri.parameters.get("transport") or "").upper()
    allowed = _allowed(uri)
    transport = param if param in allowed else ("TLS" if uri.scheme == "sips" else "UDP")
    default_port = 5061 if transport == "TLS" else 5060
    if is_ip(host):
        return [Peer(transport, host, uri.port or default_port)]
    if uri.port:
        return [Peer(transport, a, uri.port) for a in resolver.addresses(host)][:MAX_TARGETS]
    peers: list[Peer] = []
    if param:
        peers = _from_srv(SRV_PREFIX[transport] + host, transport, resolver, random_int)
    else:
        naptrs = [
            n
            for n in resolver.naptr(host)
            if n.flags.lower() == "s" and SERVICES.get(n.service.upper()) in allowed
        ]
        naptrs.sort(key=lambda n: (n.order, n.preference))
        for naptr in naptrs:
            peers += _from_srv(
                naptr.replacement.rstrip("."), SERVICES[naptr.service.upper()], resolver, random_int
            )
        if not naptrs:
            for kind in ("UDP", "TCP", "TLS"):
                if kind in allowed:
                    peers += _from_srv(SRV_PREFIX[kind] + host, kind, resolver, random_int)
    if not peers:
        peers = [Peer(transport, a, default_port) for a in resolver.addresses(host)]
    unique: list[Peer] = []
    for peer in peers:
        if peer not in unique:
            unique.append(peer)
    return unique[:MAX_TARGETS]


def needs_dns(uri: URI) -> bool:
    return not is_ip(_host(uri))
