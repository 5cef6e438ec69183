"""pike.server's socketserver model: the standard library's behaviour, with
every wait on a private pike poller of each kind.

Every test runs once per poller kind (the server's ``poller_name``); the
implementation (C or Python) does not matter to these blocking servers. Each
test must leave no fd open, no thread running and no child unreaped.
"""

import gc
import io
import os
import signal
import socket
import threading
import time

import pytest

import pike
from pike import server as ss
from pike.testing import has_family



def open_fds():
    """The fds open in this process (as conftest's fd-leak check sees them)."""
    return {int(name) for name in os.listdir("/proc/self/fd")} if os.path.isdir("/proc/self/fd") else set()

TIMEOUT = 5.0
HOST = "127.0.0.1"


@pytest.fixture(params=pike.available_pollers())
def kind(request):
    """The poller kind the servers of a test use; also checks for fd leaks."""
    before = open_fds()
    threads_before = set(threading.enumerate())
    yield request.param
    for thread in set(threading.enumerate()) - threads_before:
        thread.join(TIMEOUT)
    leaked = open_fds() - before
    if leaked:
        gc.collect()
        leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked: {sorted(leaked)}"


class EchoLine(ss.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())


class EchoDatagram(ss.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read())


def make(cls, kind, address=(HOST, 0), handler=EchoLine, **attrs):
    server = cls(address, handler, bind_and_activate=False)
    server.poller_name = kind
    for name, value in attrs.items():
        setattr(server, name, value)
    try:
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    return server


class Serving:
    """Run ``server.serve_forever`` in a thread; stop and close on exit."""

    def __init__(self, server, poll_interval=0.5):
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": poll_interval}
        )

    def __enter__(self):
        self.thread.start()
        return self.server

    def __exit__(self, *exc):
        try:
            self.server.shutdown()
            self.thread.join(TIMEOUT)
            assert not self.thread.is_alive()
        finally:
            self.server.server_close()


def stream_round_trip(family, address, payload=b"hello pike\n"):
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(100)
            if not chunk:
                break
            data += chunk
        return data


def datagram_round_trip(family, address, payload=b"ping\n", bind=None):
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if bind is not None:
            sock.bind(bind)
        sock.sendto(payload, address)
        return sock.recv(100)


# -- the loop: promptness, no spin, service_actions ---------------------------


def test_shutdown_is_prompt(kind):
    # A poll interval far longer than the test: only the wake-up can end it.
    server = make(ss.TCPServer, kind)
    serving = Serving(server, poll_interval=60)
    with serving:
        assert stream_round_trip(socket.AF_INET, server.server_address) == b"hello pike\n"
        time.sleep(0.05)  # let it block in the poller again
        start = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - start
        serving.thread.join(TIMEOUT)
        assert not serving.thread.is_alive()
    assert elapsed < 0.5, f"shutdown() took {elapsed:.3f}s"


def test_shutdown_right_after_start(kind):
    # shutdown() may run before the serving thread reached its poller.
    for _ in range(10):
        server = make(ss.TCPServer, kind)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 60})
        thread.start()
        start = time.monotonic()
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
        assert not thread.is_alive()
        assert time.monotonic() - start < 1.0


def test_serve_forever_blocks_and_runs_service_actions(kind):
    calls = []

    class Server(ss.TCPServer):
        def service_actions(self):
            calls.append(time.monotonic())

    server = make(Server, kind)
    with Serving(server, poll_interval=0.1):
        time.sleep(0.55)
    # About one call per poll interval: a spinning loop would make thousands.
    assert 2 <= len(calls) <= 12, len(calls)


def test_serve_forever_can_run_again(kind):
    server = make(ss.TCPServer, kind)
    try:
        for _ in range(2):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 30})
            thread.start()
            assert stream_round_trip(socket.AF_INET, server.server_address) == b"hello pike\n"
            server.shutdown()
            thread.join(TIMEOUT)
            assert not thread.is_alive()
    finally:
        server.server_close()


def test_server_close_releases_the_poller(kind):
    before = open_fds()
    server = make(ss.TCPServer, kind)
    with Serving(server, poll_interval=30):
        stream_round_trip(socket.AF_INET, server.server_address)
        assert server._pike_poller is not None
        assert server._pike_poller.name == kind
    assert server.socket.fileno() == -1
    assert server._pike_poller is None
    assert open_fds() - before == set()


