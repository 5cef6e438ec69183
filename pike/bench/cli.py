"""``python -m pike bench``: the side-by-side echo benchmark.

Runs every echo server (pike on each poller and implementation, asyncio,
uvloop and asyncore where available, the bare Python loop ``py-floor``, and
the C reference server ``c-ref``)
against the same load generator (the C one where it builds), and prints a
table per case. Progress goes to stderr, the tables to stdout.
"""

import argparse
import signal
import sys

from pike.bench import report, runner
from pike.bench import servers as server_kinds

DEFAULTS = {"warmup": 1.0, "duration": 3.0, "repeat": 3}
QUICK = {"warmup": 0.5, "duration": 2.0, "repeat": 1}
MAX_CONNECTIONS = 1000

#: Cases of each mode: (full run, --quick).
PINGPONG_CONNECTIONS = ([1, 10, 100], [10, 100])
PINGPONG_SIZES = ([64, 1024, 16384], [1024])
STREAM_CONNECTIONS = ([1, 10], [1])
STREAM_SIZES = ([65536], [65536])
STREAM_WINDOW = 1024 * 1024
#: Largest stream write (the Python load generator's pattern period).
MAX_STREAM_SIZE = 1024 * 1024
SCALE_IDLE = ([1000, 10000], [1000, 10000])
SCALE_ACTIVE = 10
SCALE_SIZES = ([1024], [1024])

MODE_CHOICES = runner.MODES + ("all",)


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


def _size(text):
    values = _size_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError("expected one size")
    return values[0]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pike bench",
        description=(
            "Side-by-side echo benchmark: each server in its own process, a separate "
            "load generator process (C where it builds), 127.0.0.1 only. Ping-pong's "
            "headline is the server's CPU time per request; ratios are to asyncio and "
            "to the C reference server c-ref of the same run."
        ),
    )
    parser.add_argument(
        "--mode", choices=MODE_CHOICES, default="pingpong",
        help=(
            "pingpong (default): request/echo at 1, 10, 100 connections x 64 B, 1 KiB, "
            "16 KiB; stream: MiB/s with every byte checked; scale: 10 active connections "
            "alone and beside 1,000 and 10,000 idle ones, and memory per idle connection; "
            "all: the three"
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"one round of {QUICK['duration']:g} s windows ({QUICK['warmup']:g} s "
            "warm-up); ping-pong at 10 and 100 connections x 1 KiB, stream at 1 "
            "connection; explicit options still win"
        ),
    )
    parser.add_argument("--json", metavar="PATH", help="write all raw and median figures here")
    parser.add_argument(
        "--plot", metavar="PATH.png",
        help="draw a bar chart of the server CPU figures (needs matplotlib)",
    )
    parser.add_argument(
        "--servers",
        metavar="LIST",
        help=(
            "comma-separated servers (default: all available); a pike server may name "
            "its implementation, e.g. pike-epoll:python, else it runs on each one built"
        ),
    )
    parser.add_argument(
        "--impl",
        metavar="LIST",
        help="run every pike server on each of these implementations (auto, c, python)",
    )
    parser.add_argument(
        "--loadgen", choices=("c", "python"),
        help="load generator (default: the C one when it builds, else Python)",
    )
    parser.add_argument(
        "--connections", type=_int_list, metavar="LIST",
        help="concurrent connections of ping-pong and stream cases "
             "(default 1,10,100; stream 1,10; --quick 10,100; stream 1)",
    )
    parser.add_argument(
        "--size", type=_size_list, metavar="LIST",
        help="message sizes (stream: write sizes), e.g. 64,1k,16k "
             "(default 64,1k,16k; stream 64k; scale 1k; --quick: 1k)",
    )
    parser.add_argument(
        "--window", type=_size, metavar="BYTES", default=STREAM_WINDOW,
        help="stream: most unechoed bytes per connection (default 1m)",
    )
    parser.add_argument(
        "--idle", type=_int_list, metavar="LIST",
        help="scale: idle connections per case (default 1000,10000)",
    )
    parser.add_argument(
        "--active", type=int, default=SCALE_ACTIVE, metavar="N",
        help=f"scale: active connections beside the idle ones (default {SCALE_ACTIVE})",
    )
    parser.add_argument("--duration", type=float, help="seconds measured per run (default 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 1)")
    parser.add_argument("--repeat", type=int, help="rounds per case; medians are taken (default 3)")
    parser.add_argument(
        "--baseline", default="asyncio", metavar="SERVER",
        help="server the ratios compare with, beside c-ref (default asyncio)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--list", action="store_true", help="list the servers available here and exit")
    parser.add_argument(
        "--from-json", metavar="PATH",
        help="print the tables of a saved run (and draw it with --plot) and exit",
    )
    return parser


def _servers(args, parser, impls=None):
    """``(specs, skipped)``: the servers to run, and {server: why it is left out}."""
    python_kinds = server_kinds.available_kinds(native=False)
    c_ref_why = server_kinds.c_ref_unavailable()
    available = python_kinds + ([] if c_ref_why else [server_kinds.C_REF])
    skipped = {}
    if args.impl:
        impl_list = [part.strip() for part in args.impl.split(",") if part.strip()]
    else:
        impl_list = None
    if args.servers:
        try:
            specs = [runner.ServerSpec.parse(part) for part in args.servers.split(",") if part.strip()]
        except ValueError as exc:
            parser.error(str(exc))
        if c_ref_why and any(spec.kind == server_kinds.C_REF for spec in specs):
            parser.error(f"c-ref cannot be built here: {c_ref_why}")
        missing = [spec.kind for spec in specs if spec.kind not in available]
        if missing:
            parser.error(
                f"not available here: {', '.join(missing)}; available: {', '.join(available)}"
            )
    else:
        specs = [runner.ServerSpec(kind) for kind in available]
        if c_ref_why:
            skipped[server_kinds.C_REF] = c_ref_why
    built = impls if impls is not None else runner.pike_implementations()
    asked_c = any(spec.impl == "c" for spec in specs) or (impl_list and "c" in impl_list)
    if asked_c and "c" not in built:
        parser.error(
            "pike's C accelerator is not built here (PIKE_IMPL=c fails): "
            "ask for the python implementation, or build the accelerator"
        )
    if impl_list is None:
        impl_list = built
    expanded = []
    for spec in specs:
        if server_kinds.is_pike_kind(spec.kind) and spec.impl is None:
            try:
                expanded.extend(runner.ServerSpec(spec.kind, impl) for impl in impl_list)
            except ValueError as exc:
                parser.error(str(exc))
        else:
            expanded.append(spec)
    return list(dict.fromkeys(expanded)), skipped


