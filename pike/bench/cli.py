"""``python -m pike bench``: the side-by-side echo benchmark.

By default a short run of the headline servers (pike on C and on the pure
path, asyncio, uvloop and the C reference server ``c-ref``) at 1 KiB and
10 and 100 connections, summed up in one table and a sentence. ``--quick``
runs every server available (pike on each poller and implementation,
asyncore and the bare Python loop ``py-floor`` too) for one short round;
``--full`` runs the whole matrix of every server. All against the same load
generator (the C one where it builds). Progress goes to stderr, the tables
to stdout. ``--mode soak`` is the endurance check of :mod:`pike.bench.soak`,
``--mode tls`` (or ``--tls``) the echo over TLS of :mod:`pike.bench.tls`.

The other modes are tools of their own, each with its own options (``python
-m pike bench --mode NAME --help``): the rest of the command line goes to
the module named in :data:`TOOL_MODES`.
"""

import argparse
import sys

from pike._cli import ArgumentParser
from pike.bench import loadgen_runs, processes, report, runner, runs
from pike.bench import servers as server_kinds

#: Windows and rounds of each preset: the default (headline), --quick, --full.
HEADLINE = {"warmup": 0.5, "duration": 2.0, "repeat": 2}
QUICK = {"warmup": 0.5, "duration": 2.0, "repeat": 1}
FULL = {"warmup": 1.0, "duration": 3.0, "repeat": 3}
MAX_CONNECTIONS = 1000

#: Cases of each mode: (--full, default and --quick).
PINGPONG_CONNECTIONS = ([1, 10, 100], [10, 100])
PINGPONG_SIZES = ([64, 1024, 16384], [1024])
STREAM_CONNECTIONS = ([1, 10], [1])
STREAM_SIZES = ([65536], [65536])
STREAM_WINDOW = 1024 * 1024
#: Size of the file the stream mode's file row serves (made once per run).
FILE_SIZE = 64 * 1024 * 1024
MAX_FILE_SIZE = 1024 * 1024 * 1024
#: Largest stream write (the Python load generator's pattern period).
MAX_STREAM_SIZE = 1024 * 1024
SCALE_IDLE = ([1000, 10000], [1000, 10000])
SCALE_ACTIVE = 10
SCALE_SIZES = ([1024], [1024])

#: Modes that are tools of their own: mode -> (module, what it measures).
#: Each module has ``main(argv)``, which gets the command line without ``--mode``.
TOOL_MODES = {
    "micro": ("pike.bench.micro",
              "pytest-benchmark microbenchmarks of dispatch, framing, raw I/O and "
              "the write queue, on both implementations"),
    "callgrind-echo": ("pike.bench.callgrind_echo",
                       "user-space instructions per echoed request, per server "
                       "(needs valgrind)"),
    "callgrind-io": ("pike.bench.callgrind_io",
                     "user-space instructions per call of Transport's raw I/O "
                     "(needs valgrind)"),
    "asynchat": ("pike.bench.asynchat_lines",
                 "an asynchat line echo: pike.compat against the standard library's"),
    "compat-scale": ("pike.bench.compat_scale",
                     "legacy asyncore/asynchat servers beside idle connections, "
                     "per pike.compat sweep mode"),
    "workers": ("pike.bench.echo_workers",
                "req/s of python -m pike echo (1 and 2 worker processes) against asyncio"),
    "spiro": ("pike.bench.spiro_calls",
              "SPIRO round trips per second, and many sessions at once"),
}

MODE_CHOICES = runner.MODES + ("all", "soak", "tls") + tuple(TOOL_MODES)


