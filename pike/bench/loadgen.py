"""The Python load generator: echo traffic over raw non-blocking sockets.

``python -m pike.bench.loadgen --port P [--mode pingpong|stream]
[--connections N] [--size S] [--window B] [--warmup W] [--duration D]
[--server-pid PID]`` prints one JSON object.

This is the fallback: the benchmark drives servers with the C load
generator (``pike/bench/native/loadgen.c``) wherever it can be built, since
one Python process saturates long before the fastest servers do.

N connections each send a message of S bytes and wait for its full echo
before sending the next. Every echoed byte is compared with what was sent
(messages differ from one request and one connection to the next, so a
mixed-up or stale echo is caught too); a mismatch, an early close or a
stall ends the run with an error. Requests are counted over a window of D
seconds after a warm-up of W seconds, and each request's latency (first
byte sent to last byte echoed) is kept to give percentiles.

In ``--mode stream`` each connection instead keeps writing chunks of S
bytes while fewer than B bytes are unechoed, and checks the echoed stream
byte for byte against what it sent (a per-connection pseudo-random stream):
the figure is echoed MiB/s.

It uses none of pike's I/O code, so it is neutral between servers: one
tight loop over ``select.epoll`` where there is one (``selectors``
elsewhere). It also measures its own CPU time: near 100% means a single
Python client may be what limits requests/s, and the reader should then
look at the server's CPU per request.

When ``--server-pid`` is given and the server's CPU time can be read
(:mod:`pike.bench.cpu`), it is read at the very start and end of the
window, so the server's CPU figure covers exactly the counted requests.
"""

import argparse
import json
import select
import selectors
import signal
import socket
import sys
import time

from pike.bench import cpu as cpu_accounting

HOST = "127.0.0.1"
RECV_SIZE = 262144
#: Distinct messages cycled per connection.
MESSAGES_PER_CONNECTION = 4
#: Most connections one run may open.
MAX_CONNECTIONS = 1000
#: Largest message size.
MAX_SIZE = 64 * 1024 * 1024
#: Default stream window: most unechoed bytes per connection.
STREAM_WINDOW = 1024 * 1024
#: Period of a stream connection's byte pattern.
STREAM_PERIOD = 1 << 20


class LoadgenError(Exception):
    """The run could not be completed (connect failed, peer closed, stall)."""


class EchoMismatch(LoadgenError):
    """The server echoed bytes that differ from those sent."""


class _Conn:
    __slots__ = ("sock", "fd", "messages", "seq", "msg", "sent", "got", "t0", "want_out")

    def __init__(self, sock, messages):
        self.sock = sock
        self.fd = sock.fileno()
        self.messages = messages
        self.seq = 0
        self.msg = messages[0]
        self.sent = 0
        self.got = 0
        self.t0 = 0
        self.want_out = False


