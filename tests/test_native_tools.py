"""The benchmark's native tools: echo_ref (C epoll echo server) and loadgen.

Every process started here is stopped and reaped in a ``finally``, every
subprocess call has a timeout, and all traffic stays on 127.0.0.1 (the
refusal tests never reach a socket: loadgen rejects the host while parsing
its arguments).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pike.bench import native

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the native tools need Linux"
)

RUN_TIMEOUT = 10

REQUIRED_FIELDS = {
    "requests": int,
    "bytes": int,
    "seconds": float,
    "rps": float,
    "mib_per_s": float,
    "p50_us": float,
    "p99_us": float,
    "errors": int,
    "loadgen_cpu_s": float,
    "connections": int,
    "idle": int,
    "size": int,
    "mode": str,
}


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    """{name: executable}, built into a fresh cache folder."""
    if native.compiler() is None:
        pytest.skip("no C compiler")
    cache = str(tmp_path_factory.mktemp("native-cache"))
    built = {}
    for name in native.TOOLS:
        path = native.build(name, cache_dir=cache)
        assert path is not None, native.last_error(name)
        assert native.last_error(name) is None
        built[name] = path
    return built


def stop(proc, sig=signal.SIGTERM):
    """Stop ``proc`` with ``sig`` (kill after 5 s), reap it, return its status."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


@pytest.fixture
def echo_server(tools):
    """(process, port) of a running echo_ref; checks it exits 0 on SIGTERM."""
    proc, port = native.start_echo_ref(tools["echo_ref"])
    try:
        yield proc, port
    finally:
        status = stop(proc)
    assert status == 0


