"""Run the benchmark: every case, every server, every round.

Three modes, each a list of cases:

* ``pingpong``: N connections each send a message and wait for its echo;
  the figures are requests/s, latency and the server's CPU time per request.
* ``stream``: N connections keep a window of bytes in flight; the figures
  are echoed MiB/s and the server's CPU time per MiB. Beside them, the file
  row (case mode ``file``, :mod:`pike.bench.fileserve`): a file sent with
  sendfile to a client that counts its bytes, in the same figures.
* ``scale``: a few active ping-pong connections, measured once alone and
  once beside N idle connections that the runner holds open; the figures
  are the two rates, their ratio, and the growth of the server's resident
  memory per idle connection.

For each case every server runs once per round, interleaved (A B C, A B C,
...), each time in a fresh process, so a slow spell of the machine touches
all servers alike. One run is :mod:`pike.bench.runs`' job, its processes
:mod:`pike.bench.processes`', its load generator
:mod:`pike.bench.loadgen_runs`'.
"""

import contextlib
import os
import platform
import sys
import time

from pike.bench import SCHEMA
from pike.bench import cpu as cpu_accounting
from pike.bench import fileserve
from pike.bench import servers as server_kinds
from pike.bench.loadgen_runs import Loadgen
from pike.bench.processes import BenchError, ProcessSet
from pike.bench.runs import MAX_IDLE, run_file_once, run_once, run_scale_once, scale_skip_reason

MODES = ("pingpong", "stream", "scale")

# -- the whole benchmark ------------------------------------------------------------


def machine_info(cpus=(None, None)):
    """Facts about this machine and these Pythons for the report."""
    import pike
    from pike import _impl

    info = {
        "python": sys.version.split()[0],
        "python_implementation": sys.implementation.name,
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": cpu_accounting.usable_cpus(),
        "cpu_model": _cpu_model(),
        "pike_version": pike.__version__,
        "pike_implementation": pike.IMPLEMENTATION,
        "pike_implementations_available": _impl.available_implementations(),
        "pike_pollers_available": pike.available_pollers(),
        "server_cpu": cpus[0],
        "loadgen_cpu": cpus[1],
        "clock_ticks": cpu_accounting.CLOCK_TICKS,
    }
    try:
        import uvloop

        info["uvloop_version"] = uvloop.__version__
    except ImportError:
        info["uvloop_version"] = None
    return info


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


class Settings:
    """What to run: modes, servers, cases, rounds and windows.

    ``connections`` and ``sizes`` are the ping-pong cases; ``stream_*`` the
    stream cases (``stream_window``: most unechoed bytes per connection),
    and with ``file_size`` (bytes; 0: none) the stream mode's file row;
    ``idle`` the scale cases, each with ``scale_active`` active connections
    of ``scale_size``-byte messages. ``loadgen`` is a :class:`Loadgen`
    (default: the Python one).
    """

    def __init__(self, servers, connections=(1, 10), sizes=(1024,), warmup=1.0,
                 duration=5.0, repeat=3, baseline="asyncio", pin=True, modes=("pingpong",),
                 loadgen=None, stream_connections=(1,), stream_sizes=(65536,),
                 stream_window=1024 * 1024, idle=(1000, 10000), scale_active=10,
                 scale_sizes=(1024,), file_size=0):
        self.servers = list(servers)
        self.modes = [mode for mode in MODES if mode in modes]
        self.connections = list(connections)
        self.sizes = list(sizes)
        self.warmup = float(warmup)
        self.duration = float(duration)
        self.repeat = int(repeat)
        self.baseline = baseline
        self.pin = pin
        self.loadgen = loadgen or Loadgen("python")
        self.stream_connections = list(stream_connections)
        self.stream_sizes = list(stream_sizes)
        self.stream_window = int(stream_window)
        self.file_size = int(file_size)
        self.idle = list(idle)
        self.scale_active = int(scale_active)
        self.scale_sizes = list(scale_sizes)
        if not self.servers:
            raise ValueError("no servers to run")
        unknown = set(modes) - set(MODES)
        if unknown or not self.modes:
            raise ValueError(f"modes must be among {', '.join(MODES)}, not {sorted(modes)}")
        if self.repeat < 1 or self.duration <= 0 or self.warmup < 0:
            raise ValueError("need repeat >= 1, duration > 0 and warmup >= 0")
        if any(not 1 <= n <= MAX_IDLE for n in self.idle):
            raise ValueError(f"idle connections must be 1..{MAX_IDLE}")
        if self.file_size < 0:
            raise ValueError("the file row's file size must be >= 0 (0: no file row)")
        if self.scale_active < 1 or self.stream_window < 1:
            raise ValueError("need at least one active connection and a window >= 1 byte")

    def cases(self):
        """The cases to run, in order: dicts of mode and parameters, no runs yet."""
        cases = []
        if "pingpong" in self.modes:
            for connections in self.connections:
                for size in self.sizes:
                    cases.append({"mode": "pingpong", "connections": connections, "size": size})
        if "stream" in self.modes:
            for connections in self.stream_connections:
                for size in self.stream_sizes:
                    cases.append({"mode": "stream", "connections": connections, "size": size,
                                  "window": self.stream_window})
            if self.file_size:
                cases.append({"mode": "file", "connections": 1, "size": self.file_size})
        if "scale" in self.modes:
            for idle in self.idle:
                for size in self.scale_sizes:
                    cases.append({"mode": "scale", "idle": idle,
                                  "connections": self.scale_active, "size": size})
        return cases

    def total_runs(self):
        return len(self.cases()) * len(self.servers) * self.repeat

    def estimated_seconds(self):
        # Each run also starts a server and a load generator and stops them.
        window = self.warmup + self.duration
        total = 0.0
        for case in self.cases():
            for spec in self.servers:
                if case["mode"] == "file" and fileserve.skip_reason(spec.kind):
                    per_run = 0.0
                elif case["mode"] != "scale":
                    per_run = window + 0.6
                elif scale_skip_reason(spec, case["idle"], case["connections"]):
                    per_run = 0.0
                else:
                    per_run = 2 * (window + 0.2) + 0.5 + case["idle"] / 7000.0
                total += per_run * self.repeat
        return total

    def as_dict(self):
        return {
            "modes": self.modes,
            "mode": self.modes[0] if len(self.modes) == 1 else "all",
            "servers": [spec.label for spec in self.servers],
            "connections": self.connections,
            "sizes": self.sizes,
            "stream_connections": self.stream_connections,
            "stream_sizes": self.stream_sizes,
            "stream_window": self.stream_window,
            "file_size": self.file_size,
            "idle": self.idle,
            "scale_active": self.scale_active,
            "scale_sizes": self.scale_sizes,
            "warmup_s": self.warmup,
            "duration_s": self.duration,
            "repeat": self.repeat,
            "baseline": self.baseline,
            "reference": server_kinds.C_REF,
            "loadgen": self.loadgen.kind,
            "pin": self.pin,
        }


