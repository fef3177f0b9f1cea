"""Who may create dialogs, and how fast: address ACLs and per-source token buckets.

`AccessPolicy` says which sources are trusted peers (PBX, trunk) by network; anyone
else must pass digest authentication against the directory or gets 403 (toll fraud
protection, DESIGN.md §9). `RateLimiter` is a token bucket per key with an injected
clock; the table of keys is bounded.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AccessPolicy:
    """Dialog-creating requests (INVITE) are allowed from `trusted` networks; from
    anywhere else only with valid digest credentials (when a directory is configured),
    otherwise 403."""

    trusted: tuple[Network, ...] = ()

    @classmethod
    def from_strings(cls, networks: Iterable[str]) -> AccessPolicy:
        """Networks like "10.0.0.0/8", "192.0.2.7" or "::1"; ValueError when malformed."""
        return cls(tuple(ipaddress.ip_network(n.strip(), strict=False) for n in networks))

    def is_trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets: `rate` requests per second sustained, bursts up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: float,
        clock: Callable[[], float],
        *,
        max_keys: int = 10000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def allow(self, key: str) -> float | None:
        """Take one token for `key`: None when allowed, else seconds until one is free."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate
