"""Throughput of an asynchat line protocol: pike.compat against 3.11's stdlib.

Usage::

    python -m pike bench --mode asynchat
        [--conns 10,2000] [--seconds 3] [--size 64] [--python311 PATH]
        [--loadgen auto|c|python] [--no-pin] [--json FILE]

The server is a line echo server written once against the asyncore/asynchat
API (an ``asyncore.dispatcher`` that accepts, an ``asynchat.async_chat`` per
connection with terminator ``b"\\n"`` that pushes every line back; the acceptor takes
up to 256 pending connections per readable event). It runs
in a child process, in these variants:

* ``pike select`` -- pike.compat (after ``pike.compat.install()``) on the
  running Python, ``loop(use_poll=False)``: select semantics, pike's epoll
  fast path underneath;
* ``pike poll``   -- the same with ``loop(use_poll=True)``;
* ``pike plain``  -- ``PIKE_ASYNCORE_FAST=0``: pike's module calling real
  ``select()`` every iteration, as the original does;
* ``stdlib select`` / ``stdlib poll`` -- the standard library's asyncore and
  asynchat, run under a Python 3.11 interpreter (found under pyenv, or
  ``--python311``).

The load generator is pike's native ``loadgen`` (built on demand by
``pike.bench.native``) in ``--line`` ping-pong mode: each connection sends
one ``--size``-byte line (its own pseudo-random bytes, no ``b"\\n"`` but
the last) and waits for the whole echo before sending the next; every echo
is checked byte for byte; the window of ``--seconds`` starts after a
warm-up. If the C tool cannot be built (or with ``--loadgen python``) a
Python load generator in this process does the same with a constant line
on ``select.epoll``; it tops out around 20-25k lines/s, so it measures
itself more than the server.

When ``os.sched_setaffinity`` exists and at least two CPUs are allowed, the
server is pinned to one CPU and the load generator to another (``--no-pin``
turns that off).

Prints, per variant and connection count, lines/s and the server process's
CPU time (user + system, from ``/proc/<pid>/stat`` over the measured
window) per line, and pike/stdlib ratios of both (lines/s: higher is
better for pike; CPU/line: lower is better for pike). select() cannot watch
an fd above 1023, so at 2000 connections the select variants that call
select() (``stdlib select``, ``pike plain``) fail: that is reported as such.
"""

import argparse
import glob
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import tempfile
import time

# The source tree this module is in (pike/bench/ is two levels below it): the
# server child runs this file by path, with the tree on PYTHONPATH.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The C loadgen's stall limit is warm-up + half the window (a connection
# never served by then fails the run) and its slack for connecting and
# draining is this many seconds.
LOADGEN_GRACE = 30.0


# -- the server (child) -------------------------------------------------------------


def serve(impl, use_poll, port_file, max_seconds):
    _raise_nofile()
    if impl == "pike":
        sys.path.insert(0, ROOT)
        import pike.compat

        pike.compat.install()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import asynchat
        import asyncore

    class Echo(asynchat.async_chat):
        def __init__(self, sock):
            asynchat.async_chat.__init__(self, sock)
            self.set_terminator(b"\n")
            self.parts = []

        def collect_incoming_data(self, data):
            self.parts.append(data)

        def found_terminator(self):
            self.parts.append(b"\n")
            self.push(b"".join(self.parts))
            self.parts = []

    class Acceptor(asyncore.dispatcher):
        def __init__(self):
            asyncore.dispatcher.__init__(self)
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            self.set_reuse_addr()
            self.bind(("127.0.0.1", 0))
            self.listen(4096)

        def handle_accept(self):
            # Take up to 256 pending connections per readable event, not
            # one: at 2000 connections, one accept per loop iteration (each
            # also serving every connection already up) makes the warm-up
            # quadratic. Only the warm-up is affected; the measured window
            # is steady-state echo.
            for _ in range(256):
                pair = self.accept()
                if pair is None:
                    return
                Echo(pair[0])

    acceptor = Acceptor()
    with open(port_file + ".tmp", "w") as f:
        f.write("%d %s" % (acceptor.socket.getsockname()[1], asyncore.__file__))
    os.rename(port_file + ".tmp", port_file)
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            asyncore.loop(timeout=0.2, use_poll=use_poll, count=50)
    except Exception as exc:  # reported to the parent through stderr
        sys.stderr.write("SERVER-ERROR: %s: %s\n" % (type(exc).__name__, exc))
        sys.stderr.flush()
        os._exit(3)
    finally:
        asyncore.close_all()


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# -- the load generator (parent) ------------------------------------------------------


