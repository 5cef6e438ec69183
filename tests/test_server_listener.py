"""The event-driven Listener, on every poller x implementation."""

import errno
import os
import socket
import time

import pytest

from pike.server.listener import Listener, family_of
from pike.testing import (
    EchoTransport,
    PeerReader,
    RecordingTransport,
    count_polls,
    has_family,
    run_until,
)

TIMEOUT = 5.0


def client(address, family=socket.AF_INET):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def echo(poller, sock, payload):
    """Send ``payload`` through an echo connection and drive the loop until it is back."""
    sock.sendall(payload)
    reader = PeerReader(sock)
    run_until(poller, lambda: reader.pump() and len(reader.data) >= len(payload),
              what="the echo")
    return bytes(reader.data)


def test_family_of():
    assert family_of(("127.0.0.1", 0)) == socket.AF_INET
    assert family_of(("::1", 0)) == socket.AF_INET6
    assert family_of(("::1", 0, 0, 0)) == socket.AF_INET6
    assert family_of("/tmp/x") == socket.AF_UNIX


def test_tcp_echo_and_tracking(poller):
    with Listener(EchoTransport, ("127.0.0.1", 0), poller=poller) as listener:
        assert listener.address[1] != 0
        socks = [client(listener.address) for _ in range(3)]
        try:
            run_until(poller, lambda: len(listener) == 3, what="three connections")
            for i, sock in enumerate(socks):
                assert echo(poller, sock, b"ping %d" % i) == b"ping %d" % i
            assert all(c.poller is poller for c in listener.connections)
            socks.pop().close()
            run_until(poller, lambda: len(listener) == 2, what="a connection forgotten")
            assert listener.accepted_total == 3
        finally:
            for sock in socks:
                sock.close()
    assert listener.closed and listener.fileno() == -1
    assert not listener.connections


@pytest.mark.skipif(not has_family(socket.AF_INET6), reason="no IPv6 loopback")
def test_ipv6_listener(poller):
    with Listener(EchoTransport, ("::1", 0), poller=poller) as listener:
        assert listener.family == socket.AF_INET6
        with client(listener.address[:2], socket.AF_INET6) as sock:
            assert echo(poller, sock, b"six") == b"six"


def test_unix_listener_removes_its_path(poller, tmp_path):
    path = str(tmp_path / "echo.sock")
    listener = Listener(EchoTransport, path, poller=poller)
    try:
        assert listener.family == socket.AF_UNIX and os.path.exists(path)
        with client(path, socket.AF_UNIX) as sock:
            assert echo(poller, sock, b"unix") == b"unix"
    finally:
        listener.close()
    assert not os.path.exists(path)


def test_unix_listener_replaces_a_stale_socket_only(poller, tmp_path):
    path = str(tmp_path / "s")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a dead server's leftover file
    with Listener(EchoTransport, path, poller=poller) as live:
        # A second listener must not steal the path of a live one.
        with pytest.raises(OSError) as info:
            Listener(EchoTransport, path, poller=poller)
        assert info.value.errno == errno.EADDRINUSE
        assert os.path.exists(path)
        with client(path, socket.AF_UNIX) as sock:
            assert echo(poller, sock, b"still") == b"still"
    assert not live.connections
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(FileExistsError):
        Listener(EchoTransport, str(plain), poller=poller)
    assert plain.read_text() == "x"


