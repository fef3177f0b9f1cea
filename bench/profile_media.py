"""
Where the gateway's CPU goes per packet: runs one bench/media_load.py load (N
calls, transcoded or pass-through) with the gateway process under cProfile
(media_load's BENCH_PROFILE) and prints the functions with the most own time,
in microseconds per packet the gateway received (RtpLeg datagrams plus browser
packets taken by WebRtcLeg's direct path), and optionally a `perf` sample of
the gateway by shared object (interpreter vs libopus vs kernel vs SRTP...).

    .venv/bin/python bench/profile_media.py --calls 32 --seconds 10
    .venv/bin/python bench/profile_media.py --calls 64 --browser-codec pcmu --perf
    .venv/bin/python bench/profile_media.py --calls 32 --sample

cProfile adds a fixed cost to every Python call, so its figures overstate
code made of many small calls and say nothing about time inside C functions
that are not Python callables (uvloop's sendto shows up in its caller); read
them as a ranking, and compare CPU per call with media_load.py without the
profiler. ``--perf`` (needs perf and permission to attach) samples the real
thing without that bias, but cannot name Python functions on Python 3.11.
``--sample`` (media_load's BENCH_SAMPLE) takes a statistical profile instead:
the Python stack at each SIGPROF tick of the gateway's CPU time (1 ms asked,
~4 ms granted by the kernel here) during the measurement window, so the shares
are unbiased (time in C counts toward the Python function that called it; the
event loop's own receive work shows in the datagram callback it leads to).
"""

import argparse
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the functions that see each received packet once: the per-packet denominator
RECEIVE_FUNCTIONS = ("_datagram_received", "_receive_direct")


def packets_received(stats: pstats.Stats) -> int:
    total = 0
    for (filename, _, name), (_, calls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        if name in RECEIVE_FUNCTIONS and filename.endswith(("rtpleg.py", "webrtcleg.py")):
            total += calls
    return total


def print_profile(path: str, top: int) -> None:
    stats = pstats.Stats(path)
    packets = max(1, packets_received(stats))
    rows = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: kv[1][2],
        reverse=True,
    )
    total = sum(v[2] for _, v in rows)
    print(f"{packets} packets received; own time per received packet (us), all functions:")
    print(f"{'own us':>8} {'cum us':>8} {'calls/pkt':>9}  function")
    for (filename, line, name), (_, calls, tottime, cumtime, _) in rows[:top]:
        where = os.path.relpath(filename, ROOT) if filename.startswith(ROOT) else filename
        if len(where) > 60:
            where = "..." + where[-57:]
        print(
            f"{1e6 * tottime / packets:8.2f} {1e6 * cumtime / packets:8.2f} "
            f"{calls / packets:9.2f}  {where}:{line}({name})"
        )
    print(f"total profiled time {total:.2f} s = {1e6 * total / packets:.1f} us per packet")


def print_samples(path: str, top: int) -> None:
    with open(path) as f:
        data = json.load(f)
    samples = max(1, data["samples"])
    print(f"{samples} samples; % of the gateway's CPU:")
    for kind in ("self", "total"):
        print(f"-- {kind} (the function itself{' and what it called' if kind == 'total' else ''})")
        rows = sorted(data[kind].items(), key=lambda kv: kv[1], reverse=True)[:top]
        for name, count in rows:
            print(f"{100 * count / samples:6.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--browser-codec", choices=("opus", "pcmu"), default="opus")
    parser.add_argument("--stock-loop", action="store_true", help="gateway on asyncio's loop")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--perf", action="store_true", help="perf sample instead of cProfile")
    parser.add_argument("--sample", action="store_true", help="statistical profile instead")
    parser.add_argument("--keep", help="write the cProfile data here")
    args = parser.parse_args()
    cmd = [
        sys.executable,
        os.path.join(HERE, "media_load.py"),
        "--calls",
        str(args.calls),
        "--seconds",
        str(args.seconds),
        "--browser-codec",
        args.browser_codec,
    ]
    if not args.stock_loop:
        cmd.append("--gateway-uvloop")
    env = dict(os.environ)
    if args.perf:
        if not shutil.which("perf"):
            sys.exit("perf not found")
        load = subprocess.Popen(cmd, env=env)
        gateway = None
        for _ in range(600):  # until the gateway child exists and the calls run
            time.sleep(0.1)
            out = subprocess.run(
                ["pgrep", "-P", str(load.pid)], capture_output=True, text=True
            ).stdout.split()
            children = [int(p) for p in out]
            for child in children:
                # taskset execs python in place; the gateway is the child with --role
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    if b"--role" in f.read():
                        gateway = child
            if gateway is not None:
                break
        if gateway is None:
            load.wait()
            sys.exit("gateway process not found")
        time.sleep(3 + args.calls * 0.05)  # setup and warm-up
        data = tempfile.mktemp(suffix=".perf")
        subprocess.run(
            [
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock",
                "-F",
                "2000",
                "-p",
                str(gateway),
                "-o",
                data,
                "--",
                "sleep",
                str(max(1.0, args.seconds - 2)),
            ],
            check=False,
        )
        load.wait()
        subprocess.run(
            ["perf", "report", "-i", data, "--no-children", "--sort", "dso", "--stdio"],
            check=False,
        )
        os.unlink(data)
        return
    if args.sample:
        path = args.keep or tempfile.mktemp(suffix=".json")
        env["BENCH_SAMPLE"] = path
        subprocess.run(cmd, env=env, check=True)
        print_samples(path, args.top)
        if not args.keep:
            os.unlink(path)
        return
    path = args.keep or tempfile.mktemp(suffix=".prof")
    env["BENCH_PROFILE"] = path
    subprocess.run(cmd, env=env, check=True)
    print_profile(path, args.top)
    if not args.keep:
        os.unlink(path)


if __name__ == "__main__":
    main()
