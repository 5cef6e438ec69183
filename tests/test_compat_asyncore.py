"""pike.compat.asyncore: a drop-in asyncore, with an epoll fast path in loop().

CPython's own test_asyncore.py runs against this module through
scripts/run_cpython_asyncore.py; the tests here cover what that suite does
not: install(), an unchanged legacy program, more than 1024 fds, the fast
path following readable()/writable() (and touching the kernel only when the
answers change), monkeypatched module names, and the fast path's edge cases.

Most tests run with the fast path on and off (``fast``) and in select and
poll semantics (``use_poll``). Every test leaves no channel, no poller and no
fd behind.
"""

import errno
import gc
import os
import resource
import select
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import pike.compat
from pike.compat import asyncore

HAS_EPOLL = asyncore._MapEngine is not None

# Peer sockets a test keeps open; closed when the test ends.
_spare = []


def open_fds():
    return set(int(name) for name in os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def clean_asyncore():
    """No channel, engine or fd may outlive a test."""
    gc.collect()
    before = open_fds()
    saved_map = asyncore.socket_map
    try:
        yield
    finally:
        asyncore.close_all(ignore_all=True)
        asyncore.socket_map = saved_map
        asyncore.close_all(ignore_all=True)
        for engine in list(asyncore._engines.values()):
            engine.close()
        asyncore._engines.clear()
        while _spare:
            _spare.pop().close()
    gc.collect()
    leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked: {sorted(leaked)}"


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
def fast(request, monkeypatch):
    if request.param and not HAS_EPOLL:
        pytest.skip("no epoll on this platform")
    monkeypatch.setattr(asyncore, "_FAST_PATH", request.param)
    return request.param


@pytest.fixture(params=[False, True], ids=["select", "poll"])
def use_poll(request):
    return request.param


@pytest.fixture
def fast_only(monkeypatch):
    if not HAS_EPOLL:
        pytest.skip("no epoll on this platform")
    monkeypatch.setattr(asyncore, "_FAST_PATH", True)


def engine_for(map):
    return asyncore._engines.get(id(map))


def loop_until(predicate, map=None, use_poll=False, limit=5.0, timeout=0.01):
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in %ss" % limit)
        asyncore.loop(timeout=timeout, use_poll=use_poll, map=map, count=1)


# -- small channels -------------------------------------------------------------


class Recorder(asyncore.dispatcher):
    """Counts events; readable()/writable() answers are plain attributes."""

    want_read = True
    want_write = False

    def __init__(self, sock=None, map=None):
        asyncore.dispatcher.__init__(self, sock, map)
        self.reads = 0
        self.writes = 0
        self.expts = 0
        self.closes = 0
        self.errors = []
        self.data = b""

    def readable(self):
        return self.want_read

    def writable(self):
        return self.want_write

    def handle_read(self):
        self.reads += 1
        self.data += self.recv(65536)

    def handle_write(self):
        self.writes += 1

    def handle_expt(self):
        self.expts += 1
        self.socket.recv(1, socket.MSG_OOB)

    def handle_close(self):
        self.closes += 1
        self.close()

    def handle_error(self):
        self.errors.append(sys.exc_info()[1])
        self.close()


# -- the module's API --------------------------------------------------------------

PUBLIC_311 = {
    "EAGAIN", "EALREADY", "EBADF", "ECONNABORTED", "ECONNRESET", "EINPROGRESS",
    "EINVAL", "EISCONN", "ENOTCONN", "EPIPE", "ESHUTDOWN", "EWOULDBLOCK",
    "ExitNow", "close_all", "compact_traceback", "dispatcher",
    "dispatcher_with_send", "errorcode", "file_dispatcher", "file_wrapper",
    "loop", "os", "poll", "poll2", "poll3", "read", "readwrite", "select",
    "socket", "socket_map", "sys", "time", "warnings", "write",
}


def test_public_names_are_those_of_311():
    public = {n for n in dir(asyncore) if not n.startswith("_")}
    assert public == PUBLIC_311
    assert asyncore.poll3 is asyncore.poll2
    assert asyncore.select is select and asyncore.socket is socket
    for name in ("_exception", "_strerror", "_DISCONNECTED", "_reraised_exceptions"):
        assert hasattr(asyncore, name)


def test_dispatcher_defaults_and_repr():
    d = asyncore.dispatcher()
    assert (d.connected, d.accepting, d.connecting, d.closing, d.addr) == (
        False, False, False, False, None)
    assert d.ignore_log_types == frozenset({"warning"})
    assert d.socket is None
    assert not hasattr(asyncore.dispatcher, "__getattr__")  # removed by 3.6
    assert repr(d) == "<asyncore.dispatcher at %#x>" % id(d)
    d.addr, d.connected = ("127.0.0.1", 80), True
    assert repr(d) == "<asyncore.dispatcher connected 127.0.0.1:80 at %#x>" % id(d)

    class Mine(asyncore.dispatcher):
        pass

    m = Mine()
    assert repr(m).startswith("<%s.%s at " % (__name__, Mine.__qualname__))


def test_importing_creates_no_kernel_object():
    code = (
        "import os; before = set(os.listdir('/proc/self/fd'));"
        "import pike.compat.asyncore;"
        "assert set(os.listdir('/proc/self/fd')) == before"
    )
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, env=env,
                   timeout=60)


