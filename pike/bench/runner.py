"""Run the benchmark: servers and load generator in processes of their own.

Three modes, each a list of cases:

* ``pingpong``: N connections each send a message and wait for its echo;
  the figures are requests/s, latency and the server's CPU time per request.
* ``stream``: N connections keep a window of bytes in flight; the figures
  are echoed MiB/s and the server's CPU time per MiB.
* ``scale``: a few active ping-pong connections, measured once alone and
  once beside N idle connections that the runner holds open; the figures
  are the two rates, their ratio, and the growth of the server's resident
  memory per idle connection.

For each case every server runs once per round, interleaved (A B C, A B C,
...), each time in a fresh process, so a slow spell of the machine touches
all servers alike. A run is: start the server, wait for its ready line, pin
it to one core, run the load generator pinned to another, stop the server.

The load generator is the C one (``pike/bench/native/loadgen.c``) wherever
it builds, else the Python one (:mod:`pike.bench.loadgen`). Either brackets
its measured window with readings of the server's CPU time (``/proc``);
where that cannot be read the runner falls back to
``getrusage(RUSAGE_CHILDREN)`` around reaping the server (its whole
lifetime over all requests made).

Every child is registered in a :class:`ProcessSet` the moment it starts and
ended (SIGTERM, wait with a timeout, SIGKILL) in a ``finally``, also on
Ctrl-C and errors. Children run in their own session, so a Ctrl-C at the
terminal reaches only the runner, which then cleans up; each child also
bounds its own life (an alarm, or the C load generator's own deadline), in
case the runner itself is killed. Idle connections are closed with a reset
in a ``finally`` too, so they leave no TIME_WAIT behind.
"""

import contextlib
import json
import os
import platform
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from pike.bench import SCHEMA
from pike.bench import cpu as cpu_accounting
from pike.bench import servers as server_kinds

HOST = "127.0.0.1"
MODES = ("pingpong", "stream", "scale")

#: Seconds a server may take to print its ready line.
READY_TIMEOUT = 20.0
#: Seconds a child gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 3.0
#: Extra seconds the load generator gets beyond warm-up + window.
LOADGEN_GRACE = 20.0
#: The C load generator's own bound on connecting and draining (--grace).
C_LOADGEN_GRACE = 10.0
#: Seconds the probe of the C accelerator may take.
PROBE_TIMEOUT = 60.0
#: Idle connections opened before the runner waits for the server to accept.
IDLE_BATCH = 128
#: Most idle connections left waiting in the server's accept queue.
IDLE_QUEUE = 512
#: Seconds allowed for opening idle connections: a base, plus per connection.
IDLE_OPEN_BASE_S = 30.0
IDLE_OPEN_PER_CONN_S = 0.005
#: Most idle connections one case may ask for (one 127.0.0.1 target gives
#: about 28,000 ephemeral ports).
MAX_IDLE = 25000

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


# -- servers ---------------------------------------------------------------------


