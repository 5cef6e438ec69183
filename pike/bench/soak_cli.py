"""``python -m pike bench --mode soak``: the soak of pike's echo and Chat servers.

For each server (``echo``: ``python -m pike echo``, the
:class:`~pike.server.echo.EchoConnection` server; ``chat``: the
:class:`~pike.bench.chat_echo.LineEcho` server) on each implementation
(``echo:c``, ``echo:python``, ...) and each transport (TCP on 127.0.0.1,
a Unix socket), a fresh server process takes its share of ``--cycles``
connect / echo / close cycles from :func:`pike.bench.soak.run_cycles`,
while its fds and resident memory are sampled. It prints a line of progress
every few seconds, then a table of what held, and exits non-zero if any
byte was missing or wrong, a cycle stalled, or a bound was broken.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from pike.bench import processes, soak

KINDS = ("echo", "chat")
TRANSPORTS = ("tcp", "unix")
DEFAULT_CYCLES = 1_000_000
DEFAULT_MAX_SECONDS = 4 * 3600
#: The ready line of ``python -m pike echo`` and of the chat server.
_READY = re.compile(
    r"listening on (?:tcp (?P<host>[^ ]+):(?P<port>\d+)|unix (?P<path>.+?)) "
    r"\(poller (?P<poller>\w+), implementation (?P<impl>\w+)"
)


class SoakSpec:
    """A server of the soak: ``echo`` or ``chat``, on implementation ``c`` or ``python``."""

    def __init__(self, kind, impl):
        if kind not in KINDS:
            raise ValueError(f"soak servers are {', '.join(KINDS)}, not {kind!r}")
        if impl not in ("c", "python"):
            raise ValueError(f"implementation must be c or python, not {impl!r}")
        self.kind, self.impl = kind, impl

    @property
    def label(self):
        return f"{self.kind}:{self.impl}"

    def __eq__(self, other):
        return isinstance(other, SoakSpec) and self.label == other.label

    def __hash__(self):
        return hash(self.label)

    def __repr__(self):
        return f"SoakSpec({self.label!r})"


def parse_specs(text, impls):
    """``echo,chat:python`` -> SoakSpecs; a kind without ``:IMPL`` runs on each of ``impls``."""
    specs = []
    for part in (text or ",".join(KINDS)).split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, impl = part.partition(":")
        for one in ([impl] if sep else impls):
            specs.append(SoakSpec(kind, one))
    if not specs:
        raise ValueError("no soak servers given")
    return list(dict.fromkeys(specs))


class SoakServer:
    """One soak server in a child process, listening on TCP or a Unix socket."""

    def __init__(self, procs, spec, transport, max_seconds):
        self.spec, self.transport, self.procs = spec, transport, procs
        self._dir = None
        self._stderr = tempfile.TemporaryFile()
        if transport == "unix":
            self._dir = tempfile.mkdtemp(prefix="pike-soak-")
            where = ["--unix", os.path.join(self._dir, "s")]
        else:
            where = ["--host", processes.HOST, "--port", "0"]
        if spec.kind == "echo":
            # pike's own echo server, as ``python -m pike echo`` runs it, with an
            # alarm that outlives the exec so an orphan ends too.
            args = [sys.executable, "-S", "-c", processes.EXEC_WITH_ALARM, str(int(max_seconds)),
                    sys.executable, "-m", "pike", "echo"] + where
        else:
            args = [sys.executable, "-m", "pike.bench.chat_echo",
                    "--max-seconds", str(int(max_seconds))] + where
        self.proc = procs.spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=self._stderr,
                                env=processes.child_env({"PIKE_IMPL": spec.impl}))
        self.pid = self.proc.pid
        try:
            line = processes.read_line(self.proc.stdout, time.monotonic() + processes.READY_TIMEOUT,
                                     self.proc).decode("utf-8", "replace")
            match = _READY.search(line)
            if match is None:
                raise processes.BenchError(
                    f"soak server {spec.label} over {transport} did not start: "
                    f"{self.stderr_tail() or line!r}"
                )
            if match["impl"] != spec.impl:
                raise processes.BenchError(f"{spec.label} runs implementation {match['impl']}")
            self.poller = match["poller"]
            if transport == "unix":
                self.address, self.family = match["path"], socket.AF_UNIX
            else:
                self.address, self.family = (match["host"], int(match["port"])), socket.AF_INET
        except BaseException:
            self.stop()
            raise

    def alive(self):
        return self.proc.poll() is None

    def stderr_tail(self):
        return processes.tail(self._stderr)

    def stop(self):
        status = self.procs.stop(self.proc)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        return status


def soak_one(procs, spec, transport, cycles, *, concurrency=4, half_close_share=0.3,
             rss_growth_mib=soak.RSS_GROWTH_MIB, deadline=None, seed=0, progress=None,
             payloads=None, max_failures=soak.MAX_FAILURES):
    """Run ``cycles`` cycles of ``transport`` against a fresh ``spec`` server; its result."""
    # The server's own lifetime bound: the run's time, or a generous guess
    # from the cycle count when no time bound was given.
    budget = (deadline - time.monotonic()) if deadline else max(3600.0, cycles / 100.0)
    server = SoakServer(procs, spec, transport, max_seconds=max(60.0, budget + 120.0))
    warmup = max(20, min(cycles // 50, 5000)) if cycles >= 40 else 0
    say = progress or (lambda message: None)

    def tick(done, started, elapsed):
        rate = done / elapsed if elapsed > 0 else 0.0
        say(f"  {spec.label} {transport}: {done:,}/{cycles:,} cycles, {rate:,.0f}/s")

    try:
        watch = soak.Watch(server.pid, concurrency, rss_growth_mib=rss_growth_mib)
        result = soak.run_cycles(
            server.address, server.family, cycles,
            payloads or soak.Payloads(seed, lines=spec.kind == "chat"),
            transport=transport, half_close_share=half_close_share, concurrency=concurrency,
            seed=seed, watch=watch, warmup_cycles=warmup, deadline=deadline,
            progress=tick, server_alive=server.alive, max_failures=max_failures,
        )
    finally:
        alive = server.alive()
        server.stop()
    tail = server.stderr_tail()
    if not alive:
        result["failed"] += 1
        result["failures"].append(f"the server exited early: {tail or 'no message'}")
    elif "Traceback" in tail or "Error" in tail:
        result["failed"] += 1
        result["failures"].append(f"the server logged errors: {tail[-600:]}")
    result.update(server=spec.label, poller=server.poller, warmup_cycles=warmup,
                  concurrency=concurrency)
    result["violations"] = result["watch"]["violations"]
    result["complete"] = result["cycles"] == cycles
    # A run the time bound cut short passes if nothing went wrong: it says so.
    result["passed"] = not result["failed"] and not result["violations"] and (
        result["complete"] or result["stopped"] == soak.TIME_BOUND
    )
    return result


def _mib(value):
    return "-" if value is None else f"{value / 1048576:.1f}"


def _n(value):
    return "-" if value is None else str(value)


def format_results(results):
    """The soak's table and the bounds each run held, as text."""
    head = ["server", "over", "cycles", "failed", "half-closed", "MiB echoed", "cycles/s",
            "fds start/warm/min/max/end", "RSS MiB start/warm/min/max/end", "result"]
    rows = []
    for r in results:
        fds, rss = r["watch"]["fds"], r["watch"]["rss_bytes"]
        verdict = "FAIL" if not r["passed"] else "PASS" if r.get("complete", True) else "PASS*"
        rows.append([
            r["server"], r["transport"], f"{r['cycles']:,}/{r['cycles_asked']:,}",
            f"{r['failed']:,}",
            f"{r['half_closed']:,}", f"{r['bytes'] / 1048576:,.0f}",
            "-" if r["rate"] is None else f"{r['rate']:,.0f}",
            "/".join(_n(fds.get(k)) for k in ("start", "warm", "min", "max", "end")),
            "/".join(_mib(rss.get(k)) for k in ("start", "warm", "min", "max", "end")),
            verdict,
        ])
    widths = [max(len(x[i]) for x in [head] + rows) for i in range(len(head))]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()
    lines = ["pike bench --mode soak: connect / echo / close cycles, every byte checked",
             fmt(head), fmt(["-" * w for w in widths])] + [fmt(row) for row in rows]
    lines.append("")
    lines.append("bounds held (fds: warm + 2 x concurrency + slack while running, warm + slack "
                 "at the end; RSS: warm + the growth bound, all after warm-up):")
    for r in results:
        fds, rss = r["watch"]["fds"], r["watch"]["rss_bytes"]
        state = "held" if not r["violations"] else "BROKEN"
        if fds.get("warm") is None:
            lines.append(f"  {r['server']} {r['transport']}: not sampled")
            continue
        lines.append(
            f"  {r['server']} {r['transport']}: fds <= {fds['bound_running']} running, "
            f"<= {fds['bound_end']} at the end; RSS <= {_mib(rss.get('bound'))} MiB "
            f"(warm + {r['watch']['rss_growth_bytes'] / 1048576:g} MiB): {state}; "
            f"{r['watch']['samples']} samples, warm-up {r['warmup_cycles']:,} cycles"
        )
    problems = [(r, msg) for r in results for msg in r["failures"] + r["violations"]]
    for r in results:
        if r["cycles"] < r["cycles_asked"] and not r["failed"] and not r["violations"]:
            why = ("* the time bound stopped it" if r["stopped"] == soak.TIME_BOUND
                   else f"stopped ({r['stopped'] or 'incomplete'})")
            problems.append((r, f"{why} after {r['cycles']:,} of {r['cycles_asked']:,} cycles"))
    if problems:
        lines.append("")
        lines.append("FAILURES:" if any(not r["passed"] for r, _ in problems) else "notes:")
        for r, msg in problems:
            lines.append(f"  {r['server']} {r['transport']}: {msg}")
    passed = all(r["passed"] for r in results)
    lines.append("")
    lines.append(
        f"soak {'PASSED' if passed else 'FAILED'}: {sum(r['cycles'] for r in results):,} "
        f"cycles over {len(results)} server runs, "
        f"{sum(r['seconds'] for r in results):,.0f} s"
    )
    return "\n".join(lines) + "\n"


