"""End-to-end fixtures: the gateway as a subprocess, sipp peers, free ports, logs.

Every process is started by these fixtures and stopped by its PID (SIGTERM, then SIGKILL);
nothing is ever killed by name. Ports are picked at run time (other suites may run in
parallel on the same machine: 5060 and 8080 are never used). When a test fails, the logs
of the gateway and of every sipp it started are printed (pytest shows them under
"Captured stdout teardown") and copied to artifacts/e2e/<test>/.

Each gateway is forked by one pre-imported Python (tests/e2e/gateway_zygote.py) and runs
`gateway.cli.main` as `python -m gateway` does, without its 0.6-0.8 s of imports;
E2E_GATEWAY_FORK=0 starts each as `python -m gateway` instead.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ARTIFACTS = Path(os.environ.get("E2E_ARTIFACTS", REPO / "artifacts" / "e2e"))
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HOST = "127.0.0.1"

USERS = (
    {"username": "alice", "password": "alice-secret", "number": "1001", "display_name": "Alice"},
    {"username": "bob", "password": "bob-secret", "number": "1002", "display_name": "Bob"},
)

PORT_MIN, PORT_MAX = 20000, 32768  # free_port hands out ports in [PORT_MIN, PORT_MAX)


# --------------------------------------------------------------------------- reports


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ARG001
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _failed(node: pytest.Item) -> bool:
    return any(
        getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


def _require(path: str, package: str) -> None:
    """Skip when a peer program is missing, except in CI where that is an error."""
    if os.path.exists(path):
        return
    message = f"{path} not found: install the Debian package {package} (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --------------------------------------------------------------------------- ports


def _bindable(port: int, kinds: tuple[int, ...]) -> bool:
    socks = []
    try:
        for kind in kinds:
            s = socket.socket(socket.AF_INET, kind)
            socks.append(s)
            s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


class PortPool:
    """Hands out ports in [low, high) that are bindable now and not taken already.

    A port stays taken until released. While a test runs (`begin_test` .. `end_test`,
    driven by the hooks below) the ports it takes are recorded and released when its
    teardown is over, so a long run does not use up the range; ports taken outside a
    test (at import, such as a module constant) or while a fixture of a wider scope than
    a function is set up (`keep`) are never released. Within one test, no port is handed
    out twice.
    """

    RANDOM_TRIES = 64

    def __init__(self, low: int, high: int, *, seed: int | None = None) -> None:
        self.low, self.high = low, high
        self.taken: set[int] = set()
        self._rng = random.Random(seed)
        self._cursor = low  # where the next sequential search starts; moves past each take
        self._test: list[int] | None = None
        self._keep = 0

    def take(self, udp: bool = True, tcp: bool = True, span: int = 1) -> int:
        """The first of `span` consecutive free ports (free for UDP and/or TCP as asked)."""
        kinds = tuple(
            k for k, want in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)) if want
        )
        count = self.high - self.low - span + 1  # possible first ports
        if span < 1 or count < 1:
            raise ValueError(f"span {span} does not fit in {self.low}..{self.high - 1}")
        # A few random picks first (spread over the range, so pytest processes running
        # side by side rarely pick the same port before either binds it), then every
        # first port in turn from the cursor on, wrapping around: finds a free block
        # whenever there is one.
        offset = (self._cursor - self.low) % count
        picks = (self._rng.randrange(count) for _ in range(min(self.RANDOM_TRIES, count)))
        in_turn = ((offset + i) % count for i in range(count))
        for i in itertools.chain(picks, in_turn):
            base = self.low + i
            ports = range(base, base + span)
            if any(p in self.taken for p in ports):
                continue
            if all(_bindable(p, kinds) for p in ports):
                self.taken.update(ports)
                if self._test is not None and not self._keep:
                    self._test.extend(ports)
                self._cursor = base + span
                return base
        raise RuntimeError(
            f"no free port found: no {span} free port(s) in a row in {self.low}..{self.high - 1}"
            f" ({len(self.taken)} taken by this process)"
        )

    def release(self, ports: Iterable[int]) -> None:
        self.taken.difference_update(ports)

    def begin_test(self) -> None:
        self._test = []

    def end_test(self) -> None:
        if self._test is not None:
            self.release(self._test)
        self._test = None

    @contextlib.contextmanager
    def keep(self) -> Iterator[None]:
        """Ports taken inside stay taken after the test (a module/session fixture's)."""
        self._keep += 1
        try:
            yield
        finally:
            self._keep -= 1


PORTS = PortPool(PORT_MIN, PORT_MAX)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # noqa: ARG001
    PORTS.begin_test()
    try:
        yield
    finally:
        PORTS.end_test()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object], request: pytest.FixtureRequest):
    if fixturedef.scope == "function":
        yield
    else:
        with PORTS.keep():
            yield