def test_unix_path_taken_over_is_left_alone(poller, tmp_path):
    path = str(tmp_path / "s")
    listener = Listener(EchoTransport, path, poller=poller)
    try:
        os.unlink(path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(path)
    finally:
        listener.close()
    try:
        assert os.path.exists(path)  # not ours any more: not removed
    finally:
        other.close()


@pytest.mark.parametrize("name", ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"])
def test_survives_accept_errors(poller, monkeypatch, name):
    code = getattr(errno, name)
    listener = Listener(EchoTransport, ("127.0.0.1", 0), poller=poller, backoff=(0.1, 0.2))
    socks = []
    try:
        socks.append(client(listener.address))
        run_until(poller, lambda: len(listener) == 1)
        real_accept = listener._transport.accept
        failures = []

        def failing_accept():
            if len(failures) < 3:
                failures.append(code)
                raise OSError(code, os.strerror(code))
            return real_accept()

        monkeypatch.setattr(listener._transport, "accept", failing_accept)
        socks.append(client(listener.address))  # waits in the backlog
        run_until(poller, lambda: failures, what="the first accept error")
        assert not listener.accepting
        # Paused: the listener does not spin on its still-readable socket...
        iterations, _ = count_polls(poller, duration=0.1, step=0.05)
        assert iterations <= 6  # a spin would make thousands
        # ...and the connection it has keeps being served meanwhile.
        assert echo(poller, socks[0], b"served") == b"served"
        start = time.monotonic()
        run_until(poller, lambda: len(listener) == 2, what="the accept to succeed")
        assert len(failures) == 3 and listener.accept_errors == 3
        assert time.monotonic() - start < 3.0
        assert listener.accepting
        assert echo(poller, socks[1], b"second") == b"second"
        assert listener._backoff == 0.0  # reset by the success
    finally:
        for sock in socks:
            sock.close()
        listener.close()


def test_aborted_connection_is_skipped_without_pause(poller, monkeypatch):
    with Listener(EchoTransport, ("127.0.0.1", 0), poller=poller) as listener:
        real_accept = listener._transport.accept
        calls = []

        def accept():
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionAbortedError(errno.ECONNABORTED, "aborted")
            return real_accept()

        monkeypatch.setattr(listener._transport, "accept", accept)
        with client(listener.address) as sock:
            run_until(poller, lambda: len(listener) == 1)
            assert listener.accept_errors == 0 and listener.accepting
            assert echo(poller, sock, b"x") == b"x"


def test_unexpected_accept_error_backs_off(poller, monkeypatch):
    with Listener(EchoTransport, ("127.0.0.1", 0), poller=poller, backoff=(0.05, 0.1)) as listener:
        real_accept = listener._transport.accept
        calls = []

        def accept():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("bug")
            return real_accept()

        monkeypatch.setattr(listener._transport, "accept", accept)
        with client(listener.address) as sock:
            run_until(poller, lambda: len(listener) == 1)
            assert listener.accept_errors == 1
            assert listener.fileno() >= 0  # the listening socket survived
            assert echo(poller, sock, b"y") == b"y"


def test_connection_cap(poller):
    with Listener(EchoTransport, ("127.0.0.1", 0), poller=poller, max_connections=2) as listener:
        socks = [client(listener.address) for _ in range(3)]
        try:
            run_until(poller, lambda: len(listener) == 2)
            count_polls(poller, duration=0.2, step=0.05)
            assert len(listener) == 2 and not listener.accepting
            # The third client waits in the backlog; the first two are served.
            assert echo(poller, socks[0], b"a") == b"a"
            socks.pop(0).close()
            run_until(poller, lambda: listener.accepted_total == 3, what="the third accept")
            assert len(listener) == 2
            assert echo(poller, socks[-1], b"c") == b"c"
        finally:
            for sock in socks:
                sock.close()


def test_factory_failure_closes_the_socket(poller):
    calls = []

    def factory(alternate_poller, sock):
        calls.append(sock)
        if len(calls) == 1:
            raise ValueError("no")
        return EchoTransport(alternate_poller=alternate_poller, sock=sock)

    with Listener(factory, ("127.0.0.1", 0), poller=poller) as listener:
        with client(listener.address) as first, client(listener.address) as second:
            run_until(poller, lambda: len(calls) == 2)
            assert calls[0].fileno() == -1
            assert first.recv(10) == b""  # closed by the listener
            assert echo(poller, second, b"ok") == b"ok"


class Polite(EchoTransport):
    """Finishes what it has queued, then closes, when the server shuts down."""

    def handle_shutdown(self):
        self.events.append("shutdown")
        self.close_when_done()


def test_graceful_shutdown_with_deadline(poller):
    made = []

    def factory(alternate_poller, sock):
        cls = Polite if not made else EchoTransport
        made.append(cls(alternate_poller=alternate_poller, sock=sock))
        return made[-1]

    listener = Listener(factory, ("127.0.0.1", 0), poller=poller)
    address = listener.address
    done = []
    listener.add_done_callback(lambda l: done.append(time.monotonic()))
    polite = client(address)
    stubborn = client(address)
    try:
        run_until(poller, lambda: len(made) == 2)
        start = time.monotonic()
        listener.shutdown(deadline=0.4)
        # Stops accepting at once.
        assert listener.fileno() == -1
        with pytest.raises(ConnectionRefusedError):
            client(address).close()
        # The polite one ends by itself; the other is still served.
        run_until(poller, lambda: made[0].closed, what="the polite connection to close")
        assert "shutdown" in made[0].events
        assert echo(poller, stubborn, b"still here") == b"still here"
        assert not done and len(listener) == 1
        run_until(poller, lambda: done, what="the deadline")
        elapsed = done[0] - start
        assert 0.3 <= elapsed < 2.0, elapsed
        assert made[1].closed and listener.closed
        assert stubborn.recv(10) == b""
    finally:
        polite.close()
        stubborn.close()
        listener.close()


def test_shutdown_without_deadline_waits_for_connections(poller):
    listener = Listener(EchoTransport, ("127.0.0.1", 0), poller=poller)
    sock = client(listener.address)
    try:
        run_until(poller, lambda: len(listener) == 1)
        listener.shutdown()
        count_polls(poller, duration=0.2, step=0.05)
        assert not listener.closed and len(listener) == 1
        assert echo(poller, sock, b"z") == b"z"
        sock.close()
        run_until(poller, lambda: listener.closed, what="the last connection to end")
    finally:
        sock.close()
        listener.close()


def test_shutdown_idle_listener_is_done_at_once(poller):
    listener = Listener(RecordingTransport, ("127.0.0.1", 0), poller=poller)
    done = []
    listener.add_done_callback(done.append)
    listener.shutdown(deadline=10)
    assert done == [listener] and listener.closed
    # The loop has nothing left: no timer waits for the deadline.
    assert poller.loop(timeout=1.0) == 0


def test_close_closes_every_connection(poller):
    listener = Listener(EchoTransport, ("127.0.0.1", 0), poller=poller)
    socks = [client(listener.address) for _ in range(3)]
    try:
        run_until(poller, lambda: len(listener) == 3)
        conns = list(listener.connections)
        listener.close()
        assert all(c.closed for c in conns) and not listener.connections
        for sock in socks:
            assert sock.recv(10) == b""
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port(poller):
    first = Listener(EchoTransport, ("127.0.0.1", 0), poller=poller, reuse_port=True)
    try:
        second = Listener(EchoTransport, first.address, poller=poller, reuse_port=True)
        second.close()
    finally:
        first.close()


def test_adopts_a_listening_socket(poller):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    with Listener(EchoTransport, sock=sock, poller=poller) as listener:
        assert listener.address == sock.getsockname()
        with client(listener.address) as c:
            assert echo(poller, c, b"adopted") == b"adopted"