# -- handle_request and its timeouts ------------------------------------------


def test_handle_request_serves_one(kind):
    with make(ss.TCPServer, kind) as server:
        result = []
        client = threading.Thread(
            target=lambda: result.append(stream_round_trip(socket.AF_INET, server.server_address))
        )
        client.start()
        server.handle_request()
        client.join(TIMEOUT)
        assert result == [b"hello pike\n"]


def test_handle_request_times_out(kind):
    timeouts = []

    class Server(ss.TCPServer):
        timeout = 0.2

        def handle_timeout(self):
            timeouts.append(time.monotonic())

    with make(Server, kind) as server:
        start = time.monotonic()
        server.handle_request()
        elapsed = time.monotonic() - start
    assert len(timeouts) == 1
    assert 0.15 <= elapsed < 2.0


def test_handle_request_uses_the_shorter_socket_timeout(kind):
    timeouts = []

    class Server(ss.TCPServer):
        timeout = 30

        def handle_timeout(self):
            timeouts.append(1)

    with make(Server, kind) as server:
        server.socket.settimeout(0.1)
        start = time.monotonic()
        server.handle_request()
        assert time.monotonic() - start < 2.0
    assert timeouts == [1]


# -- the request steps ----------------------------------------------------------


def test_verify_request_false_drops_the_request(kind):
    seen = []

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            seen.append("handled")

    class Server(ss.TCPServer):
        def verify_request(self, request, client_address):
            seen.append(("verify", client_address[0]))
            return False

        def shutdown_request(self, request):
            seen.append("shutdown_request")
            super().shutdown_request(request)

    with make(Server, kind, handler=Handler) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
            server.handle_request()
            assert sock.recv(10) == b""  # closed by the server
    assert seen == [("verify", HOST), "shutdown_request"]


def test_handler_error_goes_to_handle_error(kind, capsys):
    class Handler(ss.BaseRequestHandler):
        def handle(self):
            raise ValueError("boom")

    with make(ss.TCPServer, kind, handler=Handler) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT):
            server.handle_request()
    err = capsys.readouterr().err
    assert "Exception occurred during processing of request from" in err
    assert "ValueError: boom" in err


def test_system_exit_escapes_and_request_is_closed(kind):
    closed = []

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            raise SystemExit(3)

    class Server(ss.TCPServer):
        def handle_error(self, request, client_address):  # pragma: no cover
            closed.append("handle_error")

        def close_request(self, request):
            closed.append("closed")
            super().close_request(request)

    with make(Server, kind, handler=Handler) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT):
            with pytest.raises(SystemExit):
                server.handle_request()
    assert closed == ["closed"]


def test_handler_lifecycle_order(kind):
    order = []

    class Handler(ss.BaseRequestHandler):
        def setup(self):
            order.append(("setup", self.server is srv, isinstance(self.request, socket.socket)))

        def handle(self):
            order.append("handle")
            raise KeyError("x")

        def finish(self):
            order.append("finish")

    class Server(ss.TCPServer):
        def handle_error(self, request, client_address):
            order.append("handle_error")

    with make(Server, kind, handler=Handler) as srv:
        with socket.create_connection(srv.server_address, timeout=TIMEOUT):
            srv.handle_request()
    assert order == [("setup", True, True), "handle", "finish", "handle_error"]


def test_get_request_error_is_ignored(kind):
    class Server(ss.TCPServer):
        def get_request(self):
            raise OSError("accept failed")

    with make(Server, kind) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT):
            server.handle_request()  # returns quietly


def test_server_replaced_socket_is_watched(kind):
    # A subclass may swap the listening socket after activation (as TLS
    # wrappers do); the poller must watch whatever fileno() says now.
    with make(ss.TCPServer, kind) as server:
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        assert stream_round_trip(socket.AF_INET, server.server_address) == b"hello pike\n"
        thread.join(TIMEOUT)
        old = server.socket
        new = socket.socket()
        new.bind((HOST, 0))
        new.listen(5)
        server.socket = new
        server.server_address = new.getsockname()
        old.close()
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        assert stream_round_trip(socket.AF_INET, server.server_address) == b"hello pike\n"
        thread.join(TIMEOUT)
        assert not thread.is_alive()