# -- install() ------------------------------------------------------------------------


def _pythonpath():
    root = os.path.dirname(os.path.dirname(os.path.abspath(pike.compat.__file__)))
    extra = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + extra if extra else "")


def test_install_and_uninstall():
    saved = {n: sys.modules.get(n) for n in ("asyncore", "asynchat", "socketserver")}
    try:
        installed = pike.compat.install()
        import asyncore as imported

        assert imported is asyncore
        assert installed["asyncore"] is asyncore
        assert "socketserver" not in installed
        assert sys.modules.get("socketserver") is saved["socketserver"]
        has_asynchat = _exists("pike.compat.asynchat")
        assert ("asynchat" in installed) == has_asynchat
        assert "asyncore" in pike.compat.installed()
        pike.compat.install()  # twice is harmless
        with_server = pike.compat.install(socketserver=True)
        assert ("socketserver" in with_server) == _exists("pike.compat.socketserver")
        pike.compat.uninstall()
        for name, module in saved.items():
            assert sys.modules.get(name) is module
        assert "asyncore" not in pike.compat.installed()
    finally:
        pike.compat.uninstall()
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _exists(name):
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


# An asyncore program as legacy code writes it: nothing in it knows pike.
ECHO_PROGRAM = textwrap.dedent(
    """
    import asyncore
    import socket
    import sys

    class EchoHandler(asyncore.dispatcher_with_send):
        def handle_read(self):
            data = self.recv(8192)
            if data:
                self.send(data)

    class EchoServer(asyncore.dispatcher):
        def __init__(self, host, port):
            asyncore.dispatcher.__init__(self)
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            self.set_reuse_addr()
            self.bind((host, port))
            self.listen(5)

        def handle_accepted(self, sock, addr):
            EchoHandler(sock)

    class Client(asyncore.dispatcher):
        def __init__(self, address, lines):
            asyncore.dispatcher.__init__(self)
            self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
            self.connect(address)
            self.expected = b"".join(lines)
            self.buffer = self.expected
            self.received = b""

        def handle_connect(self):
            pass

        def handle_close(self):
            self.close()

        def handle_read(self):
            self.received += self.recv(8192)
            if len(self.received) >= len(self.expected):
                self.close()

        def writable(self):
            return len(self.buffer) > 0

        def handle_write(self):
            sent = self.send(self.buffer)
            self.buffer = self.buffer[sent:]

    use_poll = "--poll" in sys.argv
    server = EchoServer("127.0.0.1", 0)
    address = server.socket.getsockname()
    clients = [Client(address, [b"line %d of client %d\\n" % (i, c) for i in range(200)])
               for c in range(20)]
    n = 0
    while any(c.connected or c.connecting for c in clients) and n < 20000:
        asyncore.loop(timeout=0.05, use_poll=use_poll, count=1)
        n += 1
    ok = all(c.received == c.expected for c in clients)
    asyncore.close_all()
    print("echoed", sum(len(c.received) for c in clients), "ok" if ok else "BAD")
    sys.exit(0 if ok else 1)
    """
)

