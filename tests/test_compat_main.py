"""``python -m pike.compat``: legacy programs run unchanged on pike's modules.

Each test runs a child interpreter (bounded by a timeout) on a small legacy
program written to a temporary directory, and checks what it printed.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from pike.compat import __main__ as compat_main
from pike.compat import _site_hook

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 60

LEGACY_ECHO = textwrap.dedent(
    """
    import asyncore, asynchat, socket, sys

    print("modules", asyncore.__name__, asynchat.__name__)
    print("argv", sys.argv[1:])

    class Echo(asyncore.dispatcher_with_send):
        def handle_read(self):
            self.send(self.recv(100))

    a, b = socket.socketpair()
    Echo(a)
    b.sendall(b"ping")
    b.settimeout(10)
    got = b""
    for _ in range(100):
        asyncore.loop(timeout=0.05, count=1)
        try:
            b.setblocking(False)
            got += b.recv(100)
        except BlockingIOError:
            pass
        if got == b"ping":
            break
    print("echoed", got.decode())
    asyncore.close_all()
    b.close()
    """
)


def run_child(args, cwd, env_extra=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def test_script_runs_on_pike_modules(tmp_path):
    (tmp_path / "legacy.py").write_text(LEGACY_ECHO)
    proc = run_child(["-m", "pike.compat", "legacy.py", "one", "--two"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "modules pike.compat.asyncore pike.compat.asynchat"
    assert lines[1] == "argv ['one', '--two']"
    assert lines[2] == "echoed ping"


def test_module_runs_on_pike_modules(tmp_path):
    pkg = tmp_path / "legacyapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(LEGACY_ECHO)
    proc = run_child(["-m", "pike.compat", "-m", "legacyapp", "x"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:3] == [
        "modules pike.compat.asyncore pike.compat.asynchat", "argv ['x']", "echoed ping"]


def test_script_directory_comes_first_on_the_path(tmp_path):
    where = tmp_path / "app"
    where.mkdir()
    (where / "helper.py").write_text("VALUE = 42\n")
    (where / "main.py").write_text("import helper, asyncore\nprint(helper.VALUE, asyncore.__name__)\n")
    proc = run_child(["-m", "pike.compat", str(where / "main.py")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "42 pike.compat.asyncore"


def test_socketserver_only_when_asked(tmp_path):
    (tmp_path / "s.py").write_text("import socketserver\nprint(socketserver.__name__)\n")
    plain = run_child(["-m", "pike.compat", "s.py"], tmp_path)
    asked = run_child(["-m", "pike.compat", "--socketserver", "s.py"], tmp_path)
    assert plain.stdout.strip() == "socketserver"
    assert asked.stdout.strip() == "pike.compat.socketserver"


def test_program_exit_status_is_kept(tmp_path):
    (tmp_path / "fail.py").write_text("import sys\nsys.exit(3)\n")
    assert run_child(["-m", "pike.compat", "fail.py"], tmp_path).returncode == 3


@pytest.mark.parametrize("argv, message", [
    (["missing.py"], "can't open file"),
    (["-m"], "-m needs a module name"),
    (["--bogus"], "unknown option"),
    (["--enable-site", "a", "b"], "at most one directory"),
    (["--enable-site", "/nonexistent/dir"], "no such directory"),
])
def test_bad_command_lines_are_refused(tmp_path, capsys, argv, message):
    assert compat_main.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("python -m pike.compat: error: "), err


def test_no_arguments_is_a_one_line_error(capsys):
    assert compat_main.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "error:" in err


def test_a_missing_module_is_a_one_line_error(capsys):
    assert compat_main.main(["-m", "no_such_module_for_pike_tests"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no module named" in err


def test_help_prints_usage(capsys):
    assert compat_main.main(["--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_site_hook_answers_legacy_imports(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    written = compat_main.enable_site(str(site))
    assert sorted(os.path.basename(p) for p in written) == sorted(
        [_site_hook.PTH_FILE, _site_hook.HOOK_MODULE + ".py"])
    # A .pth file is read from site directories only: add this one as such.
    program = textwrap.dedent(f"""
        import site, sys
        site.addsitedir({str(site)!r})
        assert "pike" not in sys.modules, "the hook must load nothing of pike"
        import asyncore, asynchat
        import pike.compat.asyncore as real
        print(asyncore is real, asynchat.__name__, asyncore.socket_map is real.socket_map)
    """)
    proc = run_child(["-c", program], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True pike.compat.asynchat True"
    removed = compat_main.disable_site(str(site))
    assert len(removed) == 2 and not os.listdir(site)
    assert compat_main.disable_site(str(site)) == []


def test_finder_can_be_taken_off_again():
    before = list(sys.meta_path)
    _site_hook.install()
    _site_hook.install()
    try:
        assert sum(getattr(f, "_pike_compat_finder", False) for f in sys.meta_path) == 1
    finally:
        _site_hook.uninstall()
    assert sys.meta_path == before


@pytest.mark.parametrize("kind, lines", [("compat-asyncore", False), ("compat-asynchat", True)])
def test_bench_compat_servers_echo(tmp_path, kind, lines):
    """The scale benchmark's legacy servers, as ``--mode compat-scale`` runs them."""
    import json
    import socket

    argv = [sys.executable, "-m", "pike.bench.compat_servers", kind, "--max-seconds", "60"]
    if lines:
        argv.append("--lines")
    env = dict(os.environ, PYTHONPATH=REPO, PIKE_ASYNCORE_SWEEP="incremental")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["kind"] == kind and info["lines"] is lines
        message = b"one line\n" * 3 + b"last\n"
        with socket.create_connection(("127.0.0.1", info["port"]), timeout=TIMEOUT_S) as sock:
            sock.sendall(message)
            got = b""
            while len(got) < len(message):
                chunk = sock.recv(65536)
                assert chunk, "server closed early"
                got += chunk
        assert got == message
    finally:
        proc.terminate()
        proc.wait(timeout=TIMEOUT_S)
        proc.stdout.close()
    assert proc.returncode == 0
