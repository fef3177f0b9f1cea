# rtc/_relay.c: a circuit's per-packet step in C (see rtc.circuit._Relay, its reference)
from collections.abc import Callable
from typing import Any

class Relay:
    address: Any
    clock_rate: int
    extension: bytes
    frame: int
    in_octets: int
    jitter: float
    last: float
    octets: int
    out_first: int
    out_octets: int
    out_payload_type: int
    out_sequence: int
    out_ssrc: int
    out_step: int
    out_timestamp: int
    packets: int
    payload_type: int
    peer: Any
    protect: Callable[[bytes], bytes] | None
    sendto: Callable[[bytes, Any], None]
    sequence_number: int
    ssrc: int
    step: int
    timestamp: int
    transit: float | None
    unprotect: Callable[[bytes], bytes] | None
    wraps: int
    @property
    def native(self) -> tuple[bool, bool, bool]: ...
    @property
    def receiving(self) -> bool: ...
    def take(self, data: bytes, addr: Any = None) -> bool: ...
    def _bind_native(self, *natives: int) -> bool: ...
    def _unbind_native(self) -> None: ...
    def _hold(self, held: bool) -> None: ...

class Tap:
    leg: Any
    fallback: Callable[[bytes, Any], None]
    def __init__(self, leg: Any, fallback: Callable[[bytes, Any], None]) -> None: ...
    def __call__(self, data: bytes, addr: Any = None) -> None: ...

class Reader:
    sock: Any
    protocol: Any
    def __init__(self, sock: Any, protocol: Any) -> None: ...
    def __call__(self) -> None: ...

def set_opus_20ms(tocs: bytes, code3: Callable[[bytes], bool]) -> None: ...
def pause_start() -> bool: ...
def pause_stop() -> bool: ...
def drain() -> None: ...
def pause_figures() -> tuple[int, int, int, int]: ...