BOOTSTRAP = textwrap.dedent(
    """
    import sys, runpy
    import pike.compat
    pike.compat.install()
    import asyncore
    assert asyncore.__name__ == "pike.compat.asyncore", asyncore
    print("asyncore from", asyncore.__file__)
    sys.argv = [sys.argv[1]] + sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


@pytest.mark.parametrize("mode", [[], ["--poll"]], ids=["select", "poll"])
@pytest.mark.parametrize("fast_env", ["1", "0"], ids=["fast", "plain"])
def test_unchanged_program_runs_after_install(tmp_path, mode, fast_env):
    program = tmp_path / "echo_program.py"
    program.write_text(ECHO_PROGRAM)
    env = dict(os.environ, PYTHONPATH=_pythonpath(), PIKE_ASYNCORE_FAST=fast_env)
    # -W error::DeprecationWarning: the standard library's asyncore (3.11)
    # would warn on import, so this also proves it was never imported.
    proc = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", BOOTSTRAP,
         str(program)] + mode,
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pike/compat/asyncore.py" in proc.stdout
    assert "ok" in proc.stdout


# -- more than 1024 fds ------------------------------------------------------------------


class Pinger(asyncore.dispatcher):
    """Sends one line, expects it back, then sends the next; ``rounds`` times."""

    def __init__(self, sock, rounds, map):
        asyncore.dispatcher.__init__(self, sock, map)
        self.rounds = rounds
        self.pending = b"ping %d\n" % self._fileno
        self.done = 0

    def readable(self):
        return True

    def writable(self):
        return bool(self.pending)

    def handle_write(self):
        sent = self.send(self.pending)
        self.pending = self.pending[sent:]

    def handle_read(self):
        data = self.recv(100)
        if data:
            self.done += 1
            if self.done < self.rounds:
                self.pending = b"ping %d\n" % self._fileno

    def handle_close(self):
        self.close()


class Echoer(asyncore.dispatcher_with_send):
    def handle_read(self):
        data = self.recv(100)
        if data:
            self.send(data)

    def handle_close(self):
        self.close()


def _raise_fd_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return None
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, wanted))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return soft, hard


@pytest.mark.parametrize("custom_map", [False, True], ids=["socket_map", "own_map"])
def test_loop_over_more_than_1024_fds(fast_only, use_poll, custom_map):
    pairs = 560  # 1120 channels, most of them on fds above 1024
    saved = _raise_fd_limit(2 * pairs + 200)
    map = {} if custom_map else None
    the_map = map if custom_map else asyncore.socket_map
    pingers = []
    runs = 0
    real_run_once = asyncore._MapEngine.run_once

    def counting_run_once(self, *args):
        nonlocal runs
        runs += 1
        return real_run_once(self, *args)

    asyncore._MapEngine.run_once = counting_run_once
    try:
        for _ in range(pairs):
            a, b = socket.socketpair()
            pingers.append(Pinger(a, 3, the_map))
            Echoer(b, the_map)
        assert max(the_map) >= 1024
        if not use_poll:
            # The original select() loop cannot do this at all.
            with pytest.raises(ValueError):
                asyncore.poll(0.0, the_map)
        deadline = time.monotonic() + 30
        while not all(p.done == 3 for p in pingers):
            assert time.monotonic() < deadline, "echo over 1120 channels stalled"
            asyncore.loop(timeout=0.5, use_poll=use_poll, map=map, count=5)
        assert runs > 0  # the epoll fast path ran
        assert len(engine_for(the_map)) == 2 * pairs
    finally:
        asyncore._MapEngine.run_once = real_run_once
        asyncore.close_all(the_map)
        if saved:
            resource.setrlimit(resource.RLIMIT_NOFILE, saved)
    assert engine_for(the_map) is None  # close_all() released it


# -- readable() / writable() are followed -----------------------------------------------------


def test_readable_writable_answers_are_followed(fast, use_poll):
    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        d.want_read = False
        d.want_write = True
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=3)
        assert d.writes == 3 and d.reads == 0
        b.send(b"hello")
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=2)
        assert d.reads == 0, "read while readable() said no"
        assert d.writes == 5
        d.want_write = False
        t0 = time.monotonic()
        asyncore.loop(timeout=0.02, use_poll=use_poll, count=3)
        assert d.writes == 5, "write while writable() said no"
        assert time.monotonic() - t0 >= 0.05  # nothing to do: it waited
        d.want_read = True
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=1)
        assert d.reads == 1 and d.data == b"hello"
        d.want_write = True
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=1)
        assert d.writes == 6
    finally:
        b.close()


def test_kernel_interest_changes_only_when_answers_change(fast_only, use_poll):
    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        d.want_read, d.want_write = True, False
        others = [Recorder(s) for s in _pairs_ends(20)]
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=1)
        engine = engine_for(asyncore.socket_map)
        assert engine is not None
        calls = []
        for name in ("_register", "_modify", "_unregister"):
            real = getattr(engine, name)

            def wrapper(fd, *args, _real=real, _name=name):
                calls.append((_name, fd))
                return _real(fd, *args)

            setattr(engine, name, wrapper)
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=50)
        assert calls == []  # stable answers: no system call but the wait
        d.want_write = True
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=10)
        assert calls == [("_modify", d._fileno)]
        d.want_read = d.want_write = False
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=10)
        assert calls[1:] == [("_unregister", d._fileno)]
        d.want_read = True
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=10)
        assert calls[2:] == [("_register", d._fileno)]
        fds = sorted([d._fileno] + [o._fileno for o in others])
        for o in others:
            o.close()
        d.close()
        # Each close() unregistered its fd at once (no wait for the next
        # iteration), and the poller forgot them.
        assert sorted(fd for _, fd in calls[3:]) == fds
        assert {name for name, _ in calls[3:]} == {"_unregister"}
        assert len(engine) == 0
    finally:
        b.close()


def _pairs_ends(n):
    ends = []
    for _ in range(n):
        x, y = socket.socketpair()
        ends.append(x)
        _spare.append(y)
    return ends


def test_close_unregisters_before_the_fd_closes(fast_only):
    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        asyncore.loop(timeout=0.0, count=1)
        engine = engine_for(asyncore.socket_map)
        seen = []
        real = engine._unregister

        def unregister(fd):
            # The fd must still be open: epoll forgets a closed fd only when
            # no other descriptor shares its file.
            seen.append(os.fstat(fd) is not None)
            return real(fd)

        engine._unregister = unregister
        fd = d._fileno
        d.close()
        assert seen == [True]
        assert engine.watched(fd) is None
    finally:
        b.close()


# -- monkeypatched module names are honoured -------------------------------------------------


class FakeSelect:
    """Stands in for the select module; records calls, delegates."""

    def __init__(self):
        self.calls = []
        for name in dir(select):
            if name.isupper():
                setattr(self, name, getattr(select, name))

    def select(self, r, w, e, timeout=None):
        self.calls.append(("select", list(r), list(w), list(e), timeout))
        return select.select(r, w, e, timeout)

    def poll(self):
        fake = self

        class Poller:
            def __init__(self):
                self.p = select.poll()

            def register(self, fd, flags):
                fake.calls.append(("register", fd, flags))
                self.p.register(fd, flags)

            def poll(self, timeout=None):
                fake.calls.append(("poll", timeout))
                return self.p.poll(timeout)

        return Poller()


def test_replaced_select_module_is_used_by_loop(fast_only, use_poll, monkeypatch):
    fake = FakeSelect()
    monkeypatch.setattr(asyncore, "select", fake)
    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        b.send(b"x")
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=1)
        assert d.reads == 1
        if use_poll:
            assert ("register", d._fileno, select.POLLIN | select.POLLPRI) in fake.calls
            assert ("poll", 10) in fake.calls
        else:
            assert fake.calls == [("select", [d._fileno], [], [d._fileno], 0.01)]
        assert engine_for(asyncore.socket_map) is None
    finally:
        b.close()


def test_replaced_poll_function_is_used_by_loop(fast_only, use_poll, monkeypatch):
    seen = []
    name = "poll2" if use_poll else "poll"
    real = getattr(asyncore, name)

    def my_poll(timeout=0.0, map=None):
        seen.append(timeout)
        return real(timeout, map)

    monkeypatch.setattr(asyncore, name, my_poll)
    a, b = socket.socketpair()
    try:
        Recorder(a)
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=2)
        assert seen == [0.0, 0.0]
    finally:
        b.close()


def test_replaced_time_module_sleeps_when_nobody_waits(fast, monkeypatch):
    slept = []

    class FakeTime:
        def sleep(self, seconds):
            slept.append(seconds)

        def __getattr__(self, name):
            return getattr(time, name)

    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        d.want_read = d.want_write = False
        monkeypatch.setattr(asyncore, "time", FakeTime())
        asyncore.loop(timeout=7.5, count=2)
        assert slept == [7.5, 7.5]
        monkeypatch.setattr(asyncore, "time", time)
        monkeypatch.setattr(time, "sleep", lambda s: slept.append(("patched", s)))
        asyncore.loop(timeout=1.5, count=1)
        assert slept[-1] == ("patched", 1.5)
    finally:
        b.close()


def test_poll_and_readwrite_work_on_fakes(monkeypatch):
    events = []

    class Obj:
        accepting = False

        def __init__(self, name, r, w):
            self.name, self.r, self.w = name, r, w

        def readable(self):
            return self.r

        def writable(self):
            return self.w

        def handle_read_event(self):
            events.append((self.name, "read"))

        def handle_write_event(self):
            events.append((self.name, "write"))

        def handle_expt_event(self):
            events.append((self.name, "expt"))

        def handle_close(self):
            events.append((self.name, "close"))

        def handle_error(self):
            events.append((self.name, "error"))

    class Fake:
        POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 1, 2, 4, 8, 16, 32

        def select(self, r, w, e, timeout):
            assert (r, w, e, timeout) == ([5, 6], [6], [5, 6], 2.0)
            return [6], [6], [5]

        def poll(self):
            class P:
                def register(self, fd, flags):
                    events.append(("register", fd, flags))

                def poll(self, timeout):
                    events.append(("timeout", timeout))
                    return [(5, 1 | 16), (6, 4), (99, 1)]

            return P()

    monkeypatch.setattr(asyncore, "select", Fake())
    m = {5: Obj("a", True, False), 6: Obj("b", True, True)}
    asyncore.poll(2.0, m)
    assert events == [("b", "read"), ("b", "write"), ("a", "expt")]
    events.clear()
    asyncore.poll2(0.25, m)
    assert events == [("register", 5, 3), ("register", 6, 7), ("timeout", 250),
                      ("a", "read"), ("a", "close"), ("b", "write")]
    events.clear()
    asyncore.loop(timeout=2.0, map=m, count=1)  # the fake, not the fast path
    assert events == [("b", "read"), ("b", "write"), ("a", "expt")]
    assert engine_for(m) is None
    events.clear()
    asyncore.readwrite(m[5], 32)
    assert events == [("a", "close")]


# -- the fast path's own edges -----------------------------------------------------------------


def test_exitnow_escapes_and_the_loop_is_reusable(fast, use_poll):
    a, b = socket.socketpair()
    try:
        class Quitter(Recorder):
            def handle_read(self):
                raise asyncore.ExitNow()

        d = Quitter(a)
        b.send(b"x")
        with pytest.raises(asyncore.ExitNow):
            asyncore.loop(timeout=0.01, use_poll=use_poll)
        d.__class__ = Recorder
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=1)
        assert d.data == b"x"
        if fast:
            assert engine_for(asyncore.socket_map).in_use.acquire(False)
            engine_for(asyncore.socket_map).in_use.release()
    finally:
        b.close()


def test_errors_go_to_handle_error(fast, use_poll):
    a, b = socket.socketpair()
    try:
        class Broken(Recorder):
            def handle_read(self):
                raise ZeroDivisionError

        d = Broken(a)
        b.send(b"x")
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=2)
        assert [type(e) for e in d.errors] == [ZeroDivisionError]
        assert d._fileno is None  # closed by its handle_error
    finally:
        b.close()


def test_out_of_band_data_calls_handle_expt(fast, use_poll):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    try:
        d = Recorder(conn)
        client.send(b"!", socket.MSG_OOB)
        loop_until(lambda: d.expts >= 1, use_poll=use_poll)
    finally:
        client.close()
        server.close()


def test_peer_close_reaches_handle_close(fast, use_poll):
    a, b = socket.socketpair()
    d = Recorder(a)
    b.send(b"last words")
    b.close()
    loop_until(lambda: d.closes >= 1, use_poll=use_poll)
    assert d.data == b"last words"
    assert not asyncore.socket_map


def test_connect_accept_and_connection_attributes(fast, use_poll):
    accepted = []

    class Server(asyncore.dispatcher):
        def __init__(self):
            asyncore.dispatcher.__init__(self)
            self.create_socket()
            self.set_reuse_addr()
            self.bind(("127.0.0.1", 0))
            self.listen(5)

        def handle_accepted(self, sock, addr):
            accepted.append(Recorder(sock))

    class Client(Recorder):
        want_write = True
        connected_seen = False

        def handle_connect(self):
            self.connected_seen = True

    server = Server()
    assert server.accepting and not server.connected
    client = Client()
    client.create_socket()
    client.connect(server.socket.getsockname())
    loop_until(lambda: client.connected and accepted, use_poll=use_poll)
    assert client.connected_seen and not client.connecting
    assert accepted[0].connected
    client.send(b"hi")
    loop_until(lambda: accepted[0].data == b"hi", use_poll=use_poll)
    client.close()
    loop_until(lambda: accepted[0].closes, use_poll=use_poll)
    server.close()
    assert not server.accepting


def test_failed_connect_is_reported(fast, use_poll):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now
    c = Recorder()
    c.want_write = True
    c.create_socket()
    try:
        c.connect(("127.0.0.1", port))
    except OSError as exc:  # refused at once on some kernels
        assert exc.errno == errno.ECONNREFUSED
        c.close()
        return
    loop_until(lambda: c.errors or c.closes, use_poll=use_poll)
    assert c._fileno is None


def test_no_stale_event_after_fd_reuse_in_one_batch(fast_only):
    stale = []
    replacements = []

    class Replacer(Recorder):
        other = None

        def handle_read(self):
            Recorder.handle_read(self)
            other = self.other
            if other is not None and other._fileno is not None:
                freed = other._fileno
                other.close()
                x, y = socket.socketpair()
                _spare.append(y)
                new = Stale(x)
                replacements.append((freed, new._fileno))
                other.other = None

    class Stale(Recorder):
        def handle_read_event(self):
            stale.append(self._fileno)

    (a1, a2), (b1, b2) = socket.socketpair(), socket.socketpair()
    _spare.extend([a2, b2])
    da, db = Replacer(a1), Replacer(b1)
    da.other, db.other = db, da
    a2.send(b"x")
    b2.send(b"y")
    asyncore.loop(timeout=0.01, count=1)
    assert len(replacements) == 1
    freed, reused = replacements[0]
    assert freed == reused, "the test needs the kernel to reuse the lowest fd"
    assert stale == []  # the closed channel's pending event was dropped


def test_fd_closed_behind_the_dispatchers_back_gets_handle_close(fast_only, use_poll):
    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        d.want_write = True
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=1)
        a.close()  # not through the dispatcher: it is still in the map
        d.want_write = False  # an interest change makes epoll notice
        loop_until(lambda: d.closes >= 1, use_poll=use_poll, limit=2)
        assert not asyncore.socket_map
    finally:
        b.close()


def test_hang_up_of_a_write_only_fd_does_not_spin(fast, monkeypatch):
    r, w = os.pipe()
    try:
        d = asyncore.file_dispatcher(r)
        calls = []
        d.readable = lambda: False
        d.writable = lambda: True
        d.handle_write_event = lambda: calls.append("write")
        d.handle_close = lambda: calls.append("close")
        os.close(w)
        w = -1
        # select() never reports a read end as writable, hung up or not:
        # each iteration waits its full timeout and calls nothing.
        t0 = time.monotonic()
        asyncore.loop(timeout=0.05, count=4)
        assert time.monotonic() - t0 >= 0.15
        assert calls == []
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        asyncore.close_all()


def test_pipe_file_dispatcher(fast, use_poll):
    r, w = os.pipe()
    got = []

    class Reader(asyncore.file_dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            got.append(self.recv(100))

        def handle_close(self):
            got.append("closed")
            self.close()

    Reader(r)
    os.close(r)  # file_dispatcher keeps its own duplicate
    os.write(w, b"through the pipe")
    loop_until(lambda: got, use_poll=use_poll)
    os.close(w)
    loop_until(lambda: "closed" in got, use_poll=use_poll)
    assert got[0] == b"through the pipe"


def test_regular_file_dispatcher(fast, use_poll, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789" * 3)
    fd = os.open(path, os.O_RDONLY)
    got = []

    class Reader(asyncore.file_dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            got.append(self.recv(7))

        def handle_close(self):
            self.close()

    Reader(fd)
    os.close(fd)
    # epoll refuses regular files; select and poll call them always ready.
    asyncore.loop(timeout=5, use_poll=use_poll, count=10)
    assert b"".join(g for g in got if g) == b"0123456789" * 3
    assert not asyncore.socket_map


def test_regular_file_that_stops_and_resumes_wanting(fast, use_poll, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"abcdef")
    fd = os.open(path, os.O_RDONLY)
    got = []

    class Reader(asyncore.file_dispatcher):
        wanted = True

        def readable(self):
            return self.wanted

        def writable(self):
            return False

        def handle_read(self):
            got.append(self.recv(2))
            self.wanted = False  # one piece, then nothing until asked again

        def handle_close(self):
            self.close()

    reader = Reader(fd)
    os.close(fd)
    try:
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=3)
        assert got == [b"ab"]  # not reported while it wants nothing
        reader.wanted = True
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=1)
        assert got == [b"ab", b"cd"]
    finally:
        reader.close()


def test_nested_loop_takes_the_original_path(fast_only, use_poll):
    a, b = socket.socketpair()
    c, d_ = socket.socketpair()
    try:
        inner = Recorder(c)

        class Outer(Recorder):
            def handle_read(self):
                Recorder.handle_read(self)
                asyncore.loop(timeout=0.01, use_poll=use_poll, count=1)

        outer = Outer(a)
        b.send(b"o")
        d_.send(b"i")
        asyncore.loop(timeout=0.01, use_poll=use_poll, count=2)
        assert outer.data == b"o" and inner.data == b"i"
    finally:
        for s in (b, d_):
            s.close()


def test_loops_in_two_threads_on_one_map(fast_only):
    pairs = [socket.socketpair() for _ in range(10)]
    try:
        recorders = [Recorder(x) for x, _ in pairs]
        errors = []

        def run():
            try:
                for _ in range(50):
                    asyncore.loop(timeout=0.001, count=1)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for _, y in pairs:
            y.send(b"z")
        for t in threads:
            t.join(30)
        assert not errors
        loop_until(lambda: all(r.data == b"z" for r in recorders))
    finally:
        for _, y in pairs:
            y.close()


def test_custom_map_poller_holds_no_channel(fast_only, use_poll):
    m = {}
    a, b = socket.socketpair()
    d = Recorder(a, map=m)
    ref = weakref.ref(d)
    asyncore.loop(timeout=0.0, use_poll=use_poll, map=m, count=1)
    assert engine_for(m) is not None
    d.close()
    del d
    gc.collect()
    assert ref() is None
    b.close()


def test_poller_released_when_map_empties(fast_only, use_poll):
    a, b = socket.socketpair()
    b.close()
    d = Recorder(a)
    asyncore.loop(timeout=0.01, use_poll=use_poll)  # runs until d closes
    # poll semantics call handle_close() twice here (for the EOF the read
    # finds, then for POLLHUP), as the original poll2() does.
    assert d.closes == (2 if use_poll else 1)
    assert engine_for(asyncore.socket_map) is None


def test_many_maps_keep_few_pollers(fast_only):
    maps = []
    for _ in range(asyncore._MAX_ENGINES + 4):
        m = {}
        x, y = socket.socketpair()
        _spare.append(y)
        Recorder(x, map=m)
        asyncore.loop(timeout=0.0, map=m, count=1)
        maps.append(m)
    assert len(asyncore._engines) <= asyncore._MAX_ENGINES
    for m in maps:  # evicted maps still work
        asyncore.loop(timeout=0.0, map=m, count=1)
        asyncore.close_all(m)
    assert not asyncore._engines


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_poller(fast_only):
    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        asyncore.loop(timeout=0.0, count=1)
        parent_engine = engine_for(asyncore.socket_map)
        rpipe, wpipe = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                b.send(b"c")
                for _ in range(50):
                    asyncore.loop(timeout=0.01, count=1)
                    if d.data:
                        break
                ok = d.data == b"c" and engine_for(asyncore.socket_map) is not parent_engine
                os.write(wpipe, b"ok" if ok else b"bad")
                status = 0
            finally:
                os._exit(status)
        os.close(wpipe)
        answer = os.read(rpipe, 10)
        os.close(rpipe)
        _, status = os.waitpid(pid, 0)
        assert answer == b"ok" and status == 0
        # The parent's poller is intact (the child did not unregister).
        b.send(b"p")
        loop_until(lambda: d.data.endswith(b"p"))
        assert engine_for(asyncore.socket_map) is parent_engine
    finally:
        b.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_close_in_a_forked_child_leaves_the_parents_epoll_set(fast_only, use_poll):
    # The child's engine shares the parent's epoll set: a dispatcher closed
    # there (before any loop of the child's own) must not unregister the fd
    # from the parent's set, or the parent would never hear of it again.
    a, b = socket.socketpair()
    try:
        d = Recorder(a)
        asyncore.loop(timeout=0.0, use_poll=use_poll, count=1)
        parent_engine = engine_for(asyncore.socket_map)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                d.close()
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        b.send(b"p")
        loop_until(lambda: d.data.endswith(b"p"), use_poll=use_poll)
        assert engine_for(asyncore.socket_map) is parent_engine
    finally:
        b.close()