def run_loadgen(tools, *args, timeout=RUN_TIMEOUT):
    """Run loadgen to completion; returns (exit status, parsed JSON or None, stderr)."""
    proc = subprocess.run(
        [tools["loadgen"], *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )
    out = proc.stdout.decode()
    lines = out.splitlines()
    result = None
    if lines:
        assert len(lines) == 1, out
        result = json.loads(lines[0])
    return proc.returncode, result, proc.stderr.decode()


def check_result(result, mode, connections, size, idle=0):
    for field, kind in REQUIRED_FIELDS.items():
        assert field in result, field
        assert isinstance(result[field], kind), (field, result[field])
    assert result["errors"] == 0
    assert result["mode"] == mode
    assert result["connections"] == connections
    assert result["idle"] == idle
    assert result["size"] == size
    assert result["requests"] > 0
    assert result["bytes"] > 0
    assert result["seconds"] > 0
    assert result["rps"] > 0
    assert result["mib_per_s"] > 0
    assert result["loadgen_cpu_s"] >= 0
    assert "error" not in result


# ---- building ----


def test_build_is_cached_and_keyed_by_source(tools, tmp_path, monkeypatch):
    cache = os.path.dirname(tools["echo_ref"])
    assert native.build("echo_ref", cache_dir=cache) == tools["echo_ref"]
    assert os.access(tools["echo_ref"], os.X_OK)
    assert native.available(cache_dir=cache)

    # An edited source builds a new executable.
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    shutil.copy(native.source_path("echo_ref"), src_dir / "echo_ref.c")
    monkeypatch.setattr(native, "_HERE", str(src_dir))
    first = native.build("echo_ref", cache_dir=str(tmp_path / "cache"))
    with open(src_dir / "echo_ref.c", "a") as f:
        f.write("\n/* edited */\n")
    second = native.build("echo_ref", cache_dir=str(tmp_path / "cache"))
    assert first and second and first != second


def test_build_reports_why_it_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/compiler-for-pike-tests")
    assert native.build("loadgen", cache_dir=str(tmp_path)) is None
    assert "compiler" in native.last_error("loadgen")
    assert not native.available("loadgen", cache_dir=str(tmp_path))
    with pytest.raises(ValueError):
        native.build("no-such-tool")


def test_build_reports_compile_errors(tmp_path, monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C compiler")
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    (src_dir / "loadgen.c").write_text("this is not C\n")
    monkeypatch.setattr(native, "_HERE", str(src_dir))
    assert native.build("loadgen", cache_dir=str(tmp_path / "cache")) is None
    assert "failed" in native.last_error("loadgen")
    assert not [p for p in os.listdir(tmp_path / "cache")], "temporary output left behind"


# ---- loadgen against echo_ref ----


def test_pingpong(tools, echo_server):
    proc, port = echo_server
    status, result, err = run_loadgen(
        tools, "--port", port, "--mode", "pingpong", "--connections", 10,
        "--size", 1024, "--warmup", 0.1, "--duration", 0.5, "--server-pid", proc.pid,
    )
    assert status == 0, err
    check_result(result, "pingpong", 10, 1024)
    assert result["bytes"] == result["requests"] * 1024
    assert 0.4 < result["seconds"] < 1.0
    assert 0 < result["p50_us"] <= result["p99_us"]
    assert result["server_cpu_s"] >= 0


def test_stream(tools, echo_server):
    _, port = echo_server
    status, result, err = run_loadgen(
        tools, "--port", port, "--mode", "stream", "--connections", 4,
        "--size", 16384, "--window", 262144, "--warmup", 0.1, "--duration", 0.5,
    )
    assert status == 0, err
    check_result(result, "stream", 4, 16384)
    assert result["requests"] == result["bytes"] // 16384


def test_idle_connections(tools, echo_server):
    _, port = echo_server
    status, result, err = run_loadgen(
        tools, "--port", port, "--connections", 2, "--idle", 200,
        "--warmup", 0.1, "--duration", 0.3,
    )
    assert status == 0, err
    check_result(result, "pingpong", 2, 1024, idle=200)


def test_unix_socket(tools, tmp_path):
    path = str(tmp_path / "echo.sock")
    proc, reported = native.start_echo_ref(tools["echo_ref"], unix=path)
    try:
        assert reported == path
        status, result, err = run_loadgen(
            tools, "--unix", path, "--connections", 3, "--warmup", 0.05, "--duration", 0.3,
        )
        assert status == 0, err
        check_result(result, "pingpong", 3, 1024)
    finally:
        assert stop(proc) == 0
    assert not os.path.exists(path)


# ---- echo_ref on its own ----


def test_echo_ref_keeps_unsent_data(echo_server):
    """A client that writes a lot before reading gets every byte back, in order."""
    _, port = echo_server
    payload = bytes((i * 7 + (i >> 10)) & 0xFF for i in range(4 << 20))
    sock = socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT)
    writer_error = []

    def write():
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            writer_error.append(exc)

    writer = threading.Thread(target=write)
    try:
        writer.start()
        time.sleep(0.2)  # let both directions fill up: the server must buffer
        received = bytearray()
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break  # the server closes after our EOF, once all is sent back
            received += chunk
    finally:
        writer.join(RUN_TIMEOUT)
        sock.close()
    assert not writer_error
    assert len(received) == len(payload)
    assert received == payload


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_echo_ref_exits_cleanly_on_signal(tools, sig):
    proc, port = native.start_echo_ref(tools["echo_ref"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
    finally:
        assert stop(proc, sig) == 0


def test_echo_ref_rejects_bad_arguments(tools):
    for args in (["--port", "70000"], ["--bogus"], ["--port"]):
        proc = subprocess.run(
            [tools["echo_ref"], *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=5,
        )
        assert proc.returncode == 2, args
        assert proc.stdout == b""


# ---- loadgen refusals and failures ----


@pytest.mark.parametrize("host", ["10.1.2.3", "127.0.0.2", "0.0.0.0", "localhost", "::", "example.com"])
def test_loadgen_refuses_non_loopback_host(tools, host):
    # Port 9 (discard) would be the target; the host is refused while parsing
    # the arguments, before any socket exists, so nothing is contacted.
    start = time.monotonic()
    status, result, err = run_loadgen(tools, "--host", host, "--port", 9, timeout=5)
    assert status == 2
    assert result is None
    assert "refusing host" in err
    assert time.monotonic() - start < 2


def test_loadgen_rejects_bad_arguments(tools):
    for args in (
        [],  # no --port
        ["--port", 9, "--mode", "flood"],
        ["--port", 9, "--connections", 0],
        ["--port", 9, "--duration", "-1"],
        ["--port", 9, "--whatever", 1],
    ):
        status, result, _ = run_loadgen(tools, *args, timeout=5)
        assert status == 2, args
        assert result is None


class ThreadedServer:
    """A threaded TCP server on 127.0.0.1 for driving the load generator.

    A thread accepts; each connection gets a thread that hands what it
    receives to :meth:`on_data` with a per-connection ``state`` dict (which
    holds the connection's ``index``) until EOF, :meth:`close`, or
    :meth:`on_data` returning False. Every wait is bounded (0.05 s), so
    :meth:`close` ends every thread promptly.
    """

    backlog = 16

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(self.backlog)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept)]
        self.threads[0].start()

    def _accept(self):
        index = 0
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn, index))
            index += 1
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn, index):
        conn.settimeout(0.05)
        state = {"index": index}
        try:
            while not self.stopping.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data or not self.on_data(conn, state, data):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def on_data(self, conn, state, data):
        """Answer ``data``; False closes the connection."""
        raise NotImplementedError

    def close(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        self.listener.close()


class BadServer(ThreadedServer):
    """An echo server that misbehaves on purpose.

    ``kind``: "corrupt" flips one byte once 3000 bytes went through, "close"
    closes each connection after its first read, "silent" reads and never
    answers.
    """

    def __init__(self, kind):
        self.kind = kind
        super().__init__()

    def on_data(self, conn, state, data):
        if self.kind == "close":
            return False
        if self.kind == "silent":
            return True
        seen = state.get("seen", 0)
        if seen <= 3000 < seen + len(data):
            data = bytearray(data)
            data[3000 - seen] ^= 0x40
            data = bytes(data)
        state["seen"] = seen + len(data)
        conn.sendall(data)
        return True


@pytest.mark.parametrize("mode", ["pingpong", "stream"])
def test_loadgen_detects_corruption(tools, mode):
    server = BadServer("corrupt")
    try:
        status, result, err = run_loadgen(
            tools, "--port", server.port, "--mode", mode, "--connections", 1,
            "--size", 1024, "--warmup", 0.1, "--duration", 0.5,
        )
    finally:
        server.close()
    assert status == 1, err
    assert result["errors"] > 0
    assert "verification error at stream byte 3000" in result["error"]


def test_loadgen_fails_when_server_closes(tools):
    server = BadServer("close")
    try:
        status, result, err = run_loadgen(
            tools, "--port", server.port, "--warmup", 0.1, "--duration", 0.5,
        )
    finally:
        server.close()
    assert status == 1, err
    assert result["errors"] > 0
    assert "closed by the server" in result["error"] or "recv" in result["error"]


def test_loadgen_times_out_on_a_silent_server(tools):
    server = BadServer("silent")
    try:
        start = time.monotonic()
        status, result, err = run_loadgen(
            tools, "--port", server.port, "--warmup", 0, "--duration", 2, "--timeout", 0.3,
        )
        elapsed = time.monotonic() - start
    finally:
        server.close()
    assert status == 1, err
    assert "timeout" in result["error"]
    assert elapsed < 1.5


def test_loadgen_fails_when_nothing_listens(tools):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    status, result, _ = run_loadgen(tools, "--port", port, "--duration", 0.2, timeout=5)
    assert status == 1
    assert result["errors"] > 0


# ---- loadgen --line ----


class LineEchoServer(ThreadedServer):
    """A line echo server: it answers only whole lines.

    Bytes are held until a b"\\n" arrives and each complete line is then
    sent back on its own, so a client whose messages do not end in b"\\n"
    (or carry one early) stalls or misverifies. Every line seen is
    recorded per connection in ``lines`` (bounded by ``keep``).
    """

    backlog = 64

    def __init__(self, keep=50):
        self.keep = keep
        self.lines = []          # [(connection index, line bytes)]
        self.lock = threading.Lock()
        super().__init__()

    def on_data(self, conn, state, data):
        pending = state.get("pending", b"") + data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            line += b"\n"
            with self.lock:
                if len(self.lines) < self.keep:
                    self.lines.append((state["index"], line))
            conn.sendall(line)
        state["pending"] = pending
        return True


def check_line_result(result, connections, size):
    check_result(result, "pingpong", connections, size)
    assert result["line"] is True
    assert result["bytes"] == result["requests"] * size


@pytest.mark.parametrize("size", [1, 2, 64, 5000])
def test_line_mode_against_a_line_echo_server(tools, size):
    server = LineEchoServer()
    try:
        status, result, err = run_loadgen(
            tools, "--port", server.port, "--mode", "pingpong", "--line",
            "--connections", 4, "--size", size, "--warmup", 0.1, "--duration", 0.4,
            "--timeout", 2,
        )
    finally:
        server.close()
    assert status == 0, err
    check_line_result(result, 4, size)
    assert server.lines
    for _, line in server.lines:
        # exactly one b"\n", at the end: the server saw --size byte lines
        assert len(line) == size
        assert line.index(b"\n") == size - 1
    if size >= 64:
        # the connections' patterns differ (not a constant filler)
        by_conn = {}
        for index, line in server.lines:
            by_conn.setdefault(index, line)
        assert len(set(by_conn.values())) == len(by_conn)
        assert all(len(set(line)) > 10 for line in by_conn.values())


def test_line_mode_against_echo_ref(tools, echo_server):
    _, port = echo_server
    status, result, err = run_loadgen(
        tools, "--port", port, "--line", "--connections", 20, "--size", 64,
        "--warmup", 0.1, "--duration", 0.5,
    )
    assert status == 0, err
    check_line_result(result, 20, 64)
    # a message larger than one send/recv (IO_MAX) still verifies
    status, result, err = run_loadgen(
        tools, "--port", port, "--line", "--connections", 2, "--size", 300000,
        "--warmup", 0.1, "--duration", 0.3,
    )
    assert status == 0, err
    check_line_result(result, 2, 300000)


def test_plain_pingpong_has_no_line_field(tools, echo_server):
    _, port = echo_server
    status, result, err = run_loadgen(
        tools, "--port", port, "--connections", 2, "--size", 64,
        "--warmup", 0.1, "--duration", 0.2,
    )
    assert status == 0, err
    assert "line" not in result


def test_line_mode_detects_corruption(tools):
    server = BadServer("corrupt")
    try:
        status, result, err = run_loadgen(
            tools, "--port", server.port, "--line", "--connections", 1,
            "--size", 1024, "--warmup", 0.1, "--duration", 0.5,
        )
    finally:
        server.close()
    assert status == 1, err
    assert result["errors"] > 0
    assert "verification error at stream byte 3000" in result["error"]


def test_line_mode_needs_pingpong(tools):
    proc = subprocess.run(
        [tools["loadgen"], "--port", "1", "--mode", "stream", "--line"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"--line" in proc.stderr
