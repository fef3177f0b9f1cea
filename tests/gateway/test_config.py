"""Tests for gateway.config: defaults, every documented key, every error class."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    DEFAULTS_SOURCE,
    DEMO_USERS,
    HA1_KEYS,
    VERSION,
    AuthConfig,
    CallsConfig,
    Config,
    ConfigError,
    JwtConfig,
    LoggingConfig,
    MediaConfig,
    NumbersConfig,
    PbxConfig,
    ServerConfig,
    SipConfig,
    User,
    load_config,
    parse_config,
    sip_realm,
    user_ha1,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"
SRC = "/etc/gw.toml"


def err(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SRC)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config error in {SRC}: ")
    return message


# ----------------------------------------------------------------------------- defaults


def test_defaults_without_file() -> None:
    c = load_config(None)
    assert c.source == DEFAULTS_SOURCE
    assert c.server == ServerConfig("127.0.0.1", 8080, "/ws", 65536)
    assert c.sip == SipConfig("127.0.0.1", 5060, f"webrtc-gateway/{VERSION}", 0.5, 4.0, 5.0)
    assert c.pbx == PbxConfig(None, None, None)
    assert c.auth == AuthConfig("none")
    assert c.media == MediaConfig("127.0.0.1", 10000, 20000, "us")
    assert c.calls == CallsConfig(60.0, 60.0)
    assert c.numbers == NumbersConfig("9000", "9001")
    assert c.logging == LoggingConfig("info")
    assert c.demo_users is True
    assert c.users == DEMO_USERS
    assert [(u.username, u.number) for u in c.users] == [
        ("alice", "1001"),
        ("bob", "1002"),
        ("carol", "1003"),
    ]
    assert all(u.password for u in c.users)


def test_empty_file_equals_defaults(tmp_path: Path) -> None:
    f = tmp_path / "empty.toml"
    f.write_text("")
    c = load_config(str(f))
    assert c.source == str(f)
    assert c.server == load_config(None).server
    assert c.demo_users


def test_frozen() -> None:
    c = load_config(None)
    with pytest.raises(AttributeError):
        c.server.port = 1  # type: ignore[misc]


def test_pbx_transport_property() -> None:
    assert PbxConfig().transport == "udp"
    assert PbxConfig("sip:pbx:5070;transport=TCP").transport == "tcp"
    assert PbxConfig("sip:pbx:5070").transport == "udp"


# ----------------------------------------------------------------------------- example file


def test_example_file_loads_and_documents_every_key() -> None:
    c = load_config(str(EXAMPLE))
    assert isinstance(c, Config)
    assert c.pbx.uri == "sip:127.0.0.1:5070;transport=udp"
    assert c.pbx.username == "gateway"
    assert c.demo_users is False
    assert [u.number for u in c.users] == ["1001", "+4930123456"]
    # The example shows the default of every key outside [pbx] and [[users]].
    defaults = load_config(None)
    for name in ("server", "sip", "auth", "media", "calls", "numbers", "logging"):
        assert getattr(c, name) == getattr(defaults, name), name
    # Every key the loader accepts appears in the example, preceded by a comment.
    data = tomllib.loads(EXAMPLE.read_text())
    lines = EXAMPLE.read_text().splitlines()
    tables = [*data.values(), data["auth"]["jwt"]]  # [auth.jwt] is nested in [auth]
    for table in tables:
        entries = table if isinstance(table, list) else [table]
        for entry in entries:
            for key in entry:
                if isinstance(entry[key], dict):
                    continue  # a sub-table, checked on its own
                idx = next(i for i, ln in enumerate(lines) if re.match(rf"{key}\s*=", ln))
                assert any(ln.startswith("#") for ln in lines[max(0, idx - 12) : idx]), key
    expected = {
        "server": {"listen", "ws_path", "max_message_bytes"},
        "sip": {
            "listen",
            "user_agent",
            "t1",
            "t2",
            "t4",
            "registrar",
            "realm",
            "request_rate",
            "request_burst",
            "keepalive_interval",
            "tls_ca",
            "tls_verify",
            "prack",
            "session_expires",
            "min_se",
            "pass_headers",
            "dtmf",
        },
        "pbx": {
            "uri",
            "username",
            "password",
            "fallback_uris",
            "register",
            "register_expires",
            "per_user_registration",
            "qualify_interval",
            "dtmf",
        },
        "auth": {"mode", "realm", "jwt"},
        "media": {
            "rtp_host",
            "rtp_port_min",
            "rtp_port_max",
            "ringback",
            "failure_tone_seconds",
            "call_waiting_tone",
            "timeout",
            "codecs",
            "srtp",
            "opus_complexity",
            "opus_bit_rate",
            "jitter_min_ms",
            "jitter_max_ms",
            "video_bit_rate",
            "ice_restart_timeout",
        },
        "calls": {
            "no_answer_timeout",
            "restore_grace",
            "dial_allow",
            "dial_deny",
            "max_calls_per_client",
            "max_clients_per_number",
        },
        "numbers": {"echo", "tone"},
        "logging": {"level"},
    }
    for section, keys in expected.items():
        assert set(data[section]) == keys, section
    assert set(data["auth"]["jwt"]) == {"token_lifetime"}  # the others are commented out
    assert set(data["users"][0]) == {"username", "password", "number", "display_name"}


# ----------------------------------------------------------------------------- every key


def test_every_key_is_read() -> None:
    c = parse_config(
        {
            "server": {"listen": "0.0.0.0:9000", "ws_path": "/json", "max_message_bytes": 4096},
            "sip": {
                "listen": "[::1]:5080",
                "user_agent": "gw/1",
                "t1": 1,
                "t2": 8.0,
                "t4": 2.5,
            },
            "pbx": {"uri": "sips:pbx.example.com", "username": "u", "password": "p"},
            "auth": {"mode": "both", "jwt": {"hs256_secret": "k" * 32}},
            "media": {
                "rtp_host": "192.0.2.10",
                "rtp_port_min": 30000,
                "rtp_port_max": 30100,
                "ringback": "de",
                "failure_tone_seconds": 3,
                "call_waiting_tone": True,
            },
            "calls": {
                "no_answer_timeout": 30,
                "restore_grace": 5.5,
                "dial_deny": ["0900.*"],
                "max_calls_per_client": 2,
                "max_clients_per_number": 3,
            },
            "numbers": {"echo": "+800", "tone": ""},
            "logging": {"level": "DEBUG"},
            "users": [
                {"username": "dave", "password": "x", "number": "+491234"},
                {"username": "eve", "password": "y", "number": "77", "display_name": "Eve E."},
            ],
        },
        SRC,
    )
    assert c.server == ServerConfig("0.0.0.0", 9000, "/json", 4096)
    assert c.sip == SipConfig("::1", 5080, "gw/1", 1.0, 8.0, 2.5)
    assert isinstance(c.sip.t1, float)
    assert c.pbx == PbxConfig("sips:pbx.example.com", "u", "p")
    assert c.auth.mode == "both"
    assert c.media == MediaConfig(
        "192.0.2.10", 30000, 30100, "de", failure_tone_seconds=3.0, call_waiting_tone=True
    )
    assert isinstance(c.media.failure_tone_seconds, float)
    assert c.calls == CallsConfig(30.0, 5.5, (), ("0900.*",), 2, 3)
    assert c.numbers == NumbersConfig("+800", None)
    assert c.logging.level == "debug"
    assert c.users == (
        User("dave", "x", "+491234", "dave"),
        User("eve", "y", "77", "Eve E."),
    )
    assert c.demo_users is False
    assert c.source == SRC
    assert c.user_by_number("77") == c.users[1]
    assert c.user_by_name("dave") == c.users[0]
    assert c.user_by_number("1001") is None


@pytest.mark.parametrize("mode", ["none", "password", "token", "both"])
def test_auth_modes_accepted(mode: str) -> None:
    auth = {"mode": mode, "jwt": {"hs256_secret": "k" * 32}}
    assert parse_config({"auth": auth}, SRC).auth.mode == mode


@pytest.mark.parametrize("country", ["us", "uk", "de", "eu", "fr", "jp"])
def test_ringback_countries(country: str) -> None:
    assert parse_config({"media": {"ringback": country}}, SRC).media.ringback == country


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("[::1]:5060", "::1", 5060),
        ("[::]:5060", "::", 5060),
        ("gw.example.com:443", "gw.example.com", 443),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ],
)
def test_listen_forms(listen: str, host: str, port: int) -> None:
    c = parse_config({"server": {"listen": listen}, "sip": {"listen": listen}}, SRC)
    assert (c.server.host, c.server.port) == (host, port)
    assert (c.sip.host, c.sip.port) == (host, port)


def test_pbx_uri_without_credentials() -> None:
    c = parse_config({"pbx": {"uri": "sip:127.0.0.1:5070;transport=tcp"}}, SRC)
    assert c.pbx == PbxConfig("sip:127.0.0.1:5070;transport=tcp", None, None)
    assert c.pbx.transport == "tcp"


def test_explicitly_empty_directory() -> None:
    c = parse_config({"users": []}, SRC)
    assert c.users == ()
    assert c.demo_users is False


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        # unknown section / key
        ({"serverr": {}}, "[serverr]", "unknown section"),
        ({"sip": {"lisen": "1.2.3.4:5"}}, "[sip] lisen", "unknown key"),
        ({"users": [{"username": "a", "password": "p", "number": "1", "x": 1}]},
         "[[users]] #1 x", "unknown key"),
        # wrong type
        ({"sip": 5}, "[sip]", "expected a table, got integer 5"),
        ({"server": {"listen": 8080}}, "[server] listen", "expected a string, got integer 8080"),
        ({"server": {"max_message_bytes": "64k"}}, "[server] max_message_bytes",
         'expected an integer, got string "64k"'),
        ({"server": {"max_message_bytes": True}}, "[server] max_message_bytes",
         "expected an integer, got boolean true"),
        ({"server": {"max_message_bytes": 1.5}}, "[server] max_message_bytes",
         "expected an integer"),
        ({"media": {"rtp_port_min": False}}, "[media] rtp_port_min", "boolean false"),
        ({"sip": {"t1": "0.5"}}, "[sip] t1", "expected a number"),
        ({"calls": {"no_answer_timeout": True}}, "[calls] no_answer_timeout", "boolean"),
        ({"pbx": {"uri": 5070}}, "[pbx] uri", "expected a string"),
        ({"auth": {"mode": 1}}, "[auth] mode", "expected a string"),
        ({"users": {"username": "a"}}, "[[users]]", "expected an array of tables"),
        ({"users": ["alice"]}, "[[users]] #1", "expected a table"),
        ({"users": [{"username": "a", "password": "p", "number": 1001}]},
         "[[users]] #1 number", "expected a string, got integer 1001"),
        # bad values
        ({"sip": {"listen": "localhost"}}, "[sip] listen",
         'expected "host:port" (IPv6 as "[::1]:5060"), got "localhost"'),
        ({"server": {"listen": "127.0.0.1"}}, "[server] listen", 'expected "host:port"'),
        ({"server": {"listen": ":8080"}}, "[server] listen", 'expected "host:port"'),
        ({"server": {"listen": "127.0.0.1:http"}}, "[server] listen", "port must be a number"),
        ({"server": {"listen": "127.0.0.1:-1"}}, "[server] listen", "port must be a number"),
        ({"server": {"listen": "127.0.0.1:65536"}}, "[server] listen", "between 0 and 65535"),
        ({"sip": {"listen": "::1:5060"}}, "[sip] listen", "brackets"),
        ({"sip": {"listen": "[::1]"}}, "[sip] listen", 'expected "host:port"'),
        ({"sip": {"listen": "[nope]:5060"}}, "[sip] listen", "IPv6"),
        ({"server": {"ws_path": "ws"}}, "[server] ws_path", 'starting with "/"'),
        ({"server": {"max_message_bytes": 0}}, "[server] max_message_bytes", "between"),
        ({"sip": {"t1": 0}}, "[sip] t1", "more than 0"),
        ({"sip": {"t1": float("nan")}}, "[sip] t1", "must be a finite number, got nan"),
        ({"sip": {"t1": 2.0, "t2": 1.0}}, "[sip] t2", "less than t1"),
        ({"sip": {"user_agent": ""}}, "[sip] user_agent", "non-empty"),
        ({"pbx": {"uri": "pbx.example.com"}}, "[pbx] uri", "expected a SIP URI"),
        ({"pbx": {"uri": "http://pbx"}}, "[pbx] uri", "expected a SIP URI"),
        ({"pbx": {"uri": "sip:"}}, "[pbx] uri", "expected a SIP URI"),
        ({"pbx": {"uri": "sip:pbx;transport=sctp"}}, "[pbx] uri", "transport must be one of"),
        ({"pbx": {"uri": "sip:pbx", "password": "p"}}, "[pbx] password", "username"),
        ({"pbx": {"username": "u"}}, "[pbx] username", "uri"),
        ({"auth": {"mode": "jwt"}}, "[auth] mode",
         'must be one of none | password | token | both, got "jwt"'),
        ({"media": {"ringback": "xx"}}, "[media] ringback", "us | uk | de | eu | fr | jp"),
        ({"media": {"rtp_host": "localhost"}}, "[media] rtp_host", "IP address"),
        ({"media": {"rtp_port_min": 70000}}, "[media] rtp_port_min", "between"),
        ({"media": {"rtp_port_min": 20000, "rtp_port_max": 10000}}, "[media] rtp_port_max",
         "greater than rtp_port_min"),
        ({"calls": {"no_answer_timeout": -1}}, "[calls] no_answer_timeout", "more than 0"),
        ({"numbers": {"echo": "echo"}}, "[numbers] echo", "digits"),
        ({"sip": {"pass_headers": ["Contact"]}}, "[sip] pass_headers", "X-"),
        ({"sip": {"session_expires": 60}}, "[sip] session_expires", "at least min_se"),
        ({"media": {"codecs": ["silk"]}}, "[media] codecs", "PCMU, PCMA, G722, OPUS"),
        ({"media": {"srtp": "yes"}}, "[media] srtp", "must be one of"),
        ({"media": {"opus_complexity": 11}}, "[media] opus_complexity", ""),
        ({"media": {"opus_bit_rate": 1000}}, "[media] opus_bit_rate", ""),
        ({"media": {"jitter_min_ms": 10}}, "[media] jitter_min_ms", "between"),
        ({"media": {"video_bit_rate": 63}}, "[media] video_bit_rate", "between 64 and 20000"),
        ({"media": {"video_bit_rate": 20001}}, "[media] video_bit_rate", "between"),
        ({"media": {"video_bit_rate": "2M"}}, "[media] video_bit_rate", "an integer"),
        ({"media": {"ice_restart_timeout": 0}}, "[media] ice_restart_timeout", "more than 0"),
        ({"media": {"ice_restart_timeout": 301}}, "[media] ice_restart_timeout", "at most 300"),
        ({"media": {"jitter_min_ms": 100, "jitter_max_ms": 60}}, "[media] jitter_max_ms",
         "at least jitter_min_ms (100)"),
        ({"pbx": {"dtmf": "2833"}}, "[pbx] dtmf",
         'must be one of auto | rfc4733 | info | inband, got "2833"'),
        ({"sip": {"dtmf": "INFO"}}, "[sip] dtmf", "must be one of"),
        ({"media": {"rtp_host": "0.0.0.0"}}, "[media] rtp_host", "public_address"),
        ({"media": {"public_address": "x"}}, "[media] public_address", "IP address"),
        (
            {"pbx": {"uri": "sip:p", "fallback_uris": ["http://x"]}},
            "[pbx] fallback_uris",
            "SIP URI",
        ),
        ({"pbx": {"uri": "sip:p", "register": True}}, "[pbx] register", "username"),
        ({"pbx": {"per_user_registration": True}}, "[pbx] per_user_registration", "uri"),
        ({"calls": {"dial_deny": ["(00"]}}, "[calls] dial_deny", "bad regular expression"),
        ({"calls": {"dial_allow": "1.*"}}, "[calls] dial_allow", "array of regular"),
        ({"calls": {"max_calls_per_client": 0}}, "[calls] max_calls_per_client", "between"),
        ({"sip": {"trusted_networks": ["10.0.0.0/33"]}}, "[sip] trusted_networks", "networks"),
        ({"sip": {"tls_port": 5061}}, "[sip] tls_cert", "needs a certificate"),
        ({"sip": {"request_rate": -2}}, "[sip] request_rate", "0 (off) or more"),
        ({"media": {"timeout": -5}}, "[media] timeout", "0 (never) or more"),
        ({"media": {"failure_tone_seconds": -1}}, "[media] failure_tone_seconds",
         "must be 0 (no tone) to 30 seconds, got -1"),
        ({"media": {"failure_tone_seconds": 31}}, "[media] failure_tone_seconds", "to 30"),
        ({"media": {"failure_tone_seconds": "3s"}}, "[media] failure_tone_seconds",
         'expected a number, got string "3s"'),
        ({"media": {"failure_tone_seconds": True}}, "[media] failure_tone_seconds",
         "expected a number, got boolean true"),
        ({"media": {"call_waiting_tone": "yes"}}, "[media] call_waiting_tone",
         'expected true or false, got string "yes"'),
        ({"media": {"call_waiting_tone": 1}}, "[media] call_waiting_tone", "true or false"),
        (
            {"media": {"ice_servers": [{"urls": "http://x"}]}},
            "[[media.ice_servers]] #1 urls",
            "stun:",
        ),
        (
            {"media": {"ice_servers": [{"urls": "turn:t:3478"}]}},
            "[[media.ice_servers]] #1 credential",
            "username and credential",
        ),
        (
            {"directory": {"number_assignment": "any"}},
            "[directory] number_assignment",
            "must be one of",
        ),
        ({"numbers": {"tone": 9001}}, "[numbers] tone", "a string"),
        ({"numbers": {"echo": "1001"}}, "[numbers] echo", 'is user "alice"'),
        ({"numbers": {"echo": "77", "tone": "77"}}, "[numbers] tone", "is [numbers] echo"),
        ({"logging": {"level": "loud"}}, "[logging] level", "must be one of"),
        ({"users": [{"username": "a", "password": "p"}]}, "[[users]] #1 number", "missing"),
        ({"users": [{"username": "a", "password": "", "number": "1"}]},
         "[[users]] #1 password", "empty"),
        ({"users": [{"username": "a b", "password": "p", "number": "1"}]},
         "[[users]] #1 username", "expected letters"),
        ({"users": [{"username": "a", "password": "p", "number": "10-01"}]},
         "[[users]] #1 number", 'digits with an optional leading "+", got "10-01"'),
        ({"users": [{"username": "a", "password": "p", "number": "++1"}]},
         "[[users]] #1 number", "digits"),
        ({"users": [{"username": "a", "password": "p", "number": "1"},
                    {"username": "b", "password": "p", "number": "1"}]},
         "[[users]] #2 number", 'duplicate number "1" (also [[users]] #1)'),
        ({"users": [{"username": "a", "password": "p", "number": "1"},
                    {"username": "a", "password": "p", "number": "2"}]},
         "[[users]] #2 username", 'duplicate username "a"'),
    ],
)  # fmt: skip
def test_errors_name_file_and_key(data: dict[str, Any], key: str, fragment: str) -> None:
    message = err(data)
    assert message.startswith(f"config error in {SRC}: {key}: "), message
    assert fragment in message, message


def test_error_attributes() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"sip": {"listen": "localhost"}}, SRC)
    assert info.value.source == SRC
    assert info.value.key == "[sip] listen"
    assert str(info.value) == (
        f'config error in {SRC}: [sip] listen: expected "host:port" (IPv6 as "[::1]:5060"), '
        'got "localhost"'
    )


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config error in {path}: cannot read file: No such file or directory"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(str(tmp_path))


def test_invalid_toml_has_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[server]\nlisten = "127.0.0.1:8080"\nws_path = \n')
    with pytest.raises(ConfigError) as info:
        load_config(str(f))
    message = str(info.value)
    assert message.startswith(f"config error in {f}: invalid TOML: ")
    assert "line 3, column" in message
    assert "\n" not in message


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'[server]\nws_path = "/\xe9"\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(f))


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('[sip]\nlisten = "localhost"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(f))
    assert str(info.value).startswith(f"config error in {f}: [sip] listen: ")


# ----------------------------------------------------------------------------- [auth]


def _rsa_pem(bits: int = 2048) -> tuple[bytes, bytes]:
    """(public key PEM, self-signed certificate PEM) of a new RSA key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return public, cert.public_bytes(serialization.Encoding.PEM)