def free_port(udp: bool = True, tcp: bool = True, span: int = 1) -> int:
    """A port on 127.0.0.1 free for UDP and TCP (as asked), with `span` free ports in a row.

    In 20000..32767, below Linux's default ephemeral range (32768..60999) from which
    aiortc, sipp and clients get their own ports; never one that this process has
    handed out and not released (a test's ports are released after its teardown: see
    PortPool).
    """
    return PORTS.take(udp=udp, tcp=tcp, span=span)


def free_udp_range(count: int) -> tuple[int, int]:
    """`count` consecutive UDP ports (both TCP and UDP free), as (first, last)."""
    first = free_port(span=count)
    return first, first + count - 1


def _proc_net_listening(proto: str, port: int) -> bool:
    """True when /proc/net/<proto> shows a socket bound to 127.0.0.1/0.0.0.0:port.

    For tcp only LISTEN sockets count. Reading /proc avoids probing by binding, which
    could race with the gateway binding the same port.
    """
    want = f"{port:04X}"
    for name in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            _addr, _, local_port = fields[1].partition(":")
            if local_port != want:
                continue
            if proto == "tcp" and fields[3] != "0A":  # LISTEN
                continue
            return True
    return False


def tcp_accepts(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def stop_process(proc: subprocess.Popen[bytes] | ForkedProcess, grace: float = 5.0) -> int | None:
    """SIGTERM this PID, SIGKILL after `grace` seconds; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    return proc.returncode


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait (without blocking the event loop) for a process to exit; its exit code."""
    import asyncio

    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {proc.pid} still running after {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return proc.returncode


def _read(path: Path, limit: int = 60000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if len(text) > limit:
        text = f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]
    return text


# --------------------------------------------------------------------------- gateway


@dataclass
class Gateway:
    http_port: int
    sip_port: int
    pbx_port: int  # where the gateway sends INVITEs ([pbx] uri); sipp binds it
    rtp_range: tuple[int, int]
    config_path: Path
    log_path: Path
    workdir: Path
    proc: subprocess.Popen[bytes] | ForkedProcess | None = None
    host: str = HOST
    users: tuple[dict[str, str], ...] = USERS

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.http_port}/ws"

    @property
    def sip_target(self) -> str:
        return f"{self.host}:{self.sip_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log(self) -> str:
        return _read(self.log_path)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def write_config(gw: Gateway, extra: str = "") -> None:
    users = "".join(
        "\n[[users]]\n" + "".join(f'{k} = "{v}"\n' for k, v in u.items()) for u in gw.users
    )
    # Keys an `extra` puts under a table written here ([pbx], [media], ...) join that
    # table: TOML allows one table of a name.
    merged: dict[str, str] = {}
    kept: list[str] = []
    section = None
    for line in extra.splitlines():
        header = line.strip()
        if header.startswith("[") and not header.startswith("[["):
            name = header.strip("[]")
            section = name if name in ("pbx", "media", "sip") else None
            if section is None:
                kept.append(line)
            continue
        if header.startswith("[["):
            section = None
        if section is not None:
            merged[section] = merged.get(section, "") + line + "\n"
        else:
            kept.append(line)
    extra = "\n".join(kept) + ("\n" if kept else "")
    pbx_extra = merged.get("pbx", "")
    media_extra = merged.get("media", "")
    sip_extra = merged.get("sip", "")
    gw.config_path.write_text(
        f"""# written by tests/e2e/conftest.py
[server]
listen = "{gw.host}:{gw.http_port}"

[sip]
listen = "{gw.host}:{gw.sip_port}"
{sip_extra}
[pbx]
uri = "sip:{gw.host}:{gw.pbx_port}"
{pbx_extra}
[media]
rtp_port_min = {gw.rtp_range[0]}
rtp_port_max = {gw.rtp_range[1]}
{media_extra}
[logging]
level = "debug"

[records]
path = "{gw.workdir / "calls.db"}"
{extra}{users}"""
    )


class ForkedProcess:
    """A gateway the zygote forked (tests/e2e/gateway_zygote.py), with the part of
    subprocess.Popen's interface the fixtures and tests use. Not our child: its exit
    code comes from the zygote, which reaps it."""

    def __init__(self, zygote: GatewayZygote, pid: int, args: list[str]) -> None:
        self.zygote = zygote
        self.pid = pid
        self.args = args

    @property
    def returncode(self) -> int | None:
        return self.zygote.exits.get(self.pid)

    def poll(self) -> int | None:
        self.zygote.pump()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            time.sleep(0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class GatewayZygote:
    """One pre-imported Python per pytest process that forks each gateway (see
    tests/e2e/gateway_zygote.py): a gateway is up in about 0.1 s instead of 0.8 s.
    Started at the first gateway; stopped (EOF, then by its PID) at exit."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.gateway_zygote"],
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._buffer = b""
        self.exits: dict[int, int] = {}
        self._started: list[int] = []

    def pump(self) -> None:
        """Take in what the zygote said (started and exited children)."""
        while True:
            try:
                data = os.read(self._out, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if "exited" in message:
                self.exits[message["exited"]] = message["code"]
            else:
                self._started.append(message["started"])

    def start(self, argv: list[str], log: Path, timeout: float = 30.0) -> ForkedProcess:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the gateway zygote exited with {self.proc.returncode}")
        assert self.proc.stdin is not None
        request = {"argv": argv, "cwd": str(REPO), "log": str(log)}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while not self._started:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway zygote exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway zygote did not fork a gateway")
            time.sleep(0.005)
            self.pump()
        pid = self._started.pop(0)
        return ForkedProcess(self, pid, [sys.executable, "-m", "gateway", *argv])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)  # it exits at EOF
        stop_process(self.proc)


_ZYGOTE: GatewayZygote | None = None


def _zygote() -> GatewayZygote | None:
    """The zygote, started at first use; None with E2E_GATEWAY_FORK=0."""
    global _ZYGOTE
    if os.environ.get("E2E_GATEWAY_FORK", "1") == "0":
        return None
    if _ZYGOTE is None or _ZYGOTE.proc.poll() is not None:
        _ZYGOTE = GatewayZygote()
    return _ZYGOTE


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:  # noqa: ARG001
    if _ZYGOTE is not None:
        _ZYGOTE.close()


def start_gateway(gw: Gateway, timeout: float = 30.0) -> None:
    argv = ["--config", str(gw.config_path)]
    zygote = _zygote()
    if zygote is not None:
        gw.proc = zygote.start(argv, gw.log_path)
    else:
        cmd = [sys.executable, "-m", "gateway", *argv]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(gw.log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
        try:
            gw.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
    deadline = time.monotonic() + timeout
    while True:
        if gw.proc.poll() is not None:
            raise RuntimeError(
                f"gateway exited with {gw.proc.returncode} during start-up:\n{gw.log()}"
            )
        ready = (
            _proc_net_listening("tcp", gw.http_port)
            and _proc_net_listening("udp", gw.sip_port)
            and tcp_accepts(gw.http_port)
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"gateway not ready after {timeout:.0f} s (HTTP {gw.http_port} accepting, "
                f"SIP {gw.sip_port}/udp bound):\n{gw.log()}"
            )
        time.sleep(0.05)


@pytest.fixture
def e2e_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A working directory for one test; copied to artifacts/e2e/<test> on failure."""
    yield tmp_path
    if _failed(request.node):
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.nodeid)
        target = ARTIFACTS / name
        with contextlib.suppress(OSError):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(tmp_path, target, dirs_exist_ok=True)
            print(f"\n[e2e] logs copied to {target}")


@pytest.fixture
def gateway(request: pytest.FixtureRequest, e2e_dir: Path) -> Iterator[Gateway]:
    """A running gateway on free ports with users alice/1001 and bob/1002.

    The [pbx] uri points at `gateway.pbx_port`, where tests start sipp.
    """
    rtp = free_udp_range(40)
    gw = Gateway(
        http_port=free_port(),
        sip_port=free_port(),
        pbx_port=free_port(),
        rtp_range=rtp,
        config_path=e2e_dir / "gateway.toml",
        log_path=e2e_dir / "gateway.log",
        workdir=e2e_dir,
    )
    write_config(gw, getattr(request, "param", "") or "")
    try:
        start_gateway(gw)
        yield gw
    finally:
        if gw.proc is not None:
            code = stop_process(gw.proc)
            if code not in (0, -signal.SIGTERM, None):
                print(f"\n[e2e] gateway pid {gw.proc.pid} exited with {code}")
        if _failed(request.node):
            print(f"\n===== gateway log ({gw.log_path}) =====\n{gw.log()}")


# --------------------------------------------------------------------------- sipp


@dataclass
class SippProcess:
    name: str
    args: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    media_port: int | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return await wait_exit(self.proc, timeout)

    def logs(self) -> str:
        parts = []
        for path in self.files:
            if path.exists():
                parts.append(f"----- {path.name} -----\n{_read(path, 30000)}")
        return "\n".join(parts)


class SippFactory:
    """Starts sipp processes for one test and stops exactly those at teardown.

    sipp exit codes: 0 all calls succeeded, 1 at least one call failed, 97 exit on
    internal command, 99 normal exit without calls processed, 255 (-1) fatal error,
    254 (-2) fatal error binding a socket.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[SippProcess] = []

    def start(
        self, name: str, args: list[str], *, port: int, media_port: int | None = None
    ) -> SippProcess:
        _require(SIPP, "sip-tester")
        if media_port is None:
            media_port = free_port(tcp=False, span=4)
        base = self.workdir / f"sipp-{name}"
        files = {
            "stdout": base.with_suffix(".out"),
            "messages": base.with_suffix(".messages.log"),
            "errors": base.with_suffix(".errors.log"),
            "screen": base.with_suffix(".screen.log"),
        }
        cmd = [
            SIPP,
            *args,
            "-i", HOST,
            "-p", str(port),
            "-mi", HOST,
            "-mp", str(media_port),
            "-nostdin",
            "-trace_msg", "-message_file", str(files["messages"]),
            "-trace_err", "-error_file", str(files["errors"]),
            "-trace_screen", "-screen_file", str(files["screen"]),
        ]  # fmt: skip
        sp = SippProcess(name=name, args=cmd, workdir=self.workdir, media_port=media_port)
        sp.files = [files["stdout"], files["messages"], files["errors"], files["screen"]]
        files["stdout"].write_text("$ " + " ".join(cmd) + "\n")
        out = open(files["stdout"], "ab")  # noqa: SIM115
        try:
            sp.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ, TERM="dumb"),
            )
        finally:
            out.close()
        self.started.append(sp)
        return sp

    def wait_bound(self, sp: SippProcess, port: int, timeout: float = 10.0) -> None:
        """Wait until sipp has bound its SIP UDP port (so an INVITE to it is not lost)."""
        deadline = time.monotonic() + timeout
        while not _proc_net_listening("udp", port):
            if sp.proc is not None and sp.proc.poll() is not None:
                raise RuntimeError(f"sipp {sp.name} exited with {sp.proc.returncode}:\n{sp.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sipp {sp.name} did not bind {port}/udp:\n{sp.logs()}")
            time.sleep(0.05)

    def uas_echo(self, port: int, *, timeout: int = 60) -> SippProcess:
        """sipp's built-in UAS (180, 200 with PCMU SDP, waits for BYE) echoing RTP."""
        sp = self.start(
            "uas",
            ["-sn", "uas", "-rtp_echo", "-m", "1", "-timeout", f"{timeout}s", "-timeout_error"],
            port=port,
        )
        self.wait_bound(sp, port)
        return sp

    def uac_echo(
        self,
        target: str,
        number: str,
        *,
        port: int,
        duration_ms: int = 6000,
        timeout: int = 60,
    ) -> SippProcess:
        """sipp's built-in UAC calling `number` at `target`, echoing RTP, BYE after the pause."""
        return self.start(
            "uac",
            [
                target,
                "-sn",
                "uac",
                "-s",
                number,
                "-rtp_echo",
                "-d",
                str(duration_ms),
                "-m",
                "1",
                "-timeout",
                f"{timeout}s",
                "-timeout_error",
            ],  # fmt: skip
            port=port,
        )

    def scenario(
        self,
        name: str,
        xml: str,
        target: str | None,
        *,
        port: int,
        number: str = "service",
        timeout: int = 60,
        extra: list[str] | None = None,
    ) -> SippProcess:
        """A scenario file from tests/e2e/scenarios/."""
        args = [target] if target else []
        args += ["-sf", str(SCENARIOS / xml), "-s", number, "-m", "1"]
        args += ["-timeout", f"{timeout}s", "-timeout_error", *(extra or [])]
        return self.start(name, args, port=port)

    def stop_all(self) -> None:
        for sp in self.started:
            if sp.proc is not None:
                stop_process(sp.proc, grace=3.0)


@pytest.fixture
def sipp(request: pytest.FixtureRequest, e2e_dir: Path) -> Iterator[SippFactory]:
    factory = SippFactory(e2e_dir)
    try:
        yield factory
    finally:
        factory.stop_all()
        if _failed(request.node):
            for sp in factory.started:
                print(f"\n===== sipp {sp.name} (pid {sp.pid}, exit {sp.returncode}) =====")
                print(sp.logs())


# --------------------------------------------------------------------------- clients


@pytest.fixture
async def clients(request: pytest.FixtureRequest, e2e_dir: Path):
    """Factory for json-v1 test clients; closes them all at teardown."""
    from tests.e2e.client import JsonV1Client

    made: list[JsonV1Client] = []

    async def make(gw: Gateway, *, query: str = "", connect: bool = True, **kwargs) -> JsonV1Client:
        # `query`: URL parameters such as "identifier=..." (restore) or "access_token=...".
        client = JsonV1Client(gw.ws_url + (f"?{query}" if query else ""), **kwargs)
        made.append(client)
        if connect:
            await client.connect()
        return client

    try:
        yield make
    finally:
        for client in made:
            with contextlib.suppress(Exception):
                await client.close()
        if _failed(request.node):
            for i, client in enumerate(made):
                transcript = client.transcript()
                print(f"\n===== json-v1 client #{i} {client.name} ({client.url}) =====")
                print(transcript)
                with contextlib.suppress(OSError):
                    (e2e_dir / f"client-{i}.log").write_text(transcript + "\n")
