"""The stream mode's file row: one file served with sendfile, its bytes counted.

Each server sends the same file to every connection it accepts, then shuts
its side down: pike with ``Transport.sendfile(file)`` and ``write_eof()``,
asyncio with ``loop.sendfile(transport, file)``, ``c-ref`` with the
``sendfile(2)`` loop of ``echo_ref --file``. uvloop's loop has no sendfile
of its own (asyncio's abstract one raises NotImplementedError), so uvloop
is left out of this row; the other kinds serve no files.

The client (``python -m pike.bench.fileserve --port P --file-size N ...``,
in a process of its own) downloads the file over and over on one
connection at a time, reading until EOF, and checks that every download
brings exactly the file's size; a short or long one fails the run. It
counts the bytes that arrive in the measured window (after the warm-up),
reads the server's CPU time at the window's ends (``/proc``), and prints one
JSON line in the layout of the other stream rows. It stops after
``--duration`` or ``--max-downloads``, whichever comes first, and within a
hard deadline in any case.

The file is made once per benchmark run in a temporary directory and
deleted after it (:func:`temporary_file`).
"""

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time

from pike.bench import cpu as cpu_accounting

HOST = "127.0.0.1"
#: Bytes of the pattern the file repeats (random, so nothing compresses it).
PATTERN_SIZE = 1024 * 1024
#: Client receive buffer.
RECV_SIZE = 1024 * 1024
#: Seconds the client may take beyond warm-up + window to finish a download.
CLIENT_GRACE = 30.0
#: Seconds one recv may wait for the server before the run fails.
RECV_TIMEOUT = 10.0

PIKE_PREFIX = "pike-"
C_REF = "c-ref"


def skip_reason(kind):
    """Why a server of ``kind`` cannot serve the file row, or None."""
    if kind.startswith(PIKE_PREFIX) or kind in ("asyncio", C_REF):
        return None
    if kind == "uvloop":
        return _uvloop_sendfile_problem()
    return "it serves no files (echo only)"


def _uvloop_sendfile_problem():
    try:
        import uvloop
    except ImportError:
        return "uvloop is not installed"
    if uvloop.Loop.sendfile is asyncio.AbstractEventLoop.sendfile:
        return "uvloop's loop has no sendfile (NotImplementedError)"
    return None


@contextlib.contextmanager
def temporary_file(size):
    """A file of ``size`` bytes in a fresh temporary directory; both deleted after."""
    directory = tempfile.mkdtemp(prefix="pike-bench-file-")
    try:
        path = os.path.join(directory, "served.bin")
        pattern = os.urandom(min(size, PATTERN_SIZE))
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = pattern[:left]
                f.write(chunk)
                left -= len(chunk)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- servers (run by pike.bench.servers --file PATH) ---------------------------------


def serve_pike(poller_name, port, path, announce):
    """pike on ``poller_name``: every accepted connection gets the file, then EOF."""
    import pike
    from pike import Transport
    from pike.bench.servers import pike_listener

    served = open(path, "rb")  # one fd for all: sendfile reads at its own offsets

    class Listener(Transport):
        def handle_accepted(self, sock, addr):
            # Transport's default handle_read notices the client's EOF and closes.
            sender = Transport(sock=sock)
            sender.sendfile(served)
            sender.write_eof()  # after the file: queued writes keep their order

    poller, listener = pike_listener(poller_name, Listener, port)
    announce({
        "kind": f"pike-{poller.name}",
        "port": listener.socket.getsockname()[1],
        "pid": os.getpid(),
        "implementation": pike.IMPLEMENTATION,
        "poller": poller.name,
        "file": path,
    })
    try:
        poller.loop()
    finally:
        listener.close()
        served.close()


def serve_asyncio(port, path, announce):
    """asyncio: ``loop.sendfile`` to every accepted connection, then EOF."""

    class FileSender(asyncio.Protocol):
        def connection_made(self, transport):
            self.task = loop.create_task(self.send(transport))

        async def send(self, transport):
            try:
                with open(path, "rb") as f:  # loop.sendfile moves the file position
                    await loop.sendfile(transport, f)
                if transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
            except (OSError, RuntimeError):
                transport.abort()  # the client sees a short download and fails

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(FileSender, HOST, port, reuse_address=True)
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    announce({"kind": "asyncio", "port": server.sockets[0].getsockname()[1],
              "pid": os.getpid(), "loop": type(loop).__name__, "file": path})
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


# -- the client ---------------------------------------------------------------------


