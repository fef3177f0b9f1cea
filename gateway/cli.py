"""The `webrtc-gateway` command line.

    webrtc-gateway [--config FILE] [--log-level LEVEL]        run the gateway
    webrtc-gateway [--config FILE] run                        the same, explicitly
    webrtc-gateway [--config FILE] calls [--since SPEC] [--limit N] [--json]
                                                              list call records
    webrtc-gateway [--config FILE] ha1 --number N [--realm R]  print ha1_md5/ha1_sha256
                                                              for a password (stdin)
    webrtc-gateway --version

Subcommands are registered in `_COMMANDS`; with none given, `run` is used. A
configuration error prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, TextIO

from gateway.config import (
    DEFAULTS_SOURCE,
    LOG_LEVELS,
    VERSION,
    Config,
    ConfigError,
    format_hostport,
    load_config,
    sip_realm,
    user_ha1,
)
from gateway.records import CallRecord, CallRecordStore, RecordStoreError

PROG = "webrtc-gateway"
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2  # also argparse's status for usage errors

log = logging.getLogger("gateway.cli")

#: Users shown in the banner at most (a real directory may be large).
_BANNER_MAX_USERS = 20


# --------------------------------------------------------------------------- logging


class _OneLineFormatter(logging.Formatter):
    """Timestamp, level, logger, message; newlines (tracebacks) escaped to keep one line."""

    def __init__(self) -> None:
        super().__init__(
            fmt="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\r", "\\r").replace("\n", "\\n")


def setup_logging(level: str, stream: TextIO | None = None) -> None:
    """Configure the root logger: one line per record on stderr at `level`."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


# --------------------------------------------------------------------------- banner


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def format_banner(config: Config) -> str:
    """The start-up text printed on stdout: where to point a browser, a SIP phone, who."""
    http = f"{_url_host(config.server.host)}:{config.server.port}"
    source = "built-in defaults" if config.source == DEFAULTS_SOURCE else config.source
    if config.pbx.uri is None:
        pbx = "none: only web users and built-in numbers"
    elif config.pbx.username:
        pbx = f"{config.pbx.uri} (digest user {config.pbx.username})"
    else:
        pbx = config.pbx.uri
    lines = [
        f"{PROG} {VERSION}",
        f"  config:     {source}",
        f"  web phone:  http://{http}/",
        f"  websocket:  ws://{http}{config.server.ws_path}",
        f"  SIP:        {format_hostport(config.sip.host, config.sip.port)} (UDP and TCP)"
        + (f", TLS on port {config.sip.tls_port}" if config.sip.tls_port is not None else ""),
        "  SIP phones: register with number and password"
        if config.sip.registrar
        else "  SIP phones: no registrar ([sip] registrar = false)",
        f"  PBX:        {pbx}",
        f"  auth:       {config.auth.mode}",
    ]
    tests = [f"{n} {what}" for n, what in ((config.numbers.echo, "echo"),
                                            (config.numbers.tone, "1 kHz tone")) if n]
    if tests:
        lines.append(f"  test calls: {', '.join(tests)}")
    if config.server.host in ("0.0.0.0", "::"):
        lines.append("  (listening on all interfaces: use this machine's address in the URLs)")
    users = config.users
    if not users:
        lines.append("  users:      none (empty directory)")
        return "\n".join(lines) + "\n"
    if config.demo_users:
        lines.append("  users (built-in demo directory; configure [[users]] to replace it):")
        header = ("username", "number", "password", "display name")
        rows = [(u.username, u.number, u.password, u.display_name) for u in users]
    else:
        lines.append(f"  users ({len(users)} in the directory):")
        header = ("username", "number", "display name", "")
        rows = [(u.username, u.number, u.display_name, "") for u in users]
    shown = rows[:_BANNER_MAX_USERS]
    widths = [max(len(r[i]) for r in [header, *shown]) for i in range(4)]
    for row in [header, *shown]:
        cells = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row))
        lines.append(f"    {cells}".rstrip())
    if len(rows) > len(shown):
        lines.append(f"    ... and {len(rows) - len(shown)} more")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- commands