def describe_case(case):
    """A short label of a case for progress lines and charts."""
    if case["mode"] == "scale":
        return f"scale {case['idle']} idle + {case['connections']} x {case['size']} B"
    conns = f"{case['connections']} conn"
    if case["mode"] == "stream":
        return f"stream {conns} x {case['size']} B chunks"
    if case["mode"] == "file":
        return f"file {case['size']} B by sendfile"
    return f"{conns} x {case['size']} B"


def _run_line(run):
    mode = run.get("mode")
    if mode == "scale":
        kib = run.get("idle_kib_per_conn")
        ratio = run.get("rps_ratio")
        return (
            f"{run['rps_without']:10,.0f} -> {run['rps_with']:10,.0f} req/s "
            f"({'-' if ratio is None else f'{ratio:.2f}x'}), "
            f"{'-' if kib is None else f'{kib:.2f}'} KiB/idle conn, "
            f"idle opened in {run['idle_open_s']:.1f} s"
        )
    client = run.get("loadgen_cpu_pct")
    client_text = f"client CPU {client:.0f}%" if client is not None else ""
    if mode in ("stream", "file"):
        cpu = run.get("server_cpu_us_per_mib")
        cpu_text = f"{cpu:8.0f} us CPU/MiB" if cpu is not None else "CPU n/a"
        return f"{run['mib_per_s']:10,.1f} MiB/s  {cpu_text}  {client_text}"
    cpu = run.get("server_cpu_us_per_req")
    cpu_text = f"{cpu:8.1f} us CPU/req" if cpu is not None else "CPU n/a"
    return f"{run['rps']:10,.0f} req/s  {cpu_text}  {client_text}"


def run_benchmark(settings, progress=None, skipped=None, notes=None):
    """Run every case; return the results dict that :mod:`report` reads.

    ``progress(message)`` is called before and after each run. A failed
    run is recorded (``"error"``) and the benchmark goes on with the rest;
    a server that cannot run a case records ``"skipped"``. ``skipped``
    (server -> why it is not run at all) and ``notes`` go into the results.
    """
    from pike.bench import report

    say = progress or (lambda message: None)
    cpus = cpu_accounting.choose_cpus() if settings.pin else (None, None)
    started = time.time()
    results = {
        "schema": SCHEMA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(cpus),
        "settings": settings.as_dict(),
        "loadgen": settings.loadgen.as_dict(),
        "skipped_servers": dict(skipped or {}),
        "notes": list(notes or []),
        "cases": [],
    }
    total = settings.total_runs()
    done = 0
    cases = settings.cases()
    with contextlib.ExitStack() as cleanup:
        # The file row's file: made once, deleted after every process is stopped.
        file_path = None
        if any(case["mode"] == "file" for case in cases):
            file_path = cleanup.enter_context(fileserve.temporary_file(settings.file_size))
        procs = cleanup.enter_context(ProcessSet())
        for case in cases:
            case["runs"] = []
            results["cases"].append(case)
            label = describe_case(case)
            for round_no in range(1, settings.repeat + 1):
                for spec in settings.servers:
                    done += 1
                    where = (
                        f"[{done}/{total}] {label}, round {round_no}/{settings.repeat}: "
                        f"{spec.label:<18}"
                    )
                    try:
                        if case["mode"] == "file":
                            run = run_file_once(
                                procs, spec, file_path, case["size"],
                                settings.warmup, settings.duration, cpus,
                            )
                        elif case["mode"] == "scale":
                            run = run_scale_once(
                                procs, spec, case["idle"], case["connections"], case["size"],
                                settings.warmup, settings.duration, cpus, settings.loadgen,
                            )
                        else:
                            run = run_once(
                                procs, spec, case["connections"], case["size"],
                                settings.warmup, settings.duration, cpus,
                                loadgen=settings.loadgen, mode=case["mode"],
                                window=case.get("window"),
                            )
                    except BenchError as exc:
                        run = {"server": spec.label, "mode": case["mode"], "error": str(exc)}
                        say(f"{where} FAILED: {exc}")
                    else:
                        if "skipped" in run:
                            say(f"{where} skipped: {run['skipped']}")
                        else:
                            say(f"{where} {_run_line(run)}")
                    run["round"] = round_no
                    case["runs"].append(run)
            report.summarize_case(case, settings.servers, settings.baseline)
    results["elapsed_s"] = time.time() - started
    return results