#: The soak's options: (flag, type, default, metavar, help).
OPTIONS = (
    ("--cycles", int, DEFAULT_CYCLES, "N",
     "connect/echo/close cycles per soak server, split between the transports "
     "(default 1,000,000)"),
    ("--max-seconds", float, DEFAULT_MAX_SECONDS, "S",
     "stop starting soak cycles after this long in all (default 14400; 0: no bound)"),
    ("--half-close", float, 0.3, "SHARE",
     "share of soak cycles that shut down their sending side and read to EOF (default 0.3)"),
    ("--concurrency", int, 4, "N", "soak cycles in flight at once (default 4)"),
    ("--transport", str, "tcp,unix", "LIST",
     "soak over tcp (127.0.0.1), unix sockets, or both (default tcp,unix)"),
    ("--rss-growth", float, soak.RSS_GROWTH_MIB, "MIB",
     "most the soak server's resident memory may grow after warm-up (default 16)"),
    ("--max-failures", int, soak.MAX_FAILURES, "N",
     "a soak server run stops after N failed cycles (default 5; 0: count them all)"),
    ("--seed", int, 1, "N", "seed of the soak's payloads (default 1)"),
)


def add_arguments(parser):
    """The options of ``--mode soak``, in a group of their own."""
    group = parser.add_argument_group("--mode soak (--servers: echo, chat, echo:c, ...)")
    for flag, kind, default, metavar, text in OPTIONS:
        group.add_argument(flag, type=kind, default=default, metavar=metavar, help=text)