def _load_app_run() -> Callable[[Config], Awaitable[None]]:
    """`gateway.app.run`, imported lazily: the CLI works without the composition root."""
    app = importlib.import_module("gateway.app")
    run: Callable[[Config], Awaitable[None]] = app.run
    return run


async def _serve(config: Config, run: Callable[[Config], Awaitable[None]]) -> None:
    """Run the gateway until it returns or SIGTERM arrives (then return normally)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping = False

    def on_sigterm() -> None:
        nonlocal stopping
        if not stopping:
            log.info("SIGTERM received, stopping")
            stopping = True
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
        pass
    try:
        await run(config)
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        try:
            loop.remove_signal_handler(signal.SIGTERM)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run(), on uvloop when it is installed (cheaper per datagram and timer)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def _cmd_run(config: Config, args: argparse.Namespace) -> int:
    try:
        run = _load_app_run()
    except ModuleNotFoundError as e:
        if e.name != "gateway.app":
            raise
        print(f"{PROG}: the gateway application (gateway.app) is not installed", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write(format_banner(config))
    sys.stdout.flush()
    try:
        _run_loop(_serve(config, run))
    except KeyboardInterrupt:
        log.info("interrupted, stopped")
        return EXIT_OK
    except OSError as e:  # typically: address already in use / not available
        log.debug("start-up failed", exc_info=True)
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_ERROR
    log.info("stopped")
    return EXIT_OK


# --------------------------------------------------------------------------- calls

_SINCE_UNITS: dict[str, float] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: a relative age ("90s", "30m", "1h", "2d", "1w") or an ISO 8601 date or
    date-time ("2024-05-01", "2024-05-01T10:00", "2024-05-01 10:00:00+02:00"; without a
    zone it is local time). Returns epoch seconds; raises ValueError."""
    value = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", value.lower())
    if match:
        base = time.time() if now is None else now
        return base - float(match.group(1)) * _SINCE_UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f'expected an age like "30m", "1h", "2d" or an ISO date/time like '
            f'"2024-05-01" or "2024-05-01T10:00", got {value!r}'
        ) from None
    return moment.timestamp()  # naive: local time


