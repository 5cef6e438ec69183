"""Child processes of the benchmark, and what ``/proc`` tells about them.

Every child is registered in a :class:`ProcessSet` the moment it starts and
ended (SIGTERM, wait with a timeout, SIGKILL) in a ``finally``, also on
Ctrl-C and errors. Children run in their own session, so a Ctrl-C at the
terminal reaches only the runner, which then cleans up; each child also
bounds its own life (an alarm, or the C load generator's own deadline), in
case the runner itself is killed. :class:`ServerProcess` is one echo server
of a :class:`ServerSpec`, up once it has printed its ready line.
"""

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time

from pike.bench import cpu as cpu_accounting
from pike.bench import servers as server_kinds

HOST = "127.0.0.1"

#: Seconds a server may take to print its ready line.
READY_TIMEOUT = 20.0
#: Seconds a child gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = 3.0
#: Seconds the probe of the C accelerator may take.
PROBE_TIMEOUT = 60.0

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


def run_json_child(procs, args, timeout, cpu, what):
    """Run ``args`` (a client process), pinned to ``cpu``; ``(its JSON line, pinned)``.

    The child prints one JSON object as its last line; ``{"error": ...}``,
    no such line, or no end within ``timeout`` seconds raise BenchError
    naming ``what``.
    """
    proc = procs.spawn(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    pinned = cpu_accounting.pin(proc.pid, cpu)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the {what} did not finish in time") from None
    finally:
        procs.stop(proc)
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = err.decode("utf-8", "replace").strip()[-2000:]
        raise BenchError(f"the {what} failed: {detail or 'no output'}") from None
    if "error" in result:
        raise BenchError(f"{what}: {result['error']}")
    return result, pinned


def read_line(stream, deadline, proc):
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


def tail(file_obj, limit=2000):
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
EXEC_WITH_ALARM = (
    "import os, signal, sys; signal.alarm(int(sys.argv[1])); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


class ServerProcess:
    """One echo server in a child process; ``port`` and ``info`` once ready.

    ``server_args`` go on the server's command line (``--file PATH``: serve
    that file instead of echoing).
    """

    def __init__(self, procs, spec, cpu=None, max_seconds=None, server_args=()):
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
            args = [sys.executable, "-S", "-c", EXEC_WITH_ALARM, str(bound),
                    exe, "--host", HOST, "--port", "0", *server_args]
            extra_env = {}
        else:
            args = [sys.executable, "-m", "pike.bench.servers", spec.kind, "--port", "0"]
            extra_env = {}
            if spec.impl is not None:
                args += ["--impl", spec.impl]
                extra_env["PIKE_IMPL"] = spec.impl
            if max_seconds is not None:
                args += ["--max-seconds", str(int(max_seconds))]
            args += list(server_args)
        self.proc = procs.spawn(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=child_env(extra_env),
        )
        self.pid = self.proc.pid
        try:
            line = read_line(self.proc.stdout, time.monotonic() + READY_TIMEOUT, self.proc)
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
                    f"server {spec.label} did not start: {self.stderrtail() or line!r}"
                ) from None
            self.pinned = cpu_accounting.pin(self.pid, cpu)
        except BaseException:
            self.stop()
            raise

    def stderrtail(self):
        return tail(self._stderr)

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


def settle_fds(pid, floor, timeout=3.0):
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
