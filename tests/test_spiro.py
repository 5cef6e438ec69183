"""pike.spiro: remote interpreter sessions (server in a thread, 127.0.0.1 only)."""

import logging
import os
import pickle
import socket
import struct
import subprocess
import threading
import time

import pytest

from pike import spiro
from pike.spiro import protocol

from spiro_support import KEY, closed_by_peer, recv_frame, serving, spiro_cli, wait_until
from spiro_support import raw_connect as _raw_connect


@pytest.fixture
def server():
    with serving(idle_timeout=10.0, auth_timeout=1.0) as srv:
        yield srv


@pytest.fixture
def session(server):
    with spiro.connect(server.address, KEY) as s:
        yield s


def raw_connect(server, authenticate=True, key=KEY):
    return _raw_connect(server.address, authenticate, key)


# -- operations -----------------------------------------------------------------


def test_every_poller_serves_a_session(poller):
    srv = spiro.SpiroServer(authkey=KEY, poller=poller).start()
    try:
        with spiro.connect(srv.address, KEY) as s:
            s.do("x = 40")
            assert s.eval("x + 2") == 42
            assert s.doimport("os").getpid() == os.getpid()
    finally:
        srv.close()


def test_do_eval_dir(session):
    assert session.do("a = 1\nb = a + 1") is None
    assert session.eval("a + b") == 3
    assert session.dir() == ["__name__", "a", "b"]


def test_doimport(session):
    assert session.doimport("os").getpid() == os.getpid()
    assert session.eval("os.sep") == os.sep
    join = session.doimport("os.path", "join")
    assert join("a", "b") == os.path.join("a", "b")
    assert "join" in session.dir()
    session.doimport("xml.dom")
    assert session.eval("xml.dom.__name__") == "xml.dom"
    with pytest.raises(ModuleNotFoundError):
        session.doimport("no_such_module_here")


def test_proxy_operations(session):
    session.do(
        "class Thing:\n"
        "    def __init__(self): self.items = [1, 2, 3]\n"
        "    def total(self, extra=0): return sum(self.items) + extra\n"
        "thing = Thing()\n"
        "d = {'k': 'v'}"
    )
    thing = session.eval("thing")
    assert isinstance(thing, spiro.Proxy)
    assert thing.total() == 6
    assert thing.total(extra=4) == 10
    thing.name = "named"                           # setattr
    assert session.eval("thing.name") == "named"
    del thing.name                                 # delattr
    assert session.eval("hasattr(thing, 'name')") is False
    items = thing.items                            # getattr, by reference
    assert isinstance(items, spiro.Proxy)
    assert len(items) == 3                         # len
    assert items[1] == 2                           # getitem
    items[1] = 20                                  # setitem
    assert session.eval("thing.items") is not None and thing.total() == 24
    assert list(items) == [1, 20, 3]               # iter / next
    assert 20 in items and 99 not in items
    assert repr(items) == "[1, 20, 3]"             # repr
    assert str(session.eval("d")) == "{'k': 'v'}"
    d = session.eval("d")
    del d["k"]
    assert len(d) == 0 and not d
    assert "total" in session.dir(thing)
    with pytest.raises(AttributeError):
        thing.missing


def test_values_by_value_and_by_reference(session):
    value = session.eval("(1, 2.5, 'a', b'b', None, True, 3j, frozenset({1}), ((1,),))")
    assert value == (1, 2.5, "a", b"b", None, True, 3j, frozenset({1}), ((1,),))
    assert type(value) is tuple
    for expr in ("[1]", "{}", "{1}", "(1, [2])", "object()", "bytearray(b'x')"):
        assert isinstance(session.eval(expr), spiro.Proxy), expr
    # a proxy sent back arrives as the very object
    session.do("l = [1]")
    f = session.eval("lambda o: o is l")
    assert f(session.eval("l")) is True


def test_release(server, session):
    proxy = session.eval("[1, 2]")
    assert server.object_count() == 1
    session.release(proxy)
    assert server.object_count() == 0
    with pytest.raises(ValueError):
        len(proxy)
    # a proxy that goes away is released with the next request
    proxy = session.eval("[3]")
    del proxy
    session.eval("1")
    assert server.object_count() == 0