def _since_arg(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _calls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        type=_since_arg,
        metavar="SPEC",
        help='only calls started since: an age ("30m", "1h", "2d") or an ISO date/time',
    )
    parser.add_argument(
        "--limit", type=_positive_int, default=100, metavar="N",
        help="show the newest N calls (default 100)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _party(number: str | None, name: str | None) -> str:
    if number and name and name != number:
        return f"{name} <{number}>"
    return number or name or "-"


def _duration(seconds: float) -> str:
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_calls_table(records: Sequence[CallRecord]) -> str:
    """The `calls` table: time (local), direction, from, to, duration, reason, SIP code."""
    header = ("time", "direction", "from", "to", "duration", "reason", "sip")
    rows = [header]
    for r in records:
        local = _party(r.local_number, r.local_display_name)
        remote = _party(r.remote_number, r.remote_display_name)
        src, dst = (remote, local) if r.direction in ("incoming", "sip") else (local, remote)
        rows.append(
            (
                datetime.fromtimestamp(r.start_time).strftime("%Y-%m-%d %H:%M:%S"),
                r.direction,
                src,
                dst,
                _duration(r.duration) if r.answer_time is not None else "-",
                r.reason or "-",
                str(r.sip_code) if r.sip_code is not None else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def _cmd_calls(config: Config, args: argparse.Namespace) -> int:
    """List call records. A missing database is not an error ("no calls recorded", exit
    0); a path that cannot be read as a call records database exits 2."""
    path = config.records.path
    if not os.path.exists(path):
        why = "" if config.records.enabled else "; call records are disabled ([records] enabled)"
        print(f"no calls recorded (no database at {path}{why})", file=sys.stderr if args.json
              else sys.stdout)
        return EXIT_OK
    try:
        with CallRecordStore(path, create=False) as store:
            records = store.query(since=args.since, limit=args.limit)
    except (RecordStoreError, OSError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        for r in records:
            sys.stdout.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    elif records:
        sys.stdout.write(format_calls_table(records))
    else:
        print("no calls recorded" + (" in that period" if args.since is not None else ""))
    return EXIT_OK


# --------------------------------------------------------------------------- ha1

_HA1_NUMBER_RE = re.compile(r"\+?[0-9]+")


def _number_arg(text: str) -> str:
    if not _HA1_NUMBER_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f'expected digits with an optional leading "+", got {text!r}'
        )
    return text


def _realm_arg(text: str) -> str:
    if not text or any(ord(c) < 32 or ord(c) == 127 or c in '"\\' for c in text):
        raise argparse.ArgumentTypeError(
            f"expected a non-empty single line without quotes or backslashes, got {text!r}"
        )
    return text


def _ha1_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--number", "-n", required=True, type=_number_arg, metavar="NUMBER",
        help="the user's number: SIP phones use it as their digest user name",
    )
    parser.add_argument(
        "--realm", type=_realm_arg, metavar="REALM",
        help="the SIP digest realm (default: [sip] realm of --config, else its SIP listen "
        "host)",
    )


def _read_password(number: str) -> str | None:
    """The password: prompted twice without echo on a terminal, else the first line of
    stdin (without its line end). None when none was given or the two differ."""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            first = getpass.getpass(f"Password for {number}: ")
            again = getpass.getpass("Again: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return None
        if first != again:
            print(f"{PROG}: the passwords differ", file=sys.stderr)
            return None
        return first or None
    line = sys.stdin.readline() if sys.stdin is not None else ""
    return line.rstrip("\r\n") or None


def _cmd_ha1(config: Config, args: argparse.Namespace) -> int:
    """Print the `ha1_md5` and `ha1_sha256` lines of a user entry: H(number ":" SIP realm
    ":" password), the password read from stdin (or prompted for). Exit 1 without one."""
    number: str = args.number
    realm: str = args.realm if args.realm is not None else sip_realm(config.sip)
    if args.realm is None and not config.sip.realm:
        print(
            f"{PROG}: [sip] realm is not set: using the SIP listen host {realm!r} as the "
            f"realm (the values change with it; set [sip] realm or pass --realm)",
            file=sys.stderr,
        )
    password = _read_password(number)
    if password is None:
        print(f"{PROG}: no password given (type it, or pipe it on stdin)", file=sys.stderr)
        return EXIT_ERROR
    sys.stdout.write(
        f"# number {number}, SIP realm {json.dumps(realm, ensure_ascii=False)}\n"
        f'ha1_md5 = "{user_ha1("MD5", number, realm, password)}"\n'
        f'ha1_sha256 = "{user_ha1("SHA-256", number, realm, password)}"\n'
    )
    return EXIT_OK


Command = Callable[[Config, argparse.Namespace], int]

#: name -> (help, handler). Add subcommands here (e.g. a future "calls").
_COMMANDS: dict[str, tuple[str, Command]] = {
    "run": ("run the gateway (the default)", _cmd_run),
    "calls": ("list call records from the [records] database", _cmd_calls),
    "ha1": (
        "print the ha1_md5 and ha1_sha256 values of a user entry for a password read from "
        "stdin",
        _cmd_ha1,
    ),
}
#: name -> function adding the subcommand's own options.
_COMMAND_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "calls": _calls_options,
    "ha1": _ha1_options,
}
_DEFAULT_COMMAND = "run"


def _common_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        default=default,
        help="TOML configuration file (default: built-in defaults, no file needed)",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        type=str.lower,
        default=default,
        help="log level, overrides [logging] level",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SIP-to-WebRTC gateway: browsers make and take phone calls.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    _common_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _handler) in _COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        # The options are accepted after the subcommand too; SUPPRESS keeps a value given
        # before the subcommand from being reset to the default.
        _common_options(command, suppress=True)
        if name in _COMMAND_OPTIONS:
            _COMMAND_OPTIONS[name](command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `webrtc-gateway` console script and `python -m gateway`."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(args.log_level or config.logging.level)
    _help, handler = _COMMANDS[args.command or _DEFAULT_COMMAND]
    return handler(config, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
