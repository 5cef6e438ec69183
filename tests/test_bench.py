"""Tests of ``python -m pike bench`` (pike.bench): structure and correctness.

These run real servers and the real load generator for fractions of a
second. They check that bytes are verified, figures are present and
consistent, reports and JSON round-trip, and processes are cleaned up;
they never assert anything about speed.
"""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

import pike
from pike.bench import cpu, loadgen, report, runner, servers

PIKE_KIND = f"pike-{pike.available_pollers()[0]}"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def procs():
    with runner.ProcessSet() as procs:
        yield procs


@pytest.fixture
def pike_server(procs):
    server = runner.ServerProcess(procs, runner.ServerSpec(PIKE_KIND), max_seconds=60)
    try:
        yield server
    finally:
        server.stop()


def _echo_once(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            assert chunk, "server closed before echoing everything"
            got += chunk
    return got


# -- servers ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", servers.available_kinds())
def test_every_server_kind_echoes(procs, kind):
    server = runner.ServerProcess(procs, runner.ServerSpec(kind), max_seconds=60)
    try:
        assert server.info["kind"] == kind
        assert server.info["pid"] == server.pid
        assert 0 < server.port < 65536
        payload = bytes(range(256)) * 300  # more than one recv's worth
        assert _echo_once(server.port, payload) == payload
    finally:
        status = server.stop()
    assert status is not None


def test_pike_server_reports_its_implementation(procs):
    spec = runner.ServerSpec(PIKE_KIND, "python")
    server = runner.ServerProcess(procs, spec, max_seconds=60)
    try:
        assert server.info["implementation"] == "python"
        assert server.info["poller"] == PIKE_KIND.split("-", 1)[1]
    finally:
        server.stop()


def test_server_that_cannot_start_is_reported(procs):
    spec = runner.ServerSpec(PIKE_KIND, "c")
    if "c" in pike._impl.available_implementations():
        pytest.skip("the accelerator is built: PIKE_IMPL=c starts fine")
    with pytest.raises(runner.BenchError, match="did not start"):
        runner.ServerProcess(procs, spec, max_seconds=60)


def test_server_spec_parsing():
    assert runner.ServerSpec.parse("asyncio").label == "asyncio"
    spec = runner.ServerSpec.parse("pike-poll:python")
    assert (spec.kind, spec.impl, spec.label) == ("pike-poll", "python", "pike-poll:python")
    assert runner.ServerSpec.parse("pike-poll:auto").label == "pike-poll"
    with pytest.raises(ValueError):
        runner.ServerSpec.parse("nginx")
    with pytest.raises(ValueError):
        runner.ServerSpec.parse("asyncio:c")
    with pytest.raises(ValueError):
        runner.ServerSpec.parse("pike-poll:fortran")


# -- load generator ------------------------------------------------------------------


def test_loadgen_against_pike_server(pike_server):
    result = loadgen.run_pingpong(
        pike_server.port,
        connections=3,
        size=1000,
        warmup=0.1,
        duration=0.4,
        server_pid=pike_server.pid,
    )
    assert result["connections"] == 3 and result["size"] == 1000
    assert result["requests"] > 0
    assert result["requests_total"] >= result["requests"]
    assert result["bytes_verified"] == result["requests_total"] * 1000
    assert result["window_s"] > 0
    assert result["rps"] == pytest.approx(result["requests"] / result["window_s"])
    lat = result["latency_us"]
    assert lat["samples"] == result["requests"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["loadgen_cpu_s"] >= 0
    if cpu.proc_cpu_seconds(os.getpid()) is not None:
        assert result["server_cpu_source"] == "proc"
        assert result["server_cpu_s"] >= 0
        assert result["other_cpu_pct"] is not None
    json.dumps(result)  # plain values only


def test_loadgen_large_messages_and_partial_sends(pike_server):
    # Larger than the socket buffers: partial sends and echoes in pieces.
    result = loadgen.run_pingpong(
        pike_server.port, connections=2, size=600_000, warmup=0.0, duration=0.5
    )
    assert result["requests"] > 0
    assert result["bytes_verified"] == result["requests_total"] * 600_000


def test_loadgen_as_a_process(procs, pike_server):
    result = runner.run_loadgen(
        procs, pike_server.port, 2, 512, 0.05, 0.3, server_pid=pike_server.pid
    )
    assert result["requests"] > 0 and result["connections"] == 2


def test_run_once_falls_back_to_rusage_lifetime(procs, monkeypatch):
    real = runner.run_loadgen

    def without_server_cpu(*args, **kwargs):
        result = real(*args, **kwargs)
        result["server_cpu_s"] = result["server_cpu_source"] = None
        return result

    monkeypatch.setattr(runner, "run_loadgen", without_server_cpu)
    run = runner.run_once(procs, runner.ServerSpec(PIKE_KIND), 1, 256, 0.05, 0.3)
    assert run["server"] == PIKE_KIND and run["requests"] > 0
    if cpu.children_cpu_seconds() is not None:
        assert run["server_cpu_source"] == "rusage-lifetime"
        assert run["server_cpu_s"] >= 0
        assert run["server_cpu_us_per_req"] is not None
        assert run["server_cpu_pct"] is None


def test_messages_differ_between_requests_and_connections():
    first = loadgen.make_messages(0, 64)
    second = loadgen.make_messages(1, 64)
    assert all(len(m) == 64 for m in first + second)
    assert len(set(first + second)) == len(first) + len(second)
    assert len(set(loadgen.make_messages(0, 1))) > 1


class _BadServer:
    """A blocking echo server on a thread that misbehaves on purpose."""

    def __init__(self, mode):
        self.mode = mode
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        conn.settimeout(0.2)
        with conn:
            count = 0
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                count += 1
                if self.mode == "close":
                    return
                if self.mode == "silent":
                    continue
                if self.mode == "corrupt" and count == 3:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if self.mode == "extra" and count == 3:
                    data += b"!"
                conn.sendall(data)

    def close(self):
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    "mode, error",
    [
        ("corrupt", loadgen.EchoMismatch),
        ("extra", loadgen.EchoMismatch),
        ("close", loadgen.LoadgenError),
        ("silent", loadgen.LoadgenError),
    ],
)
def test_loadgen_catches_a_bad_echo(mode, error):
    bad = _BadServer(mode)
    try:
        with pytest.raises(error):
            loadgen.run_pingpong(
                bad.port, connections=1, size=100, warmup=0.0, duration=3.0,
                stall_timeout=0.5,
            )
    finally:
        bad.close()


def test_loadgen_refuses_silly_arguments():
    with pytest.raises(ValueError):
        loadgen.run_pingpong(1, connections=0)
    with pytest.raises(ValueError):
        loadgen.run_pingpong(1, size=0)
    with pytest.raises(ValueError):
        loadgen.run_pingpong(1, duration=0)


def test_loadgen_connect_failure_is_an_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    with pytest.raises(loadgen.LoadgenError, match="cannot connect"):
        loadgen.run_pingpong(port, duration=0.1, connect_timeout=1.0)


# -- CPU accounting ------------------------------------------------------------------


def test_cpu_accounting_sources():
    assert cpu.self_cpu_seconds() >= 0
    if os.path.exists(f"/proc/{os.getpid()}/stat"):
        assert cpu.proc_cpu_seconds(os.getpid()) >= 0
        read, source = cpu.cpu_reader(os.getpid())
        assert source == "proc" and read() >= 0
        busy, steal = cpu.system_cpu_seconds()
        assert busy >= 0 and steal >= 0
    assert cpu.proc_cpu_seconds(-1) is None
    server_cpu, loadgen_cpu = cpu.choose_cpus()
    assert (server_cpu is None) == (loadgen_cpu is None)
    assert server_cpu != loadgen_cpu or server_cpu is None


def test_processes_are_cleaned_up():
    with runner.ProcessSet() as procs:
        server = runner.ServerProcess(procs, runner.ServerSpec(PIKE_KIND), max_seconds=60)
        proc = server.proc
        assert proc.poll() is None
        # A child that ignores SIGTERM still goes (SIGKILL after the timeout).
        stubborn = procs.spawn(
            [sys.executable, "-c",
             "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "print('ok', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE,
        )
        stubborn.stdout.readline()
        procs.stop(stubborn, timeout=0.5)
        assert stubborn.returncode is not None
    assert proc.returncode is not None


# -- report --------------------------------------------------------------------------


def _fake_run(server, rps, cpu_us, round_no=1, impl=None):
    requests = int(rps)
    return {
        "server": server,
        "round": round_no,
        "connections": 1,
        "size": 1024,
        "window_s": 1.0,
        "requests": requests,
        "requests_total": requests + 10,
        "rps": float(rps),
        "server_cpu_s": cpu_us * requests / 1e6,
        "server_cpu_us_per_req": float(cpu_us),
        "server_cpu_source": "proc",
        "server_cpu_pct": cpu_us * requests / 1e4,
        "loadgen_cpu_pct": 95.0,
        "other_cpu_pct": 1.0,
        "steal_pct": 0.0,
        "latency_us": {"p50": 40.0, "p90": 50.0, "p99": 90.0, "max": 120.0},
        "server_info": {"implementation": impl} if impl else {},
    }


def _fake_results():
    case = {"connections": 1, "size": 1024, "runs": []}
    for round_no, factor in ((1, 1.0), (2, 1.2), (3, 0.9)):
        case["runs"].append(_fake_run("pike-epoll", 20000 * factor, 20 / factor, round_no, "python"))
        case["runs"].append(_fake_run("asyncio", 10000 * factor, 40 / factor, round_no))
        case["runs"].append({"server": "uvloop", "round": round_no, "error": "boom\nmore"})
    report.summarize_case(case, ["pike-epoll", "asyncio", "uvloop"], "asyncio")
    return {
        "schema": report.SCHEMA,
        "machine": {"pike_version": "0.1.0", "python": "3.x", "cpu_count": 2,
                    "server_cpu": 0, "loadgen_cpu": 1},
        "settings": {"repeat": 3, "duration_s": 1.0, "baseline": "asyncio"},
        "cases": [case],
        "elapsed_s": 12.0,
    }


def test_summary_medians_and_ratios():
    results = _fake_results()
    summary = results["cases"][0]["summary"]
    pike_row, asyncio_row = summary["pike-epoll"], summary["asyncio"]
    assert pike_row["rps"] == pytest.approx(20000)
    assert pike_row["server_cpu_us_per_req"] == pytest.approx(20)
    assert asyncio_row["rps_vs_baseline"] == pytest.approx(1.0)
    assert pike_row["rps_vs_baseline"] == pytest.approx(2.0)
    assert pike_row["cpu_vs_baseline"] == pytest.approx(0.5)
    assert pike_row["implementation"] == "python"
    assert summary["uvloop"]["failed"] == 3 and summary["uvloop"]["rps"] is None
    assert report.has_failures(results)


def test_report_table():
    text = report.format_report(_fake_results(), micro="us")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("server ") and "impl" in line)
    for column in ("req/s", "CPU us/req", "p50 us", "p99 us", "vs asyncio", "client CPU"):
        assert column in header
    pike_line = next(line for line in lines if line.startswith("pike-epoll"))
    assert "20,000" in pike_line and "2.00x" in pike_line and "0.50x" in pike_line
    assert "95%!" in pike_line  # a busy load generator is flagged
    assert any(line.startswith("uvloop") and "FAILED" in line for line in lines)
    assert "uvloop: boom" in text
    assert "limit req/s" in text


def test_report_without_baseline():
    case = {"connections": 10, "size": 64, "runs": [_fake_run("pike-poll", 100, 5)]}
    report.summarize_case(case, baseline="asyncio")
    text = report.format_case(case, micro="us")
    assert "ratios are not shown" in text
    assert "10 connections, 64-byte messages" in text


def test_json_round_trip(tmp_path):
    results = _fake_results()
    path = tmp_path / "bench.json"
    report.write_json(results, str(path))
    loaded = report.read_json(str(path))
    assert loaded == json.loads(json.dumps(results))
    assert report.format_report(loaded, micro="us") == report.format_report(results, micro="us")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError):
        report.read_json(str(tmp_path / "other.json"))


# -- the command line ----------------------------------------------------------------


def _run_cli(prefix, tmp_path):
    path = tmp_path / "out.json"
    cmd = [sys.executable, "-m"] + prefix + [
        "--servers", f"{PIKE_KIND},asyncio",
        "--connections", "1",
        "--duration", "0.4",
        "--warmup", "0.1",
        "--repeat", "1",
        "--json", str(path),
    ]
    env = runner.child_env()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=50, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("server ") and "impl" in line)
    assert "req/s" in header and "/req" in header
    assert any(line.startswith(PIKE_KIND) for line in lines)
    assert any(line.startswith("asyncio") for line in lines)
    assert "[1/2]" in proc.stderr and "[2/2]" in proc.stderr  # progress
    results = report.read_json(str(path))
    case = results["cases"][0]
    assert [run["server"] for run in case["runs"]] == [PIKE_KIND, "asyncio"]
    assert all("error" not in run for run in case["runs"])
    assert results["machine"]["cpu_count"] == os.cpu_count()
    return results


def test_bench_cli_module_runs(tmp_path):
    _run_cli(["pike.bench.cli"], tmp_path)


def test_python_m_pike_bench_runs(tmp_path):
    _run_cli(["pike", "bench"], tmp_path)


def test_cli_in_process_options(capsys):
    from pike.bench import cli

    assert cli.main(["--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == servers.available_kinds()
    with pytest.raises(SystemExit):
        cli.main(["--servers", "nginx"])
    with pytest.raises(SystemExit):
        cli.main(["--connections", "0"])
    with pytest.raises(SystemExit):
        cli.main(["--size", "x"])
    parser = cli.build_parser()
    assert cli._size_list("1k,2m,7") == [1024, 2 * 1024 * 1024, 7]
    args = parser.parse_args(["--impl", "python,c", "--servers", f"{PIKE_KIND},asyncio"])
    labels = [spec.label for spec in cli._servers(args, parser)]
    assert labels == [f"{PIKE_KIND}:python", f"{PIKE_KIND}:c", "asyncio"]