def test_auth_defaults() -> None:
    a = load_config(None).auth
    assert a == AuthConfig("none", "webrtc-gateway", JwtConfig())
    assert a.jwt.token_lifetime == 300
    assert a.jwt.issuer is a.jwt.hs256_secret is a.jwt.rs256_public_key is None


def test_auth_every_key(tmp_path: Path) -> None:
    public, cert = _rsa_pem()
    (tmp_path / "pub.pem").write_bytes(public)
    (tmp_path / "cert.pem").write_bytes(cert)
    src = str(tmp_path / "gw.toml")
    jwt = {
        "issuer": "https://app.example.com",
        "hs256_secret": "x" * 32,
        "rs256_public_key": "pub.pem",  # relative to the config file
        "token_lifetime": 60,
    }
    a = parse_config({"auth": {"mode": "token", "realm": "r", "jwt": jwt}}, src).auth
    assert a.mode == "token" and a.realm == "r"
    assert a.jwt.issuer == "https://app.example.com"
    assert a.jwt.hs256_secret == "x" * 32
    assert a.jwt.rs256_public_key == str(tmp_path / "pub.pem")
    assert a.jwt.rs256_public_key_pem == public
    assert a.jwt.token_lifetime == 60
    assert "x" * 32 not in repr(a)  # the secret stays out of logs
    # A certificate works too and yields the same public key.
    jwt["rs256_public_key"] = str(tmp_path / "cert.pem")
    a = parse_config({"auth": {"mode": "both", "jwt": jwt}}, src).auth
    assert a.jwt.rs256_public_key_pem == public


