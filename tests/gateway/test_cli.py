"""Tests for the command line: exit codes, one-line errors, banner, run and shutdown."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import cli
from gateway.config import VERSION, Config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """cli.main configures the root logger; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# ----------------------------------------------------------------------------- subprocess


def test_version() -> None:
    result = run_module("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"webrtc-gateway {VERSION}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[sip]\nlisten = "localhost"\n', '[sip] listen: expected "host:port"'),
        ("[sip\n", "invalid TOML: "),
        ("[nope]\n", "[nope]: unknown section"),
        ('[auth]\nmode = "magic"\n', "[auth] mode: must be one of"),
        ("[server]\nmax_message_bytes = true\n", "[server] max_message_bytes: expected an integer"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, content: str, expected: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    result = run_module("--config", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"webrtc-gateway: config error in {bad}: ")
    assert expected in lines[0]
    assert result.stdout == ""


def test_invalid_toml_line_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "127.0.0.1:8080"\nws_path = \n')
    result = run_module("--config", str(bad))
    assert result.returncode == 2
    assert "(at line 3, column" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_module("--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "cannot read file" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_after_run_subcommand(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[nope]\n")
    result = run_module("run", "--config", str(bad))
    assert result.returncode == 2
    assert "[nope]: unknown section" in result.stderr


def test_usage_error_exits_2() -> None:
    result = run_module("--no-such-option")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


FAKE_APP = textwrap.dedent(
    """
    import asyncio, sys, types
    app = types.ModuleType("gateway.app")

    async def run(config):
        print("app running", config.server.port, flush=True)
        await asyncio.Event().wait()

    app.run = run
    sys.modules["gateway.app"] = app
    from gateway.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


# As from a terminal: a shell without job control (make test run in the background,
# some CI runners) starts its commands with SIGINT ignored, which a child inherits.
FOREGROUND = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FOREGROUND, sys.executable, "-c", FAKE_APP, "--log-level", "info"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("app running"):
                break
        assert "web phone:  http://127.0.0.1:8080/\n" in "".join(seen)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    for line in err.splitlines():  # log records: timestamp level logger: message
        assert line.split(" ")[1] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line


# ----------------------------------------------------------------------------- in-process


@pytest.fixture
def fake_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Config]]:
    calls: list[Config] = []
    module = types.ModuleType("gateway.app")

    async def run(config: Config) -> None:
        calls.append(config)
        await asyncio.sleep(0)

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.app", module)
    yield calls


def test_main_runs_app_with_loaded_config(
    fake_app: list[Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('[server]\nlisten = "127.0.0.1:9090"\n')
    assert cli.main(["--config", str(f), "--log-level", "warning"]) == 0
    assert len(fake_app) == 1
    assert fake_app[0].server.port == 9090
    out = capsys.readouterr().out
    assert "http://127.0.0.1:9090/" in out


def test_main_without_config_uses_defaults(
    fake_app: list[Config], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([]) == 0
    assert fake_app[0] == load_config(None)
    assert "alice" in capsys.readouterr().out


def test_keyboard_interrupt_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("gateway.app")

    async def run(config: Config) -> None:
        raise KeyboardInterrupt

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.app", module)
    assert cli.main(["--log-level", "critical"]) == 0


def test_bind_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = types.ModuleType("gateway.app")

    async def run(config: Config) -> None:
        raise OSError(98, "address already in use")

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gateway.app", module)
    assert cli.main(["--log-level", "critical"]) == 1
    assert capsys.readouterr().err == "webrtc-gateway: [Errno 98] address already in use\n"


def test_config_error_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('[pbx]\nuri = "pbx:5060"\n')
    assert cli.main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"webrtc-gateway: config error in {f}: [pbx] uri: ")
    assert err.count("\n") == 1


# ----------------------------------------------------------------------------- banner


def test_banner_defaults() -> None:
    banner = cli.format_banner(load_config(None))
    assert f"webrtc-gateway {VERSION}" in banner
    assert "http://127.0.0.1:8080/" in banner
    assert "ws://127.0.0.1:8080/ws" in banner
    assert "127.0.0.1:5060 (UDP and TCP)" in banner
    assert "none: only web users and built-in numbers" in banner
    assert "built-in defaults" in banner
    for user in load_config(None).users:
        row = next(line for line in banner.splitlines() if user.username in line)
        assert user.number in row
        assert user.password in row


def test_banner_configured_users_hide_passwords_and_ipv6() -> None:
    config = parse_config(
        {
            "server": {"listen": "[::1]:8443", "ws_path": "/json"},
            "sip": {"listen": "[::1]:5062"},
            "pbx": {"uri": "sip:pbx.example.com;transport=tcp"},
            "users": [{"username": "dave", "password": "s3cr3t", "number": "+4930"}],
        },
        "/etc/gw.toml",
    )
    banner = cli.format_banner(config)
    assert "http://[::1]:8443/" in banner
    assert "ws://[::1]:8443/json" in banner
    assert "[::1]:5062 (UDP and TCP)" in banner
    assert "sip:pbx.example.com;transport=tcp" in banner
    assert "/etc/gw.toml" in banner
    assert "dave" in banner and "+4930" in banner
    assert "s3cr3t" not in banner


def test_log_format_is_one_line() -> None:
    stream = io.StringIO()
    cli.setup_logging("debug", stream)
    logger = logging.getLogger("gateway.test")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed\nbadly")
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert " ERROR gateway.test: failed\\nbadly" in text
    assert "ValueError" in text


# ----------------------------------------------------------------------------- ha1


def test_ha1_prints_values_for_the_configured_realm(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "gw.toml"
    f.write_text('[sip]\nrealm = "gw.example"\n')
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(f), "ha1", "--number", "+4930"],
        cwd=ROOT, input="pässword\n", capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    text = "+4930:gw.example:pässword".encode()
    assert result.stdout == (
        '# number +4930, SIP realm "gw.example"\n'
        f'ha1_md5 = "{hashlib.md5(text).hexdigest()}"\n'
        f'ha1_sha256 = "{hashlib.sha256(text).hexdigest()}"\n'
    )
    # The lines paste into a [[users]] entry that the loader accepts and checks.
    entry = '\n[[users]]\nusername = "dave"\nnumber = "+4930"\npassword = "pässword"\n'
    f.write_text(f.read_text() + entry + "".join(
        line + "\n" for line in result.stdout.splitlines() if not line.startswith("#")
    ))
    user = load_config(str(f)).users[0]
    assert user.ha1_md5 == hashlib.md5(text).hexdigest()


def test_ha1_realm_option_and_default_realm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\r\nignored\n"))
    assert cli.main(["ha1", "-n", "1001", "--realm", "example.com"]) == 0
    out, err = capsys.readouterr()
    assert f'ha1_md5 = "{hashlib.md5(b"1001:example.com:pw").hexdigest()}"' in out
    assert err == ""
    # Without [sip] realm the realm is the SIP listen host, and that is pointed out.
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert cli.main(["ha1", "-n", "1001"]) == 0
    out, err = capsys.readouterr()
    assert f'ha1_md5 = "{hashlib.md5(b"1001:127.0.0.1:pw").hexdigest()}"' in out
    assert "[sip] realm is not set: using the SIP listen host '127.0.0.1'" in err


def test_ha1_prompts_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = iter(["pw", "pw", "pw", "other"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(sys, "stdin", Tty(""))
    monkeypatch.setattr(cli.getpass, "getpass", fake_getpass)
    assert cli.main(["ha1", "-n", "1001", "--realm", "r"]) == 0
    assert prompts == ["Password for 1001: ", "Again: "]
    assert hashlib.sha256(b"1001:r:pw").hexdigest() in capsys.readouterr().out
    assert cli.main(["ha1", "-n", "1001", "--realm", "r"]) == 1  # the two differ
    out, err = capsys.readouterr()
    assert out == "" and "the passwords differ" in err


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["ha1", "-n", "1001"], "", 1, "no password given"),
        (["ha1", "-n", "1001"], "\n", 1, "no password given"),
        (["ha1"], "pw\n", 2, "the following arguments are required: --number"),
        (["ha1", "-n", "10-01"], "pw\n", 2, 'expected digits with an optional leading "+"'),
        (["ha1", "-n", "1", "--realm", ""], "pw\n", 2, "expected a non-empty single line"),
        (["ha1", "-n", "1", "--realm", 'a"b'], "pw\n", 2, "without quotes"),
    ],
)
def test_ha1_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    args: list[str], stdin: str, code: int, message: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    if code == 2:  # usage errors, from argparse
        with pytest.raises(SystemExit) as info:
            cli.main(args)
        assert info.value.code == code
    else:
        assert cli.main(args) == code
    out, err = capsys.readouterr()
    assert out == "" and message in err
