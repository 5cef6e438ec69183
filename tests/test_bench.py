"""Tests of ``python -m pike bench`` (pike.bench): structure and correctness.

These run real servers and the real load generators (C and Python) for
fractions of a second, in every mode (ping-pong, stream, scale) on tiny
settings. They check that bytes are verified, figures are present and
consistent, reports, JSON and charts come out, and processes are cleaned
up; they never assert anything about speed.
"""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

import pike
from pike.bench import cpu, loadgen, loadgen_runs, native, plot, processes, report, runner, runs, servers

PIKE_KIND = f"pike-{pike.available_pollers()[0]}"
PIKE_PY = f"{PIKE_KIND}:python"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_CC = sys.platform.startswith("linux") and native.compiler() is not None
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler (or not Linux)")


@pytest.fixture(scope="module")
def c_loadgen():
    """The C load generator, or a skip."""
    if not HAVE_CC:
        pytest.skip("no C compiler (or not Linux)")
    gen, note = loadgen_runs.Loadgen.choose("c")
    assert note is None
    return gen


@pytest.fixture
def procs():
    with processes.ProcessSet() as procs:
        yield procs


@pytest.fixture
def pike_server(procs):
    server = processes.ServerProcess(procs, processes.ServerSpec(PIKE_KIND), max_seconds=60)
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


@pytest.mark.parametrize("kind", servers.ALL_KINDS)
def test_every_server_kind_echoes(procs, kind):
    if kind not in servers.available_kinds(native=False) + ["c-ref"]:
        pytest.skip(f"{kind} is not available here")
    if kind == "c-ref" and servers.c_ref_unavailable():
        pytest.skip(f"c-ref: {servers.c_ref_unavailable()}")
    server = processes.ServerProcess(procs, processes.ServerSpec(kind), max_seconds=60)
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
    spec = processes.ServerSpec(PIKE_KIND, "python")
    server = processes.ServerProcess(procs, spec, max_seconds=60)
    try:
        assert server.info["implementation"] == "python"
        assert server.info["poller"] == PIKE_KIND.split("-", 1)[1]
    finally:
        server.stop()


def test_server_that_cannot_start_is_reported(procs):
    spec = processes.ServerSpec(PIKE_KIND, "c")
    if "c" in pike._impl.available_implementations():
        pytest.skip("the accelerator is built: PIKE_IMPL=c starts fine")
    with pytest.raises(processes.BenchError, match="did not start"):
        processes.ServerProcess(procs, spec, max_seconds=60)


def test_server_spec_parsing():
    assert processes.ServerSpec.parse("asyncio").label == "asyncio"
    spec = processes.ServerSpec.parse("pike-poll:python")
    assert (spec.kind, spec.impl, spec.label) == ("pike-poll", "python", "pike-poll:python")
    assert processes.ServerSpec.parse("pike-poll:auto").label == "pike-poll"
    with pytest.raises(ValueError):
        processes.ServerSpec.parse("nginx")
    with pytest.raises(ValueError):
        processes.ServerSpec.parse("asyncio:c")
    with pytest.raises(ValueError):
        processes.ServerSpec.parse("pike-poll:fortran")
    with pytest.raises(ValueError):
        processes.ServerSpec.parse("c-ref:c")
    assert processes.ServerSpec.parse("c-ref").label == "c-ref"


@needs_cc
def test_c_ref_is_a_server_when_a_compiler_exists():
    assert servers.c_ref_unavailable() is None
    kinds = servers.available_kinds()
    assert kinds[-1] == "c-ref"
    assert "c-ref" not in servers.available_kinds(native=False)