# -- construction ---------------------------------------------------------------


def test_bind_failure_leaks_nothing(kind):
    before = open_fds()
    for _ in range(50):
        with pytest.raises(OverflowError):
            ss.TCPServer((HOST, -1), EchoLine)
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        with pytest.raises(OSError):
            ss.TCPServer(taken.getsockname(), EchoLine)
    assert open_fds() - before == set()


def test_reuse_options(kind):
    class Server(ss.TCPServer):
        allow_reuse_address = True
        allow_reuse_port = hasattr(socket, "SO_REUSEPORT")

    with make(Server, kind) as server:
        sock = server.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        if Server.allow_reuse_port:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    with make(ss.TCPServer, kind) as server:
        assert not server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)


def test_class_attributes():
    assert ss.TCPServer.request_queue_size == 5
    assert ss.TCPServer.socket_type == socket.SOCK_STREAM
    assert ss.UDPServer.socket_type == socket.SOCK_DGRAM
    assert ss.UDPServer.max_packet_size == 8192
    assert ss.UnixStreamServer.address_family == socket.AF_UNIX
    assert ss.ForkingMixIn.timeout == 300 and ss.ForkingMixIn.max_children == 40
    assert ss.ThreadingMixIn.daemon_threads is False
    assert ss.ThreadingMixIn.block_on_close is True
    assert ss.StreamRequestHandler.rbufsize == -1
    assert ss.StreamRequestHandler.wbufsize == 0
    assert issubclass(ss.ThreadingUnixDatagramServer, ss.UnixDatagramServer)
    assert issubclass(ss.ForkingUnixStreamServer, ss.ForkingMixIn)


def test_context_manager_closes(kind):
    with make(ss.TCPServer, kind) as server:
        assert server.fileno() >= 0
    assert server.socket.fileno() == -1


def test_server_without_activation(kind):
    server = ss.TCPServer((HOST, 0), EchoLine, bind_and_activate=False)
    try:
        assert server.server_address == (HOST, 0)
        server.server_bind()
        assert server.server_address[1] != 0
    finally:
        server.server_close()


# -- every server class ---------------------------------------------------------


STREAM_CLASSES = [ss.TCPServer, ss.ThreadingTCPServer, ss.ForkingTCPServer]
UNIX_STREAM_CLASSES = [ss.UnixStreamServer, ss.ThreadingUnixStreamServer, ss.ForkingUnixStreamServer]
DGRAM_CLASSES = [ss.UDPServer, ss.ThreadingUDPServer, ss.ForkingUDPServer]
UNIX_DGRAM_CLASSES = [
    ss.UnixDatagramServer,
    ss.ThreadingUnixDatagramServer,
    ss.ForkingUnixDatagramServer,
]


def _names(classes):
    return [cls.__name__ for cls in classes]


@pytest.mark.parametrize("cls", STREAM_CLASSES, ids=_names(STREAM_CLASSES))
def test_tcp_servers(kind, cls):
    server = make(cls, kind)
    with Serving(server, poll_interval=30):
        for i in range(3):
            line = b"line %d\n" % i
            assert stream_round_trip(socket.AF_INET, server.server_address, line) == line
    assert not server.active_children if isinstance(server, ss.ForkingMixIn) else True


@pytest.mark.skipif(not has_family(socket.AF_INET6), reason="no IPv6 loopback")
def test_tcp_server_ipv6(kind):
    class Server(ss.ThreadingTCPServer):
        address_family = socket.AF_INET6

    server = make(Server, kind, address=("::1", 0))
    with Serving(server, poll_interval=30):
        assert stream_round_trip(socket.AF_INET6, server.server_address[:2]) == b"hello pike\n"


@pytest.mark.parametrize("cls", UNIX_STREAM_CLASSES, ids=_names(UNIX_STREAM_CLASSES))
def test_unix_stream_servers(kind, cls, tmp_path):
    path = str(tmp_path / "s")
    server = make(cls, kind, address=path)
    with Serving(server, poll_interval=30):
        assert server.server_address == path
        for _ in range(3):
            assert stream_round_trip(socket.AF_UNIX, path) == b"hello pike\n"


