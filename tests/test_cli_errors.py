"""``python -m pike`` and its ``info``, ``echo`` and ``bench`` commands, as a person meets them.

Every argument error is one line on stderr, exit status 2, no traceback;
``--version`` and ``--help`` work and the help is plain text.
"""

import subprocess
import sys

import pytest

TIMEOUT = 30.0


@pytest.fixture
def run_pike(pike_env, tmp_path):
    """Run ``python -m pike ARGS``; PIKE_IMPL may be given as a keyword."""

    def run(*args, **env):
        return _run(dict(pike_env, **env), str(tmp_path), *args)

    return run


def _run(env, cwd, *args):
    # From a directory of its own: python -m puts the current directory first
    # on sys.path, and a source tree there would shadow the pike under test.
    return subprocess.run(
        [sys.executable, "-m", "pike", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


ARGUMENT_ERRORS = [
    ([], "required: COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["--bogus"], "python -m pike: error:"),
    (["info", "extra"], "unrecognized arguments: extra"),
    (["echo", "--port", "99999"], "port must be 0 to 65535, not 99999"),
    (["echo", "--port", "-1"], "port must be 0 to 65535, not -1"),
    (["echo", "--port", "http"], "not an integer: 'http'"),
    (["echo", "--port"], "expected one argument"),
    (["echo", "--workers", "0"], "--workers: must be at least 1, not 0"),
    (["echo", "--workers", "two"], "not an integer: 'two'"),
    (["echo", "--max-connections", "-5"], "--max-connections: must be at least 1"),
    (["echo", "--grace", "-1"], "--grace: must be a finite number of at least 0"),
    (["echo", "--grace", "nan"], "--grace: must be a finite number of at least 0"),
    (["echo", "--grace", "soon"], "not a number: 'soon'"),
    (["echo", "--poller", "carrier-pigeon"], "unknown or unavailable poller 'carrier-pigeon'"),
    (["echo", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["bench", "--connections", "abc"], "expected comma-separated integers, not 'abc'"),
    (["bench", "--size", "zz"], "bad size 'zz'"),
    (["bench", "--mode", "nope"], "invalid choice: 'nope'"),
    (["bench", "--servers", "nosuch"], "unknown server 'nosuch'"),
    (["bench", "--repeat", "0"], "need repeat >= 1"),
    (["bench", "--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize(
    "args, message", ARGUMENT_ERRORS, ids=[" ".join(a) or "(none)" for a, _ in ARGUMENT_ERRORS]
)
def test_an_argument_error_is_one_line_and_status_2(run_pike, args, message):
    result = run_pike(*args)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert lines[0].startswith("python -m pike")
    assert "--help" in lines[0]


def test_version(run_pike):
    import pike

    result = run_pike("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"pike {pike.__version__}\n"


@pytest.mark.parametrize("args", [["--help"], ["info", "--help"], ["echo", "--help"]])
def test_help_is_plain_text(run_pike, args):
    result = run_pike(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m pike")
    # reST markup (``literal``, :func:`x`) is for the docs, not the terminal.
    for markup in ("``", ":func:", ":class:", ":meth:", "::\n"):
        assert markup not in result.stdout, (markup, result.stdout)


def test_an_address_that_cannot_be_listened_on_is_one_line_and_status_1(run_pike, tmp_path):
    result = run_pike("echo", "--unix", str(tmp_path / "no-such-dir" / "sock"))
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0], result.stderr


def test_info_says_why_c_is_not_in_use(run_pike):
    result = run_pike("info", PIKE_IMPL="python")
    assert result.returncode == 0, result.stderr
    assert "implementation: python (PIKE_IMPL=python)" in result.stdout
    assert "C accelerator not in use: PIKE_IMPL=python chose" in result.stdout


def test_info_is_quiet_about_c_when_it_runs(run_pike):
    from pike import _impl

    if "c" not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    result = run_pike("info", PIKE_IMPL="c")
    assert result.returncode == 0, result.stderr
    assert "implementation: c (PIKE_IMPL=c)" in result.stdout
    assert "not in use" not in result.stdout


# Blocks pike._pike_accel as a machine without a C compiler would lack it.
NO_ACCELERATOR = """
import sys
from importlib.abc import MetaPathFinder

class NoAccelerator(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pike._pike_accel":
            raise ImportError("No module named 'pike._pike_accel'", name=name)
        return None

sys.meta_path.insert(0, NoAccelerator())
from pike.__main__ import main
sys.exit(main(["info"]))
"""


def test_info_says_how_to_get_a_missing_accelerator(pike_env, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", NO_ACCELERATOR],
        env=dict(pike_env, PIKE_IMPL="auto"),
        cwd=str(tmp_path),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "implementation: python (PIKE_IMPL=auto)" in result.stdout
    problem = [line for line in result.stdout.splitlines() if "not in use" in line]
    assert len(problem) == 1, result.stdout
    assert "is not built" in problem[0] and "pip install -v" in problem[0]
