"""WorkerPool: N processes on one port, supervised by the parent."""

import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pike
from pike.server.echo import EchoConnection
from pike.server.workers import WorkerPool



def open_fds():
    """The fds open in this process (as conftest's fd-leak check sees them)."""
    return {int(name) for name in os.listdir("/proc/self/fd")} if os.path.isdir("/proc/self/fd") else set()

TIMEOUT = 10.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PidEcho(EchoConnection):
    """Echoes each chunk prefixed with the worker's pid."""

    def handle_read(self):
        data = self.recv(65536)
        if data and not self.closed:
            self.write(b"%d:" % os.getpid() + data)


def ask(sock, payload=b"hi"):
    sock.sendall(payload)
    data = b""
    while not data.endswith(payload):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed by the server")
        data += chunk
    pid, _, echoed = data.partition(b":")
    assert echoed == payload
    return int(pid)


def connect(address, family=socket.AF_INET, attempts=50):
    """Connect, retrying what a restarting server may briefly answer."""
    for attempt in range(attempts):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(address)
            return sock
        except (ConnectionRefusedError, ConnectionResetError):
            sock.close()
            time.sleep(0.05)
    raise AssertionError(f"could not connect to {address!r}")


def request(address, family=socket.AF_INET, payload=b"hi"):
    """One request on a fresh connection, retried if a dying worker reset it."""
    for attempt in range(20):
        with connect(address, family) as sock:
            try:
                return ask(sock, payload)
            except (ConnectionResetError, BrokenPipeError):
                time.sleep(0.05)
    raise AssertionError("no worker answered")


def alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def reaped(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.fixture
def no_leaks():
    before = open_fds()
    yield
    gc.collect()
    leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked: {sorted(leaked)}"


class Supervising:
    """Run ``pool.run()`` in a thread; stop it and check every child is reaped."""

    def __init__(self, pool):
        self.pool = pool
        self.thread = threading.Thread(target=pool.run)
        self.seen = set()

    def __enter__(self):
        self.pool.start()
        self.thread.start()
        return self.pool

    def __exit__(self, *exc):
        self.pool.stop()
        self.thread.join(TIMEOUT + self.pool.grace)
        alive_thread = self.thread.is_alive()
        if alive_thread:
            self.pool.close()
        assert not alive_thread, "the supervisor did not stop"
        for pid in self.seen:
            assert reaped(pid), f"worker {pid} was not reaped"


def wait_for(predicate, timeout=TIMEOUT, what="a condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("poller_name", pike.available_pollers())
@pytest.mark.parametrize("reuse_port", [True, False], ids=["reuseport", "inherited"])
def test_killed_worker_is_replaced_while_serving(no_leaks, poller_name, reuse_port):
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")
    pool = WorkerPool(
        PidEcho, ("127.0.0.1", 0), workers=2, poller_name=poller_name,
        reuse_port=reuse_port, grace=1.0,
    )
    sup = Supervising(pool)
    with sup:
        first = list(pool.pids)
        sup.seen.update(first)
        assert len(first) == 2
        # A client on one worker (start() returned: every worker listens, so
        # no retry is needed); the other worker is then killed.
        keeper = socket.create_connection(pool.address, timeout=TIMEOUT)
        try:
            serving = ask(keeper)
            assert serving in first
            victim = next(pid for pid in first if pid != serving)
            os.kill(victim, 9)
            stop = time.monotonic() + TIMEOUT
            answers = 0
            while time.monotonic() < stop:
                # The client keeps being served all along.
                assert ask(keeper, b"again %d" % answers) == serving
                answers += 1
                pids = pool.pids
                if victim not in pids and len(pids) == 2:
                    break
                time.sleep(0.01)
            replacement = set(pool.pids) - set(first)
            assert len(replacement) == 1, pool.pids
            sup.seen.update(replacement)
            assert pool.restarts == 1
            assert reaped(victim) and not alive(victim)
            # New connections are served, by the survivor or the replacement.
            served_by = {request(pool.address) for _ in range(20)}
            assert served_by <= set(pool.pids)
        finally:
            keeper.close()
    assert pool.pids == []


def test_unix_socket_workers(no_leaks, tmp_path):
    path = str(tmp_path / "echo.sock")
    pool = WorkerPool(PidEcho, path, workers=2, grace=1.0)
    assert not pool.reuse_port
    sup = Supervising(pool)
    with sup:
        sup.seen.update(pool.pids)
        assert os.path.exists(path) and pool.address == path
        for _ in range(5):
            assert request(path, socket.AF_UNIX) in pool.pids
    assert not os.path.exists(path)


def test_crash_loop_backs_off(no_leaks):
    starts = []

    def crash(index, listener):
        raise RuntimeError("this worker cannot start")

    pool = WorkerPool(PidEcho, ("127.0.0.1", 0), workers=1, on_worker_start=crash, grace=0.5)
    pool.max_restart_delay = 0.4
    sup = Supervising(pool)
    with sup:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            sup.seen.update(pool.pids)
            starts.append(pool.restarts)
            time.sleep(0.01)
    # 0.1 + 0.2 + 0.4 + 0.4...: a handful of restarts, not hundreds.
    assert 2 <= pool.restarts <= 8, pool.restarts


def test_graceful_stop_lets_connections_finish(no_leaks):
    pool = WorkerPool(EchoConnection, ("127.0.0.1", 0), workers=1, grace=5.0)
    sup = Supervising(pool)
    with sup:
        sup.seen.update(pool.pids)
        sock = connect(pool.address)
        try:
            sock.sendall(b"x" * 1000)
            got = b""
            while len(got) < 1000:
                got += sock.recv(4096)
            start = time.monotonic()
            pool.stop()
            # The echo connection finishes its work and closes at once,
            # well before the grace period.
            assert sock.recv(10) == b""
            assert time.monotonic() - start < 2.0
        finally:
            sock.close()


SCRIPT = textwrap.dedent(
    """
    import sys
    from pike.server.echo import EchoConnection
    from pike.server.workers import WorkerPool
    pool = WorkerPool(EchoConnection, ("127.0.0.1", 0), workers=2, grace=1.0)
    pool.start()
    print(pool.address[1], *pool.pids, flush=True)
    pool.run()
    """
)


def test_workers_stop_when_the_parent_dies(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT),
        text=True,
    )
    try:
        line = proc.stdout.readline().split()
        port, pids = int(line[0]), [int(p) for p in line[1:]]
        assert len(pids) == 2
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(b"ping")
            assert sock.recv(10) == b"ping"
        proc.kill()  # SIGKILL: no chance to stop the workers itself
        proc.wait(TIMEOUT)
        wait_for(lambda: not any(alive(pid) for pid in pids), what="the orphans to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stdout.close()