# -- callbacks -------------------------------------------------------------------


def test_callback(session):
    session.do("def apply(f, *a, **k): return f(*a, **k)")
    apply = session.eval("apply")
    assert apply(lambda a, b=0: a * 10 + b, 4, b=2) == 42
    seen = []
    apply(seen.append, session.eval("[1]"))        # a bound method; proxy argument
    assert isinstance(seen[0], spiro.Proxy) and list(seen[0]) == [1]


def test_nested_callbacks_both_ways(session):
    session.do(
        "def down(n, up):\n"
        "    return 1 if n == 0 else n * up(n - 1)\n"
    )
    down = session.eval("down")

    def up(n):
        # called by the server, calls the server again (which calls us ...)
        return down(n, up)

    assert down(6, up) == 720
    session.do("def ask(cb): return cb() + eval('depth')\ndepth = 1")
    assert session.eval("ask")(lambda: session.eval("depth") * 100) == 101


def test_callback_exception_travels_both_ways(session):
    session.do(
        "def guarded(cb):\n"
        "    try:\n"
        "        cb()\n"
        "    except KeyError as exc:\n"
        "        return 'caught ' + exc.args[0]\n"
        "def unguarded(cb):\n"
        "    return cb()\n"
    )

    def fail():
        raise KeyError("client side")

    assert session.eval("guarded")(fail) == "caught client side"
    with pytest.raises(KeyError) as info:
        session.eval("unguarded")(fail)
    assert "client side" in info.value.remote_traceback


def test_callbacks_are_released(server, session):
    session.do("def call(f): return f()")
    for _ in range(20):
        assert session.eval("call")(lambda: 1) == 1
    session.eval("1")
    assert wait_until(lambda: (session.eval("1"), len(session._callbacks) <= 1)[1])


# -- exceptions -----------------------------------------------------------------


def test_remote_exception_same_builtin_type(session):
    with pytest.raises(ValueError, match="boom") as info:
        session.do("def f():\n    raise ValueError('boom')\nf()")
    text = info.value.remote_traceback
    assert "Traceback" in text and "in f" in text and "ValueError: boom" in text
    assert any("remote traceback" in note for note in info.value.__notes__)
    with pytest.raises(ZeroDivisionError):
        session.eval("1/0")
    with pytest.raises(NameError):
        session.eval("undefined_name")
    with pytest.raises(SyntaxError):
        session.do("def (")
    with pytest.raises(FileNotFoundError):
        session.eval("open('/no/such/file/here')")
    assert session.eval("'still fine'") == "still fine"   # the session goes on


def test_remote_exception_not_builtin(session):
    session.do("class Oops(Exception): pass")
    with pytest.raises(spiro.RemoteError) as info:
        session.do("raise Oops('custom')")
    assert info.value.type_name == "__spiro__.Oops"
    assert "custom" in info.value.remote_traceback


def test_unpicklable_argument_keeps_session(session):
    with pytest.raises((TypeError, pickle.PicklingError)):
        session.eval("len")(threading.Lock())
    assert session.eval("2") == 2


# -- sessions and cleanup ------------------------------------------------------------


def test_sessions_do_not_share_namespaces(server):
    with spiro.connect(server.address, KEY) as a, spiro.connect(server.address, KEY) as b:
        a.do("secret = 'a'")
        b.do("secret = 'b'")
        assert a.eval("secret") == "a" and b.eval("secret") == "b"
        a.do("only_a = 1")
        with pytest.raises(NameError):
            b.eval("only_a")
        assert len(server.sessions) == 2


def test_disconnect_cleans_up(server):
    threads_before = threading.active_count()
    s = spiro.connect(server.address, KEY)
    keep = [s.eval(f"[{i}]") for i in range(10)]
    s.do("big = bytearray(1000)")
    assert len(server.sessions) == 1 and server.object_count() == 10
    assert threading.active_count() == threads_before + 1
    s.close()
    assert wait_until(lambda: not server.sessions)
    assert server.object_count() == 0
    assert wait_until(lambda: threading.active_count() == threads_before)
    assert wait_until(lambda: not server.listener.connections)
    del keep


