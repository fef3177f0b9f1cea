"""The `webrtc-gateway` command line.

    webrtc-gateway [--config FILE] [--log-level LEVEL]        run the gateway
    webrtc-gateway [--config FILE] run                        the same, explicitly
    webrtc-gateway --version

Subcommands are registered in `_COMMANDS`; with none given, `run` is used. A
configuration error prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

from gateway.config import (
    DEFAULTS_SOURCE,
    LOG_LEVELS,
    VERSION,
    Config,
    ConfigError,
    format_hostport,
    load_config,
)

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
        f"  SIP:        {format_hostport(config.sip.host, config.sip.port)} (UDP and TCP)",
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
        asyncio.run(_serve(config, run))
    except KeyboardInterrupt:
        log.info("interrupted, stopped")
        return EXIT_OK
    except OSError as e:  # typically: address already in use / not available
        log.debug("start-up failed", exc_info=True)
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_ERROR
    log.info("stopped")
    return EXIT_OK


Command = Callable[[Config, argparse.Namespace], int]

#: name -> (help, handler). Add subcommands here (e.g. a future "calls").
_COMMANDS: dict[str, tuple[str, Command]] = {
    "run": ("run the gateway (the default)", _cmd_run),
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
