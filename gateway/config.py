"""Configuration: a TOML file (or the built-in defaults) -> frozen dataclasses.

`load_config(path)` reads and validates a file; `load_config(None)` returns the embedded
defaults (DESIGN.md §6: the gateway runs with no configuration at all). Every problem is
reported as one `ConfigError` whose message names the file and the key, e.g.

    config error in /etc/gw.toml: [sip] listen: expected "host:port", got "localhost"

The command line prints it prefixed with the program name and exits with status 2.
Every key accepted here is documented in `config/gateway.example.toml`.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import importlib.util
import io
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TypeVar

__all__ = [
    "AUTH_MODES",
    "DTMF_MODES",
    "DEFAULTS_SOURCE",
    "DEMO_USERS",
    "LOG_LEVELS",
    "RINGBACK_COUNTRIES",
    "VERSION",
    "AuthConfig",
    "JwtConfig",
    "CallsConfig",
    "DirectoryConfig",
    "LdapConfig",
    "RecordsConfig",
    "PUSH_SERVICES",
    "FcmServiceAccount",
    "PushConfig",
    "NumbersConfig",
    "Config",
    "ConfigError",
    "HA1_KEYS",
    "LoggingConfig",
    "MediaConfig",
    "PbxConfig",
    "ServerConfig",
    "SipConfig",
    "User",
    "format_hostport",
    "load_config",
    "parse_config",
    "parse_users_file",
    "sip_realm",
    "user_ha1",
]


def _package_version() -> str:
    try:
        return metadata.version("webrtc-sip-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.1.0"


VERSION: Final[str] = _package_version()

#: `Config.source` when no file was given.
DEFAULTS_SOURCE: Final[str] = "<built-in defaults>"

AUTH_MODES: Final[tuple[str, ...]] = ("none", "password", "token", "both")
# How a browser's digits (RTCDTMFSender) go to a SIP peer: "auto" picks RFC 4733 when the
# peer negotiated telephone-event, else SIP INFO when its Allow lists INFO, else tones.
DTMF_MODES: Final[tuple[str, ...]] = ("auto", "rfc4733", "info", "inband")
NUMBER_ASSIGNMENTS: Final[tuple[str, ...]] = ("client", "directory")
MEDIA_CODECS: Final[tuple[str, ...]] = ("PCMU", "PCMA", "G722", "OPUS")
SRTP_MODES: Final[tuple[str, ...]] = ("off", "optional", "mandatory")
RINGBACK_COUNTRIES: Final[tuple[str, ...]] = ("us", "uk", "de", "eu", "fr", "jp")
# [media] failure_tone_seconds at most: a tone, not a way to hold a failed call's leg
MAX_FAILURE_TONE: Final[float] = 30.0
LOG_LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error", "critical")
PBX_TRANSPORTS: Final[tuple[str, ...]] = ("udp", "tcp", "tls")
PUSH_SERVICES: Final[tuple[str, ...]] = ("fcm", "webhook")
DEFAULT_FCM_ENDPOINT: Final[str] = "https://fcm.googleapis.com"
DEFAULT_FCM_TOKEN_URI: Final[str] = "https://oauth2.googleapis.com/token"


class ConfigError(Exception):
    """A configuration problem; `str(error)` is the complete one-line message."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{key}: " if key else ""
        super().__init__(f"config error in {source}: {where}{problem}")


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """HTTP server: web phone, static files and the json-v1 WebSocket."""

    host: str  # IPv6 without brackets
    port: int
    ws_path: str = "/ws"
    max_message_bytes: int = 65536


@dataclass(frozen=True, slots=True)
class SipConfig:
    """The gateway's SIP user agent (UDP and TCP on the same address)."""

    host: str  # IPv6 without brackets
    port: int
    user_agent: str = f"webrtc-gateway/{VERSION}"  # DEFAULT_USER_AGENT
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    registrar: bool = True  # SIP phones REGISTER with the directory's credentials
    realm: str = ""  # digest realm ("" = the listen host)
    # INVITE sources let in without digest; None (key absent) = loopback and the PBX host.
    # Anyone else must pass digest against the directory or gets 403 (toll fraud).
    trusted_networks: tuple[str, ...] | None = None
    request_rate: float = 10.0  # INVITE/REGISTER per second per source (0 = no limit)
    request_burst: int = 20
    keepalive_interval: float = 0.0  # CRLF pings on TCP/TLS connections (0 = off)
    tls_port: int | None = None  # SIPS listener (None = none)
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify: bool = True
    # X- headers passed between the SIP leg and clients (json-v1 `sipHeaders`).
    pass_headers: tuple[str, ...] = ()
    prack: bool = True  # offer 100rel (RFC 3262), send reliable 1xx when the caller asks
    session_expires: int = 1800  # RFC 4028 session timer (0 = off)
    min_se: int = 90
    # How browser digits reach SIP peers other than the [pbx] (phones of the registrar).
    dtmf: str = "auto"  # one of DTMF_MODES


@dataclass(frozen=True, slots=True)
class PbxConfig:
    """Where calls to numbers that are not local web users go (None: nowhere)."""

    uri: str | None = None
    username: str | None = None
    password: str | None = None
    fallback_uris: tuple[str, ...] = ()  # tried in order when uri times out or answers 503
    register: bool = False  # trunk mode: keep sip:<username>@<pbx host> registered there
    register_expires: int = 600
    per_user_registration: bool = False  # each web login registers its number there
    qualify_interval: float = 0.0  # OPTIONS ping period (0 = off); a dead PBX fails fast
    dtmf: str = "auto"  # how browser digits reach the PBX: one of DTMF_MODES

    @property
    def transport(self) -> str:
        """The `;transport=` parameter of `uri` in lower case, default "udp"."""
        if self.uri is None:
            return "udp"
        return _uri_transport(self.uri) or "udp"


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """[auth.jwt]: keys and rules for JSON Web Tokens (gateway/auth.py)."""

    issuer: str | None = None  # required `iss` of accepted tokens; also ours
    hs256_secret: str | None = field(default=None, repr=False)
    rs256_public_key: str | None = None  # the file as configured, resolved to a path
    # The RSA public key read from that file at start-up (SubjectPublicKeyInfo PEM).
    rs256_public_key_pem: bytes | None = field(default=None, repr=False)
    token_lifetime: int = 300  # seconds; tokens issued by POST /api/token


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mode: str = "none"  # one of AUTH_MODES
    realm: str = "webrtc-gateway"  # HTTP Basic/Digest realm
    jwt: JwtConfig = JwtConfig()