def test_disconnect_while_server_waits_for_callback(server):
    threads_before = threading.active_count()
    s = spiro.connect(server.address, KEY)
    s.do("def call(f): return f()")

    def vanish():
        s._sock.shutdown(socket.SHUT_RDWR)
        raise ConnectionAbortedError("gone")

    with pytest.raises(OSError):
        s.eval("call")(vanish)
    assert s.closed
    assert wait_until(lambda: not server.sessions)
    assert wait_until(lambda: threading.active_count() == threads_before)


def test_many_concurrent_sessions(server):
    sessions = [spiro.connect(server.address, KEY) for _ in range(50)]
    try:
        for i, s in enumerate(sessions):
            s.do(f"n = {i}")
        assert [s.eval("n") for s in sessions] == list(range(50))
        assert len(server.sessions) == 50
    finally:
        for s in sessions:
            s.close()
    assert wait_until(lambda: not server.sessions)


# -- security and hostile peers --------------------------------------------------------


def test_wrong_key(server, caplog):
    with caplog.at_level(logging.WARNING, logger="pike.spiro"):
        with pytest.raises(spiro.AuthenticationError):
            spiro.connect(server.address, b"not the key, but long enough")
        assert wait_until(lambda: "failed authentication" in caplog.text)
    assert not server.sessions
    with spiro.connect(server.address, KEY) as s:
        assert s.eval("1") == 1


def test_no_key():
    with pytest.raises(ValueError):
        spiro.connect(("127.0.0.1", 1), None)
    with pytest.raises(ValueError, match="loopback"):
        spiro.SpiroServer(("0.0.0.0", 0))
    with spiro.SpiroServer() as srv:            # a made-up key, on loopback
        assert srv.generated_key and len(srv.authkey) >= 32
        srv.start()
        with spiro.connect(srv.address, srv.authkey) as s:
            assert s.eval("7") == 7


def test_server_must_prove_the_key(server):
    # a fake server that does not hold the key
    fake = socket.create_server(("127.0.0.1", 0))
    result = []

    def impostor():
        conn, _ = fake.accept()
        with conn:
            conn.sendall(protocol.frame(protocol.MAGIC + os.urandom(32)))
            recv_frame(conn)
            conn.sendall(protocol.frame(b"OK" + os.urandom(32)))
            result.append(conn.recv(1))

    thread = threading.Thread(target=impostor)
    thread.start()
    try:
        with pytest.raises(spiro.AuthenticationError):
            spiro.connect(fake.getsockname(), KEY, timeout=5)
    finally:
        thread.join(5)
        fake.close()


def test_oversized_frame(server, caplog):
    with caplog.at_level(logging.ERROR, logger="pike.spiro"):
        sock = raw_connect(server)
        with sock:
            sock.sendall(struct.pack(">I", protocol.DEFAULT_MAX_FRAME_SIZE + 1))
            assert closed_by_peer(sock)
        assert wait_until(lambda: "announced a frame of 16777217 bytes" in caplog.text)
    assert wait_until(lambda: not server.sessions)
    with spiro.connect(server.address, KEY) as s:
        with pytest.raises(ValueError):              # the client's own limit
            s.eval("x" * (protocol.DEFAULT_MAX_FRAME_SIZE + 10))
        assert s.eval("1") == 1


def test_reply_over_the_limit_is_an_error():
    with spiro.SpiroServer(authkey=KEY, max_frame_size=4096) as srv:
        srv.start()
        with spiro.connect(srv.address, KEY) as s:
            with pytest.raises(ValueError, match="frame limit"):
                s.eval("'x' * 10000")
            assert s.eval("1") == 1


