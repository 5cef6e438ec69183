"""``python -m pike bench``: the side-by-side echo benchmark.

Runs every echo server (pike on each poller, asyncio, uvloop and asyncore
where available) against the same load generator, and prints a table per
case. Progress goes to stderr, the tables to stdout.
"""

import argparse
import signal
import sys

from pike.bench import report, runner
from pike.bench import servers as server_kinds

DEFAULTS = {"warmup": 1.0, "duration": 5.0, "repeat": 3}
QUICK = {"warmup": 0.5, "duration": 2.5, "repeat": 1}
MAX_CONNECTIONS = 1000


def _int_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _size_list(text):
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        scale = 1
        if part.endswith("k"):
            scale, part = 1024, part[:-1]
        elif part.endswith("m"):
            scale, part = 1024 * 1024, part[:-1]
        try:
            values.append(int(part) * scale)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size {part!r} (bytes, or 4k, 1m)")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one size")
    return values


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pike bench",
        description=(
            "Side-by-side ping-pong echo benchmark: each server in its own process, "
            "a separate load generator process, 127.0.0.1 only. The headline is the "
            "server's CPU time per request."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"one round of {QUICK['duration']:g} s windows "
            f"({QUICK['warmup']:g} s warm-up); explicit options still win"
        ),
    )
    parser.add_argument("--json", metavar="PATH", help="write all raw and median figures here")
    parser.add_argument(
        "--servers",
        metavar="LIST",
        help=(
            "comma-separated servers (default: all available); a pike server may name "
            "its implementation, e.g. pike-epoll:python"
        ),
    )
    parser.add_argument(
        "--impl",
        metavar="LIST",
        help="run every pike server on each of these implementations (auto, c, python)",
    )
    parser.add_argument(
        "--connections", type=_int_list, default=[1, 10], metavar="LIST",
        help="concurrent connections per case (default 1,10)",
    )
    parser.add_argument(
        "--size", type=_size_list, default=[1024], metavar="LIST",
        help="message sizes in bytes, e.g. 1024,16k (default 1024)",
    )
    parser.add_argument("--duration", type=float, help="seconds measured per run (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 1)")
    parser.add_argument("--repeat", type=int, help="rounds per case; medians are taken (default 3)")
    parser.add_argument(
        "--baseline", default="asyncio", metavar="SERVER",
        help="server the ratios compare with (default asyncio)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--list", action="store_true", help="list the servers available here and exit")
    parser.add_argument("--from-json", metavar="PATH", help="print the tables of a saved run and exit")
    return parser


def _servers(args, parser):
    available = server_kinds.available_kinds()
    if args.servers:
        try:
            specs = [runner.ServerSpec.parse(part) for part in args.servers.split(",") if part.strip()]
        except ValueError as exc:
            parser.error(str(exc))
        missing = [spec.kind for spec in specs if spec.kind not in available]
        if missing:
            parser.error(
                f"not available here: {', '.join(missing)}; available: {', '.join(available)}"
            )
    else:
        specs = [runner.ServerSpec(kind) for kind in available]
    if args.impl:
        impls = [part.strip() for part in args.impl.split(",") if part.strip()]
        expanded = []
        for spec in specs:
            if server_kinds.is_pike_kind(spec.kind) and spec.impl is None:
                try:
                    expanded.extend(runner.ServerSpec(spec.kind, impl) for impl in impls)
                except ValueError as exc:
                    parser.error(str(exc))
            else:
                expanded.append(spec)
        specs = expanded
    return list(dict.fromkeys(specs))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.list:
        for kind in server_kinds.available_kinds():
            print(kind)
        return 0
    if args.from_json:
        sys.stdout.write(report.format_report(report.read_json(args.from_json)))
        return 0

    base = QUICK if args.quick else DEFAULTS
    warmup = base["warmup"] if args.warmup is None else args.warmup
    duration = base["duration"] if args.duration is None else args.duration
    repeat = base["repeat"] if args.repeat is None else args.repeat
    if any(not 1 <= c <= MAX_CONNECTIONS for c in args.connections):
        parser.error(f"--connections must be between 1 and {MAX_CONNECTIONS}")
    if any(s < 1 for s in args.size):
        parser.error("--size must be at least 1 byte")
    try:
        settings = runner.Settings(
            _servers(args, parser),
            connections=args.connections,
            sizes=args.size,
            warmup=warmup,
            duration=duration,
            repeat=repeat,
            baseline=args.baseline,
            pin=not args.no_pin,
        )
    except ValueError as exc:
        parser.error(str(exc))

    def progress(message):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    progress(
        f"pike bench: {settings.total_runs()} runs "
        f"({', '.join(spec.label for spec in settings.servers)}), "
        f"about {settings.estimated_seconds():.0f} s"
    )
    previous = runner.install_sigterm_handler()
    try:
        results = runner.run_benchmark(settings, progress=progress)
    except KeyboardInterrupt:
        progress("pike bench: interrupted; every child process was stopped")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.stdout.write(report.format_report(results))
    sys.stdout.flush()
    if args.json:
        report.write_json(results, args.json)
        progress(f"pike bench: results written to {args.json}")
    return 1 if report.has_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
