"""The benchmark's one home: every mode reachable from ``python -m pike bench``,
and the stream mode's file row (a file served with sendfile, its bytes counted).

The file row's tests check byte counts, never speed.
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from pike.bench import cli, fileserve, processes, report, runner, runs, servers
from pike.bench.loadgen_runs import Loadgen

#: A size that is no multiple of any buffer: a lost or extra byte shows.
FILE_SIZE = 1024 * 1024 + 7


def _help_modes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    match = re.search(r"--mode \{([^}]*)\}", text)
    assert match, text
    return match.group(1).split(","), text


def test_help_lists_every_mode(capsys):
    modes, text = _help_modes(capsys)
    expected = set(runner.MODES) | {"all", "soak", "tls"} | set(cli.TOOL_MODES)
    assert set(modes) == expected
    for name in cli.TOOL_MODES:
        assert f"{name}:" in " ".join(text.split())  # each tool is described


def test_every_mode_in_help_is_accepted(capsys):
    modes, _ = _help_modes(capsys)
    for mode in modes:
        # argparse checks --mode's value before it reaches --help; a tool
        # mode's --help is its own parser's.
        with pytest.raises(SystemExit) as exc:
            cli.main(["--mode", mode, "--help"])
        assert exc.value.code == 0, mode
        assert "usage:" in capsys.readouterr().out, mode


def test_unknown_mode_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--mode", "nonesuch"])
    assert exc.value.code == 2
    assert "nonesuch" in capsys.readouterr().err


def test_tool_modes_get_the_rest_of_the_command_line(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_tool", lambda mode, argv: seen.append((mode, argv)) or 0)
    assert cli.main(["--mode", "spiro", "--seconds", "1"]) == 0
    assert cli.main(["--sessions", "3", "--mode=workers"]) == 0
    assert seen == [("spiro", ["--seconds", "1"]), ("workers", ["--sessions", "3"])]


def test_mode_without_a_value_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--mode"])
    assert exc.value.code == 2
    assert "--mode" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2g", "-1", "lots"])
def test_bad_file_size_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--mode", "stream", "--file-size", value])
    assert exc.value.code == 2
    assert "file-size" in capsys.readouterr().err


def test_micro_mode_runs_the_microbenchmarks_with_pytest(tmp_path, pike_env):
    pytest.importorskip("pytest_benchmark")
    proc = subprocess.run(
        [sys.executable, "-m", "pike", "bench", "--mode", "micro", "--check", "-q",
         "-k", "write_queue"],
        cwd=tmp_path, env=pike_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=120,
    )
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, out
    assert re.search(r"\d+ passed", out), out


# -- the file row ---------------------------------------------------------------------


def test_temporary_file_has_the_size_and_is_deleted():
    with fileserve.temporary_file(FILE_SIZE) as path:
        assert os.path.getsize(path) == FILE_SIZE
        directory = os.path.dirname(path)
    assert not os.path.exists(directory)


def _file_kinds():
    kinds = [f"pike-{name}:{impl}" for name in servers.PIKE_POLLERS
             for impl in ("python", "c")]
    return kinds + ["asyncio", "c-ref"]


@pytest.mark.parametrize("label", _file_kinds())
def test_file_row_counts_every_byte(label):
    spec = processes.ServerSpec.parse(label)
    if spec.kind not in servers.available_kinds(native=False) + [servers.C_REF]:
        pytest.skip(f"{spec.kind} is not available here")
    if spec.kind == servers.C_REF and servers.c_ref_unavailable():
        pytest.skip(f"c-ref: {servers.c_ref_unavailable()}")
    if spec.impl == "c" and "c" not in processes.pike_implementations():
        pytest.skip("the C accelerator is not built")
    with fileserve.temporary_file(FILE_SIZE) as path, processes.ProcessSet() as procs:
        run = runs.run_file_once(procs, spec, path, FILE_SIZE, warmup=0.0, duration=20.0,
                                 max_downloads=3)
    assert "error" not in run and "skipped" not in run, run
    assert run["downloads"] == 3
    assert run["bytes_total"] == 3 * FILE_SIZE
    assert 0 < run["bytes"] <= run["bytes_total"]
    assert run["server"] == spec.label and run["mode"] == "file"


@pytest.mark.parametrize("kind", ["uvloop", "py-floor", "asyncore", "compat-asynchat"])
def test_servers_without_sendfile_are_skipped(kind):
    spec = processes.ServerSpec(kind)
    with processes.ProcessSet() as procs:
        run = runs.run_file_once(procs, spec, "/nonexistent", FILE_SIZE, 0.0, 1.0)
    assert run["mode"] == "file" and run["skipped"]


def test_server_refuses_to_serve_files_it_cannot(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pike.bench.servers", "py-floor", "--file", str(tmp_path / "x")],
        env=processes.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
    )
    assert proc.returncode != 0
    assert b"cannot serve files" in proc.stderr


class _OneShotServer:
    """A listener on 127.0.0.1 whose one connection gets ``payload``, then EOF
    (or nothing, and stays open until stopped, with ``hold``)."""

    def __init__(self, payload, hold=False):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.payload, self.hold = payload, hold
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(10)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.payload)
            if self.hold:
                self.stop.wait(10)

    def close(self):
        self.stop.set()
        self.thread.join(15)
        self.sock.close()


@pytest.mark.parametrize("sent", [FILE_SIZE - 1, FILE_SIZE + 1, 0])
def test_a_wrong_byte_count_fails_the_download(sent):
    server = _OneShotServer(b"x" * sent)
    try:
        with pytest.raises(fileserve.DownloadError, match=f"brought {sent} bytes"):
            fileserve.download(server.port, FILE_SIZE, time.monotonic() + 20,
                               bytearray(65536), lambda n, now: None)
    finally:
        server.close()


def test_a_stalled_server_fails_the_download_by_the_deadline():
    server = _OneShotServer(b"x" * 10, hold=True)
    try:
        start = time.monotonic()
        with pytest.raises(fileserve.DownloadError, match="deadline|sent nothing"):
            fileserve.download(server.port, FILE_SIZE, start + 1.0,
                               bytearray(65536), lambda n, now: None)
        assert time.monotonic() - start < 15  # bounded, not a speed check
    finally:
        server.close()


def test_client_reports_a_short_file_as_an_error():
    server = _OneShotServer(b"x" * 100)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pike.bench.fileserve", "--port", str(server.port),
             "--file-size", str(FILE_SIZE), "--warmup", "0", "--duration", "5",
             "--max-downloads", "1"],
            env=processes.child_env(), stdout=subprocess.PIPE, timeout=60,
        )
    finally:
        server.close()
    assert proc.returncode == 1
    assert b"brought 100 bytes" in proc.stdout


def _file_dirs():
    return {name for name in os.listdir(tempfile.gettempdir())
            if name.startswith("pike-bench-file-")}


def test_stream_mode_has_the_file_row_in_its_report():
    import pike

    kind = f"pike-{pike.available_pollers()[0]}"
    settings = runner.Settings(
        [processes.ServerSpec(kind, "python"), processes.ServerSpec("asyncio"),
         processes.ServerSpec("py-floor")],
        modes=["stream"], stream_sizes=[65536], warmup=0.0, duration=0.3, repeat=1,
        pin=False, loadgen=Loadgen("python"), file_size=FILE_SIZE,
    )
    assert [case["mode"] for case in settings.cases()] == ["stream", "file"]
    dirs_before = _file_dirs()
    results = runner.run_benchmark(settings)
    file_case = results["cases"][-1]
    assert file_case["mode"] == "file" and file_case["size"] == FILE_SIZE
    for run in file_case["runs"]:
        if run["server"] == "py-floor":
            assert "skipped" in run
        else:
            assert "error" not in run, run
            assert run["bytes_total"] == run["downloads"] * FILE_SIZE
    summary = file_case["summary"]
    assert summary["asyncio"]["mib_per_s"] > 0
    assert summary[f"{kind}:python"]["mib_per_s_vs_baseline"] is not None
    text = report.format_report(results)
    assert "file serving:" in text and "sendfile" in text
    assert _file_dirs() == dirs_before  # the file and its directory are gone
