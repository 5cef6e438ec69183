"""pike.spiro: keys, and the command line's errors and output.

A wrong argument is one line on stderr, ``prog: error: ...``, exit status 2,
never a traceback. Every CLI run is a subprocess with a timeout.
"""

import os
import socket
import subprocess

import pytest

from pike import spiro
from pike.spiro.keys import KeyFileError, key_from_env, read_key_file

from spiro_support import KEY, child_env, key_file, spiro_cli, start_server, stop

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


# -- keys ------------------------------------------------------------------------------------


def test_short_key_is_refused_clearly():
    for short in (b"k", "", b"fifteen bytes!!"):
        with pytest.raises(ValueError, match="at least 16"):
            spiro.SpiroServer(authkey=short)
        with pytest.raises(ValueError, match="at least 16"):
            spiro.connect(("127.0.0.1", 9), short)     # refused before connecting
    with spiro.SpiroServer(authkey=b"sixteen bytes!!!") as srv:
        assert srv.authkey == b"sixteen bytes!!!"


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_key_file_others_may_read_is_refused(tmp_path, mode):
    path = key_file(tmp_path, mode=mode)
    with pytest.raises(KeyFileError, match=f"chmod 600 {path}"):
        read_key_file(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_key_file_of_the_owner_is_read(tmp_path, mode):
    assert read_key_file(key_file(tmp_path, mode=mode)) == KEY


@pytest.mark.parametrize("content, message", [
    (b"\n", "at least 16"), (b"short\n", "at least 16"), (b"k" * 5000, "over 4096"),
])
def test_key_file_content_is_checked(tmp_path, content, message):
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=message):
        read_key_file(path)


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read the key file"):
        read_key_file(tmp_path / "nothing here")


def test_key_from_the_environment():
    assert key_from_env({}) is None
    assert key_from_env({"PIKE_SPIRO_AUTHKEY": KEY.decode()}) == KEY
    with pytest.raises(KeyFileError, match="PIKE_SPIRO_AUTHKEY.*at least 16"):
        key_from_env({"PIKE_SPIRO_AUTHKEY": "short"})


# -- argument errors: one line, exit 2 ---------------------------------------------------------


def _closed_port():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def run_cli(*args, env=None, stdin=""):
    process = spiro_cli(*args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(stdin, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


def assert_one_line_error(result, *fragments):
    status, out, err = result
    assert status == 2, result
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("python -m pike spiro") and ": error: " in lines[0], err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.fixture
def good_key(tmp_path):
    return str(key_file(tmp_path))


@pytest.mark.parametrize("args, fragments", [
    (["serve", "--port", "99999"], ["invalid port '99999'"]),
    (["serve", "--port", "-1"], ["invalid port"]),
    (["serve", "--authkey-file", "/nonexistent"], ["cannot read the key file /nonexistent"]),
    (["serve", "--max-pending", "0"], ["--max-pending", "from 1 up"]),
    (["serve", "--max-sessions", "many"], ["--max-sessions"]),
    (["serve", "--idle-timeout", "soon"], ["--idle-timeout"]),
    (["serve", "--auth-timeout", "0"], ["--auth-timeout"]),
    (["serve", "--host", "203.0.113.5"], ["not loopback", "without an explicit authkey"]),
    (["shell", "nonsense"], ["HOST:PORT"]),
    (["shell", "localhost:abc"], ["not a number from 1 to 65535"]),
    (["shell", "127.0.0.1:99999"], ["not a number from 1 to 65535"]),
    (["shell", "127.0.0.1:0"], ["not a number from 1 to 65535"]),
    (["shell", "127.0.0.1:8766"], ["--authkey-file", "PIKE_SPIRO_AUTHKEY"]),
    (["shell", "127.0.0.1:8766", "--authkey-file", "/nonexistent"], ["cannot read"]),
    (["nonsense"], ["invalid choice"]),
    ([], ["required"]),
])
def test_argument_errors_are_one_line(args, fragments):
    assert_one_line_error(run_cli(*args), *fragments)


def test_cannot_listen_is_one_line(good_key):
    # binding to an address this machine does not have fails in bind(): no
    # packet is sent anywhere
    assert_one_line_error(
        run_cli("serve", "--host", "203.0.113.5", "--port", "0", "--authkey-file", good_key),
        "cannot listen on 203.0.113.5:0",
    )


def test_port_in_use_is_one_line(good_key):
    taken = socket.create_server(("127.0.0.1", 0))
    with taken:
        port = str(taken.getsockname()[1])
        assert_one_line_error(
            run_cli("serve", "--port", port, "--authkey-file", good_key), f"127.0.0.1:{port}"
        )


@posix_only
def test_readable_key_file_is_refused_by_the_cli(tmp_path):
    path = key_file(tmp_path, mode=0o644)
    assert_one_line_error(run_cli("serve", "--authkey-file", str(path)), "chmod 600")
    assert_one_line_error(run_cli("shell", "127.0.0.1:8766", "--authkey-file", str(path)),
                          "chmod 600")


def test_short_key_is_refused_by_the_cli(tmp_path):
    path = key_file(tmp_path, key=b"1")
    assert_one_line_error(run_cli("serve", "--authkey-file", str(path)), "at least 16")
    env = child_env(PIKE_SPIRO_AUTHKEY="1")
    assert_one_line_error(run_cli("shell", "127.0.0.1:8766", env=env), "at least 16")


def test_nothing_listening_is_one_line_exit_1():
    env = child_env(PIKE_SPIRO_AUTHKEY=KEY.decode())
    status, out, err = run_cli("shell", f"127.0.0.1:{_closed_port()}", env=env)
    assert status == 1 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "cannot connect to 127.0.0.1:" in err


def test_serve_help_shows_the_limits():
    status, out, err = run_cli("serve", "--help")
    assert status == 0, err
    for option in ("--max-sessions", "--max-pending", "--max-pending-per-peer",
                   "--max-frame-size", "--max-nesting", "--auth-timeout"):
        assert option in out
    assert "(default 64)" in out and "(default 32)" in out


# -- the shell prints what the server's code prints ----------------------------------------------


def test_shell_prints_server_output(tmp_path):
    server, address = start_server(tmp_path)
    try:
        env = child_env(PIKE_SPIRO_AUTHKEY=KEY.decode())
        status, out, err = run_cli(
            "shell", f"{address[0]}:{address[1]}", env=env,
            stdin="print('hello from', 'the server')\n"
                  "import sys; print('to stderr', file=sys.stderr)\n"
                  "for i in range(3): print(i)\n"
                  "print('and a value') or 7\n",
        )
        assert status == 0, err
        assert out.splitlines() == ["hello from the server", "0", "1", "2", "and a value", "7"]
        assert err == "to stderr\n"
        server.terminate()
        server_out = server.stdout.read()
    finally:
        stop(server)
    assert "hello from" not in server_out