def test_c_ref_that_cannot_be_built_is_skipped_clearly(monkeypatch, procs):
    from pike.bench import cli

    def no_build(name, cache_dir=None):
        native._last_errors[name] = "no C compiler found (set $CC, or install cc/gcc/clang)"
        return None

    monkeypatch.setattr(native, "build", no_build)
    assert "c-ref" not in servers.available_kinds()
    assert "no C compiler" in servers.c_ref_unavailable()
    with pytest.raises(processes.BenchError, match="c-ref is unavailable: no C compiler"):
        processes.ServerProcess(procs, processes.ServerSpec("c-ref"), max_seconds=60)
    parser = cli.build_parser()
    specs, skipped = cli._servers(parser.parse_args([]), parser, ["python"])
    assert "c-ref" not in [spec.label for spec in specs]
    assert "no C compiler" in skipped["c-ref"]
    with pytest.raises(SystemExit):
        cli._servers(parser.parse_args(["--servers", "c-ref"]), parser, ["python"])
    # ... and the load generator falls back to the Python one, with a note.
    gen, note = loadgen_runs.Loadgen.choose()
    assert gen.kind == "python" and "no C compiler" in note
    with pytest.raises(processes.BenchError, match="cannot be built"):
        loadgen_runs.Loadgen.choose("c")
    assert loadgen_runs.Loadgen.choose("python")[0].kind == "python"


def test_pike_implementations_probe():
    impls = processes.pike_implementations()
    assert impls[0] == "python" and set(impls) <= {"python", "c"}
    env = processes.child_env({"PIKE_IMPL": "c"})
    code = "import pike; assert pike.IMPLEMENTATION == 'c'"
    probe = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert ("c" in impls) == (probe.returncode == 0)


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
    result = loadgen_runs.run_loadgen(
        procs, pike_server.port, 2, 512, 0.05, 0.3, server_pid=pike_server.pid
    )
    assert result["requests"] > 0 and result["connections"] == 2