def run(args, parser, progress):
    """``--mode soak`` from the bench's parsed arguments; the exit status."""
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    if not 0.0 <= args.half_close <= 1.0:
        parser.error("--half-close is a share between 0 and 1")
    if not 1 <= args.concurrency <= 256:
        parser.error("--concurrency must be between 1 and 256")
    transports = [t.strip() for t in args.transport.split(",") if t.strip()]
    if not transports or any(t not in TRANSPORTS for t in transports):
        parser.error(f"--transport is a list of {', '.join(TRANSPORTS)}")
    if "unix" in transports and not hasattr(socket, "AF_UNIX"):
        parser.error("this platform has no Unix sockets: --transport tcp")
    impls, problem = processes.probe_implementations()
    wanted_impls = [i.strip() for i in args.impl.split(",")] if args.impl else impls
    try:
        specs = parse_specs(args.servers, wanted_impls)
    except ValueError as exc:
        parser.error(str(exc))
    if any(spec.impl == "c" for spec in specs) and "c" not in impls:
        parser.error(f"--mode soak: the C implementation cannot run here: {problem}")
    if "c" not in impls and not args.impl:
        progress(f"pike bench: pike's C accelerator is not in use here, so the soak runs "
                 f"the python implementation only: {problem}")
    runs = [(spec, transport) for spec in specs for transport in transports]
    per_run = [args.cycles // len(transports)] * len(runs)
    for i, (spec, transport) in enumerate(runs):
        if transport == transports[0]:
            per_run[i] += args.cycles % len(transports)  # each server gets all --cycles
    deadline = time.monotonic() + args.max_seconds if args.max_seconds else None
    progress(
        f"pike bench: soak, {args.cycles:,} cycles per server over "
        f"{'+'.join(transports)} ({', '.join(s.label for s in specs)}), "
        f"{args.half_close:.0%} half-closing, {args.concurrency} at once"
        + (f", at most {args.max_seconds:g} s" if deadline else "")
    )
    results = []
    payloads = {}
    try:
        with processes.sigterm_as_exit(), processes.ProcessSet() as procs:
            for i, ((spec, transport), cycles) in enumerate(zip(runs, per_run)):
                # Each run gets its share of the time left.
                run_deadline = None
                if deadline is not None:
                    run_deadline = time.monotonic() + (deadline - time.monotonic()) / (len(runs) - i)
                lines = spec.kind == "chat"
                if lines not in payloads:
                    payloads[lines] = soak.Payloads(args.seed, lines=lines)
                progress(f"[{i + 1}/{len(runs)}] {spec.label} over {transport}: {cycles:,} cycles")
                try:
                    result = soak_one(
                        procs, spec, transport, cycles, concurrency=args.concurrency,
                        half_close_share=args.half_close, rss_growth_mib=args.rss_growth,
                        deadline=run_deadline, seed=args.seed + i, progress=progress,
                        payloads=payloads[lines], max_failures=args.max_failures,
                    )
                except processes.BenchError as exc:
                    progress(f"[{i + 1}/{len(runs)}] {spec.label} over {transport}: FAILED: {exc}")
                    return 1
                verdict = "passed" if result["passed"] else "FAILED"
                progress(f"[{i + 1}/{len(runs)}] {spec.label} over {transport}: {verdict}, "
                         f"{result['cycles']:,} cycles in {result['seconds']:.0f} s"
                         + (f"; first failure: {result['failures'][0]}" if result["failures"] else ""))
                results.append(result)
    except KeyboardInterrupt:
        progress("pike bench: interrupted; every child process was stopped")
        return 130
    sys.stdout.write(format_results(results))
    sys.stdout.flush()
    if args.json:
        import json

        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"schema": "pike-soak/1", "runs": results}, f, indent=2)
            f.write("\n")
        progress(f"pike bench: results written to {args.json}")
    return 0 if all(r["passed"] for r in results) else 1