def headline_servers(impls, c_ref_available):
    """The default run's servers: pike on C and on the pure path, asyncio, uvloop, c-ref.

    pike runs on the platform's best poller; a server not available here is
    left out (the report says why for pike's C path and for c-ref).
    """
    import pike

    kind = f"pike-{pike.available_pollers()[0]}"
    specs = [processes.ServerSpec(kind, impl) for impl in ("c", "python") if impl in impls]
    specs.append(processes.ServerSpec("asyncio"))
    if "uvloop" in server_kinds.available_kinds(native=False):
        specs.append(processes.ServerSpec("uvloop"))
    if c_ref_available:
        specs.append(processes.ServerSpec(server_kinds.C_REF))
    return specs


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
    parser = ArgumentParser(  # (errors are one line: see pike._cli)
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
            "pingpong (default): request/echo (--full: 1, 10, 100 connections x 64 B, "
            "1 KiB, 16 KiB; else 10 and 100 x 1 KiB); stream: MiB/s with every byte "
            "checked, and a file served with sendfile (see --file-size); scale: 10 "
            "active connections alone and beside 1,000 and 10,000 idle ones, and memory "
            "per idle connection; all: the three; soak: a long connect/echo/close "
            "endurance check of pike's echo and Chat servers (see --cycles); tls: as "
            "--tls. Tools with options of their own (--mode NAME --help): "
            + "; ".join(f"{name}: {what}" for name, (_, what) in TOOL_MODES.items())
        ),
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"every server available, one round of {QUICK['duration']:g} s windows "
            f"({QUICK['warmup']:g} s warm-up), the short cases of the mode "
            "(ping-pong: 10 and 100 connections x 1 KiB; stream: 1 connection); "
            "explicit options still win"
        ),
    )
    preset.add_argument(
        "--full",
        action="store_true",
        help=(
            f"the full matrix: every server, {FULL['repeat']} rounds of "
            f"{FULL['duration']:g} s windows, every case of the mode"
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
             "(--full: 1,10,100, stream 1,10; else 10,100, stream 1)",
    )
    parser.add_argument(
        "--size", type=_size_list, metavar="LIST",
        help="message sizes (stream: write sizes), e.g. 64,1k,16k "
             "(--full: 64,1k,16k; else 1k; stream 64k; scale 1k)",
    )
    parser.add_argument(
        "--window", type=_size, metavar="BYTES", default=STREAM_WINDOW,
        help="stream: most unechoed bytes per connection (default 1m)",
    )
    parser.add_argument(
        "--file-size", type=_size, metavar="BYTES", default=FILE_SIZE,
        help="stream: size of the file served with sendfile (default 64m; 0: no file row)",
    )
    parser.add_argument(
        "--idle", type=_int_list, metavar="LIST",
        help="scale: idle connections per case (default 1000,10000)",
    )
    parser.add_argument(
        "--active", type=int, default=SCALE_ACTIVE, metavar="N",
        help=f"scale: active connections beside the idle ones (default {SCALE_ACTIVE})",
    )
    parser.add_argument(
        "--duration", type=float,
        help=f"seconds measured per run (default {HEADLINE['duration']:g}; --full {FULL['duration']:g})",
    )
    parser.add_argument(
        "--warmup", type=float,
        help=f"seconds of warm-up per run (default {HEADLINE['warmup']:g}; --full {FULL['warmup']:g})",
    )
    parser.add_argument(
        "--repeat", type=int,
        help=(f"rounds per case; medians are taken (default {HEADLINE['repeat']}; "
              f"--quick {QUICK['repeat']}; --full {FULL['repeat']})"),
    )
    parser.add_argument(
        "--baseline", default="asyncio", metavar="SERVER",
        help="server the ratios compare with, beside c-ref (default asyncio)",
    )
    from pike.bench import soak_cli

    soak_cli.add_arguments(parser)
    parser.add_argument(
        "--tls", action="store_true",
        help=(
            "echo over TLS instead: pike, asyncio and uvloop serving the same "
            "certificate; ping-pong (10 and 100 connections x 1 KiB, or --connections "
            "and --size) and streaming (1 connection); see pike.bench.tls"
        ),
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
            specs = [processes.ServerSpec.parse(part) for part in args.servers.split(",") if part.strip()]
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
        specs = [processes.ServerSpec(kind) for kind in available]
        if c_ref_why:
            skipped[server_kinds.C_REF] = c_ref_why
    built = impls if impls is not None else processes.pike_implementations()
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
                expanded.extend(processes.ServerSpec(spec.kind, impl) for impl in impl_list)
            except ValueError as exc:
                parser.error(str(exc))
        else:
            expanded.append(spec)
    return list(dict.fromkeys(expanded)), skipped


def _pick(value, defaults, full):
    return value if value is not None else defaults[0 if full else 1]


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


def _format(results, headline):
    """The text of a run: the headline table for ping-pong by default, else every table."""
    if not headline or "pingpong" not in results["settings"]["modes"]:
        return report.format_report(results)
    from pike.bench import headline as headline_table

    text = headline_table.format_headline(results)
    others = [case for case in results["cases"] if report.case_mode(case) != "pingpong"]
    if others:
        text += "\n" + report.format_report(dict(results, cases=others))
    return text


def _run_tls(args, parser, progress):
    """``--tls``: the TLS cases of :mod:`pike.bench.tls`, one table."""
    import json

    from pike.bench import tls

    base = QUICK if args.quick else HEADLINE
    connections = args.connections or PINGPONG_CONNECTIONS[1]
    if any(not 1 <= c <= MAX_CONNECTIONS for c in connections):
        parser.error(f"--connections must be between 1 and {MAX_CONNECTIONS}")
    size = args.size[0] if args.size else PINGPONG_SIZES[1][0]
    if size < 1:
        parser.error("--size must be at least 1 byte")
    try:
        results = tls.run(
            pingpong_connections=connections, size=size,
            warmup=base["warmup"] if args.warmup is None else args.warmup,
            duration=base["duration"] if args.duration is None else args.duration,
            progress=progress,
        )
    except tls.TLSBenchError as exc:
        progress(f"error: {exc}")
        return 1
    sys.stdout.write(tls.format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tls": results}, f, indent=1)
    return 0


def _tool_mode(argv):
    """``(mode, the rest of argv)`` when ``argv`` asks for a tool mode, else None.

    Only ``--mode NAME`` and ``--mode=NAME`` are looked for: anything else,
    a missing value included, is left to the benchmark's own parser.
    """
    for index, arg in enumerate(argv):
        if arg == "--mode" and index + 1 < len(argv):
            mode, rest = argv[index + 1], argv[:index] + argv[index + 2:]
        elif arg.startswith("--mode="):
            mode, rest = arg.partition("=")[2], argv[:index] + argv[index + 1:]
        else:
            continue
        return (mode, rest) if mode in TOOL_MODES else None
    return None


def run_tool(mode, argv):
    """Run the tool of ``mode`` with ``argv``; its exit status."""
    import importlib

    module = importlib.import_module(TOOL_MODES[mode][0])
    return module.main(argv) or 0


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    tool = _tool_mode(argv)
    if tool is not None:
        return run_tool(*tool)
    parser = build_parser()
    args = parser.parse_args(argv)

    def progress(message):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    if args.list:
        for kind in server_kinds.available_kinds():
            print(kind)
        return 0
    if args.mode == "soak":
        from pike.bench import soak_cli

        return soak_cli.run(args, parser, progress)
    if args.tls or args.mode == "tls":
        return _run_tls(args, parser, progress)
    if args.from_json:
        try:
            results = report.read_json(args.from_json)
        except (OSError, ValueError) as exc:
            parser.error(f"--from-json: {exc}")
        sys.stdout.write(report.format_report(results))
        if args.plot:
            _draw(args.plot, results, progress)
        return 0

    full = args.full
    # The default run is the headline: a few servers, one table.
    headline = not (args.quick or full or args.servers or args.impl)
    base = FULL if full else QUICK if args.quick else HEADLINE
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
    if not 0 <= args.file_size <= MAX_FILE_SIZE:
        parser.error("--file-size must be between 0 and 1g")
    if not 1 <= args.window <= 64 * 1024 * 1024:
        parser.error("--window must be between 1 byte and 64m")
    if not 1 <= args.active <= MAX_CONNECTIONS:
        parser.error(f"--active must be between 1 and {MAX_CONNECTIONS}")
    idle = _pick(args.idle, SCALE_IDLE, full)
    if any(not 1 <= n <= runs.MAX_IDLE for n in idle):
        parser.error(f"--idle must be between 1 and {runs.MAX_IDLE} (ephemeral ports)")
    if "scale" in modes:
        _check_fd_limit(parser, idle)

    try:
        loadgen, loadgen_note = loadgen_runs.Loadgen.choose(args.loadgen)
    except processes.BenchError as exc:
        parser.error(f"--loadgen c: {exc}")
    impls, accel_problem = processes.probe_implementations()
    specs, skipped = _servers(args, parser, impls)
    if headline:
        specs = headline_servers(impls, server_kinds.C_REF not in skipped)
    try:
        settings = runner.Settings(
            specs,
            modes=modes,
            connections=_pick(connections, PINGPONG_CONNECTIONS, full),
            sizes=_pick(args.size, PINGPONG_SIZES, full),
            stream_connections=_pick(connections, STREAM_CONNECTIONS, full),
            stream_sizes=_pick(args.size, STREAM_SIZES, full),
            stream_window=args.window,
            file_size=args.file_size,
            idle=idle,
            scale_active=args.active,
            scale_sizes=_pick(args.size, SCALE_SIZES, full),
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
        note = (
            "pike's C accelerator is not in use here, so pike servers run on the python "
            f"implementation only: {accel_problem or 'the probe with PIKE_IMPL=c failed'}"
        )
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
    try:
        with processes.sigterm_as_exit():
            results = runner.run_benchmark(settings, progress=progress, skipped=skipped,
                                           notes=notes)
    except KeyboardInterrupt:
        progress("pike bench: interrupted; every child process was stopped")
        return 130
    sys.stdout.write(_format(results, headline))
    sys.stdout.flush()
    if args.json:
        report.write_json(results, args.json)
        progress(f"pike bench: results written to {args.json}")
    if args.plot:
        _draw(args.plot, results, progress)
    return 1 if report.has_failures(results) else 0


if __name__ == "__main__":
    sys.exit(main())
