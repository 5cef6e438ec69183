"""Tests of ``python -m pike bench --mode soak`` (pike.bench.soak, soak_cli, chat_echo).

The soak runs for real against pike's echo server and the Chat line-echo
server on both implementations and both transports, a few hundred cycles
each; the checker is proven against fake servers that truncate, corrupt,
add bytes or stall; the fd and memory bounds against fake readings. No
assertion is about speed.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from pike import _impl
from pike.bench import processes, soak, soak_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ["python", "c"]
HAVE_UNIX = hasattr(socket, "AF_UNIX")

@pytest.fixture
def procs():
    with processes.ProcessSet() as procs:
        yield procs


def _need(impl, transport):
    if impl not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    if transport == "unix" and not HAVE_UNIX:
        pytest.skip("no Unix sockets")


def _check_passed(result, cycles):
    assert result["failures"] == [] and result["failed"] == 0
    assert result["violations"] == []
    assert result["cycles"] == cycles == result["cycles_asked"]
    assert result["passed"] is True
    assert 0 < result["half_closed"] < cycles
    assert result["bytes"] >= 2 * (soak.MAX_PAYLOAD - 64 * 1024)  # the two big cycles at least
    fds, rss = result["watch"]["fds"], result["watch"]["rss_bytes"]
    assert fds["warm"] is not None and fds["end"] <= fds["bound_end"] == fds["warm"] + soak.FD_SLACK
    assert fds["max"] <= fds["bound_running"]
    assert rss["max"] <= rss["bound"] and rss["end"] > 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind,transport", [
    ("chat", "tcp"), ("chat", "unix"), ("echo", "tcp"), ("echo", "unix"),
])
def test_soak_passes(procs, kind, impl, transport):
    _need(impl, transport)
    spec = soak_cli.SoakSpec(kind, impl)
    result = soak_cli.soak_one(procs, spec, transport, 300, concurrency=3,
                               half_close_share=0.5, seed=7)
    assert result["server"] == f"{kind}:{impl}" and result["transport"] == transport
    _check_passed(result, 300)


def test_cli_soak_prints_the_bounds(tmp_path):
    path = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "pike", "bench", "--mode", "soak", "--servers", "chat",
           "--cycles", "160", "--transport", "tcp,unix" if HAVE_UNIX else "tcp",
           "--json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=processes.child_env())
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "bounds held" in proc.stdout and "soak PASSED" in proc.stdout
    runs = json.loads(path.read_text())["runs"]
    labels = {(run["server"], run["transport"]) for run in runs}
    impls = _impl.available_implementations()
    transports = ["tcp", "unix"] if HAVE_UNIX else ["tcp"]
    assert labels == {(f"chat:{i}", t) for i in impls for t in transports}
    for run in runs:
        assert run["cycles"] == 80 and run["passed"]
        assert f"{run['server']} {run['transport']}: fds <= " in proc.stdout
    assert "[1/" in proc.stderr  # progress


def test_cli_soak_refuses_bad_arguments():
    from pike.bench import cli

    for argv in (["--cycles", "0"], ["--transport", "pigeon"], ["--servers", "nginx"],
                 ["--half-close", "2"], ["--concurrency", "0"]):
        with pytest.raises(SystemExit):
            cli.main(["--mode", "soak"] + argv)


def test_soak_specs():
    specs = soak_cli.parse_specs("echo,chat:python", ["python", "c"])
    assert [s.label for s in specs] == ["echo:python", "echo:c", "chat:python"]
    assert [s.label for s in soak_cli.parse_specs(None, ["python"])] == ["echo:python", "chat:python"]
    with pytest.raises(ValueError):
        soak_cli.SoakSpec("echo", "rust")


# -- payloads ------------------------------------------------------------------------


def test_payloads():
    import random

    rng = random.Random(3)
    plain = soak.Payloads(seed=1)
    for size in (1, 700, soak.MAX_PAYLOAD):
        assert len(plain.take(rng, size)) == size
    lines = soak.Payloads(seed=1, lines=True)
    for size in (1, 5000, soak.MAX_PAYLOAD):
        payload = bytes(lines.take(rng, size))
        assert len(payload) >= size and payload.endswith(b"\n")
        assert len(payload) <= size + soak.MAX_LINE
        assert max(len(line) for line in payload.split(b"\n")) <= soak.MAX_LINE
    sizes = [soak.Payloads.draw_size(rng) for _ in range(5000)]
    assert min(sizes) >= 1 and max(sizes) <= soak.MAX_PAYLOAD
    assert sum(s <= 512 for s in sizes) > 2000  # mostly small


# -- the checker against servers that misbehave ---------------------------------------


class _FakeServer:
    """A threaded echo server that misbehaves on purpose (``mode``)."""

    def __init__(self, mode, family):
        self.mode = mode
        self._dir = None
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET:
            self.listener.bind(("127.0.0.1", 0))
            self.address = self.listener.getsockname()
        else:
            self._dir = tempfile.mkdtemp(prefix="pike-soak-test-")
            self.address = os.path.join(self._dir, "s")
            self.listener.bind(self.address)
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _echo(self, conn):
        conn.settimeout(5)
        sent = 0
        held = []
        try:
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    break
                if self.mode == "corrupt" and sent <= 1000 < sent + len(data):
                    data = bytearray(data)
                    data[1000 - sent] ^= 0xFF
                if self.mode == "truncate":
                    held.append(data)  # echoed at EOF, short
                    continue
                conn.sendall(data)
                sent += len(data)
            if self.mode == "truncate":
                conn.sendall(b"".join(held)[:-100])  # the tail is lost after the EOF
            if self.mode == "extra":
                conn.sendall(b"!")
            if self.mode == "stall":
                self._stop.wait(3)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self._stop.set()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)
        self.listener.close()
        if self._dir:
            os.unlink(self.address)
            os.rmdir(self._dir)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("mode,word", [
    ("truncate", "TRUNCATED"), ("corrupt", "CORRUPT"), ("extra", "EXTRA BYTES"),
    ("stall", "STALLED"),
])
def test_checker_catches_a_bad_server(mode, word, transport):
    if transport == "unix" and not HAVE_UNIX:
        pytest.skip("no Unix sockets")
    family = socket.AF_INET if transport == "tcp" else socket.AF_UNIX
    server = _FakeServer(mode, family)
    try:
        result = soak.run_cycles(
            server.address, family, 12, soak.Payloads(seed=2), transport=transport,
            half_close_share=1.0, concurrency=2, seed=5, max_failures=3,
            cycle_timeout=1.0,
        )
    finally:
        server.close()
    assert result["failed"] >= 1 and result["failures"]
    assert all(word in message for message in result["failures"]), result["failures"]
    assert "crc32" in result["failures"][0] or mode in ("corrupt", "extra")
    assert result["cycles"] < 12


def test_checker_passes_a_good_server():
    server = _FakeServer("good", socket.AF_INET)
    try:
        result = soak.run_cycles(server.address, socket.AF_INET, 30, soak.Payloads(seed=2),
                                 half_close_share=0.5, concurrency=3, seed=5)
    finally:
        server.close()
    assert result["failed"] == 0 and result["cycles"] == 30
    assert result["watch"]["samples"] == 0  # no pid: nothing sampled


def test_connect_failure_is_a_failure():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()  # bound, not listening: refused
        result = soak.run_cycles(address, socket.AF_INET, 5, soak.Payloads(seed=2),
                                 max_failures=2)
    assert result["failed"] == 2 and "connect failed" in result["failures"][0]


# -- the bounds ------------------------------------------------------------------------


def _watch(fds, rss, growth=4):
    readings = {"fds": list(fds), "rss": list(rss)}
    readers = (lambda pid: readings["fds"].pop(0), lambda pid: readings["rss"].pop(0))
    return soak.Watch(1, concurrency=2, rss_growth_mib=growth, readers=readers)


def test_watch_holds_flat_figures():
    mib = 1048576
    watch = _watch([5, 6, 9, 6, 6], [20 * mib, 30 * mib, 31 * mib, 32 * mib, 31 * mib])
    watch.start()
    watch.warm()
    assert watch.sample() and watch.sample()
    watch.end(settle_timeout=0)
    assert watch.violations == []
    figures = watch.as_dict()
    assert figures["fds"]["start"] == 5 and figures["fds"]["warm"] == 6
    assert figures["fds"]["max"] == 9 and figures["fds"]["end"] == 6
    assert figures["fds"]["bound_end"] == 6 + soak.FD_SLACK
    assert figures["rss_bytes"]["bound"] == 34 * mib


def test_watch_catches_fd_and_memory_growth():
    mib = 1048576
    watch = _watch([5, 6, 40, 30], [20 * mib, 30 * mib, 40 * mib, 41 * mib])
    watch.start()
    watch.warm()
    assert not watch.sample()
    watch.end(settle_timeout=0)
    text = " ".join(watch.violations)
    assert "held 40 fds" in text and "resident memory 40.0 MiB" in text
    assert "24 leaked" in text


def test_report_of_a_failed_run_says_what_failed():
    watch = _watch([5, 6, 6], [1, 1, 1])
    watch.start()
    watch.warm()
    watch.end(settle_timeout=0)
    result = {
        "server": "echo:c", "transport": "unix", "cycles": 9, "cycles_asked": 10,
        "failed": 1, "failures": ["cycle 3 (half-close, 10 B over unix): TRUNCATED: ..."],
        "violations": [], "half_closed": 4, "bytes": 100, "seconds": 1.0, "rate": 9.0,
        "stopped": None, "watch": watch.as_dict(), "passed": False, "warmup_cycles": 0,
    }
    text = soak_cli.format_results([result])
    assert "FAIL" in text and "TRUNCATED" in text and "soak FAILED" in text
    assert "fds <= " in text and "held" in text


def test_time_bound_stops_a_run_and_says_so():
    import time

    server = _FakeServer("good", socket.AF_INET)
    try:
        result = soak.run_cycles(server.address, socket.AF_INET, 50, soak.Payloads(seed=2),
                                 deadline=time.monotonic() - 1)
    finally:
        server.close()
    assert result["stopped"] == soak.TIME_BOUND and result["cycles"] == 0
    assert result["failed"] == 0
    result.update(server="chat:c", violations=[], passed=True, complete=False,
                  warmup_cycles=0)
    text = soak_cli.format_results([result])
    assert "PASS*" in text and "time bound stopped it after 0 of 50 cycles" in text
    assert "soak PASSED" in text