# Runs echo_ref with an alarm armed: the alarm survives execv, and echo_ref
# leaves SIGALRM at its default action, so an orphaned c-ref ends too. The
# process keeps its pid across the exec, so the runner's pid is the server's.
_EXEC_WITH_ALARM = (
    "import os, signal, sys; signal.alarm(int(sys.argv[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class ServerProcess:
    """One echo server in a child process; ``port`` and ``info`` once ready."""

    def __init__(self, procs, spec, cpu=None, max_seconds=None):
        self.spec = spec
        self.procs = procs
        self.pinned = False
        self._stderr = tempfile.TemporaryFile()
        native = server_kinds.is_native_kind(spec.kind)
        if native:
            exe = server_kinds.c_ref_executable()
            if exe is None:
                self._stderr.close()
                raise BenchError(f"c-ref is unavailable: {server_kinds.c_ref_unavailable()}")
            bound = int(max_seconds) if max_seconds else server_kinds.DEFAULT_MAX_SECONDS
            args = [sys.executable, "-S", "-c", _EXEC_WITH_ALARM, str(bound),
                    exe, "--host", HOST, "--port", "0"]
            extra_env = {}
        else:
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
                if native:
                    self.port = int(line)
                    self.info = {
                        "kind": spec.kind,
                        "port": self.port,
                        "pid": self.pid,
                        "implementation": "c",
                        "executable": exe,
                    }
                else:
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


# -- process facts from /proc -----------------------------------------------------


def rss_bytes(pid):
    """Resident memory of ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), or None."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    parts = line.split()
                    scale = 1024 if parts[2:3] in ([b"kB"], [b"KB"], []) else 1
                    return int(parts[1]) * scale
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None


def fd_count(pid):
    """Number of open fds of ``pid`` (``/proc/<pid>/fd``), or None."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _settle_fds(pid, floor, timeout=3.0):
    """Wait (bounded) until ``pid`` holds at most ``floor`` fds, or stops closing any.

    Used after a load generator run, so that connections the server has not
    yet seen close are not counted later. Returns the last count.
    """
    deadline = time.monotonic() + timeout
    last = fd_count(pid)
    steady = 0
    while last is not None and time.monotonic() < deadline:
        if floor is not None and last <= floor:
            break
        time.sleep(0.05)
        count = fd_count(pid)
        if count is None:
            return last
        steady = steady + 1 if count == last else 0
        last = count
        if steady >= 4:
            break
    return last


# -- the load generators ----------------------------------------------------------


def probe_implementations(timeout=PROBE_TIMEOUT):
    """``(implementations, problem)``: what a server can run here, and why not C.

    ``implementations`` is ``["python"]`` or ``["python", "c"]``; ``problem``
    is None when C runs, else :func:`pike._impl.accelerator_problem`'s
    paragraph (why, and how to fix it). Probed in a subprocess with
    ``PIKE_IMPL=auto`` (exactly what a server's ``auto`` gets), so this
    process's own choice does not matter.
    """
    code = (
        "import json, pike._impl as impl; "
        "print(json.dumps([impl.IMPLEMENTATION, impl.accelerator_problem()]))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env({"PIKE_IMPL": "auto"}),
            timeout=timeout,
        )
        runs, problem = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return ["python"], "the probe of pike's implementations failed: pike cannot be imported"
    return (["python", "c"], None) if runs == "c" else (["python"], problem)


def pike_implementations(timeout=PROBE_TIMEOUT):
    """pike's implementations a server can run here: ``["python"]`` or ``["python", "c"]``."""
    return probe_implementations(timeout)[0]


class Loadgen:
    """The load generator a benchmark uses: ``kind`` "c" (with ``exe``) or "python"."""

    def __init__(self, kind, exe=None):
        if kind not in ("c", "python"):
            raise ValueError(f"load generator must be c or python, not {kind!r}")
        if kind == "c" and not exe:
            raise ValueError("the C load generator needs its executable")
        self.kind = kind
        self.exe = exe

    @classmethod
    def choose(cls, want=None):
        """``(loadgen, note)``: the C one when it builds, unless ``want`` says otherwise.

        ``want`` is None (C, else Python), "c" (BenchError when it cannot be
        built) or "python". ``note`` is a line for the user, or None.
        """
        if want not in (None, "c", "python"):
            raise ValueError(f"--loadgen must be c or python, not {want!r}")
        if want == "python":
            return cls("python"), "load generator: Python (as asked); it may limit req/s"
        from pike.bench import native

        exe = native.build("loadgen")
        if exe is not None:
            return cls("c", exe), None
        reason = (native.last_error("loadgen") or "unknown error").strip().splitlines()[0]
        if want == "c":
            raise BenchError(f"the C load generator cannot be built here: {reason}")
        return cls("python"), (
            f"note: the C load generator cannot be built ({reason}); using the Python "
            "one, which saturates before the fastest servers do: read CPU/req"
        )

    def as_dict(self):
        return {"kind": self.kind, "executable": self.exe}

    def run(self, procs, port, connections, size, warmup, duration, *, mode="pingpong",
            window=None, server_pid=None, cpu=None):
        """One load generator run in its own process; its figures, normalised."""
        if self.kind == "c":
            return run_c_loadgen(
                procs, self.exe, port, connections, size, warmup, duration,
                mode=mode, window=window, server_pid=server_pid, cpu=cpu,
            )
        return run_loadgen(
            procs, port, connections, size, warmup, duration,
            server_pid=server_pid, cpu=cpu, mode=mode, window=window,
        )


def run_loadgen(procs, port, connections, size, warmup, duration, server_pid=None, cpu=None,
                mode="pingpong", window=None):
    """Run the Python load generator in its own process; return its JSON result."""
    args = [
        sys.executable,
        "-m",
        "pike.bench.loadgen",
        "--port",
        str(port),
        "--mode",
        mode,
        "--connections",
        str(connections),
        "--size",
        str(size),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ]
    if window is not None:
        args += ["--window", str(window)]
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
    result["loadgen"] = "python"
    result["loadgen_pinned"] = pinned
    return result


def run_c_loadgen(procs, exe, port, connections, size, warmup, duration, *, mode="pingpong",
                  window=None, server_pid=None, cpu=None):
    """Run the C load generator; return its figures in the Python one's layout.

    The C tool reports no other processes' CPU: the runner measures it
    around the whole run (connecting and draining included) instead.
    """
    args = [
        exe, "--host", HOST, "--port", str(port), "--mode", mode,
        "--connections", str(connections), "--size", str(size),
        "--warmup", repr(float(warmup)), "--duration", repr(float(duration)),
        "--grace", repr(C_LOADGEN_GRACE),
    ]
    if mode == "stream" and window is not None:
        args += ["--window", str(window)]
    source = None
    if server_pid is not None and cpu_accounting.proc_cpu_seconds(server_pid) is not None:
        args += ["--server-pid", str(server_pid)]
        source = "proc"
    system0 = cpu_accounting.system_cpu_seconds()
    server0 = cpu_accounting.proc_cpu_seconds(server_pid) if server_pid else None
    self0 = cpu_accounting.self_cpu_seconds()
    children0 = cpu_accounting.children_cpu_seconds()
    t0 = time.monotonic()
    proc = procs.spawn(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pinned = cpu_accounting.pin(proc.pid, cpu)
    try:
        out, err = proc.communicate(timeout=warmup + duration + C_LOADGEN_GRACE + LOADGEN_GRACE)
    except subprocess.TimeoutExpired:
        raise BenchError("the load generator did not finish in time") from None
    finally:
        procs.stop(proc)
    elapsed = time.monotonic() - t0
    detail = err.decode("utf-8", "replace").strip()[-2000:]
    try:
        raw = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(
            f"the load generator failed (exit {proc.returncode}): {detail or 'no output'}"
        ) from None
    if raw.get("error") or proc.returncode:
        raise BenchError(f"load generator: {raw.get('error') or detail or proc.returncode}")
    seconds = raw["seconds"]
    stream = mode == "stream"
    result = {
        "mode": mode,
        "connections": raw["connections"],
        "size": raw["size"],
        "warmup_s": float(warmup),
        "window_s": seconds,
        "requests": raw["requests"],
        "requests_total": None,
        "bytes": raw["bytes"],
        "mib_per_s": raw["mib_per_s"],
        "rps": raw["rps"],
        "latency_us": None if stream else {
            "p50": raw["p50_us"],
            "p90": raw["p90_us"],
            "p99": raw["p99_us"],
            "p999": raw["p999_us"],
            "max": raw["max_us"],
            "mean": raw["mean_us"],
            "samples": raw["requests"],
        },
        "loadgen_cpu_s": raw["loadgen_cpu_s"],
        "loadgen_cpu_pct": 100.0 * raw["loadgen_cpu_s"] / seconds if seconds > 0 else None,
        "server_cpu_s": raw.get("server_cpu_s"),
        "server_cpu_source": source if raw.get("server_cpu_s") is not None else None,
        "loadgen": "c",
        "loadgen_pinned": pinned,
        "other_cpu_pct": None,
        "steal_pct": None,
        "other_cpu_scope": "whole load generator run",
    }
    if stream:
        result["window_bytes"] = raw.get("window")
    system1 = cpu_accounting.system_cpu_seconds()
    server1 = cpu_accounting.proc_cpu_seconds(server_pid) if server_pid else None
    children1 = cpu_accounting.children_cpu_seconds()
    if system0 and system1 and elapsed > 0:
        ours = cpu_accounting.self_cpu_seconds() - self0
        if children0 is not None and children1 is not None:
            ours += children1 - children0
        if server0 is not None and server1 is not None:
            ours += server1 - server0
        busy = system1[0] - system0[0]
        result["other_cpu_pct"] = max(0.0, 100.0 * (busy - ours) / elapsed)
        result["steal_pct"] = 100.0 * (system1[1] - system0[1]) / elapsed
    return result


# -- one run ------------------------------------------------------------------------


def _server_lifetime(warmup, duration, windows=1, extra=0.0):
    return warmup + duration * windows + windows * (LOADGEN_GRACE + C_LOADGEN_GRACE) \
        + READY_TIMEOUT + 30 + extra


def run_once(procs, spec, connections, size, warmup, duration, cpus=(None, None),
             loadgen=None, mode="pingpong", window=None):
    """One measured run of ``spec``: a fresh server, one load generator run.

    ``loadgen`` is a :class:`Loadgen` (default: the Python one); ``mode`` is
    "pingpong" or "stream" (``window``: most unechoed bytes per connection).
    """
    if mode not in ("pingpong", "stream"):
        raise ValueError(f"run_once runs pingpong or stream, not {mode!r}")
    loadgen = loadgen or Loadgen("python")
    server_cpu, loadgen_cpu = cpus
    server = ServerProcess(procs, spec, cpu=server_cpu,
                           max_seconds=_server_lifetime(warmup, duration))
    try:
        try:
            result = loadgen.run(
                procs, server.port, connections, size, warmup, duration,
                mode=mode, window=window, server_pid=server.pid, cpu=loadgen_cpu,
            )
        except BenchError as exc:
            tail = server.stderr_tail()
            if tail:
                raise BenchError(f"{exc}\n  server stderr: {tail}") from None
            raise
        children_mid = cpu_accounting.children_cpu_seconds()
    finally:
        server.stop()
    result["mode"] = mode
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
    result["server_cpu_us_per_mib"] = _cpu_per_mib(result)
    result["server_cpu_pct"] = _cpu_pct(result)
    return result


def _cpu_pct(result):
    window = result.get("window_s") or 0
    if result.get("server_cpu_s") is None or window <= 0:
        return None
    if result.get("server_cpu_source") == "rusage-lifetime":
        return None
    return 100.0 * result["server_cpu_s"] / window


def _cpu_per_request(result):
    cpu_s = result.get("server_cpu_s")
    if cpu_s is None:
        return None
    if result.get("server_cpu_source") == "rusage-lifetime":
        count = result.get("requests_total") or 0
    else:
        count = result.get("requests") or 0
    return 1e6 * cpu_s / count if count else None


def _cpu_per_mib(result):
    cpu_s = result.get("server_cpu_s")
    if cpu_s is None or result.get("server_cpu_source") == "rusage-lifetime":
        return None
    nbytes = result.get("bytes") or 0
    return 1e6 * cpu_s / (nbytes / 1048576.0) if nbytes else None


# -- the scalability mode ---------------------------------------------------------------


class IdleConnections:
    """Idle client connections held open by the runner, closed with a reset.

    :meth:`open` connects in batches and, where ``/proc`` shows the
    server's fds, waits for the server to accept each batch, so its accept
    queue never overflows (an overflow costs a SYN retransmit: seconds).
    """

    def __init__(self):
        self.socks = []

    def open(self, port, count, server_pid=None, fds_before=None, timeout=None):
        """Open ``count`` connections; return once the server holds them all.

        Raises BenchError when that takes longer than ``timeout`` seconds
        (default: a base plus a little per connection).
        """
        if timeout is None:
            timeout = IDLE_OPEN_BASE_S + IDLE_OPEN_PER_CONN_S * count
        deadline = time.monotonic() + timeout
        watch = server_pid is not None and fds_before is not None

        def accepted():
            n = fd_count(server_pid)
            return None if n is None else n - fds_before

        def wait_accepted(want):
            while True:
                got = accepted()
                if got is None or got >= want:
                    return got
                if time.monotonic() >= deadline:
                    raise BenchError(
                        f"the server accepted only {got} of {count} idle connections "
                        f"in {timeout:.0f} s"
                    )
                time.sleep(0.005)

        target = len(self.socks) + count
        while len(self.socks) < target:
            for _ in range(min(IDLE_BATCH, target - len(self.socks))):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"opened only {len(self.socks)} of {count} idle connections "
                        f"in {timeout:.0f} s"
                    )
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self.socks.append(sock)
                sock.settimeout(min(left, 10.0))
                try:
                    sock.connect((HOST, port))
                except OSError as exc:
                    raise BenchError(
                        f"idle connection {len(self.socks)} of {count} failed: {exc}"
                    ) from None
            if watch:
                wait_accepted(len(self.socks) - IDLE_QUEUE)
        if watch:
            wait_accepted(len(self.socks))
        else:
            time.sleep(min(3.0, 0.5 + count / 5000.0))  # no way to see: give it time

    def close(self):
        linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT left behind
        socks, self.socks = self.socks, []
        for sock in socks:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def ensure_fd_limit(needed):
    """Raise this process's RLIMIT_NOFILE for ``needed`` fds, or BenchError."""
    soft = server_kinds.raise_nofile_limit()
    if soft is not None and soft < needed:
        raise BenchError(
            f"{needed} file descriptors are needed but RLIMIT_NOFILE allows {soft} "
            "(raise the hard limit: ulimit -Hn)"
        )


def scale_skip_reason(spec, idle, active):
    """Why ``spec`` cannot run a scale case of ``idle`` connections, or None."""
    limit = server_kinds.max_fds(spec.kind)
    if limit is not None and idle + active + 64 > limit:
        return f"its select() loop cannot watch fds past {limit - 1}"
    return None


_SCALE_FIGURES = ("rps", "server_cpu_us_per_req", "server_cpu_s", "server_cpu_pct",
                  "loadgen_cpu_pct", "other_cpu_pct", "window_s", "requests")


def run_scale_once(procs, spec, idle, active, size, warmup, duration, cpus=(None, None),
                   loadgen=None):
    """One scale run of ``spec``: ``active`` connections without, then beside, ``idle`` ones.

    The same server process serves both measurements. Its resident memory
    is read just before the idle connections are opened and once it has
    accepted them all; the difference over ``idle`` is the memory per idle
    connection.
    """
    loadgen = loadgen or Loadgen("python")
    skip = scale_skip_reason(spec, idle, active)
    if skip:
        return {"server": spec.label, "mode": "scale", "skipped": skip}
    ensure_fd_limit(idle + 64)
    server_cpu, loadgen_cpu = cpus
    extra = IDLE_OPEN_BASE_S + IDLE_OPEN_PER_CONN_S * idle
    server = ServerProcess(procs, spec, cpu=server_cpu,
                           max_seconds=_server_lifetime(warmup, duration, 2, extra))
    pid = server.pid

    def measure():
        try:
            result = loadgen.run(
                procs, server.port, active, size, warmup, duration,
                mode="pingpong", server_pid=pid, cpu=loadgen_cpu,
            )
        except BenchError as exc:
            tail = server.stderr_tail()
            if tail:
                raise BenchError(f"{exc}\n  server stderr: {tail}") from None
            raise
        result["server_cpu_us_per_req"] = _cpu_per_request(result)
        result["server_cpu_pct"] = _cpu_pct(result)
        return result

    try:
        with IdleConnections() as pool:
            fds_start = fd_count(pid)
            without = measure()
            fds_before = _settle_fds(pid, fds_start)
            rss_before = rss_bytes(pid)
            t0 = time.monotonic()
            pool.open(server.port, idle, pid, fds_before)
            open_s = time.monotonic() - t0
            rss_after = rss_bytes(pid)
            fds_after = fd_count(pid)
            beside = measure()
    finally:
        server.stop()
    result = {
        "server": spec.label,
        "mode": "scale",
        "idle": idle,
        "connections": active,
        "size": size,
        "server_info": server.info,
        "server_pinned": server.pinned,
        "loadgen": beside.get("loadgen"),
        "without_idle": without,
        "with_idle": beside,
        "idle_open_s": open_s,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
    }
    for name in _SCALE_FIGURES:
        result[f"{name}_without"] = without.get(name)
        result[f"{name}_with"] = beside.get(name)
    for which, figures in (("without", without), ("with", beside)):
        latency = figures.get("latency_us") or {}
        for q in ("p50", "p99"):
            result[f"{q}_us_{which}"] = latency.get(q)
    result["rps_ratio"] = (
        beside["rps"] / without["rps"] if without.get("rps") else None
    )
    if rss_before is not None and rss_after is not None and idle:
        result["idle_bytes_per_conn"] = (rss_after - rss_before) / idle
        result["idle_kib_per_conn"] = result["idle_bytes_per_conn"] / 1024.0
    else:
        result["idle_bytes_per_conn"] = result["idle_kib_per_conn"] = None
    return result


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
    stream cases (``stream_window``: most unechoed bytes per connection);
    ``idle`` the scale cases, each with ``scale_active`` active connections
    of ``scale_size``-byte messages. ``loadgen`` is a :class:`Loadgen`
    (default: the Python one).
    """

    def __init__(self, servers, connections=(1, 10), sizes=(1024,), warmup=1.0,
                 duration=5.0, repeat=3, baseline="asyncio", pin=True, modes=("pingpong",),
                 loadgen=None, stream_connections=(1,), stream_sizes=(65536,),
                 stream_window=1024 * 1024, idle=(1000, 10000), scale_active=10,
                 scale_sizes=(1024,)):
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
                if case["mode"] != "scale":
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
    if mode == "stream":
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
    with ProcessSet() as procs:
        for case in settings.cases():
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
                        if case["mode"] == "scale":
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


@contextlib.contextmanager
def sigterm_as_exit():
    """While inside, SIGTERM raises SystemExit (so ``finally`` blocks clean up)."""
    previous = install_sigterm_handler()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def install_sigterm_handler():
    """Turn SIGTERM into SystemExit so ``finally`` blocks clean up; returns the old."""
    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        return None
