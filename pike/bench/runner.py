"""Run the benchmark: servers and load generator in processes of their own.

For each case (connections, message size) every server runs once per
round, interleaved (A B C, A B C, ...), each time in a fresh process, so a
slow spell of the machine touches all servers alike. A run is: start the
server, wait for its ready line, pin it to one core, run the load
generator pinned to another, stop the server. The load generator brackets
its measured window with readings of the server's CPU time; where that
cannot be read the runner falls back to ``getrusage(RUSAGE_CHILDREN)``
around reaping the server (its whole lifetime over all requests made).

Every child is registered in a :class:`ProcessSet` the moment it starts and
ended (SIGTERM, wait with a timeout, SIGKILL) in a ``finally``, also on
Ctrl-C and errors. Children run in their own session, so a Ctrl-C at the
terminal reaches only the runner, which then cleans up; each child also
bounds its own life with an alarm, in case the runner itself is killed.
"""

import json
import os
import platform
import selectors
import signal
import subprocess
import sys
import tempfile
import time

from pike.bench import SCHEMA
from pike.bench import cpu as cpu_accounting
from pike.bench import servers as server_kinds

#: Seconds a server may take to print its ready line.
READY_TIMEOUT = 20.0
#: Seconds a child gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 3.0
#: Extra seconds the load generator gets beyond warm-up + window.
LOADGEN_GRACE = 20.0


class BenchError(Exception):
    """A run could not be completed; the message says why."""


class ServerSpec:
    """A server to benchmark: a kind, and for pike kinds an implementation.

    Written ``KIND`` or ``KIND:IMPL`` (``pike-epoll:python``); ``IMPL`` is
    one of auto, c, python and is passed to the server as ``PIKE_IMPL``.
    """

    __slots__ = ("kind", "impl")

    def __init__(self, kind, impl=None):
        if kind not in server_kinds.ALL_KINDS:
            raise ValueError(
                f"unknown server {kind!r}; known: {', '.join(server_kinds.ALL_KINDS)}"
            )
        if impl is not None:
            if not server_kinds.is_pike_kind(kind):
                raise ValueError(f"{kind!r} takes no implementation (got {impl!r})")
            if impl not in ("auto", "c", "python"):
                raise ValueError(f"implementation must be auto, c or python, not {impl!r}")
        self.kind = kind
        self.impl = impl

    @classmethod
    def parse(cls, text):
        kind, sep, impl = text.strip().partition(":")
        return cls(kind, impl if sep else None)

    @property
    def label(self):
        return self.kind if self.impl in (None, "auto") else f"{self.kind}:{self.impl}"

    def __repr__(self):
        return f"ServerSpec({self.label!r})"

    def __eq__(self, other):
        return isinstance(other, ServerSpec) and self.label == other.label

    def __hash__(self):
        return hash(self.label)


# -- child processes --------------------------------------------------------------