def _check_pingpong_run(run, connections, size):
    assert run["mode"] == "pingpong"
    assert run["connections"] == connections and run["size"] == size
    assert run["requests"] > 0 and run["window_s"] > 0
    assert run["rps"] == pytest.approx(run["requests"] / run["window_s"], rel=0.01)
    assert run["bytes"] == run["requests"] * size
    lat = run["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert run["loadgen_cpu_s"] >= 0 and run["loadgen_cpu_pct"] is not None
    if cpu.proc_cpu_seconds(os.getpid()) is not None:
        assert run["server_cpu_source"] == "proc"
        assert run["server_cpu_s"] >= 0
        assert run["server_cpu_us_per_req"] == pytest.approx(
            1e6 * run["server_cpu_s"] / run["requests"]
        )
    json.dumps(run)


@pytest.mark.parametrize("kind", [PIKE_KIND, "c-ref"])
def test_run_once_with_the_c_loadgen(procs, c_loadgen, kind):
    spec = processes.ServerSpec(kind, "python" if kind == PIKE_KIND else None)
    run = runs.run_once(procs, spec, 3, 700, 0.05, 0.3, loadgen=c_loadgen)
    _check_pingpong_run(run, 3, 700)
    assert run["loadgen"] == "c" and run["server"] == spec.label
    assert run["server_info"]["implementation"] in ("python", "c")
    assert run["requests_total"] is None  # the C tool counts the window only


def test_run_once_with_the_python_loadgen(procs):
    run = runs.run_once(procs, processes.ServerSpec(PIKE_KIND, "python"), 2, 512, 0.05, 0.3)
    _check_pingpong_run(run, 2, 512)
    assert run["loadgen"] == "python"
    assert run["bytes_verified"] == run["requests_total"] * 512


# -- stream mode ----------------------------------------------------------------------


def _check_stream_run(run, connections, size):
    assert run["mode"] == "stream"
    assert run["connections"] == connections and run["size"] == size
    assert run["bytes"] > 0 and run["mib_per_s"] > 0
    assert run["mib_per_s"] == pytest.approx(run["bytes"] / run["window_s"] / 1048576, rel=0.01)
    assert run["latency_us"] is None
    if cpu.proc_cpu_seconds(os.getpid()) is not None:
        assert run["server_cpu_us_per_mib"] == pytest.approx(
            run["server_cpu_s"] * 1e6 / (run["bytes"] / 1048576)
        )
    json.dumps(run)


@pytest.mark.parametrize("which", ["c", "python"])
def test_stream_mode(procs, which):
    if which == "c":
        if not HAVE_CC:
            pytest.skip("no C compiler")
        gen = loadgen_runs.Loadgen.choose("c")[0]
    else:
        gen = loadgen_runs.Loadgen("python")
    run = runs.run_once(
        procs, processes.ServerSpec(PIKE_KIND, "python"), 2, 4096, 0.05, 0.3,
        loadgen=gen, mode="stream", window=65536,
    )
    _check_stream_run(run, 2, 4096)
    assert run["loadgen"] == which


def test_py_floor_streams_through_partial_sends(procs):
    """The yardstick loop must be a correct echo too: with 1 MiB in flight
    and 64 KiB writes its sends come up short, and every byte is checked."""
    if "py-floor" not in servers.available_kinds(native=False):
        pytest.skip("py-floor needs select.epoll")
    gen = loadgen_runs.Loadgen.choose()[0]
    run = runs.run_once(
        procs, processes.ServerSpec("py-floor"), 2, 65536, 0.05, 0.5,
        loadgen=gen, mode="stream", window=1 << 20,
    )
    assert "error" not in run, run.get("error")
    _check_stream_run(run, 2, 65536)


def test_python_stream_checks_every_byte(pike_server):
    result = loadgen.run_stream(
        pike_server.port, connections=2, size=3000, window=20000, warmup=0.05, duration=0.3
    )
    assert result["bytes"] > 0 and result["bytes_verified"] >= result["bytes"]
    # A stream that does not fit the pattern's period in one piece still checks.
    result = loadgen.run_stream(
        pike_server.port, connections=1, size=65536, window=1 << 21, warmup=0.0, duration=0.3
    )
    assert result["bytes_verified"] > 0


@pytest.mark.parametrize(
    "mode, error",
    [("corrupt", loadgen.EchoMismatch), ("extra", loadgen.EchoMismatch),
     ("close", loadgen.LoadgenError), ("silent", loadgen.LoadgenError)],
)
def test_python_stream_catches_a_bad_echo(mode, error):
    bad = _BadServer(mode)
    try:
        with pytest.raises(error):
            loadgen.run_stream(
                bad.port, connections=1, size=100, window=300, warmup=0.0, duration=3.0,
                stall_timeout=0.5,
            )
    finally:
        bad.close()


# -- scale mode -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [PIKE_KIND, "c-ref"])
def test_scale_mode(procs, kind):
    if kind == "c-ref" and not HAVE_CC:
        pytest.skip("no C compiler")
    gen = loadgen_runs.Loadgen.choose()[0]
    spec = processes.ServerSpec(kind, "python" if kind == PIKE_KIND else None)
    run = runs.run_scale_once(procs, spec, 50, 2, 256, 0.05, 0.3, loadgen=gen)
    assert "error" not in run and "skipped" not in run
    assert run["mode"] == "scale" and run["idle"] == 50 and run["connections"] == 2
    for which in ("without", "with"):
        assert run[f"rps_{which}"] > 0
        assert run[f"{which}_idle"]["requests"] > 0
    assert run["rps_ratio"] == pytest.approx(run["rps_with"] / run["rps_without"])
    if os.path.isdir(f"/proc/{os.getpid()}/fd"):
        assert run["fds_after"] - run["fds_before"] >= 50  # the server held them all
        assert run["rss_before_bytes"] > 0 and run["rss_after_bytes"] > 0
        assert run["idle_kib_per_conn"] == pytest.approx(
            (run["rss_after_bytes"] - run["rss_before_bytes"]) / 50 / 1024
        )
        assert run["server_cpu_us_per_req_with"] is not None
    json.dumps(run)
    assert not procs._procs  # everything stopped


def test_scale_skips_select_servers_that_cannot_hold_the_fds(procs):
    spec = processes.ServerSpec("pike-select", "python")
    run = runs.run_scale_once(procs, spec, 5000, 10, 1024, 0.05, 0.3)
    assert "select()" in run["skipped"] and not procs._procs
    assert runs.scale_skip_reason(spec, 50, 10) is None


def test_servers_raise_their_fd_limit():
    code = (
        "import resource, sys; from pike.bench import servers; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
        "soft = servers.raise_nofile_limit(); hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        "sys.exit(0 if soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0] and "
        "(soft == hard or hard == resource.RLIM_INFINITY) else 1)"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=processes.child_env(), timeout=30)
    assert proc.returncode == 0


def test_idle_connections_are_closed_without_time_wait():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    try:
        with runs.IdleConnections() as pool:
            pool.open(port, 20, timeout=10)
            assert len(pool.socks) == 20
            accepted = [listener.accept()[0] for _ in range(20)]
        assert pool.socks == []
        for sock in accepted:
            sock.settimeout(2)
            with pytest.raises(ConnectionResetError):
                sock.recv(10)  # a reset, not a FIN: no TIME_WAIT on our side
            sock.close()
    finally:
        listener.close()


def test_run_once_falls_back_to_rusage_lifetime(procs, monkeypatch):
    real = loadgen_runs.run_loadgen

    def without_server_cpu(*args, **kwargs):
        result = real(*args, **kwargs)
        result["server_cpu_s"] = result["server_cpu_source"] = None
        return result

    monkeypatch.setattr(loadgen_runs, "run_loadgen", without_server_cpu)
    run = runs.run_once(procs, processes.ServerSpec(PIKE_KIND), 1, 256, 0.05, 0.3)
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
    with processes.ProcessSet() as procs:
        server = processes.ServerProcess(procs, processes.ServerSpec(PIKE_KIND), max_seconds=60)
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
        "mode": "pingpong",
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


def _fake_stream_run(server, mib, cpu_per_mib, round_no=1):
    return {
        "server": server, "mode": "stream", "round": round_no, "connections": 1,
        "size": 65536, "window_s": 1.0, "bytes": int(mib * 1048576), "mib_per_s": mib,
        "server_cpu_us_per_mib": cpu_per_mib, "server_cpu_pct": 50.0,
        "server_cpu_source": "proc", "loadgen_cpu_pct": 40.0, "server_info": {},
    }


def _fake_scale_run(server, without, with_idle, kib, round_no=1):
    return {
        "server": server, "mode": "scale", "round": round_no, "idle": 1000,
        "connections": 10, "size": 1024, "rps_without": without, "rps_with": with_idle,
        "rps_ratio": with_idle / without, "server_cpu_us_per_req_without": 10.0,
        "server_cpu_us_per_req_with": 12.0, "p99_us_with": 300.0,
        "idle_kib_per_conn": kib, "rss_before_bytes": 10 << 20,
        "rss_after_bytes": (10 << 20) + int(kib * 1024 * 1000), "idle_open_s": 0.2,
        "loadgen_cpu_pct_with": 50.0, "server_info": {},
    }


def _fake_results():
    servers_ = ["pike-epoll:python", "asyncio", "uvloop", "c-ref"]
    case = {"mode": "pingpong", "connections": 1, "size": 1024, "runs": []}
    stream = {"mode": "stream", "connections": 1, "size": 65536, "window": 1 << 20, "runs": []}
    scale = {"mode": "scale", "idle": 1000, "connections": 10, "size": 1024, "runs": []}
    for round_no, factor in ((1, 1.0), (2, 1.2), (3, 0.9)):
        case["runs"].append(
            _fake_run("pike-epoll:python", 20000 * factor, 20 / factor, round_no, "python")
        )
        case["runs"].append(_fake_run("asyncio", 10000 * factor, 40 / factor, round_no))
        case["runs"].append({"server": "uvloop", "round": round_no, "error": "boom\nmore"})
        case["runs"].append(_fake_run("c-ref", 40000 * factor, 10 / factor, round_no, "c"))
        stream["runs"].append(_fake_stream_run("pike-epoll:python", 500.0, 800.0, round_no))
        stream["runs"].append(_fake_stream_run("asyncio", 400.0, 1000.0, round_no))
        stream["runs"].append({"server": "uvloop", "round": round_no, "mode": "stream",
                               "skipped": "not today"})
        stream["runs"].append(_fake_stream_run("c-ref", 1000.0, 400.0, round_no))
        scale["runs"].append(_fake_scale_run("pike-epoll:python", 30000.0, 27000.0, 0.5, round_no))
        scale["runs"].append(_fake_scale_run("c-ref", 60000.0, 60000.0, 0.05, round_no))
    for c in (case, stream, scale):
        report.summarize_case(c, servers_, "asyncio")
    return {
        "schema": report.SCHEMA,
        "machine": {"pike_version": "0.1.0", "python": "3.x", "cpu_count": 2,
                    "server_cpu": 0, "loadgen_cpu": 1},
        "settings": {"repeat": 3, "duration_s": 1.0, "baseline": "asyncio"},
        "loadgen": {"kind": "c", "executable": "/x/loadgen"},
        "skipped_servers": {},
        "notes": [],
        "cases": [case, stream, scale],
        "elapsed_s": 12.0,
    }


def test_summary_medians_and_ratios():
    results = _fake_results()
    summary = results["cases"][0]["summary"]
    pike_row, asyncio_row = summary["pike-epoll:python"], summary["asyncio"]
    assert pike_row["rps"] == pytest.approx(20000)
    assert pike_row["server_cpu_us_per_req"] == pytest.approx(20)
    assert asyncio_row["rps_vs_baseline"] == pytest.approx(1.0)
    assert pike_row["rps_vs_baseline"] == pytest.approx(2.0)
    assert pike_row["cpu_vs_baseline"] == pytest.approx(0.5)
    assert pike_row["cpu_vs_c_ref"] == pytest.approx(2.0)
    assert pike_row["rps_vs_c_ref"] == pytest.approx(0.5)
    assert pike_row["vs"]["c-ref"]["cpu"] == pytest.approx(2.0)
    assert pike_row["vs"]["asyncio"]["rps"] == pytest.approx(2.0)
    assert pike_row["implementation"] == "python"
    assert summary["uvloop"]["failed"] == 3 and summary["uvloop"]["rps"] is None
    assert results["cases"][0]["baseline"] == "asyncio"
    assert results["cases"][0]["reference"] == "c-ref"
    assert report.has_failures(results)


def test_ratios_to_c_ref_round_by_round():
    """Each round pairs a server with the c-ref run beside it in time: the
    spread of those ratios is in the summary and in a note under the table."""
    case = {"mode": "pingpong", "connections": 1, "size": 1024, "runs": []}
    # c-ref is twice as fast as pike in rounds 1 and 3; in round 2 the
    # machine slowed both, pike more; in round 4 pike failed.
    for round_no, pike_cpu, ref_cpu in ((1, 20.0, 10.0), (2, 36.0, 12.0), (3, 22.0, 11.0)):
        case["runs"].append(_fake_run("pike-epoll:c", 1e6 / pike_cpu, pike_cpu, round_no, "c"))
        case["runs"].append(_fake_run("c-ref", 1e6 / ref_cpu, ref_cpu, round_no, "c"))
    case["runs"].append({"server": "pike-epoll:c", "round": 4, "error": "boom"})
    case["runs"].append(_fake_run("c-ref", 1e5, 10.0, 4, "c"))
    summary = report.summarize_case(case)
    spread = summary["pike-epoll:c"]["per_round_vs_c_ref"]["cpu"]
    assert spread == {"median": pytest.approx(2.0), "min": pytest.approx(2.0),
                      "max": pytest.approx(3.0), "rounds": 3}
    assert summary["c-ref"]["per_round_vs_c_ref"]["cpu"]["max"] == pytest.approx(1.0)
    text = report.format_case(case)
    assert "CPU vs c-ref round by round" in text
    assert "pike-epoll:c 2.00 (2.00-3.00)" in text
    assert "c-ref 1.00" not in text  # the reference against itself says nothing


def test_no_round_by_round_ratios_without_c_ref():
    case = {"mode": "pingpong", "connections": 1, "size": 1024, "runs": [
        _fake_run("pike-epoll:c", 5e4, 20.0, 1, "c"),
        _fake_run("pike-epoll:c", 5e4, 20.0, 2, "c"),
    ]}
    summary = report.summarize_case(case)
    assert "per_round_vs_c_ref" not in summary["pike-epoll:c"]
    assert "round by round" not in report.format_case(case)


def test_stream_and_scale_summaries():
    results = _fake_results()
    stream = results["cases"][1]["summary"]
    assert stream["pike-epoll:python"]["mib_per_s_vs_c_ref"] == pytest.approx(0.5)
    assert stream["pike-epoll:python"]["cpu_vs_c_ref"] == pytest.approx(2.0)
    assert stream["pike-epoll:python"]["mib_per_s_vs_baseline"] == pytest.approx(1.25)
    assert stream["uvloop"]["skipped"] == "not today" and stream["uvloop"]["failed"] == 0
    scale = results["cases"][2]["summary"]
    assert scale["pike-epoll:python"]["rps_ratio"] == pytest.approx(0.9)
    assert scale["pike-epoll:python"]["kib_per_idle_vs_c_ref"] == pytest.approx(10.0)
    assert results["cases"][2]["baseline"] is None  # no asyncio in that case


def test_report_table():
    text = report.format_report(_fake_results(), micro="us")
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("server ") and "impl" in line)
    for column in ("req/s", "CPU us/req", "p50 us", "p99 us", "CPU vs asyncio",
                   "CPU vs c-ref", "req/s vs c-ref", "client CPU"):
        assert column in header
    # the headline column comes first
    assert header.index("CPU us/req") < header.index("req/s")
    pike_line = next(line for line in lines if line.startswith("pike-epoll:python"))
    assert "20,000" in pike_line and "2.00x" in pike_line and "0.50x" in pike_line
    assert "95%!" in pike_line  # a busy load generator is flagged
    assert any(line.startswith("uvloop") and "FAILED" in line for line in lines)
    assert "uvloop: boom" in text
    assert "limit req/s" in text
    assert "load generator: C" in text
    # stream and scale tables
    assert "stream echo: 1 connection, 64 KiB writes, 1 MiB in flight" in text
    assert any(line.startswith("uvloop") and "skipped: not today" in line for line in lines)
    assert "MiB/s vs c-ref" in text and "CPU us/MiB" in text
    assert "beside 1,000 idle connections" in text
    scale_line = [line for line in lines if line.startswith("pike-epoll:python")][-1]
    assert "0.90x" in scale_line and "0.50" in scale_line and "27,000" in scale_line


