#!/usr/bin/env python3
"""Throughput of an asynchat line protocol: pike.compat against 3.11's stdlib.

Usage::

    PYTHONPATH=/work/main python scripts/bench_asynchat.py
        [--conns 10,2000] [--seconds 3] [--size 64] [--python311 PATH]

The server is a line echo server written once against the asyncore/asynchat
API (an ``asyncore.dispatcher`` that accepts, an ``asynchat.async_chat`` per
connection with terminator ``b"\\n"`` that pushes every line back). It runs
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

The load generator is in this process: raw non-blocking sockets on
``select.epoll``; each connection sends one ``--size``-byte line ending in
``b"\\n"`` and waits for its echo before sending the next (ping-pong), for
``--seconds``; every echo is checked. pike's native ``loadgen`` sends a
pseudo-random pattern that does not end in a terminator, so it cannot drive
a line protocol.

Prints lines/s per variant and connection count, and pike/stdlib ratios.
select() cannot watch an fd above 1023, so at 2000 connections the select
variants that call select() (``stdlib select``, ``pike plain``) fail: that
is reported as such.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


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

        def handle_accepted(self, sock, addr):
            Echo(sock)

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


def drive(port, conns, seconds, size):
    """Ping-pong lines on ``conns`` connections; lines echoed per second."""
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
        if len(served) < conns:
            # A server that stopped accepting (select() past fd 1023) still
            # answers the connections it has: that is not a pass.
            raise RuntimeError("only %d of %d connections were served"
                               % (len(served), conns))
        return done / (time.monotonic() - started)
    finally:
        for s in socks.values():
            s.close()
        ep.close()


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


def run_variant(exe, impl, use_poll, fast, conns, args):
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
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=_raise_nofile)
    result = {"rate": None, "error": None}
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
            result["rate"] = drive(int(port), conns, args.seconds, args.size)
        except (OSError, RuntimeError) as exc:
            result["error"] = "%s: %s" % (type(exc).__name__, exc)
        if proc.poll() is not None and proc.returncode:
            result["rate"] = None
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
                result["rate"] = None
                result["error"] = line[len("SERVER-ERROR: "):]
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", default="10,2000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=64, help="bytes per line, with b'\\n'")
    parser.add_argument("--python311", help="interpreter for the stdlib variants")
    parser.add_argument("--json", metavar="FILE")
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
    print("pike on %s (Python %d.%d.%d); stdlib on %s" % (
        sys.executable, *sys.version_info[:3], py311 or "(no 3.11 found)"))
    print("line echo, %d-byte lines, ping-pong, %.1fs per run\n" % (args.size, args.seconds))
    rows = []
    for conns in [int(c) for c in args.conns.split(",") if c.strip()]:
        rates = {}
        for label, exe, impl, use_poll, fast in variants:
            r = run_variant(exe, impl, use_poll, fast, conns, args)
            rates[label] = r["rate"]
            rows.append(dict(r, label=label, conns=conns))
            text = ("%12.0f lines/s" % r["rate"]) if r["rate"] else "FAILED: %s" % r["error"]
            print("%5d conns  %-14s %s" % (conns, label, text), flush=True)
        for mode in ("select", "poll"):
            p, s = rates.get("pike " + mode), rates.get("stdlib " + mode)
            if p and s:
                print("%5d conns  ratio pike/stdlib (%s): %.2fx" % (conns, mode, p / s))
            elif p and ("stdlib " + mode) in rates:
                print("%5d conns  ratio pike/stdlib (%s): stdlib failed" % (conns, mode))
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
