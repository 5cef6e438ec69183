"""User-space instructions per echoed request, per server, by callgrind.

``python -m pike bench`` times servers on the wall clock, which a shared
machine makes noisy. This script counts what a server does in user space
for one 1 KiB ping-pong request instead: the same count on every run,
whatever else the machine is doing. Kernel work is not counted; every
server here makes the same system calls per request (one ``recv``, one
``send``, one ``epoll_wait`` at one connection), so the user-space count
is where they differ::

    python -m pike bench --mode callgrind-echo     # needs valgrind (Linux)
    python -m pike bench --mode callgrind-echo --servers c-ref,py-floor,pike-epoll:c

Each server runs under ``valgrind --tool=callgrind`` with instrumentation
off until it is listening; ``callgrind_control`` turns it on just before
the C load generator connects (by default one connection: one event per
wake-up, so every server batches the same) and off again when the load generator is
done, so start-up and shutdown are not counted. The count divided by the
requests the load generator completed is the figure; the connection's
accept and close are spread over thousands of requests.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from pike.bench import native
from pike.bench import servers as server_kinds

# The source tree this module is in (pike/bench/ is two levels below it).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_SERVERS = "c-ref,py-floor,pike-epoll:c,pike-epoll:python,uvloop,asyncio"
READY_TIMEOUT = 60.0


def server_command(label):
    """(argv, extra environment) that start the server ``label``."""
    kind, _, impl = label.partition(":")
    if kind == server_kinds.C_REF:
        exe = server_kinds.c_ref_executable()
        if exe is None:
            raise SystemExit(f"c-ref is unavailable: {server_kinds.c_ref_unavailable()}")
        return [exe, "--host", server_kinds.HOST, "--port", "0"], {}
    argv = [sys.executable, "-m", "pike.bench.servers", kind, "--port", "0",
            "--max-seconds", "300"]
    env = {"PYTHONHASHSEED": "0"}  # hashing moves counts by a few percent
    if impl:
        argv += ["--impl", impl]
        env["PIKE_IMPL"] = impl
    return argv, env


def read_port(stdout, proc):
    """The port from the server's ready line (JSON, or c-ref's bare number)."""
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the server did not become ready")
        chunk = stdout.readline()
        line += chunk
        if not chunk:
            time.sleep(0.05)
    text = line.decode().strip()
    return int(text) if text.isdigit() else int(json.loads(text)["port"])


def count(label, seconds, valgrind, control, loadgen, workdir, connections=1):
    """(instructions, requests) of one server under callgrind."""
    argv, extra_env = server_command(label)
    out = os.path.join(workdir, "callgrind.out." + label.replace(":", "-"))
    env = dict(os.environ, PYTHONPATH=ROOT, **extra_env)
    proc = subprocess.Popen(
        [valgrind, "--tool=callgrind", "--instr-atstart=no",
         "--callgrind-out-file=" + out] + argv,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        port = read_port(proc.stdout, proc)
        subprocess.run([control, "-i", "on", str(proc.pid)], check=True,
                       capture_output=True, timeout=60)
        result = subprocess.run(
            [loadgen, "--port", str(port), "--connections", str(connections), "--size", "1024",
             "--warmup", "0", "--duration", str(seconds)],
            capture_output=True, text=True, timeout=seconds + 120,
        )
        subprocess.run([control, "-i", "off", str(proc.pid)], check=True,
                       capture_output=True, timeout=60)
        report = json.loads(result.stdout)
        if result.returncode != 0 or report.get("errors"):
            raise RuntimeError(f"{label}: load generator failed: {result.stdout}")
    finally:
        proc.terminate()
        try:
            # Under valgrind, exit and the final dump take a while; and a
            # signal that arrives just before a wait begins can be noted
            # without ending the wait (valgrind delivers signals at system
            # calls), so a second one follows if the first goes unanswered.
            try:
                _, stderr = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.terminate()
                _, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    # The dump ends with "totals:"; a dump cut short still has "summary:".
    with open(out) as dump:
        lines = [line for line in dump if line.startswith(("totals:", "summary:"))]
    if not lines:
        raise RuntimeError(f"{label}: no callgrind totals: {stderr.decode()[-2000:]}")
    return int(lines[-1].split()[1]), int(report["requests"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=DEFAULT_SERVERS,
                        help=f"comma-separated (default {DEFAULT_SERVERS})")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="load generator run per server (default 5)")
    parser.add_argument("--connections", type=int, default=1,
                        help="ping-pong connections (default 1; with more, a slower "
                             "server batches more events per wake-up, so the counts "
                             "are less alike)")
    args = parser.parse_args(argv)
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    if valgrind is None or control is None:
        sys.exit("valgrind (with callgrind_control) is not installed")
    loadgen = native.build("loadgen")
    if loadgen is None:
        sys.exit(f"the C load generator did not build: {native.last_error('loadgen')}")
    available = set(server_kinds.available_kinds())
    rows = []
    print(f"{'server':20s}{'requests':>10s}{'instr/request':>15s}{'vs c-ref':>10s}")
    with tempfile.TemporaryDirectory() as workdir:
        for label in args.servers.split(","):
            if label.partition(":")[0] not in available:
                print(f"{label:20s}  (not available here)")
                continue
            instructions, requests = count(label, args.seconds, valgrind, control,
                                           loadgen, workdir, args.connections)
            per_request = instructions / max(requests, 1)
            rows.append((label, per_request))
            base = dict(rows).get(server_kinds.C_REF)
            ratio = f"{per_request / base:9.1f}x" if base else f"{'-':>10s}"
            print(f"{label:20s}{requests:10d}{per_request:15,.0f}{ratio}", flush=True)


if __name__ == "__main__":
    main()