@dataclass(frozen=True, slots=True)
class IceServerConfig:
    """[[media.ice_servers]]: a STUN/TURN server handed to the browser leg."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class MediaConfig:
    rtp_host: str = "127.0.0.1"  # bind address of RTP sockets and the SDP c= address
    rtp_port_min: int = 10000
    rtp_port_max: int = 20000
    ringback: str = "us"  # one of RINGBACK_COUNTRIES: the cadences of every tone below
    # seconds the browser hears the busy or congestion tone of an outgoing call that
    # failed so, before it gets `terminated` (0: none, `terminated` at once)
    failure_tone_seconds: float = 0.0
    # the call-waiting tone over a connected call while another is offered to its client
    call_waiting_tone: bool = False
    timeout: float = 30.0  # seconds without RTP that end an answered call (0: never)
    ice_servers: tuple[IceServerConfig, ...] = ()
    public_address: str | None = None  # the c= address when peers reach us through NAT
    codecs: tuple[str, ...] = ("PCMU", "PCMA")  # toward SIP, in order of preference
    srtp: str = "off"  # SDES-SRTP toward SIP: off | optional | mandatory
    opus_complexity: int = 0  # libopus complexity of the Opus we send to browsers (0..10)
    opus_bit_rate: int = 32000  # bit rate of the Opus we send to browsers (6000..510000)
    # how long the SIP -> browser jitter buffer waits for a missing packet (ms):
    # adaptive between these, starting at the minimum
    jitter_min_ms: int = 20
    jitter_max_ms: int = 200
    # kb/s of video we accept from SIP phones (our b=AS), which also caps what the
    # browser sends toward them (64..20000)
    video_bit_rate: int = 2000
    # seconds a browser's ICE restart has for its new checks to nominate a pair before
    # the call ends with reason "media" (rtc/icerestart.py; RFC 7675's consent 30 s)
    ice_restart_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class CallsConfig:
    no_answer_timeout: float = 60.0  # seconds an offered incoming call may ring
    restore_grace: float = 60.0  # seconds a registration outlives its WebSocket
    # Dial rules (regular expressions matched against the whole dialed number): with
    # dial_allow, only matching numbers may be called; dial_deny matches are refused.
    dial_allow: tuple[str, ...] = ()
    dial_deny: tuple[str, ...] = ()
    max_calls_per_client: int = 8
    max_clients_per_number: int = 10


@dataclass(frozen=True, slots=True)
class NumbersConfig:
    """Built-in test numbers answered by the gateway itself (None: disabled)."""

    echo: str | None = "9000"  # you hear yourself
    tone: str | None = "9001"  # a steady 1 kHz tone


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"  # one of LOG_LEVELS


@dataclass(frozen=True, slots=True)
class RecordsConfig:
    """[records]: the call records database (gateway/records.py)."""

    enabled: bool = True
    path: str = "calls.db"  # SQLite file; a relative path is relative to the working dir


@dataclass(frozen=True, slots=True)
class LdapConfig:
    """[directory.ldap]: an LDAP directory as a user source (gateway/directory.py)."""

    url: str  # ldap://host:port or ldaps://host:port
    base_dn: str
    bind_dn: str | None = None  # None: anonymous searches
    bind_password: str | None = field(default=None, repr=False)
    user_filter: str = "(uid={username})"  # {username} is replaced, escaped (RFC 4515)
    username_attribute: str = "uid"
    number_attribute: str = "telephoneNumber"
    display_name_attribute: str = "cn"
    timeout: float = 5.0  # seconds, connect and each operation
    cache_ttl: float = 60.0  # seconds lookups are cached (0: no cache)


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """[directory]: user sources besides the [[users]] table (gateway/directory.py)."""

    users_file: str | None = None  # resolved path of a .toml or .csv users file
    reload_interval: float = 2.0  # seconds between checks of the users file for changes
    # json-v1 §7: "client" (the client names its number; it must be the user's) or
    # "directory" (the number is the authenticated user's; the client's is ignored).
    number_assignment: str = "client"
    ldap: LdapConfig | None = None
    # The users read from users_file at start-up (also part of Config.users).
    file_users: tuple[User, ...] = ()


@dataclass(frozen=True, slots=True)
class FcmServiceAccount:
    """The parts of a Google service account JSON file that FCM HTTP v1 needs."""

    client_email: str
    private_key_pem: bytes = field(repr=False)  # PKCS#8 PEM, an RSA key (RS256)
    token_uri: str = DEFAULT_FCM_TOKEN_URI  # OAuth2 token endpoint
    project_id: str | None = None
    private_key_id: str | None = None  # the JWT "kid"


@dataclass(frozen=True, slots=True)
class PushConfig:
    """[push]: waking a client with no connection for an incoming call (json-v1 §8)."""

    service: str | None = None  # one of PUSH_SERVICES; None = push wake-up disabled
    webhook_url: str | None = None  # service "webhook": https (http only for loopback)
    webhook_secret: str | None = field(default=None, repr=False)  # X-Signature HMAC key
    fcm_service_account: str | None = None  # service "fcm": the file, resolved to a path
    # The service account read from that file at start-up.
    fcm_credentials: FcmServiceAccount | None = None
    fcm_project_id: str | None = None  # default: the service account's project_id
    fcm_endpoint: str = DEFAULT_FCM_ENDPOINT  # no trailing "/"
    # Passed unchanged to clients as register/status notificationConfiguration.
    # A plain JSON-serialisable dict: do not mutate it.
    web_config: dict[str, Any] | None = None
    timeout: float = 10.0  # seconds per HTTP request
    token_ttl: float = 60.0  # seconds a wake-up token is valid

    @property
    def enabled(self) -> bool:
        return self.service is not None


@dataclass(frozen=True, slots=True)
class User:
    """A directory user. `password` is "" when it is not stored (LDAP users, and users
    with only HA1 values). `ha1_md5`/`ha1_sha256` are stored digest hashes in lower-case
    hex: H(number ":" SIP realm ":" password), see `user_ha1` (None: not stored)."""

    username: str
    password: str
    number: str  # digits with an optional leading "+"
    display_name: str
    # Dial rules replacing [calls] dial_allow/dial_deny for this user (None: the global ones).
    dial_allow: tuple[str, ...] | None = None
    dial_deny: tuple[str, ...] | None = None
    ha1_md5: str | None = field(default=None, repr=False)
    ha1_sha256: str | None = field(default=None, repr=False)

    @property
    def ha1_only(self) -> bool:
        """True when only HA1 values are stored (no password)."""
        return not self.password and (self.ha1_md5 is not None or self.ha1_sha256 is not None)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    sip: SipConfig
    pbx: PbxConfig
    auth: AuthConfig
    media: MediaConfig
    calls: CallsConfig
    numbers: NumbersConfig
    logging: LoggingConfig
    users: tuple[User, ...]
    demo_users: bool  # True when `users` is the built-in demo directory
    source: str  # the file path, or DEFAULTS_SOURCE
    records: RecordsConfig = RecordsConfig()
    directory: DirectoryConfig = DirectoryConfig()
    push: PushConfig = PushConfig()

    def user_by_number(self, number: str) -> User | None:
        return next((u for u in self.users if u.number == number), None)

    def user_by_name(self, username: str) -> User | None:
        return next((u for u in self.users if u.username == username), None)


#: The directory used when the configuration has no [[users]].
DEMO_USERS: Final[tuple[User, ...]] = (
    User(username="alice", password="alice123", number="1001", display_name="Alice"),
    User(username="bob", password="bob123", number="1002", display_name="Bob"),
    User(username="carol", password="carol123", number="1003", display_name="Carol"),
)

DEFAULT_SERVER_LISTEN: Final[str] = "127.0.0.1:8080"
DEFAULT_USER_AGENT: Final[str] = f"webrtc-gateway/{VERSION}"
DEFAULT_SIP_LISTEN: Final[str] = "127.0.0.1:5060"


# --------------------------------------------------------------------------- helpers


def format_hostport(host: str, port: int) -> str:
    """ "host:port", with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _show(value: object) -> str:
    """A value as it would look in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _kind(value: object) -> str:
    """The TOML type of a value plus the value, e.g. 'string "x"', 'boolean true'."""
    if isinstance(value, bool):
        return f"boolean {_show(value)}"
    if isinstance(value, int):
        return f"integer {_show(value)}"
    if isinstance(value, float):
        return f"float {_show(value)}"
    if isinstance(value, str):
        return f"string {_show(value)}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return f"date/time {value.isoformat()}"
    return type(value).__name__  # pragma: no cover - tomllib produces nothing else


_T = TypeVar("_T")

_NUMBER_RE = re.compile(r"\+?[0-9]+")
_USERNAME_RE = re.compile(r"[A-Za-z0-9._~!$&'*+=,;?/-]+")  # RFC 3261 user, unescaped
_PORT_RE = re.compile(r"[0-9]+")


def _uri_transport(uri: str) -> str | None:
    for param in uri.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport":
            return value.strip().lower()
    return None


class _Table:
    """Typed access to one TOML table, with errors naming the file and the key."""

    def __init__(
        self, source: str, label: str, data: Mapping[str, Any], known: tuple[str, ...]
    ) -> None:
        self.source = source
        self.label = label  # "[server]" or "[[users]] #2"
        self.data = data
        for key in data:
            if key not in known:
                raise self.error(key, f"unknown key (known keys: {', '.join(known)})")

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, f"{self.label} {key}", problem)

    def _get(self, key: str, default: _T, check: Callable[[object], bool], what: str) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if not check(value):
            raise self.error(key, f"expected {what}, got {_kind(value)}")
        return value

    def string(self, key: str, default: str) -> str:
        value: str = self._get(key, default, lambda v: isinstance(v, str), "a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, default, lambda v: isinstance(v, bool), "true or false")
        return value

    def opt_string(self, key: str) -> str | None:
        value: str | None = self._get(key, None, lambda v: isinstance(v, str), "a string")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value: int = self._get(
            key, default, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"
        )
        if not low <= value <= high:
            raise self.error(key, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._get(
            key,
            default,
            lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "a number",
        )
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value}")
        if not low < value <= high:
            if low == -math.inf:
                raise self.error(key, f"must be at most {high:g}, got {value}")
            raise self.error(key, f"must be more than {low:g} and at most {high:g}, got {value}")
        return float(value)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(key, default)
        if value not in choices:
            raise self.error(key, f"must be one of {' | '.join(choices)}, got {_show(value)}")
        return value

    def listen(self, key: str, default: str) -> tuple[str, int]:
        text = self.string(key, default)
        expected = f'expected "host:port" (IPv6 as "[::1]:5060"), got {_show(text)}'
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise self.error(key, expected)
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise self.error(key, f"not an IPv6 address in brackets: {_show(text)}") from None
        else:
            host, sep, port = text.rpartition(":")
            if not sep or not host:
                raise self.error(key, expected)
            if ":" in host:
                raise self.error(
                    key, f'put an IPv6 address in brackets, "[::1]:5060"; got {_show(text)}'
                )
            if any(c.isspace() for c in host) or "/" in host:
                raise self.error(key, f"invalid host in {_show(text)}")
        if not _PORT_RE.fullmatch(port):
            raise self.error(key, f"port must be a number, got {_show(port)} in {_show(text)}")
        number = int(port)
        if number > 65535:
            raise self.error(key, f"port must be between 0 and 65535, got {number}")
        return host, number


def _section(data: Mapping[str, Any], source: str, name: str, known: tuple[str, ...]) -> _Table:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(source, f"[{name}]", f"expected a table, got {_kind(value)}")
    return _Table(source, f"[{name}]", value, known)


# --------------------------------------------------------------------------- sections


def _server(data: Mapping[str, Any], source: str) -> ServerConfig:
    t = _section(data, source, "server", ("listen", "ws_path", "max_message_bytes"))
    host, port = t.listen("listen", DEFAULT_SERVER_LISTEN)
    ws_path = t.string("ws_path", "/ws")
    if not ws_path.startswith("/") or any(c.isspace() or c in "?#" for c in ws_path):
        raise t.error("ws_path", f'expected a URL path starting with "/", got {_show(ws_path)}')
    max_bytes = t.integer("max_message_bytes", 65536, 1024, 16 * 1024 * 1024)
    return ServerConfig(host=host, port=port, ws_path=ws_path, max_message_bytes=max_bytes)


def _sip(data: Mapping[str, Any], source: str) -> SipConfig:
    t = _section(
        data,
        source,
        "sip",
        (
            "listen",
            "user_agent",
            "t1",
            "t2",
            "t4",
            "registrar",
            "realm",
            "trusted_networks",
            "request_rate",
            "request_burst",
            "keepalive_interval",
            "tls_port",
            "tls_cert",
            "tls_key",
            "tls_ca",
            "tls_verify",
            "prack",
            "session_expires",
            "min_se",
            "pass_headers",
            "dtmf",
        ),
    )
    host, port = t.listen("listen", DEFAULT_SIP_LISTEN)
    user_agent = t.string("user_agent", DEFAULT_USER_AGENT)
    if not user_agent.strip() or any(ord(c) < 32 or ord(c) == 127 for c in user_agent):
        raise t.error(
            "user_agent", f"expected a non-empty single-line string, got {_show(user_agent)}"
        )
    t1 = t.number("t1", 0.5, 0.0, 60.0)
    t2 = t.number("t2", 4.0, 0.0, 600.0)
    t4 = t.number("t4", 5.0, 0.0, 600.0)
    if t2 < t1:
        raise t.error("t2", f"must not be less than t1 ({t1:g}), got {t2:g}")
    trusted = t.data.get("trusted_networks", None)
    if trusted is None:
        trusted_networks = None
    elif not isinstance(trusted, list) or not all(isinstance(n, str) for n in trusted):
        raise t.error("trusted_networks", f"expected an array of strings, got {_kind(trusted)}")
    else:
        trusted_networks = tuple(trusted)
    for network in trusted_networks or ():
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise t.error(
                "trusted_networks", f'expected networks like "192.0.2.0/24", got {_show(network)}'
            ) from None
    session_expires = t.integer("session_expires", 1800, 0, 86400)
    min_se = t.integer("min_se", 90, 90, 86400)
    if session_expires and session_expires < min_se:
        raise t.error("session_expires", f"must be 0 (off) or at least min_se ({min_se})")
    tls_port = t.integer("tls_port", -1, -1, 65535) if "tls_port" in t.data else None
    if tls_port == -1:
        raise t.error("tls_port", "must be between 0 and 65535, got -1")
    files = {}
    for key in ("tls_cert", "tls_key", "tls_ca"):
        name = t.string(key, "")
        files[key] = _resolve(source, name) if name else ""
    if tls_port is not None and not files["tls_cert"]:
        raise t.error("tls_cert", "a TLS listener (tls_port) needs a certificate")
    for key, path in files.items():
        if path and not os.access(path, os.R_OK):
            raise t.error(key, f"cannot read {path}")
    return SipConfig(
        host=host,
        port=port,
        user_agent=user_agent,
        t1=t1,
        t2=t2,
        t4=t4,
        registrar=t.boolean("registrar", True),
        realm=t.string("realm", ""),
        trusted_networks=trusted_networks,
        request_rate=_non_negative(t, "request_rate", 10.0),
        request_burst=t.integer("request_burst", 20, 1, 100000),
        keepalive_interval=_non_negative(t, "keepalive_interval", 0.0),
        tls_port=tls_port,
        tls_cert=files["tls_cert"],
        tls_key=files["tls_key"],
        tls_ca=files["tls_ca"],
        tls_verify=t.boolean("tls_verify", True),
        prack=t.boolean("prack", True),
        pass_headers=_header_names(t, "pass_headers"),
        session_expires=session_expires,
        min_se=min_se,
        dtmf=t.choice("dtmf", "auto", DTMF_MODES),
    )


def _header_names(t: _Table, key: str) -> tuple[str, ...]:
    names = t.data.get(key, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise t.error(key, f"expected an array of header names, got {_kind(names)}")
    for name in names:
        if not re.fullmatch(r"[Xx]-[A-Za-z0-9-]{1,64}", name):
            raise t.error(key, f'only "X-" header names may pass, got {_show(name)}')
    return tuple(names)


def _non_negative(t: _Table, key: str, default: float) -> float:
    value = t.number(key, default, -math.inf, 100000.0)
    if value < 0:
        raise t.error(key, f"must be 0 (off) or more, got {value:g}")
    return value


def _pbx(data: Mapping[str, Any], source: str) -> PbxConfig:
    t = _section(
        data,
        source,
        "pbx",
        (
            "uri", "username", "password", "fallback_uris", "register", "register_expires",
            "per_user_registration", "qualify_interval", "dtmf",
        ),
    )
    uri = t.opt_string("uri")
    username = t.opt_string("username")
    password = t.opt_string("password")
    if uri is not None:
        _check_sip_uri(t, "uri", uri)
    fallback = t.data.get("fallback_uris", [])
    if not isinstance(fallback, list) or not all(isinstance(u, str) for u in fallback):
        raise t.error("fallback_uris", f"expected an array of SIP URIs, got {_kind(fallback)}")
    for other in fallback:
        _check_sip_uri(t, "fallback_uris", other)
    if fallback and uri is None:
        raise t.error("fallback_uris", "set [pbx] uri as well")
    register = t.boolean("register", False)
    if register and (uri is None or username is None):
        raise t.error("register", "trunk registration needs [pbx] uri and username")
    per_user = t.boolean("per_user_registration", False)
    if per_user and uri is None:
        raise t.error("per_user_registration", "set [pbx] uri as well")
    expires = t.integer("register_expires", 600, 60, 86400)
    qualify = _non_negative(t, "qualify_interval", 0.0)
    if qualify and uri is None:
        raise t.error("qualify_interval", "set [pbx] uri as well")
    if username is not None and not username:
        raise t.error("username", "must not be empty (leave it out instead)")
    if password is not None and username is None:
        raise t.error("password", "set username as well")
    if username is not None and uri is None:
        raise t.error("username", "credentials without a uri: set [pbx] uri as well")
    return PbxConfig(
        uri=uri,
        username=username,
        password=password,
        fallback_uris=tuple(fallback),
        register=register,
        register_expires=expires,
        per_user_registration=per_user,
        qualify_interval=qualify,
        dtmf=t.choice("dtmf", "auto", DTMF_MODES),
    )


def _check_sip_uri(t: _Table, key: str, uri: str) -> None:
    scheme, colon, rest = uri.partition(":")
    if scheme.lower() not in ("sip", "sips") or not colon or not rest.split(";")[0].strip():
        raise t.error(
            key, f'expected a SIP URI like "sip:pbx.example.com:5060", got {_show(uri)}'
        )
    if any(c.isspace() for c in uri):
        raise t.error(key, f"must not contain spaces, got {_show(uri)}")
    transport = _uri_transport(uri)
    if transport is not None and transport not in PBX_TRANSPORTS:
        raise t.error(
            key,
            f"transport must be one of {' | '.join(PBX_TRANSPORTS)}, got {_show(transport)}",
        )


#: Shortest accepted [auth.jwt] hs256_secret: RFC 7518 §3.2 wants a key of >= 256 bits.
MIN_HS256_SECRET: Final[int] = 32
#: Smallest accepted RSA modulus for [auth.jwt] rs256_public_key.
MIN_RSA_BITS: Final[int] = 2048


def _load_rsa_public_key(t: _Table, key: str, path: Path) -> bytes:
    """Read a PEM RSA public key or X.509 certificate; return the key as SPKI PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = path.read_bytes()
    except OSError as e:
        raise t.error(key, f"cannot read {path}: {e.strerror or e}") from None
    public_key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            public_key = x509.load_pem_x509_certificate(data).public_key()
        else:
            public_key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise t.error(
            key, f"{path} is not a PEM public key or certificate: {str(e) or type(e).__name__}"
        ) from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise t.error(key, f"{path} holds no RSA public key (RS256 needs RSA)")
    if public_key.key_size < MIN_RSA_BITS:
        raise t.error(
            key,
            f"{path}: RSA key of {public_key.key_size} bits is too small (at least {MIN_RSA_BITS})",
        )
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _jwt(auth: _Table, source: str) -> JwtConfig:
    value = auth.data.get("jwt", {})
    if not isinstance(value, dict):
        raise ConfigError(source, "[auth.jwt]", f"expected a table, got {_kind(value)}")
    t = _Table(
        source,
        "[auth.jwt]",
        value,
        ("issuer", "hs256_secret", "rs256_public_key", "token_lifetime"),
    )
    issuer = t.opt_string("issuer")
    if issuer is not None and (not issuer.strip() or any(ord(c) < 32 for c in issuer)):
        raise t.error("issuer", f"expected a non-empty single-line string, got {_show(issuer)}")
    secret = t.opt_string("hs256_secret")
    if secret is not None and len(secret.encode()) < MIN_HS256_SECRET:
        raise t.error(
            "hs256_secret",
            f"must be at least {MIN_HS256_SECRET} bytes long (256 bits, RFC 7518), "
            f"got {len(secret.encode())}",
        )
    key_file = t.opt_string("rs256_public_key")
    key_path: Path | None = None
    pem: bytes | None = None
    if key_file is not None:
        if not key_file.strip():
            raise t.error("rs256_public_key", "must not be empty (leave it out instead)")
        key_path = Path(key_file).expanduser()
        if not key_path.is_absolute():
            base = Path(source).parent if source != DEFAULTS_SOURCE else Path.cwd()
            key_path = base / key_path
        pem = _load_rsa_public_key(t, "rs256_public_key", key_path)
    lifetime = t.integer("token_lifetime", 300, 10, 86400)
    return JwtConfig(
        issuer=issuer,
        hs256_secret=secret,
        rs256_public_key=str(key_path) if key_path is not None else None,
        rs256_public_key_pem=pem,
        token_lifetime=lifetime,
    )