def test_garbage_after_auth(server, caplog):
    with spiro.connect(server.address, KEY) as other:
        other.do("alive = True")
        with caplog.at_level(logging.ERROR, logger="pike.spiro"):
            for garbage in (b"\x00garbage, not a pickle", pickle.dumps(["not", "a", "message"]),
                            pickle.dumps(("req", 1, "eval")), pickle.dumps(("ok", 1, 2))):
                sock = raw_connect(server)
                with sock:
                    sock.sendall(protocol.frame(garbage))
                    assert closed_by_peer(sock)
            assert wait_until(lambda: caplog.text.count("malformed frame") >= 3)
        assert other.eval("alive") is True
    assert wait_until(lambda: not server.sessions)


def test_garbage_before_auth(server, caplog):
    with caplog.at_level(logging.ERROR, logger="pike.spiro"):
        sock = raw_connect(server, authenticate=False)
        with sock:
            sock.sendall(protocol.frame(b"hello there, this is not SPIRO"))
            assert closed_by_peer(sock)
        sock = raw_connect(server, authenticate=False)
        with sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")        # a 1.1 GB "frame"
            assert closed_by_peer(sock)
        sock = raw_connect(server, authenticate=False)
        with sock:       # a pickle before authentication is never unpickled
            sock.sendall(protocol.frame(pickle.dumps(("req", 1, "do", ("x=1",)))))
            assert closed_by_peer(sock)
        assert "malformed handshake" in caplog.text
        assert "announced a frame" in caplog.text
    assert not server.sessions


def test_silent_client_times_out(server, caplog):
    with caplog.at_level(logging.ERROR, logger="pike.spiro"):
        silent = raw_connect(server, authenticate=False)
        with silent, spiro.connect(server.address, KEY) as other:
            start = time.monotonic()
            assert other.eval("'serving'") == "serving"
            assert closed_by_peer(silent, timeout=5)
            assert 0.5 < time.monotonic() - start < 4
            assert other.eval("'still serving'") == "still serving"
        assert "did not authenticate within 1s" in caplog.text


def test_idle_session_times_out(caplog):
    with spiro.SpiroServer(authkey=KEY, idle_timeout=0.5) as srv:
        srv.start()
        with caplog.at_level(logging.WARNING, logger="pike.spiro"):
            s = spiro.connect(srv.address, KEY)
            s.do("import time")
            s.do("time.sleep(0.8)")          # busy is not idle
            assert wait_until(lambda: not srv.sessions, timeout=5)
            with pytest.raises(ConnectionError):
                s.eval("1")
            assert "idle for" in caplog.text
            s.close()


# -- the command line ---------------------------------------------------------------


def test_cli_serve_and_shell(tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text("cli key, long enough\n")
    keyfile.chmod(0o600)
    server = spiro_cli("serve", "--port", "0", "--authkey-file", str(keyfile),
                   stdout=subprocess.PIPE)
    try:
        line = server.stdout.readline()
        assert line.startswith("spiro: listening on 127.0.0.1:"), line
        address = line.split()[-1]
        shell = spiro_cli("shell", address, "--authkey-file", str(keyfile),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = shell.communicate(
            "x = 6 * 7\nx\n[x, x]\n1/0\n'after'\nimport os\nos.getpid() > 0\n", timeout=20
        )
        assert shell.returncode == 0, err
        lines = out.splitlines()
        assert lines[0] == "42"
        assert lines[1] == "[42, 42]"
        assert "ZeroDivisionError" in out
        assert lines[-2:] == ["'after'", "True"]
        wrong = tmp_path / "wrong"
        wrong.write_text("wrong key, long enough")
        wrong.chmod(0o600)
        shell = spiro_cli("shell", address, "--authkey-file", str(wrong),
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = shell.communicate("1\n", timeout=20)
        assert shell.returncode == 1 and "key" in err
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
    assert server.returncode == 0


def test_cli_serve_makes_a_key_and_refuses_public_without_one():
    server = spiro_cli("serve", "--port", "0", stdout=subprocess.PIPE)
    try:
        address = server.stdout.readline().split()[-1]
        key = server.stdout.readline().split()[-1]
        with spiro.connect(address, key) as s:
            assert s.eval("3") == 3
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
    refused = spiro_cli("serve", "--host", "0.0.0.0", "--port", "0",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = refused.communicate(timeout=20)
    assert refused.returncode == 2 and "loopback" in err
