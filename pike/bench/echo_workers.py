"""Requests per second of pike.server's echo server against asyncio's.

Runs ``python -m pike echo`` (the event-driven listener, with 1 and with 2
worker processes) and asyncio's ``create_server`` echo (the benchmark's
``asyncio`` server) one after another, rounds interleaved, each driven by the
project's C load generator in ping-pong mode on 127.0.0.1, and prints the
median requests/s with the ratio to asyncio::

    python -m pike bench --mode workers [--connections 10,1000] [--size 64]
                                        [--rounds 3] [--duration 4]

The servers and the load generator share this machine's cores, so a second
worker can only help as far as a core is free for it.
"""

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys

from pike.bench import native

SERVERS = {
    "pike echo, 1 process": [sys.executable, "-m", "pike", "echo", "--port", "0"],
    "pike echo, 2 workers": [
        sys.executable, "-m", "pike", "echo", "--port", "0", "--workers", "2",
    ],
    "asyncio create_server": [
        sys.executable, "-m", "pike.bench.servers", "asyncio", "--port", "0",
    ],
}


def _port_of(line):
    line = line.strip()
    if line.startswith("{"):
        return json.loads(line)["port"]
    match = re.search(r":(\d+)", line)
    if not match:
        raise RuntimeError(f"no port in the server's first line: {line!r}")
    return int(match.group(1))


def run_once(loadgen, command, connections, size, duration):
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        port = _port_of(server.stdout.readline())
        result = subprocess.run(
            [loadgen, "--port", str(port), "--mode", "pingpong",
             "--connections", str(connections), "--size", str(size),
             "--warmup", "1", "--duration", str(duration)],
            capture_output=True, text=True, timeout=duration + 60,
        )
        figures = json.loads(result.stdout)
        if result.returncode != 0 or figures.get("errors"):
            raise RuntimeError(f"load generator failed: {result.stdout}{result.stderr}")
        return figures["rps"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pike bench --mode workers",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="10,1000")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args(argv)
    loadgen = native.build("loadgen")
    if loadgen is None:
        print(f"cannot build the load generator: {native.last_error('loadgen')}")
        return 2
    for connections in [int(c) for c in args.connections.split(",")]:
        rates = {name: [] for name in SERVERS}
        for round_number in range(args.rounds):
            for name, command in SERVERS.items():
                print(f"  {connections} connections, round {round_number + 1}: {name}",
                      file=sys.stderr, flush=True)
                rates[name].append(
                    run_once(loadgen, command, connections, args.size, args.duration)
                )
        baseline = statistics.median(rates["asyncio create_server"])
        print(f"\n{connections} connections, {args.size} B ping-pong "
              f"(median of {args.rounds} rounds of {args.duration:g} s)")
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"  {name:24s} {rate:10,.0f} req/s  {rate / baseline:5.2f}x asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