@pytest.mark.parametrize(
    ("auth", "key", "problem"),
    [
        ({"mode": "token"}, "[auth] mode", 'mode "token" needs a key to check tokens'),
        ({"mode": "both", "jwt": {"issuer": "x"}}, "[auth] mode", "needs a key"),
        ({"realm": ""}, "[auth] realm", "expected a non-empty single line"),
        ({"realm": 'a"b'}, "[auth] realm", "without quotes"),
        ({"jwt": "x"}, "[auth.jwt]", "expected a table"),
        ({"jwt": {"secret": "x"}}, "[auth.jwt] secret", "unknown key"),
        (
            {"jwt": {"hs256_secret": "short"}},
            "[auth.jwt] hs256_secret",
            "must be at least 32 bytes long",
        ),
        ({"jwt": {"issuer": ""}}, "[auth.jwt] issuer", "expected a non-empty"),
        ({"jwt": {"token_lifetime": 5}}, "[auth.jwt] token_lifetime", "between 10 and 86400"),
        ({"jwt": {"token_lifetime": 1.5}}, "[auth.jwt] token_lifetime", "expected an integer"),
        ({"jwt": {"rs256_public_key": ""}}, "[auth.jwt] rs256_public_key", "must not be empty"),
        (
            {"jwt": {"rs256_public_key": "/nonexistent/k.pem"}},
            "[auth.jwt] rs256_public_key",
            "cannot read /nonexistent/k.pem: No such file or directory",
        ),
    ],
)
def test_auth_errors(auth: dict[str, Any], key: str, problem: str) -> None:
    message = err({"auth": auth})
    assert f": {key}: " in message, message
    assert problem in message, message