def _auth(data: Mapping[str, Any], source: str) -> AuthConfig:
    t = _section(data, source, "auth", ("mode", "realm", "jwt"))
    mode = t.choice("mode", "none", AUTH_MODES)
    realm = t.string("realm", "webrtc-gateway")
    if not realm or any(ord(c) < 32 or ord(c) == 127 or c in '"\\' for c in realm):
        raise t.error(
            "realm",
            f"expected a non-empty single line without quotes or backslashes, got {_show(realm)}",
        )
    jwt = _jwt(t, source)
    if mode in ("token", "both") and jwt.hs256_secret is None and jwt.rs256_public_key is None:
        raise t.error(
            "mode",
            f"mode {_show(mode)} needs a key to check tokens: set [auth.jwt] hs256_secret "
            "and/or rs256_public_key",
        )
    return AuthConfig(mode=mode, realm=realm, jwt=jwt)


def _media(data: Mapping[str, Any], source: str) -> MediaConfig:
    t = _section(
        data,
        source,
        "media",
        (
            "rtp_host", "rtp_port_min", "rtp_port_max", "ringback", "failure_tone_seconds",
            "call_waiting_tone", "timeout", "ice_servers", "public_address", "codecs", "srtp",
            "opus_complexity", "opus_bit_rate", "jitter_min_ms", "jitter_max_ms",
            "video_bit_rate", "ice_restart_timeout",
        ),
    )
    rtp_host = t.string("rtp_host", "127.0.0.1")
    try:
        address = ipaddress.ip_address(rtp_host)
    except ValueError:
        raise t.error("rtp_host", f"expected an IP address, got {_show(rtp_host)}") from None
    public_address = t.opt_string("public_address")
    if public_address is not None:
        try:
            public = ipaddress.ip_address(public_address)
        except ValueError:
            raise t.error(
                "public_address", f"expected an IP address, got {_show(public_address)}"
            ) from None
        if public.is_unspecified:
            raise t.error("public_address", "must be an address peers can send RTP to")
    if address.is_unspecified and public_address is None:
        raise t.error(
            "rtp_host",
            f"{rtp_host} is not an address peers can send RTP to: set public_address as well",
        )
    codecs = t.data.get("codecs", ["PCMU", "PCMA"])
    if (
        not isinstance(codecs, list)
        or not codecs
        or not all(isinstance(c, str) and c.upper() in MEDIA_CODECS for c in codecs)
    ):
        raise t.error(
            "codecs", f"expected a non-empty array of {', '.join(MEDIA_CODECS)}, got {codecs!r}"
        )
    srtp = t.choice("srtp", "off", SRTP_MODES)
    low = t.integer("rtp_port_min", 10000, 1024, 65534)
    high = t.integer("rtp_port_max", 20000, 1025, 65535)
    if high <= low:
        raise t.error("rtp_port_max", f"must be greater than rtp_port_min ({low}), got {high}")
    ringback = t.choice("ringback", "us", RINGBACK_COUNTRIES)
    failure_tone_seconds = t.number("failure_tone_seconds", 0.0, -math.inf, math.inf)
    if not 0 <= failure_tone_seconds <= MAX_FAILURE_TONE:
        raise t.error(
            "failure_tone_seconds",
            f"must be 0 (no tone) to {MAX_FAILURE_TONE:g} seconds, got {failure_tone_seconds:g}",
        )
    call_waiting_tone = t.boolean("call_waiting_tone", False)
    timeout = t.number("timeout", 30.0, -math.inf, 3600.0)
    if timeout < 0:
        raise t.error("timeout", f"must be 0 (never) or more, got {timeout:g}")
    opus_complexity = t.integer("opus_complexity", 0, 0, 10)
    opus_bit_rate = t.integer("opus_bit_rate", 32000, 6000, 510000)
    jitter_min_ms = t.integer("jitter_min_ms", 20, 20, 200)
    jitter_max_ms = t.integer("jitter_max_ms", 200, 20, 200)
    if jitter_max_ms < jitter_min_ms:
        raise t.error(
            "jitter_max_ms",
            f"must be at least jitter_min_ms ({jitter_min_ms}), got {jitter_max_ms}",
        )
    video_bit_rate = t.integer("video_bit_rate", 2000, 64, 20000)
    ice_restart_timeout = t.number("ice_restart_timeout", 30.0, 0.0, 300.0)
    return MediaConfig(
        rtp_host=rtp_host,
        rtp_port_min=low,
        rtp_port_max=high,
        ringback=ringback,
        failure_tone_seconds=failure_tone_seconds,
        call_waiting_tone=call_waiting_tone,
        timeout=timeout,
        ice_servers=_ice_servers(t, source),
        public_address=public_address,
        codecs=tuple(c.upper() for c in codecs),
        srtp=srtp,
        opus_complexity=opus_complexity,
        opus_bit_rate=opus_bit_rate,
        jitter_min_ms=jitter_min_ms,
        jitter_max_ms=jitter_max_ms,
        video_bit_rate=video_bit_rate,
        ice_restart_timeout=ice_restart_timeout,
    )


