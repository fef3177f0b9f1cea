"""A small stdlib-only DNS client for RFC 3263: NAPTR and SRV over UDP (TCP when the
answer is truncated) to the first nameserver of /etc/resolv.conf; addresses through
getaddrinfo (so /etc/hosts applies). Blocking: the user agent runs it in an executor.
"""

from __future__ import annotations

import logging
import secrets
import socket
import struct

from ..locate import NaptrRecord, SrvRecord

log = logging.getLogger(__name__)

TYPE_A, TYPE_SRV, TYPE_NAPTR = 1, 33, 35


def _nameserver(path: str = "/etc/resolv.conf") -> str:
    try:
        with open(path) as conf:
            for line in conf:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    return parts[1]
    except OSError:
        pass
    return "127.0.0.1"


def build_query(name: str, qtype: int, ident: int) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(part)]) + part for part in name.rstrip(".").encode("idna").split(b".") if part
    )
    return header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def _name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    for _ in range(128):  # bound on labels and compression jumps
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        labels.append(data[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    else:
        raise ValueError("DNS name too long")
    return ".".join(labels), end if end is not None else offset


def _string(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    return data[offset + 1 : offset + 1 + length].decode("ascii", "replace"), offset + 1 + length


def parse_answer(data: bytes, qtype: int) -> tuple[list[SrvRecord | NaptrRecord], bool]:
    """(records of `qtype` in the answer section, truncated flag)."""
    _, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", data[:12])
    offset = 12
    for _ in range(qdcount):
        _, offset = _name(data, offset)
        offset += 4
    records: list[SrvRecord | NaptrRecord] = []
    for _ in range(ancount):
        _, offset = _name(data, offset)
        rtype, _, _, length = struct.unpack("!HHIH", data[offset : offset + 10])
        offset += 10
        rdata = offset
        offset += length
        if rtype != qtype:
            continue
        if rtype == TYPE_SRV:
            priority, weight, port = struct.unpack("!HHH", data[rdata : rdata + 6])
            target, _ = _name(data, rdata + 6)
            records.append(SrvRecord(priority, weight, port, target))
        elif rtype == TYPE_NAPTR:
            order, preference = struct.unpack("!HH", data[rdata : rdata + 4])
            flags_text, pos = _string(data, rdata + 4)
            service, pos = _string(data, pos)
            _, pos = _string(data, pos)  # regexp (unused by SIP)
            replacement, _ = _name(data, pos)
            records.append(NaptrRecord(order, preference, flags_text, service, replacement))
    return records, bool(flags & 0x0200)


class StdlibResolver:
    def __init__(self, nameserver: str | None = None, port: int = 53, timeout: float = 2.0):
        self.nameserver = nameserver or _nameserver()
        self.port = port
        self.timeout = timeout

    def _query(self, name: str, qtype: int) -> list[SrvRecord | NaptrRecord]:
        ident = secrets.randbelow(65536)
        query = build_query(name, qtype, ident)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(self.timeout)
                udp.sendto(query, (self.nameserver, self.port))
                for _ in range(8):
                    data, _ = udp.recvfrom(4096)
                    if data[:2] == query[:2]:
                        break
                else:
                    return []
            records, truncated = parse_answer(data, qtype)
            if truncated:
                with socket.create_connection((self.nameserver, self.port), self.timeout) as tcp:
                    tcp.sendall(struct.pack("!H", len(query)) + query)
                    size = struct.unpack("!H", tcp.recv(2))[0]
                    buffer = b""
                    while len(buffer) < size:
                        chunk = tcp.recv(size - len(buffer))
                        if not chunk:
                            break
                        buffer += chunk
                records, _ = parse_answer(buffer, qtype)
            return records
        except (OSError, ValueError, struct.error, IndexError) as exc:
            log.info("DNS %s query for %s failed: %s", qtype, name, exc)
            return []

    def naptr(self, domain: str) -> list[NaptrRecord]:
        return [r for r in self._query(domain, TYPE_NAPTR) if isinstance(r, NaptrRecord)]

    def srv(self, name: str) -> list[SrvRecord]:
        return [r for r in self._query(name, TYPE_SRV) if isinstance(r, SrvRecord)]

    def addresses(self, host: str) -> list[str]:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
        except OSError:
            return []
        out: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in out:
                out.append(address)
        return out