def test_auth_bad_key_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    small = tmp_path / "small.pem"
    small.write_bytes(_rsa_pem(1024)[0])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for path, problem in (
        (garbage, "is not a PEM public key or certificate"),
        (small, "RSA key of 1024 bits is too small (at least 2048)"),
        (ec_key, "holds no RSA public key"),
    ):
        f = tmp_path / "gw.toml"
        f.write_text(f'[auth.jwt]\nrs256_public_key = "{path.name}"\n')
        with pytest.raises(ConfigError) as info:
            load_config(str(f))
        message = str(info.value)
        assert message.startswith(f"config error in {f}: [auth.jwt] rs256_public_key: {path}")
        assert problem in message


# ----------------------------------------------------------------------------- records, directory


def test_records_and_directory_defaults() -> None:
    from gateway.config import DirectoryConfig, RecordsConfig

    c = load_config(None)
    assert c.records == RecordsConfig(enabled=True, path="calls.db")
    assert c.directory == DirectoryConfig(users_file=None, reload_interval=2.0, ldap=None)
    e = load_config(str(EXAMPLE))
    assert (e.records, e.directory) == (c.records, c.directory)
    c = parse_config({"records": {"enabled": False, "path": "/var/lib/gw/calls.db"}}, SRC)
    assert c.records == RecordsConfig(enabled=False, path="/var/lib/gw/calls.db")


