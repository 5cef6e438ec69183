"""One measured run of a server, per mode.

A run is: start the server, wait for its ready line, pin it to one core,
run the load generator pinned to another, stop the server. Where the load
generator cannot read the server's CPU time (``/proc``) the run falls back
to ``getrusage(RUSAGE_CHILDREN)`` around reaping the server (its whole
lifetime over all requests made).

The scale mode's idle connections are held here, by :class:`IdleConnections`,
and closed with a reset in a ``finally``, so they leave no TIME_WAIT behind.
"""

import socket
import struct
import time

from pike.bench import cpu as cpu_accounting
from pike.bench import fileserve
from pike.bench import servers as server_kinds
from pike.bench.loadgen_runs import C_LOADGEN_GRACE, LOADGEN_GRACE, Loadgen
from pike.bench.processes import (
    HOST,
    READY_TIMEOUT,
    BenchError,
    ServerProcess,
    fd_count,
    rss_bytes,
    settle_fds,
)

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


def run_file_once(procs, spec, path, size, warmup, duration, cpus=(None, None),
                  max_downloads=None):
    """One run of the stream mode's file row: ``spec`` serves the file at ``path``.

    A fresh server sends the file (``size`` bytes) to each connection of the
    client of :mod:`pike.bench.fileserve`, which checks every download's
    byte count. A server that cannot serve files records ``"skipped"``.
    """
    skip = fileserve.skip_reason(spec.kind)
    if skip:
        return {"server": spec.label, "mode": "file", "skipped": skip}
    server_cpu, client_cpu = cpus
    server = ServerProcess(procs, spec, cpu=server_cpu,
                           max_seconds=_server_lifetime(warmup, duration),
                           server_args=("--file", path))
    try:
        try:
            result = fileserve.run_client_process(
                procs, server.port, size, warmup, duration, max_downloads=max_downloads,
                server_pid=server.pid, cpu=client_cpu,
            )
        except BenchError as exc:
            tail = server.stderr_tail()
            if tail:
                raise BenchError(f"{exc}\n  server stderr: {tail}") from None
            raise
    finally:
        server.stop()
    result["server"] = spec.label
    result["server_info"] = server.info
    result["server_pinned"] = server.pinned
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
            fds_before = settle_fds(pid, fds_start)
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