def _ice_servers(t: _Table, source: str) -> tuple[IceServerConfig, ...]:
    entries = t.data.get("ice_servers", [])
    if not isinstance(entries, list):
        raise t.error("ice_servers", f"expected an array of tables, got {_kind(entries)}")
    servers = []
    for index, entry in enumerate(entries, start=1):
        label = f"[[media.ice_servers]] #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(source, label, f"expected a table, got {_kind(entry)}")
        e = _Table(source, label, entry, ("urls", "username", "credential"))
        urls = entry.get("urls")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise e.error("urls", "expected a URL string or a non-empty array of them")
        for url in urls:
            if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
                raise e.error(
                    "urls", f"expected stun:, stuns:, turn: or turns: URLs, got {_show(url)}"
                )
        username = e.opt_string("username")
        credential = e.opt_string("credential")
        if any(u.startswith("turn") for u in urls) and (username is None or credential is None):
            raise e.error("credential", "TURN servers need username and credential")
        servers.append(IceServerConfig(tuple(urls), username, credential))
    return tuple(servers)


def _calls(data: Mapping[str, Any], source: str) -> CallsConfig:
    t = _section(
        data,
        source,
        "calls",
        (
            "no_answer_timeout", "restore_grace", "dial_allow", "dial_deny",
            "max_calls_per_client", "max_clients_per_number",
        ),
    )
    return CallsConfig(
        no_answer_timeout=t.number("no_answer_timeout", 60.0, 0.0, 3600.0),
        restore_grace=t.number("restore_grace", 60.0, 0.0, 86400.0),
        dial_allow=_patterns(t, "dial_allow"),
        dial_deny=_patterns(t, "dial_deny"),
        max_calls_per_client=t.integer("max_calls_per_client", 8, 1, 1000),
        max_clients_per_number=t.integer("max_clients_per_number", 10, 1, 10000),
    )