def test_records_and_directory_errors() -> None:
    assert err({"records": {"enabled": "yes"}}) == (
        f'config error in {SRC}: [records] enabled: expected true or false, got string "yes"'
    )
    assert err({"records": {"path": ""}}) == (
        f'config error in {SRC}: [records] path: expected a file name, got ""'
    )
    assert "[records] size: unknown key (known keys: enabled, path)" in err(
        {"records": {"size": 1}}
    )
    assert "[directory] reload_interval: must be more than 0" in err(
        {"directory": {"reload_interval": 0}}
    )
    assert "[directory] users_file: expected a string, got integer 1" in err(
        {"directory": {"users_file": 1}}
    )


# ----------------------------------------------------------------------------- [push]


def _service_account_file(tmp_path: Path, **fields: Any) -> Path:
    """A Google service account key file with a new RSA key; `fields` override/add keys
    (None removes one)."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data: dict[str, Any] = {
        "type": "service_account",
        "project_id": "proj-1",
        "private_key_id": "kid-1",
        "private_key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "client_email": "push@proj-1.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    for name, value in fields.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(data))
    return path


def test_push_defaults() -> None:
    from gateway.config import PushConfig

    p = load_config(None).push
    assert p == PushConfig()
    assert p.enabled is False and p.service is None
    assert (p.timeout, p.token_ttl) == (10.0, 60.0)
    assert p.fcm_endpoint == "https://fcm.googleapis.com"
    assert load_config(str(EXAMPLE)).push == p
    # Timeouts alone do not turn push on.
    assert parse_config({"push": {"timeout": 5, "token_ttl": 30}}, SRC).push.enabled is False


def test_push_webhook_every_key() -> None:
    p = parse_config(
        {
            "push": {
                "service": "webhook",
                "webhook_url": "https://app.example.com/push",
                "webhook_secret": "s3cret-value",
                "web_config": {"apiKey": "k", "vapidKey": "v", "nested": {"a": [1, 2.5, True]}},
                "timeout": 2.5,
                "token_ttl": 30,
            }
        },
        SRC,
    ).push
    assert p.enabled and p.service == "webhook"
    assert p.webhook_url == "https://app.example.com/push"
    assert p.webhook_secret == "s3cret-value"
    assert "s3cret-value" not in repr(p)
    assert p.web_config == {"apiKey": "k", "vapidKey": "v", "nested": {"a": [1, 2.5, True]}}
    assert (p.timeout, p.token_ttl) == (2.5, 30.0)
    assert p.fcm_credentials is None and p.fcm_service_account is None
    # service may be left out when only one service is configured; http for loopback.
    for url in ("http://127.0.0.1:9/hook", "http://localhost/h", "http://[::1]:8/h"):
        p = parse_config({"push": {"webhook_url": url}}, SRC).push
        assert (p.service, p.webhook_url, p.web_config) == ("webhook", url, None)


def test_push_fcm_every_key(tmp_path: Path) -> None:
    sa = _service_account_file(tmp_path)
    src = str(tmp_path / "gw.toml")
    p = parse_config(
        {
            "push": {
                "service": "fcm",
                "fcm_service_account": "sa.json",  # relative to the config file
                "fcm_endpoint": "http://127.0.0.1:8099/",
                "web_config": {"projectId": "proj-1"},
            }
        },
        src,
    ).push
    assert p.service == "fcm"
    assert p.fcm_service_account == str(sa)
    assert p.fcm_project_id == "proj-1"  # from the service account
    assert p.fcm_endpoint == "http://127.0.0.1:8099"  # trailing "/" removed
    creds = p.fcm_credentials
    assert creds is not None
    assert creds.client_email == "push@proj-1.iam.gserviceaccount.com"
    assert creds.token_uri == "https://oauth2.googleapis.com/token"
    assert creds.project_id == "proj-1" and creds.private_key_id == "kid-1"
    assert creds.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert "PRIVATE KEY" not in repr(p)  # the key stays out of logs
    p = parse_config(
        {"push": {"fcm_service_account": str(sa), "fcm_project_id": "other-proj"}}, SRC
    ).push
    assert (p.service, p.fcm_project_id) == ("fcm", "other-proj")
    assert p.fcm_endpoint == "https://fcm.googleapis.com"
    # token_uri defaults to Google's; project_id may come from the config alone.
    _service_account_file(tmp_path, token_uri=None, project_id=None, private_key_id=None)
    p = parse_config(
        {"push": {"fcm_service_account": "sa.json", "fcm_project_id": "p-2"}}, src
    ).push
    assert p.fcm_credentials is not None
    assert p.fcm_credentials.token_uri == "https://oauth2.googleapis.com/token"
    assert p.fcm_credentials.private_key_id is None
    assert p.fcm_project_id == "p-2"


@pytest.mark.parametrize(
    ("push", "key", "problem"),
    [
        ("x", "[push]", "expected a table"),
        ({"url": "https://x"}, "[push] url", "unknown key (known keys: service, webhook_url"),
        ({"service": "apns"}, "[push] service", 'must be one of fcm | webhook, got "apns"'),
        (
            {"service": "webhook"},
            "[push] webhook_url",
            'missing (required with service = "webhook")',
        ),
        ({"service": "fcm"}, "[push] fcm_service_account", "missing (required with service"),
        (
            {"webhook_url": "https://a/", "fcm_service_account": "sa.json"},
            "[push] service",
            "both services are configured",
        ),
        (
            {"service": "webhook", "webhook_url": "https://a/", "fcm_project_id": "p"},
            "[push] fcm_project_id",
            'only used with service = "fcm", not "webhook"',
        ),
        (
            {"service": "fcm", "fcm_service_account": "sa.json", "webhook_url": "https://a/"},
            "[push] webhook_url",
            'only used with service = "webhook", not "fcm"',
        ),
        ({"webhook_secret": "s"}, "[push] webhook_secret", "push is not configured"),
        ({"web_config": {}}, "[push] web_config", "push is not configured"),
        ({"webhook_url": 1}, "[push] webhook_url", "expected a string, got integer 1"),
        ({"webhook_url": "ftp://a/"}, "[push] webhook_url", 'expected an https:// URL, got "ftp'),
        ({"webhook_url": "https://"}, "[push] webhook_url", "expected an https:// URL"),
        ({"webhook_url": "https://a b/"}, "[push] webhook_url", "expected an https:// URL"),
        (
            {"webhook_url": "http://app.example.com/hook"},
            "[push] webhook_url",
            "must be https (http only for loopback addresses)",
        ),
        (
            {"webhook_url": "http://192.0.2.1/hook"},
            "[push] webhook_url",
            "must be https (http only for loopback addresses)",
        ),
        ({"webhook_url": "https://u:p@a/"}, "[push] webhook_url", "must not contain credentials"),
        ({"webhook_url": "https://a/#x"}, "[push] webhook_url", "expected no #fragment"),
        (
            {"webhook_url": "https://a/", "webhook_secret": ""},
            "[push] webhook_secret",
            "must not be empty",
        ),
        (
            {"webhook_url": "https://a/", "web_config": "x"},
            "[push] web_config",
            'expected a table, got string "x"',
        ),
        ({"webhook_url": "https://a/", "timeout": 0}, "[push] timeout", "must be more than 0"),
        ({"webhook_url": "https://a/", "timeout": 301}, "[push] timeout", "at most 300"),
        ({"webhook_url": "https://a/", "timeout": "5"}, "[push] timeout", "expected a number"),
        ({"webhook_url": "https://a/", "token_ttl": -1}, "[push] token_ttl", "more than 0"),
        ({"webhook_url": "https://a/", "token_ttl": 3601}, "[push] token_ttl", "at most 3600"),
        ({"fcm_service_account": ""}, "[push] fcm_service_account", "must not be empty"),
        (
            {"fcm_service_account": "/nonexistent/sa.json"},
            "[push] fcm_service_account",
            "cannot read /nonexistent/sa.json: No such file or directory",
        ),
    ],
)
def test_push_errors(push: Any, key: str, problem: str) -> None:
    message = err({"push": push})
    assert f": {key}: " in message, message
    assert problem in message, message


def test_push_web_config_must_be_json() -> None:
    import datetime

    message = err(
        {"push": {"webhook_url": "https://a/", "web_config": {"d": datetime.date(2024, 1, 1)}}}
    )
    assert "[push] web_config: must hold only strings, numbers" in message


def test_push_fcm_key_errors(tmp_path: Path) -> None:
    src = str(tmp_path / "gw.toml")

    def fcm_err(push: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config({"push": {"fcm_service_account": "sa.json", **push}}, src)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"config error in {src}: [push] ")
        return message

    _service_account_file(tmp_path)
    assert "[push] fcm_project_id: expected a project id" in fcm_err({"fcm_project_id": "a/b"})
    assert "[push] fcm_endpoint: must be https (http only for loopback" in fcm_err(
        {"fcm_endpoint": "http://fcm.example.com"}
    )
    assert "[push] fcm_endpoint: expected a scheme and host only" in fcm_err(
        {"fcm_endpoint": "https://fcm.example.com/v1"}
    )
    _service_account_file(tmp_path, project_id=None)
    assert (
        f"[push] fcm_project_id: missing, and the service account file {tmp_path / 'sa.json'} "
        "has no project_id"
    ) in fcm_err({})


def test_push_bad_service_account_files(tmp_path: Path) -> None:
    from collections.abc import Callable

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    sa = tmp_path / "sa.json"
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: sa.write_text("{not json"), "not JSON (Expecting property name"),
        (lambda: sa.write_bytes(b'{"a": "\xff"}'), "not UTF-8 text"),
        (lambda: sa.write_text("[]"), "expected a JSON object"),
        (lambda: _service_account_file(tmp_path, type="user"), '"type" must be "service_account"'),
        (lambda: _service_account_file(tmp_path, client_email=None), '"client_email" is missing'),
        (lambda: _service_account_file(tmp_path, private_key=None), '"private_key" is missing'),
        (lambda: _service_account_file(tmp_path, client_email=5), '"client_email" must be a'),
        (
            lambda: _service_account_file(tmp_path, private_key="garbage"),
            '"private_key" is not an unencrypted PEM private key',
        ),
        (lambda: _service_account_file(tmp_path, private_key=ec_pem), "is not an RSA key"),
        (
            lambda: _service_account_file(tmp_path, token_uri="http://oauth.example.com/t"),
            '"token_uri" must be https (http only for loopback addresses)',
        ),
        (
            lambda: _service_account_file(tmp_path, project_id="bad project"),
            '"project_id" is not a project id',
        ),
    ]
    config = tmp_path / "gw.toml"
    config.write_text('[push]\nfcm_service_account = "sa.json"\n')
    for write, problem in cases:
        write()
        with pytest.raises(ConfigError) as info:
            load_config(str(config))
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"config error in {config}: [push] fcm_service_account: {sa}: ")
        assert problem in message, message
    # A loopback token_uri is fine (tests stand in for Google).
    _service_account_file(tmp_path, token_uri="http://127.0.0.1:9/token")
    assert load_config(str(config)).push.service == "fcm"


# ----------------------------------------------------------------------------- HA1 users

REALM = "gw.example"


def _md5(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode()).hexdigest()


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def test_user_ha1_is_number_realm_password() -> None:
    # RFC 2617 §3.5's example HA1 (its user name in the place of our number).
    assert user_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life") == (
        "939e7578ed9e3c518a452acee763bce9"
    )
    assert user_ha1("SHA-256", "1001", REALM, "pässword") == _sha256(f"1001:{REALM}:pässword")
    assert HA1_KEYS == {"ha1_md5": ("MD5", 32), "ha1_sha256": ("SHA-256", 64)}
    assert sip_realm(SipConfig("127.0.0.1", 5060)) == "127.0.0.1"
    assert sip_realm(SipConfig("127.0.0.1", 5060, realm=REALM)) == REALM


def test_users_with_ha1_values() -> None:
    c = parse_config(
        {
            "sip": {"realm": REALM},
            "users": [
                # only ha1_md5, given in upper case: stored in lower case
                {
                    "username": "carol",
                    "number": "1003",
                    "ha1_md5": _md5(f"1003:{REALM}:carol-pw").upper(),
                },
                # both, beside a password they match
                {
                    "username": "dave",
                    "number": "+4930",
                    "password": "dave-pw",
                    "ha1_md5": _md5(f"+4930:{REALM}:dave-pw"),
                    "ha1_sha256": _sha256(f"+4930:{REALM}:dave-pw"),
                },
                {
                    "username": "erin",
                    "number": "1005",
                    "ha1_sha256": _sha256(f"1005:{REALM}:erin-pw"),
                },
            ],
        },
        SRC,
    )
    carol, dave, erin = c.users
    assert carol == User("carol", "", "1003", "carol", ha1_md5=_md5(f"1003:{REALM}:carol-pw"))
    assert carol.ha1_only and not dave.ha1_only and erin.ha1_only
    assert dave.password == "dave-pw" and dave.ha1_sha256 == _sha256(f"+4930:{REALM}:dave-pw")
    assert erin.ha1_md5 is None and erin.ha1_sha256 == _sha256(f"1005:{REALM}:erin-pw")
    assert c.demo_users is False
    assert "ha1" not in repr(carol) and _md5(f"1003:{REALM}:carol-pw") not in repr(c)


MD5_OF_PW = _md5("1:127.0.0.1:p")  # [sip] realm unset: the realm is the listen host


@pytest.mark.parametrize(
    ("user", "key", "fragment"),
    [
        ({"username": "a", "number": "1"}, "password",
         "missing (every user needs a password, or ha1_md5/ha1_sha256)"),
        ({"username": "a", "number": "1", "ha1_md5": "0" * 31}, "ha1_md5",
         'expected 32 hexadecimal digits (MD5 of "number:realm:password"), got 31 characters'),
        ({"username": "a", "number": "1", "ha1_md5": "0" * 64}, "ha1_md5",
         "expected 32 hexadecimal digits"),
        ({"username": "a", "number": "1", "ha1_md5": "g" * 32}, "ha1_md5",
         "got characters that are not hexadecimal digits"),
        ({"username": "a", "number": "1", "ha1_md5": " " + "0" * 31}, "ha1_md5",
         "not hexadecimal digits"),
        ({"username": "a", "number": "1", "ha1_sha256": "0" * 32}, "ha1_sha256",
         'expected 64 hexadecimal digits (SHA-256 of "number:realm:password"), got 32 char'),
        ({"username": "a", "number": "1", "ha1_sha256": 5}, "ha1_sha256",
         "expected a string, got integer 5"),
        ({"username": "a", "number": "1", "password": "", "ha1_md5": MD5_OF_PW}, "password",
         "must not be empty (leave it out to store only ha1_md5/ha1_sha256)"),
        ({"username": "a", "number": "1", "password": "q", "ha1_md5": MD5_OF_PW}, "ha1_md5",
         'does not match the password: expected MD5 of "1:127.0.0.1:<password>"'),
        # hashed with another realm than the SIP realm
        ({"username": "a", "number": "1", "password": "p",
          "ha1_sha256": _sha256(f"1:{REALM}:p")}, "ha1_sha256", "does not match the password"),
        # hashed with the user name instead of the number
        ({"username": "a", "number": "1", "password": "p",
          "ha1_md5": _md5("a:127.0.0.1:p")}, "ha1_md5", "does not match the password"),
    ],
)  # fmt: skip
def test_ha1_errors(user: dict[str, Any], key: str, fragment: str) -> None:
    message = err({"users": [user]})
    assert message.startswith(f"config error in {SRC}: [[users]] #1 {key}: "), message
    assert fragment in message, message
    for value in user.values():  # a hash (a password equivalent) is never shown
        if isinstance(value, str) and len(value) > 30:
            assert value not in message


def test_ha1_matching_password_at_default_realm() -> None:
    c = parse_config(
        {"users": [{"username": "a", "number": "1", "password": "p", "ha1_md5": MD5_OF_PW}]}, SRC
    )
    assert c.users[0].ha1_md5 == MD5_OF_PW and not c.users[0].ha1_only


def test_ha1_in_users_files(tmp_path: Path) -> None:
    md5 = _md5(f"2001:{REALM}:pw")
    sha = _sha256(f"2002:{REALM}:pw2")
    (tmp_path / "u.csv").write_text(
        "username,password,number,ha1_md5,ha1_sha256\n"
        f"dave,,2001,{md5},\n"
        f"erin,,2002,,{sha}\n"
        f"frank,fpw,2003,,{_sha256(f'2003:{REALM}:fpw')}\n"
    )
    (tmp_path / "u.toml").write_text(
        f'[[users]]\nusername = "gina"\nnumber = "2004"\nha1_md5 = "{_md5(f"2004:{REALM}:g")}"\n'
    )
    for name in ("u.csv", "u.toml"):
        (tmp_path / "gw.toml").write_text(
            f'[sip]\nrealm = "{REALM}"\n[directory]\nusers_file = "{name}"\n'
        )
        users = load_config(str(tmp_path / "gw.toml")).users
        if name == "u.csv":
            dave, erin, frank = users
            assert (dave.password, dave.ha1_md5, dave.ha1_sha256) == ("", md5, None)
            assert (erin.password, erin.ha1_md5, erin.ha1_sha256) == ("", None, sha)
            assert frank.password == "fpw" and not frank.ha1_only
        else:
            assert users[0].ha1_only and users[0].ha1_md5 == _md5(f"2004:{REALM}:g")
    # Only an HA1 column, no password column at all.
    (tmp_path / "u.csv").write_text(f"username,number,ha1_md5\ndave,2001,{md5}\n")
    (tmp_path / "gw.toml").write_text(
        f'[sip]\nrealm = "{REALM}"\n[directory]\nusers_file = "u.csv"\n'
    )
    assert load_config(str(tmp_path / "gw.toml")).users[0].ha1_md5 == md5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("username,password,number,ha1_md5\ndave,,2001,abc\n",
         "line 2 ha1_md5: expected 32 hexadecimal digits (MD5 of \"number:realm:password\"), "
         "got 3 characters"),
        ("username,number,ha1_md5\ndave,2001,\n",
         "line 2 password: missing (every user needs a password, or ha1_md5/ha1_sha256)"),
        ("username,password,number,ha1_md5\ndave,,2001,\n",
         "line 2 password: must not be empty"),
        ("username,number\n",
         "line 1: header lacks the password column (or ha1_md5/ha1_sha256 columns)"),
        ("username,password,number,ha1_sha256\ndave,pw,2001," + "0" * 64 + "\n",
         "line 2 ha1_sha256: does not match the password"),
    ],
)  # fmt: skip
def test_ha1_errors_in_csv_users_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "u.csv"
    path.write_text(text)
    (tmp_path / "gw.toml").write_text('[directory]\nusers_file = "u.csv"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "gw.toml"))
    assert str(info.value).startswith(f"config error in {path}: {message}"), str(info.value)


def test_example_ha1_user_hashes_its_password() -> None:
    """The commented-out HA1-only user of the example file, uncommented, loads and holds
    the HA1 values of the password it names, in the example's SIP realm."""
    text = EXAMPLE.read_text()
    block = text[text.index('#[[users]]\n#username = "carol"') :].splitlines()
    entry = "\n".join(line[1:] for line in block if line.startswith("#"))
    example = load_config(str(EXAMPLE))
    realm = sip_realm(example.sip)
    c = parse_config({"sip": {"realm": realm}, **tomllib.loads(entry)}, SRC)
    (carol,) = c.users
    assert carol.ha1_only and carol.number == "1003"
    assert carol.ha1_md5 == user_ha1("MD5", "1003", realm, "carol-secret")
    assert carol.ha1_sha256 == user_ha1("SHA-256", "1003", realm, "carol-secret")


def test_number_errors_read_plainly() -> None:
    # no "more than -inf" for a key with only an upper bound, and nan/inf named as such
    message = err({"media": {"timeout": 4000}})
    assert "[media] timeout: must be at most 3600, got 4000" in message and "inf" not in message
    assert "[media] failure_tone_seconds: must be a finite number, got nan" in err(
        {"media": {"failure_tone_seconds": float("nan")}}
    )
    assert "[media] timeout: must be a finite number, got inf" in err(
        {"media": {"timeout": float("inf")}}
    )
