"""``python -m pike bench --tls``: a tiny run of each case, figures sane."""

import os
import subprocess
import sys

import pytest

from pike.bench import tls

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_case_runs_and_counts(tmp_path):
    results = tls.run(kinds=["pike", "asyncio"], pingpong_connections=(2,), size=1024,
                      stream_connections=(1,), warmup=0.2, duration=0.5)
    assert [(r["kind"], r["mode"]) for r in results] == [
        ("pike", "pingpong"), ("asyncio", "pingpong"), ("pike", "stream"), ("asyncio", "stream"),
    ]
    for r in results:
        assert r["open"] == r["connections"]  # no connection failed on the way
        if r["mode"] == "pingpong":
            assert r["requests"] > 0 and r["bytes"] >= r["requests"] * 1024
        else:
            assert r["bytes"] > 0 and r["mib_per_s"] > 0
    table = tls.format_table(results)
    assert "TLS ping-pong" in table and "TLS streaming" in table
    assert sum(line.startswith(("pike ", "asyncio ")) for line in table.splitlines()) == 4


def test_certificate_is_made_at_run_time(tmp_path):
    import ssl

    cert, key, ca = tls.make_certificate(str(tmp_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)  # a usable pair
    ssl.create_default_context(cafile=ca)


def test_cli_flag():
    proc = subprocess.run(
        [sys.executable, "-m", "pike", "bench", "--tls", "--connections", "2",
         "--warmup", "0.1", "--duration", "0.3"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    assert "TLS ping-pong" in proc.stdout
    assert any(line.startswith("pike ") for line in proc.stdout.splitlines())


def test_cli_rejects_a_bad_connection_count():
    proc = subprocess.run(
        [sys.executable, "-m", "pike", "bench", "--tls", "--connections", "0"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    assert proc.returncode == 2
    assert "--connections" in proc.stderr


@pytest.mark.parametrize("argv", [[], ["nonsense"]])
def test_child_entry_usage(argv):
    assert tls.main(argv) == 2