@pytest.mark.parametrize("cls", DGRAM_CLASSES, ids=_names(DGRAM_CLASSES))
def test_udp_servers(kind, cls):
    server = make(cls, kind, handler=EchoDatagram)
    with Serving(server, poll_interval=30):
        for i in range(3):
            payload = b"dgram %d" % i
            assert datagram_round_trip(socket.AF_INET, server.server_address, payload) == payload
    # The server's socket is not closed per request.
    assert server.socket.fileno() == -1


@pytest.mark.parametrize("cls", UNIX_DGRAM_CLASSES, ids=_names(UNIX_DGRAM_CLASSES))
def test_unix_datagram_servers(kind, cls, tmp_path):
    path = str(tmp_path / "s")
    server = make(cls, kind, address=path, handler=EchoDatagram)
    with Serving(server, poll_interval=30):
        for i in range(3):
            client = str(tmp_path / f"c{i}")
            got = datagram_round_trip(socket.AF_UNIX, path, b"u%d" % i, bind=client)
            assert got == b"u%d" % i


def test_udp_truncates_to_max_packet_size(kind):
    class Server(ss.UDPServer):
        max_packet_size = 4

    with make(Server, kind, handler=EchoDatagram) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(b"0123456789", server.server_address)
            server.handle_request()
            assert sock.recv(100) == b"0123"


# -- threads ----------------------------------------------------------------------


def test_threading_serves_concurrently_and_joins_on_close(kind):
    barrier = threading.Barrier(3, timeout=TIMEOUT)
    finished = []

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            barrier.wait()  # three requests at once, or a BrokenBarrierError
            time.sleep(0.1)
            self.wfile.write(b"ok\n")
            finished.append(1)

    server = make(ss.ThreadingTCPServer, kind, handler=Handler)
    results = []
    with Serving(server, poll_interval=30):
        clients = [
            threading.Thread(
                target=lambda: results.append(stream_round_trip(socket.AF_INET, server.server_address))
            )
            for _ in range(3)
        ]
        for c in clients:
            c.start()
        for c in clients:
            c.join(TIMEOUT)
    # server_close() (in Serving's exit) joined every request thread.
    assert finished == [1, 1, 1]
    assert results == [b"ok\n"] * 3


def test_threading_reaps_finished_threads(kind):
    with make(ss.ThreadingTCPServer, kind, handler=ss.StreamRequestHandler) as server:
        for _ in range(10):
            with socket.create_connection(server.server_address, timeout=TIMEOUT):
                server.handle_request()
            time.sleep(0.01)
        assert len(server._threads) < 10


def test_threading_daemon_threads_without_blocking(kind):
    release = threading.Event()
    started = threading.Event()
    seen = []

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            seen.append(threading.current_thread().daemon)
            started.set()
            release.wait(TIMEOUT)

    class Server(ss.ThreadingTCPServer):
        daemon_threads = True
        block_on_close = False

    server = make(Server, kind, handler=Handler)
    sock = socket.create_connection(server.server_address, timeout=TIMEOUT)
    try:
        server.handle_request()
        assert started.wait(TIMEOUT)
        start = time.monotonic()
        server.server_close()  # does not wait for the handler
        assert time.monotonic() - start < 1.0
    finally:
        release.set()
        sock.close()
    assert seen == [True]


# -- processes --------------------------------------------------------------------


def test_forking_reaps_only_its_own_children(kind):
    # A child of the test itself must be left for the test to wait for.
    other = os.fork()
    if other == 0:
        time.sleep(0.3)
        os._exit(7)
    try:
        server = make(ss.ForkingTCPServer, kind)
        with Serving(server, poll_interval=0.05):
            for _ in range(3):
                assert stream_round_trip(socket.AF_INET, server.server_address) == b"hello pike\n"
        assert not server.active_children
    finally:
        pid, status = os.waitpid(other, 0)
    assert pid == other and os.waitstatus_to_exitcode(status) == 7