class DownloadError(Exception):
    """A download did not bring exactly the file's bytes, or took too long."""


def download(port, size, deadline, buf, on_bytes):
    """Read one copy of the file until EOF; return its byte count.

    ``on_bytes(n, now)`` is called for every chunk. Raises DownloadError
    when the count is not ``size`` or ``deadline`` passes.
    """
    got = 0
    with socket.create_connection((HOST, port), timeout=RECV_TIMEOUT) as sock:
        view = memoryview(buf)
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise DownloadError(f"download not finished by the deadline ({got} bytes)")
            sock.settimeout(min(RECV_TIMEOUT, deadline - now))
            try:
                n = sock.recv_into(view)
            except socket.timeout:
                raise DownloadError(f"the server sent nothing for {RECV_TIMEOUT:g} s "
                                    f"({got} of {size} bytes)") from None
            if not n:
                break
            got += n
            on_bytes(n, time.monotonic())
    if got != size:
        raise DownloadError(f"a download brought {got} bytes, not {size}")
    return got


def run_client(port, size, warmup, duration, max_downloads=None, server_pid=None):
    """Download the file until the window ends (or ``max_downloads``); the figures."""
    if size < 1:
        raise ValueError("the file must have at least one byte")
    start = time.monotonic()
    window_start = start + warmup
    window_end = window_start + duration
    deadline = window_end + CLIENT_GRACE
    buf = bytearray(RECV_SIZE)
    state = {"window_bytes": 0, "opened": None, "closed": None}

    def reading():
        return (time.monotonic(), cpu_accounting.self_cpu_seconds(),
                cpu_accounting.proc_cpu_seconds(server_pid) if server_pid else None)

    def on_bytes(n, now):
        if state["opened"] is None and now >= window_start:
            state["opened"] = reading()
        if state["closed"] is None and now >= window_end:
            state["closed"] = reading()
        if state["opened"] is not None and state["closed"] is None:
            state["window_bytes"] += n

    downloads = total = 0
    while time.monotonic() < window_end:
        if max_downloads is not None and downloads >= max_downloads:
            break
        total += download(port, size, deadline, buf, on_bytes)
        downloads += 1
    opened = state["opened"] or reading()
    closed = state["closed"] or reading()
    seconds = max(closed[0] - opened[0], 1e-9)
    window_bytes = state["window_bytes"]
    server_cpu = None
    if opened[2] is not None and closed[2] is not None:
        server_cpu = closed[2] - opened[2]
    client_cpu = closed[1] - opened[1]
    return {
        "mode": "file",
        "connections": 1,
        "size": size,
        "downloads": downloads,
        "bytes_total": total,
        "bytes": window_bytes,
        "warmup_s": float(warmup),
        "window_s": seconds,
        "mib_per_s": window_bytes / 1048576.0 / seconds,
        "server_cpu_s": server_cpu,
        "server_cpu_source": "proc" if server_cpu is not None else None,
        "loadgen": "python",
        "loadgen_cpu_s": client_cpu,
        "loadgen_cpu_pct": 100.0 * client_cpu / seconds,
    }


def run_client_process(procs, port, size, warmup, duration, *, max_downloads=None,
                       server_pid=None, cpu=None):
    """The client in a process of its own (registered in ``procs``); its figures."""
    from pike.bench.processes import run_json_child

    args = [sys.executable, "-m", "pike.bench.fileserve", "--port", str(port),
            "--file-size", str(size), "--warmup", repr(float(warmup)),
            "--duration", repr(float(duration))]
    if max_downloads is not None:
        args += ["--max-downloads", str(max_downloads)]
    if server_pid is not None:
        args += ["--server-pid", str(server_pid)]
    result, pinned = run_json_child(procs, args, warmup + duration + CLIENT_GRACE + 20,
                                    cpu, "file client")
    result["loadgen_pinned"] = pinned
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pike.bench.fileserve",
        description="Download a served file over and over from 127.0.0.1; print JSON figures.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file-size", type=int, required=True, help="bytes each download must bring")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--max-downloads", type=int, default=None)
    parser.add_argument("--server-pid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.file_size < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("need --file-size >= 1, --duration > 0 and --warmup >= 0")
    if args.max_downloads is not None and args.max_downloads < 1:
        parser.error("--max-downloads must be at least 1")
    try:
        result = run_client(args.port, args.file_size, args.warmup, args.duration,
                            args.max_downloads, args.server_pid)
    except (DownloadError, OSError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