class ProcessSet:
    """Every child process started, so that all of them get ended."""

    def __init__(self):
        self._procs = []

    def spawn(self, args, **kwargs):
        kwargs.setdefault("start_new_session", True)
        kwargs.setdefault("env", child_env())
        proc = subprocess.Popen(args, **kwargs)
        self._procs.append(proc)
        return proc

    def stop(self, proc, timeout=STOP_TIMEOUT):
        """End ``proc`` (SIGTERM, wait, SIGKILL, wait); return its exit status."""
        try:
            if proc.poll() is None:
                try:
                    proc.terminate()
                except OSError:
                    pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    try:
                        proc.kill()
                    except OSError:
                        pass
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        pass  # unkillable (stopped in the kernel): give up
            return proc.returncode
        finally:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            if proc in self._procs and proc.returncode is not None:
                self._procs.remove(proc)

    def stop_all(self):
        for proc in list(self._procs):
            self.stop(proc, timeout=1.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop_all()


def child_env(extra=None):
    """The environment of a child: ours, with this pike importable first."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Only a source tree is added: a site-packages dir is on the path anyway,
    # and putting it before the standard library could shadow modules.
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        paths = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop("PYTHONSTARTUP", None)
    if extra:
        env.update(extra)
    return env


def _read_line(stream, deadline, proc):
    """One line from a pipe, waiting no longer than ``deadline``."""
    fd = stream.fileno()
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("timed out waiting for the server's ready line")
            if not sel.select(min(remaining, 0.5)):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 65536:
                raise BenchError("the server's ready line is too long")
    return buf.split(b"\n", 1)[0]


def _tail(file_obj, limit=2000):
    try:
        file_obj.seek(0)
        text = file_obj.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""
    return text[-limit:].strip()


class ServerProcess:
    """One echo server in a child process; ``port`` and ``info`` once ready."""

    def __init__(self, procs, spec, cpu=None, max_seconds=None):
        self.spec = spec
        self.procs = procs
        self.pinned = False
        self._stderr = tempfile.TemporaryFile()
        args = [sys.executable, "-m", "pike.bench.servers", spec.kind, "--port", "0"]
        extra_env = {}
        if spec.impl is not None:
            args += ["--impl", spec.impl]
            extra_env["PIKE_IMPL"] = spec.impl
        if max_seconds is not None:
            args += ["--max-seconds", str(int(max_seconds))]
        self.proc = procs.spawn(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env(extra_env),
        )
        self.pid = self.proc.pid
        try:
            line = _read_line(self.proc.stdout, time.monotonic() + READY_TIMEOUT, self.proc)
            try:
                self.info = json.loads(line)
                self.port = int(self.info["port"])
            except (ValueError, KeyError, TypeError):
                self.procs.stop(self.proc)
                raise BenchError(
                    f"server {spec.label} did not start: {self.stderr_tail() or line!r}"
                ) from None
            self.pinned = cpu_accounting.pin(self.pid, cpu)
        except BaseException:
            self.stop()
            raise

    def stderr_tail(self):
        return _tail(self._stderr)

    def stop(self):
        status = self.procs.stop(self.proc)
        self._stderr.close()
        return status


def run_loadgen(procs, port, connections, size, warmup, duration, server_pid=None, cpu=None):
    """Run the load generator in its own process; return its JSON result."""
    args = [
        sys.executable,
        "-m",
        "pike.bench.loadgen",
        "--port",
        str(port),
        "--connections",
        str(connections),
        "--size",
        str(size),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    if server_pid is not None:
        args += ["--server-pid", str(server_pid)]
    proc = procs.spawn(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pinned = cpu_accounting.pin(proc.pid, cpu)
    try:
        out, err = proc.communicate(timeout=warmup + duration + LOADGEN_GRACE)
    except subprocess.TimeoutExpired:
        raise BenchError("the load generator did not finish in time") from None
    finally:
        procs.stop(proc)
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = err.decode("utf-8", "replace").strip()[-2000:]
        raise BenchError(f"the load generator failed: {detail or 'no output'}") from None
    if "error" in result:
        raise BenchError(f"load generator: {result['error']}")
    result["loadgen_pinned"] = pinned
    return result


def run_once(procs, spec, connections, size, warmup, duration, cpus=(None, None)):
    """One measured run of ``spec``: a fresh server, one load generator run."""
    server_cpu, loadgen_cpu = cpus
    max_seconds = warmup + duration + LOADGEN_GRACE + READY_TIMEOUT + 30
    server = ServerProcess(procs, spec, cpu=server_cpu, max_seconds=max_seconds)
    try:
        try:
            result = run_loadgen(
                procs, server.port, connections, size, warmup, duration,
                server_pid=server.pid, cpu=loadgen_cpu,
            )
        except BenchError as exc:
            tail = server.stderr_tail()
            if tail:
                raise BenchError(f"{exc}\n  server stderr: {tail}") from None
            raise
        children_mid = cpu_accounting.children_cpu_seconds()
    finally:
        server.stop()
    result["server"] = spec.label
    result["server_info"] = server.info
    result["server_pinned"] = server.pinned
    if result.get("server_cpu_s") is None:
        # Whole-lifetime CPU of the server (reaped just now) over all requests.
        children_after = cpu_accounting.children_cpu_seconds()
        if children_mid is not None and children_after is not None:
            result["server_cpu_s"] = children_after - children_mid
            result["server_cpu_source"] = "rusage-lifetime"
    result["server_cpu_us_per_req"] = _cpu_per_request(result)
    window = result.get("window_s") or 0
    if result.get("server_cpu_s") is not None and window > 0:
        if result["server_cpu_source"] == "rusage-lifetime":
            result["server_cpu_pct"] = None
        else:
            result["server_cpu_pct"] = 100.0 * result["server_cpu_s"] / window
    else:
        result["server_cpu_pct"] = None
    return result


def _cpu_per_request(result):
    cpu_s = result.get("server_cpu_s")
    if cpu_s is None:
        return None
    if result.get("server_cpu_source") == "rusage-lifetime":
        count = result.get("requests_total") or 0
    else:
        count = result.get("requests") or 0
    return 1e6 * cpu_s / count if count else None


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
    """What to run: servers x connections x sizes, rounds and windows."""

    def __init__(self, servers, connections=(1, 10), sizes=(1024,), warmup=1.0,
                 duration=5.0, repeat=3, baseline="asyncio", pin=True):
        self.servers = list(servers)
        self.connections = list(connections)
        self.sizes = list(sizes)
        self.warmup = float(warmup)
        self.duration = float(duration)
        self.repeat = int(repeat)
        self.baseline = baseline
        self.pin = pin
        if not self.servers:
            raise ValueError("no servers to run")
        if self.repeat < 1 or self.duration <= 0 or self.warmup < 0:
            raise ValueError("need repeat >= 1, duration > 0 and warmup >= 0")

    def total_runs(self):
        return len(self.servers) * len(self.connections) * len(self.sizes) * self.repeat

    def estimated_seconds(self):
        # Each run also starts two Python processes and stops one: ~0.9 s.
        return self.total_runs() * (self.warmup + self.duration + 0.9)

    def as_dict(self):
        return {
            "servers": [spec.label for spec in self.servers],
            "connections": self.connections,
            "sizes": self.sizes,
            "warmup_s": self.warmup,
            "duration_s": self.duration,
            "repeat": self.repeat,
            "baseline": self.baseline,
            "mode": "pingpong",
        }


def run_benchmark(settings, progress=None):
    """Run every case; return the results dict that :mod:`report` reads.

    ``progress(message)`` is called before and after each run. A failed
    run is recorded (``"error"``) and the benchmark goes on with the rest.
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
        "cases": [],
    }
    total = settings.total_runs()
    done = 0
    with ProcessSet() as procs:
        for connections in settings.connections:
            for size in settings.sizes:
                case = {"connections": connections, "size": size, "runs": []}
                results["cases"].append(case)
                for round_no in range(1, settings.repeat + 1):
                    for spec in settings.servers:
                        done += 1
                        where = (
                            f"[{done}/{total}] {connections} conn x {size} B, "
                            f"round {round_no}/{settings.repeat}: {spec.label:<18}"
                        )
                        try:
                            run = run_once(
                                procs, spec, connections, size,
                                settings.warmup, settings.duration, cpus,
                            )
                        except BenchError as exc:
                            run = {"server": spec.label, "error": str(exc)}
                            say(f"{where} FAILED: {exc}")
                        else:
                            cpu = run.get("server_cpu_us_per_req")
                            cpu_text = f"{cpu:8.1f} us CPU/req" if cpu is not None else "CPU n/a"
                            say(
                                f"{where} {run['rps']:10,.0f} req/s  {cpu_text}  "
                                f"client CPU {run['loadgen_cpu_pct']:.0f}%"
                            )
                        run["round"] = round_no
                        case["runs"].append(run)
                report.summarize_case(case, settings.servers, settings.baseline)
    results["elapsed_s"] = time.time() - started
    return results


def install_sigterm_handler():
    """Turn SIGTERM into SystemExit so ``finally`` blocks clean up; returns the old."""
    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        return None