def _numbers(data: Mapping[str, Any], source: str, users: tuple[User, ...]) -> NumbersConfig:
    t = _section(data, source, "numbers", ("echo", "tone"))
    taken = {u.number: f"user {_show(u.username)}" for u in users}
    found: dict[str, str | None] = {}
    defaults = NumbersConfig()
    for key, default in (("echo", defaults.echo), ("tone", defaults.tone)):
        number = t.string(key, default or "")
        if not number:
            found[key] = None
            continue
        if not _NUMBER_RE.fullmatch(number):
            raise t.error(
                key, f'expected digits with an optional leading "+" or "", got {_show(number)}'
            )
        if number in taken:
            raise t.error(key, f"number {_show(number)} is {taken[number]}")
        taken[number] = f"[numbers] {key}"
        found[key] = number
    return NumbersConfig(echo=found["echo"], tone=found["tone"])


def _logging(data: Mapping[str, Any], source: str) -> LoggingConfig:
    t = _section(data, source, "logging", ("level",))
    level = t.string("level", "info").lower()
    if level not in LOG_LEVELS:
        raise t.error("level", f"must be one of {' | '.join(LOG_LEVELS)}, got {_show(level)}")
    return LoggingConfig(level=level)


#: The user keys of stored digest hashes: key -> (algorithm, number of hex digits).
HA1_KEYS: Final[dict[str, tuple[str, int]]] = {
    "ha1_md5": ("MD5", 32),
    "ha1_sha256": ("SHA-256", 64),
}
_HA1_HASHES: Final[dict[str, Callable[[bytes], Any]]] = {
    "MD5": hashlib.md5,
    "SHA-256": hashlib.sha256,
}


def sip_realm(sip: SipConfig) -> str:
    """The SIP digest realm: `[sip] realm`, or the SIP listen host when that is "" (what
    the built-in registrar challenges with, and what stored HA1 values must hash)."""
    return sip.realm or sip.host