def make_messages(index, size, count=MESSAGES_PER_CONNECTION):
    """``count`` distinct messages of ``size`` bytes for connection ``index``."""
    base = bytes(range(256)) * (size // 256 + 2)
    messages = []
    for k in range(count):
        offset = (index * 37 + k * 11 + 1) % 256
        messages.append(base[offset : offset + size])
    return messages


class _EpollWaiter:
    name = "epoll"

    def __init__(self):
        self._ep = select.epoll()
        self.IN = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
        self.OUT = select.EPOLLOUT
        self.wait = self._ep.poll

    def register(self, fd, want_out=False):
        self._ep.register(fd, select.EPOLLIN | (select.EPOLLOUT if want_out else 0))

    def modify(self, fd, want_out):
        self._ep.modify(fd, select.EPOLLIN | (select.EPOLLOUT if want_out else 0))

    def close(self):
        self._ep.close()


class _SelectorsWaiter:
    IN = selectors.EVENT_READ
    OUT = selectors.EVENT_WRITE

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self.name = type(self._sel).__name__

    def register(self, fd, want_out=False):
        self._sel.register(fd, self.IN | (self.OUT if want_out else 0))

    def modify(self, fd, want_out):
        self._sel.modify(fd, self.IN | (self.OUT if want_out else 0))

    def wait(self, timeout):
        return [(key.fd, mask) for key, mask in self._sel.select(timeout)]

    def close(self):
        self._sel.close()


def _make_waiter():
    if hasattr(select, "epoll"):
        return _EpollWaiter()
    return _SelectorsWaiter()


def _percentile(sorted_values, fraction):
    """Nearest-rank percentile of an already sorted list (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-fraction * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def _connect_all(port, connections, timeout):
    socks = []
    try:
        for _ in range(connections):
            sock = socket.create_connection((HOST, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            socks.append(sock)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise LoadgenError(f"cannot connect to {HOST}:{port}: {exc}") from exc
    return socks


def run_pingpong(
    port,
    connections=1,
    size=1024,
    warmup=1.0,
    duration=5.0,
    server_pid=None,
    stall_timeout=5.0,
    connect_timeout=5.0,
):
    """Drive ping-pong echo traffic at 127.0.0.1:``port``; return the figures.

    Raises :class:`EchoMismatch` on a wrong echo and :class:`LoadgenError`
    when the run cannot be completed. The result is a dict of plain values
    (see ``python -m pike.bench.loadgen --help`` for the fields).
    """
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError(f"size must be 1..{MAX_SIZE}")
    if warmup < 0 or duration <= 0:
        raise ValueError("need warmup >= 0 and duration > 0")

    read_server_cpu, server_cpu_source = (None, None)
    if server_pid is not None:
        read_server_cpu, server_cpu_source = cpu_accounting.cpu_reader(server_pid)

    socks = _connect_all(port, connections, connect_timeout)
    waiter = _make_waiter()
    conns = {}
    try:
        for index, sock in enumerate(socks):
            conn = _Conn(sock, make_messages(index, size))
            conns[conn.fd] = conn
            waiter.register(conn.fd)
        return _drive(
            conns,
            waiter,
            size,
            warmup,
            duration,
            stall_timeout,
            read_server_cpu,
            server_cpu_source,
        )
    except OSError as exc:  # a reset or refused connection mid-run
        raise LoadgenError(f"connection lost: {exc}") from exc
    finally:
        waiter.close()
        for sock in socks:
            sock.close()


def _drive(conns, waiter, size, warmup, duration, stall_timeout, read_server_cpu, server_cpu_source):
    clock = time.perf_counter
    clock_ns = time.perf_counter_ns
    self_cpu = cpu_accounting.self_cpu_seconds
    system_cpu = cpu_accounting.system_cpu_seconds
    wait = waiter.wait
    modify = waiter.modify
    IN = waiter.IN
    OUT = waiter.OUT

    latencies = []
    record = latencies.append
    measuring = False
    completed = 0  # every completed request, warm-up included
    completed_at_start = 0
    bytes_verified = 0

    def start_request(conn, now_ns):
        conn.seq += 1
        msg = conn.msg = conn.messages[conn.seq % MESSAGES_PER_CONNECTION]
        conn.got = 0
        conn.t0 = now_ns
        try:
            sent = conn.sock.send(msg)
        except (BlockingIOError, InterruptedError):
            sent = 0
        conn.sent = sent
        if sent < size and not conn.want_out:
            conn.want_out = True
            modify(conn.fd, True)

    started = clock()
    window_start = started + warmup
    window_end = window_start + duration
    next_mark = window_start if warmup > 0 else started
    hard_deadline = window_end + stall_timeout + 5.0
    last_progress = started

    now_ns = clock_ns()
    for conn in conns.values():
        conn.seq = -1
        start_request(conn, now_ns)

    window_cpu0 = server_cpu0 = system0 = None
    t_start = t_end = None
    while True:
        now = clock()
        if now >= next_mark:
            if not measuring:
                measuring = True
                completed_at_start = completed
                del latencies[:]
                server_cpu0 = read_server_cpu() if read_server_cpu else None
                system0 = system_cpu()
                window_cpu0 = self_cpu()
                t_start = clock()
                next_mark = t_start + duration
                continue
            t_end = now
            window_cpu1 = self_cpu()
            system1 = system_cpu()
            server_cpu1 = read_server_cpu() if read_server_cpu else None
            break
        if now > hard_deadline:  # cannot happen with a sane clock; a bound
            raise LoadgenError("run exceeded its deadline")
        events = wait(min(next_mark - now, 0.5))
        if not events:
            if clock() - last_progress > stall_timeout:
                raise LoadgenError(
                    f"no echo for {stall_timeout:.1f} s "
                    f"({completed} requests completed before)"
                )
            continue
        for fd, ev in events:
            conn = conns[fd]
            if ev & IN:
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data is not None:
                    n = len(data)
                    if not n:
                        raise LoadgenError(
                            f"the server closed a connection after {completed} requests"
                        )
                    got = conn.got
                    if got == 0 and n == size:
                        # The common case: the whole echo in one piece.
                        if data != conn.msg:
                            raise EchoMismatch(_describe_mismatch(conn.msg, data, 0))
                        got = size
                    else:
                        if got + n > conn.sent:
                            raise EchoMismatch(
                                f"echoed {got + n} bytes of a request when only "
                                f"{conn.sent} were sent"
                            )
                        expected = conn.msg[got : got + n]
                        if data != expected:
                            raise EchoMismatch(_describe_mismatch(expected, data, got))
                        got = conn.got = got + n
                        last_progress = now
                    if got == size:
                        now_ns = clock_ns()
                        completed += 1
                        bytes_verified += size
                        if measuring:
                            record(now_ns - conn.t0)
                        last_progress = now
                        start_request(conn, now_ns)
                        continue  # the new request's send is done already
            if ev & OUT and conn.want_out:
                if conn.sent < size:
                    try:
                        conn.sent += conn.sock.send(memoryview(conn.msg)[conn.sent :])
                    except (BlockingIOError, InterruptedError):
                        pass
                if conn.sent >= size:
                    conn.want_out = False
                    modify(fd, False)

    window = t_end - t_start
    requests = completed - completed_at_start
    latencies.sort()
    lat_us = [value / 1000.0 for value in (
        _percentile(latencies, 0.50),
        _percentile(latencies, 0.90),
        _percentile(latencies, 0.99),
    )] if latencies else [None, None, None]
    loadgen_cpu = window_cpu1 - window_cpu0
    result = {
        "mode": "pingpong",
        "connections": len(conns),
        "size": size,
        "warmup_s": warmup,
        "window_s": window,
        "requests": requests,
        "requests_total": completed,
        "bytes_verified": bytes_verified,
        "bytes": requests * size,
        "mib_per_s": requests * size / window / 1048576.0 if window > 0 else 0.0,
        "rps": requests / window if window > 0 else 0.0,
        "latency_us": {
            "p50": lat_us[0],
            "p90": lat_us[1],
            "p99": lat_us[2],
            "max": latencies[-1] / 1000.0 if latencies else None,
            "mean": (sum(latencies) / len(latencies) / 1000.0) if latencies else None,
            "samples": len(latencies),
        },
        "loadgen_cpu_s": loadgen_cpu,
        "loadgen_cpu_pct": 100.0 * loadgen_cpu / window if window > 0 else None,
        "waiter": waiter.name,
        "server_cpu_source": server_cpu_source,
    }
    _add_cpu_figures(result, loadgen_cpu, (server_cpu0, server_cpu1), (system0, system1), window)
    return result


def _add_cpu_figures(result, loadgen_cpu, server_cpu, system, seconds):
    """Fill in the server's CPU time and what other processes used.

    ``server_cpu`` and ``system`` are (before, after) readings of the
    measured window; a missing reading leaves its figures None.
    """
    result["server_cpu_s"] = None
    if None not in server_cpu:
        result["server_cpu_s"] = server_cpu[1] - server_cpu[0]
    result["other_cpu_pct"] = result["steal_pct"] = None
    system0, system1 = system
    if system0 is not None and system1 is not None and seconds > 0:
        busy = system1[0] - system0[0]
        ours = loadgen_cpu + (result["server_cpu_s"] or 0.0)
        # Clock-tick granularity can make this slightly negative: clamp.
        result["other_cpu_pct"] = max(0.0, 100.0 * (busy - ours) / seconds)
        result["steal_pct"] = 100.0 * (system1[1] - system0[1]) / seconds


# -- streaming -----------------------------------------------------------------------


class _Stream:
    __slots__ = ("sock", "fd", "pattern", "sent", "rcvd", "want_out")

    def __init__(self, sock, pattern):
        self.sock = sock
        self.fd = sock.fileno()
        self.pattern = pattern
        self.sent = 0
        self.rcvd = 0
        self.want_out = False


def make_stream_pattern(index, slack):
    """Connection ``index``'s byte stream: period :data:`STREAM_PERIOD`, plus ``slack``.

    Any read of up to ``slack`` bytes from an offset below the period is a
    contiguous slice, so a chunk never has to be assembled from two pieces.
    """
    import random

    table = random.Random(0x5EED + index).randbytes(STREAM_PERIOD)
    return memoryview(table + table[:slack])


def run_stream(
    port,
    connections=1,
    size=65536,
    window=STREAM_WINDOW,
    warmup=1.0,
    duration=5.0,
    server_pid=None,
    stall_timeout=5.0,
    connect_timeout=5.0,
):
    """Stream echo traffic at 127.0.0.1:``port``; return the figures.

    Each connection writes chunks of ``size`` bytes while fewer than
    ``window`` bytes are unechoed, and checks every echoed byte. Raises
    :class:`EchoMismatch` on a wrong echo and :class:`LoadgenError` when the
    run cannot be completed.
    """
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}")
    if not 1 <= size <= STREAM_PERIOD:
        raise ValueError(f"size must be 1..{STREAM_PERIOD} in stream mode")
    if not 1 <= window <= MAX_SIZE:
        raise ValueError(f"window must be 1..{MAX_SIZE}")
    if warmup < 0 or duration <= 0:
        raise ValueError("need warmup >= 0 and duration > 0")

    read_server_cpu, server_cpu_source = (None, None)
    if server_pid is not None:
        read_server_cpu, server_cpu_source = cpu_accounting.cpu_reader(server_pid)

    socks = _connect_all(port, connections, connect_timeout)
    waiter = _make_waiter()
    streams = {}
    slack = max(size, RECV_SIZE)
    try:
        for index, sock in enumerate(socks):
            stream = _Stream(sock, make_stream_pattern(index, slack))
            streams[stream.fd] = stream
            waiter.register(stream.fd)
        return _drive_stream(
            streams, waiter, size, window, warmup, duration, stall_timeout,
            read_server_cpu, server_cpu_source,
        )
    except OSError as exc:
        raise LoadgenError(f"connection lost: {exc}") from exc
    finally:
        waiter.close()
        for sock in socks:
            sock.close()


def _drive_stream(streams, waiter, size, window, warmup, duration, stall_timeout,
                  read_server_cpu, server_cpu_source):
    clock = time.perf_counter
    self_cpu = cpu_accounting.self_cpu_seconds
    system_cpu = cpu_accounting.system_cpu_seconds
    wait = waiter.wait
    modify = waiter.modify
    IN = waiter.IN
    OUT = waiter.OUT
    period = STREAM_PERIOD

    def pump(stream):
        # Send while the window allows; arm a write notification if the socket is full.
        limit = stream.rcvd + window
        while stream.sent < limit:
            pos = stream.sent % period
            count = min(size, limit - stream.sent)
            try:
                sent = stream.sock.send(stream.pattern[pos : pos + count])
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent <= 0:
                if not stream.want_out:
                    stream.want_out = True
                    modify(stream.fd, True)
                return
            stream.sent += sent
        if stream.want_out:
            stream.want_out = False
            modify(stream.fd, False)

    echoed = 0  # every verified byte, warm-up included
    echoed_at_start = 0
    measuring = False
    started = clock()
    next_mark = started + warmup
    hard_deadline = next_mark + duration + stall_timeout + 5.0
    last_progress = started
    for stream in streams.values():
        pump(stream)

    window_cpu0 = server_cpu0 = system0 = None
    t_start = t_end = None
    while True:
        now = clock()
        if now >= next_mark:
            if not measuring:
                measuring = True
                echoed_at_start = echoed
                server_cpu0 = read_server_cpu() if read_server_cpu else None
                system0 = system_cpu()
                window_cpu0 = self_cpu()
                t_start = clock()
                next_mark = t_start + duration
                continue
            t_end = now
            window_cpu1 = self_cpu()
            system1 = system_cpu()
            server_cpu1 = read_server_cpu() if read_server_cpu else None
            break
        if now > hard_deadline:
            raise LoadgenError("run exceeded its deadline")
        events = wait(min(next_mark - now, 0.5))
        if not events:
            if clock() - last_progress > stall_timeout:
                raise LoadgenError(
                    f"no echo for {stall_timeout:.1f} s ({echoed} bytes echoed before)"
                )
            continue
        for fd, ev in events:
            stream = streams[fd]
            if ev & IN:
                try:
                    data = stream.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    data = None
                if data is not None:
                    n = len(data)
                    if not n:
                        raise LoadgenError(
                            f"the server closed a connection after {echoed} bytes"
                        )
                    if stream.rcvd + n > stream.sent:
                        raise EchoMismatch(
                            f"echoed {stream.rcvd + n - stream.sent} bytes more than were sent"
                        )
                    pos = stream.rcvd % period
                    expected = stream.pattern[pos : pos + n]
                    if data != expected:
                        raise EchoMismatch(
                            _describe_mismatch(bytes(expected), data, stream.rcvd)
                        )
                    stream.rcvd += n
                    echoed += n
                    last_progress = now
                    pump(stream)
                    continue
            if ev & OUT and stream.want_out:
                pump(stream)

    seconds = t_end - t_start
    echoed_window = echoed - echoed_at_start
    loadgen_cpu = window_cpu1 - window_cpu0
    result = {
        "mode": "stream",
        "connections": len(streams),
        "size": size,
        "window_bytes": window,
        "warmup_s": warmup,
        "window_s": seconds,
        "bytes": echoed_window,
        "bytes_verified": echoed,
        "mib_per_s": echoed_window / seconds / 1048576.0 if seconds > 0 else 0.0,
        "requests": echoed_window // size,
        "rps": (echoed_window / size) / seconds if seconds > 0 else 0.0,
        "latency_us": None,
        "loadgen_cpu_s": loadgen_cpu,
        "loadgen_cpu_pct": 100.0 * loadgen_cpu / seconds if seconds > 0 else None,
        "waiter": waiter.name,
        "server_cpu_source": server_cpu_source,
    }
    _add_cpu_figures(result, loadgen_cpu, (server_cpu0, server_cpu1), (system0, system1), seconds)
    return result


def _describe_mismatch(expected, data, offset):
    for i, (a, b) in enumerate(zip(expected, data)):
        if a != b:
            return (
                f"echo mismatch at byte {offset + i} of a request: "
                f"sent {a:#04x}, got {b:#04x}"
            )
    return f"echo mismatch at byte {offset}: lengths {len(expected)} vs {len(data)}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pike.bench.loadgen",
        description="Echo load (ping-pong or stream) against a server on 127.0.0.1; prints JSON.",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("pingpong", "stream"), default="pingpong")
    parser.add_argument(
        "--window", type=int, default=STREAM_WINDOW,
        help="stream: most unechoed bytes per connection",
    )
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int, default=None)
    parser.add_argument("--stall-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    if hasattr(signal, "alarm"):
        # A bound on our own life, whatever happens to the loop above.
        signal.alarm(int(args.warmup + args.duration + args.stall_timeout + 30))
    try:
        if args.mode == "stream":
            result = run_stream(
                args.port,
                connections=args.connections,
                size=args.size,
                window=args.window,
                warmup=args.warmup,
                duration=args.duration,
                server_pid=args.server_pid,
                stall_timeout=args.stall_timeout,
            )
        else:
            result = run_pingpong(
                args.port,
                connections=args.connections,
                size=args.size,
                warmup=args.warmup,
                duration=args.duration,
                server_pid=args.server_pid,
                stall_timeout=args.stall_timeout,
            )
    except ValueError as exc:
        sys.stdout.write(json.dumps({"error": str(exc), "error_kind": "arguments"}) + "\n")
        return 2
    except LoadgenError as exc:
        kind = "mismatch" if isinstance(exc, EchoMismatch) else "error"
        sys.stdout.write(json.dumps({"error": str(exc), "error_kind": kind}) + "\n")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