def _pick(value, defaults, quick):
    return value if value is not None else defaults[1 if quick else 0]


def _check_fd_limit(parser, idle):
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max(idle) + 64
    if hard != resource.RLIM_INFINITY and hard < needed:
        parser.error(
            f"--idle {max(idle)} needs {needed} file descriptors per process but the "
            f"hard RLIMIT_NOFILE is {hard} (raise it with ulimit -Hn, or ask for fewer)"
        )


def _draw(path, results, progress):
    from pike.bench import plot

    try:
        plot.draw(results, path)
    except plot.PlotUnavailable as exc:
        progress(f"pike bench: --plot: no chart drawn: {exc}")
        return False
    except (ValueError, OSError) as exc:
        progress(f"pike bench: --plot: no chart drawn: {exc}")
        return False
    progress(f"pike bench: chart written to {path}")
    return True


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    def progress(message):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    if args.list:
        for kind in server_kinds.available_kinds():
            print(kind)
        return 0
    if args.from_json:
        try:
            results = report.read_json(args.from_json)
        except (OSError, ValueError) as exc:
            parser.error(f"--from-json: {exc}")
        sys.stdout.write(report.format_report(results))
        if args.plot:
            _draw(args.plot, results, progress)
        return 0

    quick = args.quick
    base = QUICK if quick else DEFAULTS
    warmup = base["warmup"] if args.warmup is None else args.warmup
    duration = base["duration"] if args.duration is None else args.duration
    repeat = base["repeat"] if args.repeat is None else args.repeat
    modes = list(runner.MODES) if args.mode == "all" else [args.mode]
    connections = args.connections
    if connections is not None and any(not 1 <= c <= MAX_CONNECTIONS for c in connections):
        parser.error(f"--connections must be between 1 and {MAX_CONNECTIONS}")
    if args.size is not None and any(s < 1 for s in args.size):
        parser.error("--size must be at least 1 byte")
    if "stream" in modes and args.size is not None and max(args.size) > MAX_STREAM_SIZE:
        parser.error(f"stream writes are at most {MAX_STREAM_SIZE} bytes (--size)")
    if not 1 <= args.window <= 64 * 1024 * 1024:
        parser.error("--window must be between 1 byte and 64m")
    if not 1 <= args.active <= MAX_CONNECTIONS:
        parser.error(f"--active must be between 1 and {MAX_CONNECTIONS}")
    idle = _pick(args.idle, SCALE_IDLE, quick)
    if any(not 1 <= n <= runner.MAX_IDLE for n in idle):
        parser.error(f"--idle must be between 1 and {runner.MAX_IDLE} (ephemeral ports)")
    if "scale" in modes:
        _check_fd_limit(parser, idle)

    try:
        loadgen, loadgen_note = runner.Loadgen.choose(args.loadgen)
    except runner.BenchError as exc:
        parser.error(f"--loadgen c: {exc}")
    impls = runner.pike_implementations()
    specs, skipped = _servers(args, parser, impls)
    try:
        settings = runner.Settings(
            specs,
            modes=modes,
            connections=_pick(connections, PINGPONG_CONNECTIONS, quick),
            sizes=_pick(args.size, PINGPONG_SIZES, quick),
            stream_connections=_pick(connections, STREAM_CONNECTIONS, quick),
            stream_sizes=_pick(args.size, STREAM_SIZES, quick),
            stream_window=args.window,
            idle=idle,
            scale_active=args.active,
            scale_sizes=_pick(args.size, SCALE_SIZES, quick),
            warmup=warmup,
            duration=duration,
            repeat=repeat,
            baseline=args.baseline,
            pin=not args.no_pin,
            loadgen=loadgen,
        )
    except ValueError as exc:
        parser.error(str(exc))

    notes = []
    if loadgen_note:
        progress(f"pike bench: {loadgen_note}")
        notes.append(loadgen_note)
    if "c" not in impls and not args.impl and not args.servers:
        note = "pike's C accelerator is not built here: pike servers run on the python implementation only"
        progress(f"pike bench: {note}")
        notes.append(note)
    for server, why in skipped.items():
        progress(f"pike bench: {server} skipped: {why}")
    if args.plot:
        from pike.bench import plot

        why = plot.unavailable()
        if why:
            progress(f"pike bench: --plot: {why}; the benchmark runs, but draws no chart")
    progress(
        f"pike bench: {'+'.join(settings.modes)}, {settings.total_runs()} runs "
        f"({', '.join(spec.label for spec in settings.servers)}), "
        f"load generator {loadgen.kind}, about {settings.estimated_seconds():.0f} s"
    )
    previous = runner.install_sigterm_handler()
    try:
        results = runner.run_benchmark(settings, progress=progress, skipped=skipped, notes=notes)
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
    if args.plot:
        _draw(args.plot, results, progress)
    return 1 if report.has_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