def test_report_without_baseline():
    case = {"connections": 10, "size": 64, "runs": [_fake_run("pike-poll", 100, 5)]}
    report.summarize_case(case, baseline="asyncio")
    text = report.format_case(case, micro="us", skipped_servers={"c-ref": "no C compiler"})
    assert "no asyncio figures" in text
    assert "c-ref skipped: no C compiler" in text
    assert "10 connections, 64 B messages" in text


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


def test_json_of_the_first_layout_still_reads(tmp_path):
    old = {
        "schema": "pike-bench/1",
        "settings": {"repeat": 1, "baseline": "asyncio"},
        "cases": [{"connections": 1, "size": 1024,
                   "runs": [_fake_run("pike-epoll", 100, 5), _fake_run("asyncio", 50, 10)],
                   "summary": {"pike-epoll": {"runs": 1}}}],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    loaded = report.read_json(str(path))
    assert loaded["cases"][0]["summary"]["pike-epoll"]["cpu_vs_baseline"] == pytest.approx(0.5)
    assert "ping-pong echo" in report.format_report(loaded, micro="us")


# -- chart ------------------------------------------------------------------------------


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setattr(plot, "unavailable", lambda: "matplotlib is not available (test)")
    with pytest.raises(plot.PlotUnavailable, match="not available"):
        plot.draw(_fake_results(), str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_plot_panels():
    drawn = plot.panels(_fake_results())
    assert [panel[0] for panel in drawn] == ["pingpong", "stream", "scale"]
    mode, field, _, _, labels, values = drawn[0]
    assert field == "server_cpu_us_per_req" and len(labels) == 1
    assert values["c-ref"] == [pytest.approx(10.0)]
    assert "uvloop" not in values  # no figures: no bars


def test_plot_is_written_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    plot.draw(_fake_results(), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot_from_json(tmp_path):
    from pike.bench import cli

    data = tmp_path / "r.json"
    report.write_json(_fake_results(), str(data))
    chart = tmp_path / "r.png"
    proc = subprocess.run(
        [sys.executable, "-m", "pike", "bench", "--from-json", str(data), "--plot", str(chart)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=processes.child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "ping-pong echo" in proc.stdout
    if plot.unavailable() is None:
        assert chart.exists() and "chart written" in proc.stderr
    else:
        assert not chart.exists() and "matplotlib" in proc.stderr
    assert cli  # imported fine


# -- the command line ----------------------------------------------------------------


def _run_cli(prefix, tmp_path, extra=()):
    path = tmp_path / "out.json"
    cmd = [sys.executable, "-m"] + prefix + [
        "--servers", f"{PIKE_PY},asyncio",
        "--connections", "1",
        "--size", "1k",
        "--duration", "0.3",
        "--warmup", "0.05",
        "--repeat", "1",
        "--json", str(path),
    ] + list(extra)
    env = processes.child_env()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=50, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("server ") and "impl" in line)
    assert "req/s" in header and "/req" in header
    assert any(line.startswith(PIKE_PY) for line in lines)
    assert any(line.startswith("asyncio") for line in lines)
    assert "[1/2]" in proc.stderr and "[2/2]" in proc.stderr  # progress
    results = report.read_json(str(path))
    assert results["schema"] == "pike-bench/2"
    case = results["cases"][0]
    assert case["mode"] == "pingpong"
    assert [run["server"] for run in case["runs"]] == [PIKE_PY, "asyncio"]
    assert all("error" not in run for run in case["runs"])
    assert results["machine"]["cpu_count"] == os.cpu_count()
    return results, proc


def test_bench_cli_with_the_python_loadgen(tmp_path):
    results, proc = _run_cli(["pike.bench.cli"], tmp_path, ["--loadgen", "python"])
    assert results["loadgen"]["kind"] == "python"
    assert results["settings"]["loadgen"] == "python"
    assert all(run["loadgen"] == "python" for run in results["cases"][0]["runs"])


@needs_cc
def test_python_m_pike_bench_every_mode(tmp_path):
    """--mode all on tiny settings: every mode's figures land in the JSON and tables."""
    path = tmp_path / "all.json"
    chart = tmp_path / "all.png"
    cmd = [
        sys.executable, "-m", "pike", "bench", "--mode", "all",
        "--servers", f"{PIKE_PY},c-ref", "--connections", "2", "--size", "1k",
        "--window", "16k", "--idle", "50", "--active", "2", "--file-size", "1m",
        "--duration", "0.3", "--warmup", "0.05", "--repeat", "1",
        "--json", str(path), "--plot", str(chart),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=processes.child_env())
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = report.read_json(str(path))
    assert results["loadgen"]["kind"] == "c"
    assert results["settings"]["modes"] == ["pingpong", "stream", "scale"]
    modes = [case["mode"] for case in results["cases"]]
    assert modes == ["pingpong", "stream", "file", "scale"]
    pingpong, stream, file_row, scale = results["cases"]
    assert pingpong["reference"] == "c-ref"
    row = pingpong["summary"][PIKE_PY]
    for field in ("server_cpu_us_per_req", "rps", "p50_us", "p99_us", "cpu_vs_c_ref",
                  "rps_vs_c_ref", "cpu_vs_baseline", "rps_vs_baseline", "vs"):
        assert field in row
    assert row["cpu_vs_c_ref"] is not None
    assert pingpong["summary"]["c-ref"]["cpu_vs_c_ref"] == pytest.approx(1.0)
    row = stream["summary"][PIKE_PY]
    assert row["mib_per_s"] > 0 and row["mib_per_s_vs_c_ref"] is not None
    assert row["server_cpu_us_per_mib"] is not None
    row = file_row["summary"][PIKE_PY]
    assert row["mib_per_s"] > 0 and row["mib_per_s_vs_c_ref"] is not None
    assert file_row["size"] == 1024 * 1024
    row = scale["summary"][PIKE_PY]
    assert row["rps_without"] > 0 and row["rps_with"] > 0 and row["rps_ratio"] > 0
    assert row["idle_kib_per_conn"] is not None
    assert scale["runs"][0]["idle"] == 50
    for text in ("ping-pong echo", "stream echo", "file serving", "beside 50 idle connections",
                 "KiB/idle conn"):
        assert text in proc.stdout
    assert "[8/8]" in proc.stderr
    if plot.unavailable() is None:
        assert chart.read_bytes()[:4] == b"\x89PNG"
    else:
        assert "matplotlib" in proc.stderr and not chart.exists()


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
    with pytest.raises(SystemExit):
        cli.main(["--mode", "sideways"])
    with pytest.raises(SystemExit):
        cli.main(["--mode", "scale", "--idle", "100000"])
    parser = cli.build_parser()
    assert cli._size_list("1k,2m,7") == [1024, 2 * 1024 * 1024, 7]
    args = parser.parse_args(["--impl", "python,c", "--servers", f"{PIKE_KIND},asyncio"])
    labels = [spec.label for spec in cli._servers(args, parser, ["python", "c"])[0]]
    assert labels == [f"{PIKE_KIND}:python", f"{PIKE_KIND}:c", "asyncio"]
    # Without --impl a pike server runs on every implementation built here.
    args = parser.parse_args(["--servers", f"{PIKE_KIND},asyncio"])
    labels = [spec.label for spec in cli._servers(args, parser, ["python", "c"])[0]]
    assert labels == [f"{PIKE_KIND}:python", f"{PIKE_KIND}:c", "asyncio"]
    labels = [spec.label for spec in cli._servers(args, parser, ["python"])[0]]
    assert labels == [f"{PIKE_KIND}:python", "asyncio"]
    # Asking for c where it is not built is an error, not a silent skip.
    with pytest.raises(SystemExit):
        cli._servers(parser.parse_args(["--servers", f"{PIKE_KIND}:c"]), parser, ["python"])
    # Every pike poller on every implementation, the others once, c-ref last.
    specs, _ = cli._servers(parser.parse_args([]), parser, ["python", "c"])
    labels = [spec.label for spec in specs]
    for name in pike.available_pollers():
        assert f"pike-{name}:python" in labels and f"pike-{name}:c" in labels
    assert "asyncio" in labels
    if HAVE_CC:
        assert labels[-1] == "c-ref"


def test_quick_settings_and_estimate():
    from pike.bench import cli

    assert cli.PINGPONG_CONNECTIONS[1] == [10, 100] and cli.PINGPONG_SIZES[1] == [1024]
    settings = runner.Settings(
        [processes.ServerSpec("asyncio")], modes=["pingpong", "stream", "scale"],
        connections=[10, 100], sizes=[1024], idle=[1000, 10000], repeat=1,
    )
    cases = settings.cases()
    assert [c["mode"] for c in cases] == ["pingpong"] * 2 + ["stream"] + ["scale"] * 2
    assert settings.total_runs() == 5
    assert settings.estimated_seconds() > 0
    with pytest.raises(ValueError):
        runner.Settings([processes.ServerSpec("asyncio")], modes=["sideways"])
