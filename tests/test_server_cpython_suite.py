"""CPython's own test_socketserver, run against pike's module (bounded)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "run_cpython_suite.py")


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="run from a source checkout")
def test_cpython_test_socketserver_passes():
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u, sys; "
         "sys.exit(u.find_spec('test.test_socketserver') is None)"],
        timeout=60,
    )
    if probe.returncode:
        pytest.skip("this Python has no test.test_socketserver")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "test_socketserver", "--timeout", "240"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 failed" in summary, summary