def test_forking_max_children(kind):
    class Handler(ss.BaseRequestHandler):
        def handle(self):
            time.sleep(0.2)

    class Server(ss.ForkingTCPServer):
        max_children = 2

    with make(Server, kind, handler=Handler) as server:
        socks = [socket.create_connection(server.server_address, timeout=TIMEOUT) for _ in range(4)]
        try:
            for _ in range(4):
                server.handle_request()
                assert len(server.active_children) <= 2
                # (serve_forever calls this after each request)
                server.collect_children()
                assert len(server.active_children) < 2
        finally:
            for s in socks:
                s.close()
    assert not server.active_children


def test_forking_handle_error_in_child(kind, tmp_path):
    log = tmp_path / "log"

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            raise ValueError("in the child")

    class Server(ss.ForkingTCPServer):
        def handle_error(self, request, client_address):
            log.write_text(f"error in {os.getpid()}")

    with make(Server, kind, handler=Handler) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT):
            server.handle_request()
    text = log.read_text()
    assert text.startswith("error in ") and text != f"error in {os.getpid()}"


# -- handlers -----------------------------------------------------------------------


def test_stream_handler_options(kind):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        timeout = 1.5
        disable_nagle_algorithm = True
        wbufsize = 4096
        rbufsize = 0

        def handle(self):
            seen["timeout"] = self.connection.gettimeout()
            seen["nodelay"] = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            seen["wfile"] = type(self.wfile).__name__
            self.wfile.write(self.rfile.readline())  # buffered: flushed by finish()

    with make(ss.TCPServer, kind, handler=Handler) as server:
        result = []
        client = threading.Thread(
            target=lambda: result.append(stream_round_trip(socket.AF_INET, server.server_address))
        )
        client.start()
        server.handle_request()
        client.join(TIMEOUT)
    assert result == [b"hello pike\n"]
    assert seen["timeout"] == 1.5 and seen["nodelay"]
    assert seen["wfile"] == "BufferedWriter"


def test_unbuffered_wfile_sends_at_once(kind):
    seen = {}

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            seen["sent"] = self.wfile.write(memoryview(b"first\n"))
            seen["is_buffered_io"] = isinstance(self.wfile, io.BufferedIOBase)
            seen["fileno"] = self.wfile.fileno() == self.connection.fileno()
            seen["echo"] = self.rfile.readline()  # the client answers "first"

    with make(ss.TCPServer, kind, handler=Handler) as server:

        def client():
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
                data = sock.recv(100)
                sock.sendall(b"got " + data)

        thread = threading.Thread(target=client)
        thread.start()
        server.handle_request()
        thread.join(TIMEOUT)
    assert seen == {"sent": 6, "is_buffered_io": True, "fileno": True, "echo": b"got first\n"}


def test_datagram_handler_files(kind):
    seen = {}

    class Handler(ss.DatagramRequestHandler):
        def handle(self):
            seen["packet"] = self.packet
            seen["socket"] = self.socket is self.server.socket
            self.wfile.write(b"a")
            self.wfile.write(b"b")

    with make(ss.UDPServer, kind, handler=Handler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(b"xyz", server.server_address)
            server.handle_request()
            assert sock.recv(100) == b"ab"
    assert seen == {"packet": b"xyz", "socket": True}


def test_wfile_write_survives_signals(kind):
    # A write longer than the socket buffers, interrupted by signals, is
    # still sent whole.
    size = 4 * 1024 * 1024
    received = []
    hits = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: hits.append(1))
    main = threading.get_ident()

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            self.server.sent = self.wfile.write(b"\0" * size)

    try:
        with make(ss.TCPServer, kind, handler=Handler) as server:

            def client():
                with socket.create_connection(server.server_address, timeout=TIMEOUT) as sock:
                    sock.recv(100)
                    for _ in range(5):
                        signal.pthread_kill(main, signal.SIGUSR1)
                        time.sleep(0.02)
                    total = 100
                    while True:
                        chunk = sock.recv(1 << 16)
                        if not chunk:
                            break
                        total += len(chunk)
                    received.append(total)

            thread = threading.Thread(target=client)
            thread.start()
            server.handle_request()
            thread.join(TIMEOUT)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert server.sent == size
    assert received and received[0] >= size - 100