def user_ha1(algorithm: str, number: str, realm: str, password: str) -> str:
    """HA1 of a user as stored in `ha1_md5`/`ha1_sha256`: H(number ":" realm ":" password)
    in lower-case hex, with H = MD5 or SHA-256 ("MD5" | "SHA-256") over UTF-8. `realm` is
    the SIP realm (`sip_realm`): SIP phones authenticate with their number as digest user
    name in that realm (RFC 3261 §22.4, RFC 8760)."""
    return str(_HA1_HASHES[algorithm](f"{number}:{realm}:{password}".encode()).hexdigest())


# Dial rules are lists, which a CSV row cannot hold: CSV users follow the global rules.
_CSV_COLUMNS: Final[tuple[str, ...]] = (
    "username", "password", "number", "display_name", *HA1_KEYS,
)
_USER_KEYS: Final[tuple[str, ...]] = (
    "username", "password", "number", "display_name", "dial_allow", "dial_deny", *HA1_KEYS,
)


def _ha1_value(t: _Table, key: str) -> str:
    """A stored HA1 value: exactly the right number of hex digits (the value itself is
    never shown in errors), returned in lower case."""
    algorithm, digits = HA1_KEYS[key]
    value = t.string(key, "")
    what = f'{digits} hexadecimal digits ({algorithm} of "number:realm:password")'
    if len(value) != digits:
        raise t.error(key, f"expected {what}, got {len(value)} characters")
    if not re.fullmatch(r"[0-9A-Fa-f]+", value):
        raise t.error(key, f"expected {what}, got characters that are not hexadecimal digits")
    return value.lower()


def _user_entries(
    source: str,
    entries: Iterable[tuple[str, object]],
    names: dict[str, str],
    numbers: dict[str, str],
    where: str = "",
    realm: str | None = None,
) -> list[User]:
    """Validate user entries `(label, table)`; `names`/`numbers` map the usernames and
    numbers already taken to where they were defined (and are updated). With `realm`
    (the SIP realm), HA1 values stored beside a password must match it."""
    users: list[User] = []
    for label, entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(source, label, f"expected a table, got {_kind(entry)}")
        t = _Table(source, label, entry, _USER_KEYS)
        for key in ("username", "number"):
            if key not in entry:
                raise t.error(key, "missing (required for every user)")
        if "password" not in entry and not any(key in entry for key in HA1_KEYS):
            raise t.error(
                "password", "missing (every user needs a password, or ha1_md5/ha1_sha256)"
            )
        username = t.string("username", "")
        if not _USERNAME_RE.fullmatch(username):
            raise t.error("username", f"expected letters, digits and ._-, got {_show(username)}")
        password = t.string("password", "")
        if "password" in entry and not password:
            raise t.error(
                "password", "must not be empty (leave it out to store only ha1_md5/ha1_sha256)"
            )
        number = t.string("number", "")
        if not _NUMBER_RE.fullmatch(number):
            raise t.error(
                "number", f'expected digits with an optional leading "+", got {_show(number)}'
            )
        ha1 = {key: _ha1_value(t, key) for key in HA1_KEYS if key in entry}
        if password and realm is not None:
            for key, value in ha1.items():
                algorithm = HA1_KEYS[key][0]
                if not hmac.compare_digest(value, user_ha1(algorithm, number, realm, password)):
                    raise t.error(
                        key,
                        f'does not match the password: expected {algorithm} of '
                        f'"{number}:{realm}:<password>" (number and SIP realm; '
                        f"see `webrtc-gateway ha1`)",
                    )
        display_name = t.string("display_name", username)
        if any(ord(c) < 32 or ord(c) == 127 for c in display_name):
            raise t.error("display_name", f"must be a single line, got {_show(display_name)}")
        if username in names:
            raise t.error(
                "username", f"duplicate username {_show(username)} (also {names[username]})"
            )
        if number in numbers:
            raise t.error("number", f"duplicate number {_show(number)} (also {numbers[number]})")
        names[username] = label + where
        numbers[number] = label + where
        users.append(
            User(
                username,
                password,
                number,
                display_name or username,
                _patterns(t, "dial_allow") if "dial_allow" in entry else None,
                _patterns(t, "dial_deny") if "dial_deny" in entry else None,
                ha1.get("ha1_md5"),
                ha1.get("ha1_sha256"),
            )
        )
    return users


def _patterns(t: _Table, key: str) -> tuple[str, ...]:
    """A list of regular expressions, each checked to compile."""
    value = t.data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise t.error(key, f"expected an array of regular expressions, got {_kind(value)}")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise t.error(key, f"bad regular expression {_show(pattern)}: {exc}") from None
    return tuple(value)


def _users(
    data: Mapping[str, Any], source: str, realm: str | None = None
) -> tuple[tuple[User, ...], bool]:
    """The [[users]] table; the demo directory when it is absent (and no other source)."""
    if "users" not in data:
        return DEMO_USERS, True
    entries = data["users"]
    if not isinstance(entries, list):
        raise ConfigError(source, "[[users]]", f"expected an array of tables, got {_kind(entries)}")
    labelled = [(f"[[users]] #{i}", e) for i, e in enumerate(entries, start=1)]
    return tuple(_user_entries(source, labelled, {}, {}, realm=realm)), False


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, None, f"cannot read file: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _csv_entries(path: str, text: str) -> list[tuple[str, object]]:
    rows = [
        (number, row)
        for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)
        if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")
    ]
    if not rows:
        return []
    header_line, header = rows[0]
    columns = [cell.strip() for cell in header]
    for column in columns:
        if column not in _CSV_COLUMNS:
            raise ConfigError(
                path,
                f"line {header_line}",
                f"unknown column {_show(column)} in the header "
                f"(expected username,password,number,display_name; display_name "
                f"optional; ha1_md5,ha1_sha256 besides or instead of password)",
            )
    for column in ("username", "number"):
        if column not in columns:
            raise ConfigError(path, f"line {header_line}", f"header lacks the {column} column")
    if "password" not in columns and not any(key in columns for key in HA1_KEYS):
        raise ConfigError(
            path,
            f"line {header_line}",
            "header lacks the password column (or ha1_md5/ha1_sha256 columns)",
        )
    if len(set(columns)) != len(columns):
        raise ConfigError(path, f"line {header_line}", "a column appears twice in the header")
    entries: list[tuple[str, object]] = []
    for line, row in rows[1:]:
        if len(row) != len(columns):
            raise ConfigError(
                path, f"line {line}", f"expected {len(columns)} fields, got {len(row)}"
            )
        entry = {c: v.strip() for c, v in zip(columns, row, strict=True)}
        # An empty cell is a value left out: display_name, HA1 values, and the password
        # when an HA1 value is given (an empty password alone stays an error).
        for key in ("display_name", *HA1_KEYS):
            if entry.get(key) == "":
                del entry[key]
        if entry.get("password") == "" and any(key in entry for key in HA1_KEYS):
            del entry["password"]
        entries.append((f"line {line}", entry))
    return entries


