"""A pre-imported Python that forks gateways for the end-to-end tests.

`python -m gateway` spends most of its start-up (0.6-0.8 s of the 0.8 s an e2e test's
gateway fixture took) importing aiortc, PyAV, numpy and the gateway itself; the suite
starts about 170 gateways. This process imports them once (as `python -m gateway`
would) and then, for each request, forks a child that runs `gateway.cli.main(argv)`
exactly as `python -m gateway` does: its own session, cwd, stdin from /dev/null,
stdout and stderr to the log file, the exit code of main() (or of the signal that
ended it). Nothing runs in this process but the loop below: one thread, so a fork
copies no lock another thread holds.

Protocol (lines on stdin / stdout, JSON):
  -> {"argv": [...], "cwd": "...", "log": "..."}   <- {"started": pid}
                                                  <- {"exited": pid, "code": code}
EOF on stdin: exit (children run on; the fixtures stop them by PID).

Started by tests/e2e/conftest.py (GatewayZygote); E2E_GATEWAY_FORK=0 there starts
each gateway as `python -m gateway` instead.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import sys
import traceback

import gateway.app  # noqa: F401  (the core, aiortc, PyAV, numpy)
import gateway.cli

try:  # gateway.cli runs the loop on uvloop when it is installed
    import uvloop  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def _child(request: dict) -> None:
    """In the forked child: become `python -m gateway <argv>`; never returns."""
    code = 1
    try:
        os.setsid()
        os.chdir(request["cwd"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sys.argv = [sys.executable, "-m", "gateway", *request["argv"]]
        try:
            code = gateway.cli.main(request["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the log, as Python would
        traceback.print_exc()
        code = 1
    finally:
        # what interpreter exit does: atexit handlers (logging.shutdown among them)
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _say(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _say({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> None:
    stdin = sys.stdin.fileno()
    buffer = b""
    while True:
        ready, _, _ = select.select([stdin], [], [], 0.05)
        _reap()
        if not ready:
            continue
        data = os.read(stdin, 65536)
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            _say({"started": pid})


if __name__ == "__main__":
    main()