def proc_cpu_seconds(pid):
    """utime + stime of process ``pid`` from /proc/<pid>/stat, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            text = f.read()
    except OSError:
        return None
    # field 2 (the command) may hold anything: split after its last ")"
    fields = text[text.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state); utime, stime are fields 14, 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port, conns, seconds, size, server_pid=None):
    """Ping-pong lines on ``conns`` connections (Python load generator).

    Returns (lines echoed per second, server CPU seconds in the window or
    None, lines echoed in the window).
    """
    line = (b"x" * (size - 1)) + b"\n"
    ep = select.epoll()
    socks = {}
    pending = {}
    try:
        for _ in range(conns):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks[s.fileno()] = s
            pending[s.fileno()] = b""
            ep.register(s.fileno(), select.EPOLLIN)
        for s in socks.values():
            s.send(line)
        done = 0
        served = set()
        # Warm-up: until every connection had an echo (asyncore accepts one
        # connection per loop iteration), bounded; then the measured run.
        warm_end = time.monotonic() + 60
        started = end = None
        while True:
            now = time.monotonic()
            if started is None and (len(served) == conns or now >= warm_end):
                started, end, done = now, now + seconds, 0
                cpu0 = proc_cpu_seconds(server_pid) if server_pid else None
            if end is not None and now >= end:
                break
            events = ep.poll(min(1.0, (end or warm_end) - now))
            for fd, _ in events:
                s = socks[fd]
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise RuntimeError("server closed a connection")
                buf = pending[fd] + data
                while len(buf) >= size:
                    if buf[:size] != line:
                        raise RuntimeError("bad echo %r" % buf[:size])
                    buf = buf[size:]
                    done += 1
                    served.add(fd)
                    s.send(line)
                pending[fd] = buf
        elapsed = time.monotonic() - started
        cpu1 = proc_cpu_seconds(server_pid) if server_pid else None
        if len(served) < conns:
            # A server that stopped accepting (select() past fd 1023) still
            # answers the connections it has: that is not a pass.
            raise RuntimeError("only %d of %d connections were served"
                               % (len(served), conns))
        server_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        return done / elapsed, server_cpu, done
    finally:
        for s in socks.values():
            s.close()
        ep.close()


def c_loadgen():
    """Path of the built native loadgen, or (None, why not)."""
    try:
        sys.path.insert(0, ROOT)
        from pike.bench import native
    except Exception as exc:  # pike.bench not importable
        return None, "%s: %s" % (type(exc).__name__, exc)
    if not sys.platform.startswith("linux"):
        return None, "the native loadgen needs Linux"
    path = native.build("loadgen")
    return path, (None if path else native.last_error("loadgen"))


def drive_c(loadgen, port, conns, seconds, size, server_pid, cpu):
    """One C loadgen --line run; returns (lines/s, server CPU s, lines, JSON)."""
    warmup = 1.0 + conns / 1000.0   # time for the server to accept everyone
    cmd = [loadgen, "--host", "127.0.0.1", "--port", str(port), "--mode", "pingpong",
           "--line", "--connections", str(conns), "--size", str(size),
           "--warmup", "%g" % warmup, "--duration", "%g" % seconds,
           "--timeout", "%g" % (warmup + seconds / 2.0), "--grace", "%g" % LOADGEN_GRACE,
           "--server-pid", str(server_pid)]
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, preexec_fn=pin,
                          timeout=warmup + seconds + LOADGEN_GRACE + 30)
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    if not lines:
        raise RuntimeError("loadgen exited %d: %s" % (
            proc.returncode, proc.stderr.decode("utf-8", "replace").strip()))
    result = json.loads(lines[-1])
    if proc.returncode != 0 or result.get("errors"):
        raise RuntimeError("loadgen: %s" % result.get("error", "exit %d" % proc.returncode))
    return result["rps"], result.get("server_cpu_s"), result["requests"], result


def pin_cpus():
    """(server CPU, load generator CPU), or None when pinning is not possible."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return cpus[0], cpus[1]


# -- variants -----------------------------------------------------------------------


def python311():
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    try:
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0:
            root = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    hits = [p for p in glob.glob(os.path.join(root, "versions", "3.11.*", "bin", "python3.11"))
            if re.fullmatch(r"3\.11\.\d+", p.split(os.sep)[-3])]
    hits.sort(key=lambda p: int(p.split(os.sep)[-3].split(".")[2]))
    return hits[-1] if hits else None


