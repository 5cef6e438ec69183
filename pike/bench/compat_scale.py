"""Legacy asyncore/asynchat servers beside idle connections: before and after.

Usage::

    python -m pike bench --mode compat-scale
        [--idle 10000] [--active 10] [--size 1024] [--seconds 3] [--warmup 1]
        [--servers compat-asyncore,compat-asynchat] [--sweeps always,auto]
        [--json FILE]

Each server of :mod:`pike.bench.compat_servers` (the override-style asyncore
echo, and the async_chat line server driven with the native load
generator's ``--line``) runs in its own process under each sweep mode of
pike.compat's loop (``PIKE_ASYNCORE_SWEEP``): ``always`` asks every channel
``readable()`` / ``writable()`` on every iteration, as the original loop
did (the "before"); ``auto`` asks only the channels whose answers may have
changed (the "after"). For each, the same server process is measured with
``--active`` ping-pong connections alone, then again once ``--idle`` idle
connections are open; the table shows both rates, their ratio, and the
server's resident memory per idle connection (RSS growth while they were
opened, over their number).

Linux only (``/proc`` for memory and fds); 127.0.0.1 only; every process it
starts is stopped before it exits.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

from pike.bench import native, processes, runs

HOST = "127.0.0.1"


def _raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(f"{needed} fds needed, RLIMIT_NOFILE allows {soft}")


def _start_server(kind, sweep, lines):
    env = dict(os.environ, PIKE_ASYNCORE_SWEEP=sweep)
    argv = [sys.executable, "-m", "pike.bench.compat_servers", kind, "--max-seconds", "600"]
    if lines:
        argv.append("--lines")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        raise SystemExit(f"{kind} did not start")
    return proc, json.loads(line)


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def _loadgen(exe, port, active, size, warmup, seconds, lines, pid):
    argv = [exe, "--host", HOST, "--port", str(port), "--mode", "pingpong",
            "--connections", str(active), "--size", str(size),
            "--warmup", str(warmup), "--duration", str(seconds), "--server-pid", str(pid)]
    if lines:
        argv.append("--line")
    out = subprocess.run(argv, capture_output=True, timeout=warmup + seconds + 60)
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    if "error" in result:
        raise SystemExit(f"load generator: {result['error']}")
    return result


def _one(kind, sweep, args, exe):
    lines = kind == "compat-asynchat"
    proc, info = _start_server(kind, sweep, lines)
    pid = info["pid"]
    try:
        alone = _loadgen(exe, info["port"], args.active, args.size, args.warmup,
                         args.seconds, lines, pid)
        time.sleep(0.5)
        fds_before = processes.fd_count(pid)
        rss_before = processes.rss_bytes(pid)
        with runs.IdleConnections() as pool:
            pool.open(info["port"], args.idle, pid, fds_before)
            time.sleep(0.5)
            rss_after = processes.rss_bytes(pid)
            beside = _loadgen(exe, info["port"], args.active, args.size, args.warmup,
                              args.seconds, lines, pid)
    finally:
        _stop(proc)
    return {
        "server": kind, "sweep": sweep, "idle": args.idle, "active": args.active,
        "rps_alone": alone["rps"], "rps_beside": beside["rps"],
        "ratio": beside["rps"] / alone["rps"] if alone["rps"] else None,
        "rss_per_idle_bytes": (rss_after - rss_before) / args.idle,
        "cpu_us_alone": _cpu_per_request(alone), "cpu_us_beside": _cpu_per_request(beside),
    }


def _cpu_per_request(result):
    cpu = result.get("server_cpu_s")
    if cpu is None or not result.get("requests"):
        return None
    return cpu * 1e6 / result["requests"]


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pike bench --mode compat-scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--active", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--servers", default="compat-asyncore,compat-asynchat")
    parser.add_argument("--sweeps", default="always,auto")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds (servers interleaved); medians are printed")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    exe = native.build("loadgen")
    if exe is None:
        raise SystemExit("the native load generator cannot be built here")
    _raise_nofile(args.idle + 256)
    print(f"python {sys.version.split()[0]}; {args.active} active x {args.size} B "
          f"ping-pong, alone and beside {args.idle} idle connections")
    print(f"{'server':18} {'sweep':7} {'alone req/s':>12} {'beside req/s':>13} "
          f"{'ratio':>6} {'ratio range':>12} {'CPU us/req alone':>17} {'beside':>7} "
          f"{'B/idle':>7}")
    results = []
    cases = [(kind, sweep) for kind in args.servers.split(",")
             for sweep in args.sweeps.split(",")]
    for _ in range(args.repeat):
        for kind, sweep in cases:
            results.append(_one(kind, sweep, args, exe))
    for kind, sweep in cases:
        runs = [r for r in results if (r["server"], r["sweep"]) == (kind, sweep)]

        def med(name, runs=runs):
            return _median([r[name] for r in runs])

        ratios = [r["ratio"] for r in runs if r["ratio"] is not None]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
        cpu_a, cpu_b = med("cpu_us_alone"), med("cpu_us_beside")
        print(f"{kind:18} {sweep:7} {med('rps_alone'):12.0f} {med('rps_beside'):13.0f} "
              f"{med('ratio'):6.2f} {spread:>12} "
              f"{cpu_a if cpu_a is None else round(cpu_a, 1)!s:>17} "
              f"{cpu_b if cpu_b is None else round(cpu_b, 1)!s:>7} "
              f"{med('rss_per_idle_bytes'):7.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"python": sys.version, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
