"""The echo command (pike.server.cli), run in a subprocess; every wait bounded."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import pike
from pike.testing import has_family

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10.0


class EchoProcess:
    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pike.server.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=ROOT),
            text=True,
        )

    def __enter__(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(TIMEOUT)
            raise AssertionError(f"no output; stderr: {self.proc.stderr.read()}")
        self.line = line.strip()
        return self

    def address(self):
        match = re.match(r"listening on (tcp|unix) (\S+)", self.line)
        assert match, self.line
        if match.group(1) == "unix":
            return socket.AF_UNIX, match.group(2)
        host, port = match.group(2).rsplit(":", 1)
        if host.startswith("["):
            return socket.AF_INET6, (host[1:-1], int(port))
        return socket.AF_INET, (host, int(port))

    def pids(self):
        match = re.search(r"pids ([\d ]+)\)", self.line)
        return [int(p) for p in match.group(1).split()] if match else []

    def connect(self):
        family, address = self.address()
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        return sock

    def stop(self, signum=signal.SIGTERM):
        self.proc.send_signal(signum)
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=TIMEOUT)
            raise AssertionError("the echo server did not stop")
        return self.proc.returncode, err

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def echo_once(sock, payload=b"hello"):
    sock.sendall(payload)
    data = b""
    while len(data) < len(payload):
        chunk = sock.recv(4096)
        assert chunk, "closed early"
        data += chunk
    return data


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("poller_name", pike.available_pollers())
def test_echo_single_process(poller_name, signum):
    with EchoProcess("--port", "0", "--poller", poller_name) as server:
        assert f"poller {poller_name}" in server.line
        with server.connect() as sock:
            assert echo_once(sock, b"x" * 100000) == b"x" * 100000
            code, err = server.stop(signum)
            assert sock.recv(10) == b""  # closed by the graceful stop
        assert code == 0 and "stopped" in err, err


def test_echo_graceful_stop_finishes_the_echo():
    with EchoProcess("--grace", "5") as server:
        with server.connect() as sock:
            assert echo_once(sock) == b"hello"
            start = time.monotonic()
            code, _ = server.stop()
            assert code == 0
            assert time.monotonic() - start < 3.0  # idle connections end at once


def test_echo_unix(tmp_path):
    path = str(tmp_path / "echo.sock")
    with EchoProcess("--unix", path) as server:
        assert server.line.startswith(f"listening on unix {path}")
        with server.connect() as sock:
            assert echo_once(sock) == b"hello"
        code, _ = server.stop(signal.SIGINT)
        assert code == 0
    assert not os.path.exists(path)


@pytest.mark.skipif(not has_family(socket.AF_INET6), reason="no IPv6 loopback")
def test_echo_ipv6():
    with EchoProcess("--host", "::1") as server:
        assert server.line.startswith("listening on tcp [::1]:")
        with server.connect() as sock:
            assert echo_once(sock) == b"hello"
        assert server.stop()[0] == 0


def _gone(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_echo_workers(signum):
    with EchoProcess("--workers", "2") as server:
        pids = server.pids()
        assert len(pids) == 2, server.line
        socks = [server.connect() for _ in range(6)]
        try:
            for sock in socks:
                assert echo_once(sock) == b"hello"
            code, err = server.stop(signum)
            assert code == 0 and "stopped" in err, err
            for sock in socks:
                assert sock.recv(10) == b""
        finally:
            for sock in socks:
                sock.close()
    # The parent reaped its workers before exiting.
    assert all(_gone(pid) for pid in pids)


def test_echo_bad_arguments():
    for args in (["--poller", "nosuch"], ["--workers", "0"]):
        proc = subprocess.run(
            [sys.executable, "-m", "pike.server.cli", *args],
            capture_output=True, text=True, timeout=TIMEOUT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
        assert proc.returncode == 2 and "error" in proc.stderr


def test_echo_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "pike.server.cli", "--port", str(port)],
            capture_output=True, text=True, timeout=TIMEOUT,
            env=dict(os.environ, PYTHONPATH=ROOT),
        )
    assert proc.returncode == 1 and "cannot listen" in proc.stderr