def run_variant(exe, impl, use_poll, fast, conns, args, loadgen, cpus):
    tmp = tempfile.mkdtemp(prefix="pike-bench-asynchat-")
    port_file = os.path.join(tmp, "port")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    if not fast:
        env["PIKE_ASYNCORE_FAST"] = "0"
    cmd = [exe, os.path.abspath(__file__), "--serve", impl, "--port-file", port_file,
           "--max-seconds", str(args.seconds + 60)]
    if use_poll:
        cmd.append("--use-poll")
    if cpus:
        def setup():
            _raise_nofile()
            os.sched_setaffinity(0, {cpus[0]})
    else:
        setup = _raise_nofile
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=setup)
    result = {"rate": None, "cpu_us_per_line": None, "error": None}
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            port, module_file = f.read().split(" ", 1)
        result["asyncore"] = module_file
        try:
            if loadgen:
                rate, server_cpu, lines, raw = drive_c(
                    loadgen, int(port), conns, args.seconds, args.size, proc.pid,
                    cpus[1] if cpus else None)
                result["loadgen"] = raw
            else:
                rate, server_cpu, lines = drive_pinned(
                    int(port), conns, args.seconds, args.size, proc.pid,
                    cpus[1] if cpus else None)
            result["rate"] = rate
            if server_cpu is not None and lines:
                result["cpu_us_per_line"] = server_cpu / lines * 1e6
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as exc:
            result["error"] = "%s: %s" % (type(exc).__name__, exc)
        if proc.poll() is not None and proc.returncode:
            result["rate"] = result["cpu_us_per_line"] = None
            result["error"] = result["error"] or "server exited %d" % proc.returncode
    except RuntimeError as exc:
        result["error"] = str(exc)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate(timeout=15)
        for line in (err or b"").decode("utf-8", "replace").splitlines():
            if line.startswith("SERVER-ERROR"):
                result["rate"] = result["cpu_us_per_line"] = None
                result["error"] = line[len("SERVER-ERROR: "):]
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    return result


def drive_pinned(port, conns, seconds, size, server_pid, cpu):
    """:func:`drive` with this process pinned to ``cpu`` (when not None)."""
    if cpu is None:
        return drive(port, conns, seconds, size, server_pid)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return drive(port, conns, seconds, size, server_pid)
    finally:
        os.sched_setaffinity(0, before)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pike bench --mode asynchat",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", default="10,2000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=64, help="bytes per line, with b'\\n'")
    parser.add_argument("--python311", help="interpreter for the stdlib variants")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--loadgen", choices=("auto", "c", "python"), default="auto",
                        help="load generator: the native one (c), the Python one, "
                             "or c falling back to python when it cannot be built (auto)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the server and load generator to CPUs")
    parser.add_argument("--serve", choices=("pike", "stdlib"), help=argparse.SUPPRESS)
    parser.add_argument("--use-poll", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=120, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.use_poll, args.port_file, args.max_seconds)
        return 0
    if args.size < 2:
        parser.error("--size must be at least 2")
    _raise_nofile()
    py311 = args.python311 or python311()
    variants = [
        ("pike select", sys.executable, "pike", False, True),
        ("pike poll", sys.executable, "pike", True, True),
        ("pike plain", sys.executable, "pike", False, False),
    ]
    if py311:
        variants += [("stdlib select", py311, "stdlib", False, True),
                     ("stdlib poll", py311, "stdlib", True, True)]
    loadgen = None
    if args.loadgen != "python":
        loadgen, why = c_loadgen()
        if loadgen is None:
            if args.loadgen == "c":
                parser.exit(1, "native loadgen unavailable: %s\n" % why)
            print("native loadgen unavailable (%s): using the Python one" % why)
    cpus = None if args.no_pin else pin_cpus()
    print("pike on %s (Python %d.%d.%d); stdlib on %s" % (
        sys.executable, *sys.version_info[:3], py311 or "(no 3.11 found)"))
    print("line echo, %d-byte lines, ping-pong, %.1fs per run; load generator: %s" % (
        args.size, args.seconds, ("native loadgen --line (%s)" % loadgen) if loadgen
        else "Python (in this process)"))
    print("CPUs: server on %d, load generator on %d" % cpus if cpus
          else "CPUs: not pinned")
    print("server CPU = user + system time of the server process over the "
          "measured window\n")
    rows = []
    for conns in [int(c) for c in args.conns.split(",") if c.strip()]:
        got = {}
        for label, exe, impl, use_poll, fast in variants:
            r = run_variant(exe, impl, use_poll, fast, conns, args, loadgen, cpus)
            got[label] = r
            rows.append(dict(r, label=label, conns=conns))
            if r["rate"]:
                cpu = r["cpu_us_per_line"]
                text = "%10.0f lines/s  %s" % (
                    r["rate"], ("%7.2f server CPU us/line" % cpu) if cpu is not None
                    else "  (server CPU n/a)")
            elif "out of range" in (r["error"] or ""):
                text = "FAILED (select() cannot watch fds >= 1024): %s" % r["error"]
            else:
                text = "FAILED: %s" % r["error"]
            print("%5d conns  %-14s %s" % (conns, label, text), flush=True)
        for mode in ("select", "poll"):
            p, s = got.get("pike " + mode), got.get("stdlib " + mode)
            if p is None or s is None:
                continue
            if p["rate"] and s["rate"]:
                text = "lines/s %.2fx" % (p["rate"] / s["rate"])
                if p["cpu_us_per_line"] and s["cpu_us_per_line"]:
                    text += ", CPU/line %.2fx" % (p["cpu_us_per_line"] / s["cpu_us_per_line"])
            elif p["rate"]:
                text = "stdlib failed"
            else:
                text = "pike failed"
            print("%5d conns  ratio pike/stdlib (%s): %s" % (conns, mode, text))
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