def parse_users_file(
    path: str,
    *,
    taken_names: Mapping[str, str] | None = None,
    taken_numbers: Mapping[str, str] | None = None,
    realm: str | None = None,
) -> tuple[User, ...]:
    """Read a users file: `.csv` (a header line naming the columns
    username,password,number[,display_name][,ha1_md5][,ha1_sha256], where password may
    be left out or empty when an HA1 value is given; lines starting with "#" are
    comments) or TOML (any other name; `[[users]]` tables as in the main file).

    `taken_names`/`taken_numbers` map usernames and numbers defined elsewhere to a
    description (for "duplicate" errors); with `realm` (the SIP realm) HA1 values given
    beside a password must match it. Raises `ConfigError` naming the file and the
    line (CSV) or `[[users]] #N` entry (TOML) and the key.
    """
    text = _read_text(path)
    entries: list[tuple[str, object]]
    if path.lower().endswith(".csv"):
        try:
            entries = _csv_entries(path, text)
        except csv.Error as e:
            raise ConfigError(path, None, f"invalid CSV: {e}") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(path, None, f"invalid TOML: {e}") from None
        for name in data:
            if name != "users":
                raise ConfigError(
                    path, f"[{name}]", "unknown section (a users file has only [[users]])"
                )
        found = data.get("users", [])
        if not isinstance(found, list):
            raise ConfigError(path, "[[users]]", f"expected an array of tables, got {_kind(found)}")
        entries = [(f"[[users]] #{i}", e) for i, e in enumerate(found, start=1)]
    names = dict(taken_names or {})
    numbers = dict(taken_numbers or {})
    return tuple(_user_entries(path, entries, names, numbers, where=f" in {path}", realm=realm))


_LDAP_ATTRIBUTE_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def _resolve(source: str, name: str) -> str:
    """A file named in the config: relative paths are relative to the config file."""
    p = Path(name).expanduser()
    if not p.is_absolute():
        base = Path(source).parent if source != DEFAULTS_SOURCE else Path.cwd()
        p = base / p
    return str(p)


def _ldap(directory: _Table, source: str) -> LdapConfig | None:
    if "ldap" not in directory.data:
        return None
    value = directory.data["ldap"]
    if not isinstance(value, dict):
        raise ConfigError(source, "[directory.ldap]", f"expected a table, got {_kind(value)}")
    t = _Table(
        source,
        "[directory.ldap]",
        value,
        (
            "url",
            "bind_dn",
            "bind_password",
            "base_dn",
            "user_filter",
            "username_attribute",
            "number_attribute",
            "display_name_attribute",
            "timeout",
            "cache_ttl",
        ),
    )
    for key in ("url", "base_dn"):
        if key not in value:
            raise t.error(key, "missing (required for an LDAP directory)")
    url = t.string("url", "")
    if not re.fullmatch(r"(?i)ldaps?://[^\s/]+/?", url):
        raise t.error(
            "url", f'expected "ldap://host:port" or "ldaps://host:port", got {_show(url)}'
        )
    base_dn = t.string("base_dn", "")
    if not base_dn.strip():
        raise t.error("base_dn", "must not be empty")
    bind_dn = t.opt_string("bind_dn")
    bind_password = t.opt_string("bind_password")
    if bind_dn is not None and not bind_dn.strip():
        raise t.error("bind_dn", "must not be empty (leave it out for anonymous searches)")
    if bind_password is not None and bind_dn is None:
        raise t.error("bind_password", "set bind_dn as well")
    if bind_dn is not None and not bind_password:
        raise t.error("bind_password", "required with bind_dn (and not empty)")
    user_filter = t.string("user_filter", "(uid={username})")
    if "{username}" not in user_filter or not (
        user_filter.startswith("(") and user_filter.endswith(")")
    ):
        raise t.error(
            "user_filter",
            f"expected an LDAP filter in parentheses containing {{username}}, "
            f"got {_show(user_filter)}",
        )
    attributes = {}
    for key, default in (
        ("username_attribute", "uid"),
        ("number_attribute", "telephoneNumber"),
        ("display_name_attribute", "cn"),
    ):
        attributes[key] = t.string(key, default)
        if not _LDAP_ATTRIBUTE_RE.fullmatch(attributes[key]):
            raise t.error(key, f"expected an attribute name, got {_show(attributes[key])}")
    timeout = t.number("timeout", 5.0, 0.0, 300.0)
    cache_ttl = t.number("cache_ttl", 60.0, -1.0, 86400.0)
    if cache_ttl < 0:
        raise t.error("cache_ttl", f"must be between 0 and 86400, got {cache_ttl:g}")
    if importlib.util.find_spec("ldap3") is None:
        raise ConfigError(
            source,
            "[directory.ldap]",
            "the ldap3 library is not installed (pip install 'webrtc-sip-gateway[ldap]')",
        )
    return LdapConfig(
        url=url,
        base_dn=base_dn,
        bind_dn=bind_dn,
        bind_password=bind_password,
        user_filter=user_filter,
        timeout=timeout,
        cache_ttl=cache_ttl,
        **attributes,
    )


def _directory(data: Mapping[str, Any], source: str) -> DirectoryConfig:
    """[directory] settings only; the users file is read by `_all_users`."""
    t = _section(
        data, source, "directory", ("users_file", "reload_interval", "number_assignment", "ldap")
    )
    assignment = t.choice("number_assignment", "client", NUMBER_ASSIGNMENTS)
    users_file = t.opt_string("users_file")
    if users_file is not None:
        if not users_file.strip():
            raise t.error("users_file", "must not be empty (leave it out instead)")
        users_file = _resolve(source, users_file)
    reload_interval = t.number("reload_interval", 2.0, 0.0, 3600.0)
    return DirectoryConfig(
        users_file=users_file,
        reload_interval=reload_interval,
        number_assignment=assignment,
        ldap=_ldap(t, source),
    )


def _all_users(
    data: Mapping[str, Any], source: str, realm: str | None = None
) -> tuple[tuple[User, ...], bool, DirectoryConfig]:
    """[[users]] plus the users file; the demo users only when there is no source at all.
    `realm` is the SIP realm, to check HA1 values stored beside a password."""
    directory = _directory(data, source)
    if "users" not in data and (directory.users_file or directory.ldap):
        users: tuple[User, ...] = ()
        demo = False
    else:
        users, demo = _users(data, source, realm)
    if directory.users_file is None:
        return users, demo, directory
    table = () if demo else users
    file_users = parse_users_file(
        directory.users_file,
        taken_names={u.username: f"a [[users]] entry in {source}" for u in table},
        taken_numbers={u.number: f"a [[users]] entry in {source}" for u in table},
        realm=realm,
    )
    directory = DirectoryConfig(
        users_file=directory.users_file,
        reload_interval=directory.reload_interval,
        number_assignment=directory.number_assignment,
        ldap=directory.ldap,
        file_users=file_users,
    )
    return (*table, *file_users), False, directory


def _records(data: Mapping[str, Any], source: str) -> RecordsConfig:
    t = _section(data, source, "records", ("enabled", "path"))
    enabled = t.boolean("enabled", True)
    path = t.string("path", "calls.db")
    if not path.strip() or "\x00" in path:
        raise t.error("path", f"expected a file name, got {_show(path)}")
    return RecordsConfig(enabled=enabled, path=path)


_PUSH_KEYS: Final[tuple[str, ...]] = (
    "service",
    "webhook_url",
    "webhook_secret",
    "fcm_service_account",
    "fcm_project_id",
    "fcm_endpoint",
    "web_config",
    "timeout",
    "token_ttl",
)
_PUSH_SERVICE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "webhook": ("webhook_url", "webhook_secret"),
    "fcm": ("fcm_service_account", "fcm_project_id", "fcm_endpoint"),
}
_FCM_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url_problem(url: str, *, base: bool = False) -> str | None:
    """Why `url` is no acceptable push endpoint: https, or http for loopback hosts only."""
    from urllib.parse import urlsplit

    if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return f"expected an https:// URL, got {_show(url)}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"expected an https:// URL, got {_show(url)}"
    if parts.scheme.lower() not in ("https", "http") or not parts.hostname:
        return f"expected an https:// URL, got {_show(url)}"
    if parts.scheme.lower() == "http" and not _loopback_host(parts.hostname):
        return f"must be https (http only for loopback addresses), got {_show(url)}"
    if parts.username is not None or parts.password is not None:
        return f"must not contain credentials, got {_show(url)}"
    if parts.fragment or (base and (parts.query or parts.path.strip("/"))):
        what = "a scheme and host only" if base else "no #fragment"
        return f"expected {what}, got {_show(url)}"
    return None


def _json_value(value: object) -> bool:
    """True when `value` (from TOML) is plain JSON: no dates or times anywhere."""
    if isinstance(value, dict):
        return all(_json_value(v) for v in value.values())
    if isinstance(value, list):
        return all(_json_value(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)


def _fcm_service_account(t: _Table, key: str, path: str) -> FcmServiceAccount:
    """Read and check a Google service account JSON file (the private key included)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    def bad(problem: str) -> ConfigError:
        return t.error(key, f"{path}: {problem}")

    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise t.error(key, f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise bad(f"not JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise bad("expected a JSON object (a Google service account key file)")
    kind = data.get("type", "service_account")
    if kind != "service_account":
        raise bad(f'"type" must be "service_account", got {_show(kind)}')
    fields: dict[str, str | None] = {}
    for name, required in (
        ("client_email", True),
        ("private_key", True),
        ("token_uri", False),
        ("project_id", False),
        ("private_key_id", False),
    ):
        value = data.get(name)
        if value is None and not required:
            fields[name] = None
            continue
        if not isinstance(value, str) or not value.strip():
            if value is None:
                raise bad(f'"{name}" is missing')
            raise bad(f'"{name}" must be a non-empty string')
        fields[name] = value
    token_uri = fields["token_uri"] or DEFAULT_FCM_TOKEN_URI
    problem = _http_url_problem(token_uri)
    if problem:
        raise bad(f'"token_uri" {problem}')
    project_id = fields["project_id"]
    if project_id is not None and not _FCM_PROJECT_RE.fullmatch(project_id):
        raise bad(f'"project_id" is not a project id: {_show(project_id)}')
    pem = str(fields["private_key"]).encode()
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise bad(f'"private_key" is not an unencrypted PEM private key: {problem}') from None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise bad('"private_key" is not an RSA key (FCM needs RS256)')
    return FcmServiceAccount(
        client_email=str(fields["client_email"]),
        private_key_pem=pem,
        token_uri=token_uri,
        project_id=project_id,
        private_key_id=fields["private_key_id"],
    )


def _push(data: Mapping[str, Any], source: str) -> PushConfig:
    t = _section(data, source, "push", _PUSH_KEYS)
    present = {key for key in _PUSH_KEYS if key in t.data}
    if "service" in present:
        service: str | None = t.choice("service", "", PUSH_SERVICES)
    elif "webhook_url" in present and "fcm_service_account" in present:
        raise t.error("service", 'missing: set "fcm" or "webhook" (both services are configured)')
    elif "webhook_url" in present:
        service = "webhook"
    elif "fcm_service_account" in present:
        service = "fcm"
    else:
        service = None
    if service is None:
        for key in ("webhook_secret", "fcm_project_id", "fcm_endpoint", "web_config"):
            if key in present:
                raise t.error(
                    key, "push is not configured: set webhook_url or fcm_service_account as well"
                )
    else:
        for other, keys in _PUSH_SERVICE_KEYS.items():
            for key in keys:
                if other != service and key in present:
                    raise t.error(key, f'only used with service = "{other}", not "{service}"')
        required = "webhook_url" if service == "webhook" else "fcm_service_account"
        if required not in present:
            raise t.error(required, f'missing (required with service = "{service}")')
    timeout = t.number("timeout", 10.0, 0.0, 300.0)
    token_ttl = t.number("token_ttl", 60.0, 0.0, 3600.0)
    web_config: dict[str, Any] | None = None
    if "web_config" in present:
        value = t.data["web_config"]
        if not isinstance(value, dict):
            raise t.error("web_config", f"expected a table, got {_kind(value)}")
        if not _json_value(value):
            raise t.error("web_config", "must hold only strings, numbers, booleans, arrays, tables")
        web_config = json.loads(json.dumps(value))  # a private deep copy
    webhook_url = t.opt_string("webhook_url")
    if webhook_url is not None:
        problem = _http_url_problem(webhook_url)
        if problem:
            raise t.error("webhook_url", problem)
    webhook_secret = t.opt_string("webhook_secret")
    if webhook_secret is not None and not webhook_secret:
        raise t.error("webhook_secret", "must not be empty (leave it out for no signature)")
    account_file = t.opt_string("fcm_service_account")
    credentials: FcmServiceAccount | None = None
    project_id: str | None = None
    fcm_endpoint = t.string("fcm_endpoint", DEFAULT_FCM_ENDPOINT).rstrip("/")
    if account_file is not None:
        if not account_file.strip():
            raise t.error("fcm_service_account", "must not be empty")
        account_file = _resolve(source, account_file)
        project_id = t.opt_string("fcm_project_id")
        if project_id is not None and not _FCM_PROJECT_RE.fullmatch(project_id):
            raise t.error("fcm_project_id", f"expected a project id, got {_show(project_id)}")
        problem = _http_url_problem(fcm_endpoint, base=True)
        if problem:
            raise t.error("fcm_endpoint", problem)
        credentials = _fcm_service_account(t, "fcm_service_account", account_file)
        project_id = project_id or credentials.project_id
        if project_id is None:
            raise t.error(
                "fcm_project_id",
                f"missing, and the service account file {account_file} has no project_id",
            )
    return PushConfig(
        service=service,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        fcm_service_account=account_file,
        fcm_credentials=credentials,
        fcm_project_id=project_id,
        fcm_endpoint=fcm_endpoint,
        web_config=web_config,
        timeout=timeout,
        token_ttl=token_ttl,
    )


_SECTION_NAMES: Final[tuple[str, ...]] = (
    "server",
    "sip",
    "pbx",
    "auth",
    "media",
    "calls",
    "numbers",
    "logging",
    "records",
    "directory",
    "push",
    "users",
)


def parse_config(data: Mapping[str, Any], source: str = DEFAULTS_SOURCE) -> Config:
    """Validate parsed TOML (a dict as returned by tomllib) and build a `Config`."""
    for name in data:
        if name not in _SECTION_NAMES:
            raise ConfigError(
                source,
                f"[{name}]",
                f"unknown section (known sections: {', '.join(_SECTION_NAMES)})",
            )
    sip = _sip(data, source)
    users, demo, directory = _all_users(data, source, sip_realm(sip))
    return Config(
        server=_server(data, source),
        sip=sip,
        pbx=_pbx(data, source),
        auth=_auth(data, source),
        media=_media(data, source),
        calls=_calls(data, source),
        numbers=_numbers(data, source, users),
        logging=_logging(data, source),
        users=users,
        demo_users=demo,
        source=source,
        records=_records(data, source),
        directory=directory,
        push=_push(data, source),
    )


def load_config(path: str | None) -> Config:
    """Read and validate a TOML file; with None, return the built-in defaults."""
    if path is None:
        return parse_config({}, DEFAULTS_SOURCE)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, None, f"cannot read file: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, None, f"invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            path, None, f"invalid TOML: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    return parse_config(data, path)
