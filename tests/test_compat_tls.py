"""pike.compat with ssl.SSLSocket channels, as legacy TLS programs use them.

The programs (tests/compat_tls_programs.py) are a classic asyncore TLS echo
server and client, and an async_chat line protocol that upgrades with
STARTTLS; each drives a non-blocking handshake from its handlers and lets
``readable()`` / ``writable()`` follow it. Every test runs them over:

* ``flavour``: pike.compat's loop on its epoll path ("pike"), on the
  original select()/poll() path ("pike-original"), and the standard
  library's asyncore / asynchat as the baseline ("stdlib", Python <= 3.11);
* ``use_poll``: select() and poll() semantics;
* ``size``: a small map, and one over 64 channels (idle dispatchers added),
  where pike's loop asks only the channels whose answers may have changed
  (here with its periodic full sweep put off, so that nothing hides a
  change the loop was not told of).

Every byte is checked with SHA-256 at both ends. Everything is on
127.0.0.1, every wait has a deadline, and no channel, poller or fd survives
a test.
"""

import gc
import hashlib
import importlib
import os
import socket
import ssl
import sys
import time
import warnings

import pytest

import pike.compat
from pike.compat import asynchat as compat_asynchat
from pike.compat import asyncore as compat_asyncore

from compat_tls_programs import RECV_SIZE, build
from tls_support import Certs

DEADLINE = 20.0  # seconds any one exchange may take (it takes far less)
IDLE_FOR_LARGE_MAP = 70  # over compat's small-map bound of 64 channels


def open_fds():
    return {int(name) for name in os.listdir("/proc/self/fd")}


def stdlib_modules():
    """The standard library's asyncore and asynchat, or skip."""
    if sys.version_info >= (3, 12):
        pytest.skip("asyncore and asynchat left the standard library in 3.12")
    if pike.compat.installed():
        pytest.skip("pike.compat is installed in place of the standard library's")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        core = importlib.import_module("asyncore")
        chat = importlib.import_module("asynchat")
    if core.__name__ != "asyncore" or "pike" in getattr(core, "__file__", ""):
        pytest.skip("import asyncore does not give the standard library's here")
    return core, chat


_programs = {}


def programs_for(core, chat):
    key = (core, chat)
    if key not in _programs:
        _programs[key] = build(core, chat)
    return _programs[key]


@pytest.fixture(scope="module")
def certs():
    return Certs()


@pytest.fixture(params=["pike", "pike-original", "stdlib"])
def flavour(request, monkeypatch):
    if request.param == "stdlib":
        return programs_for(*stdlib_modules())
    # The epoll path, or the original path it falls back to.
    monkeypatch.setattr(compat_asyncore, "_FAST_PATH", request.param == "pike")
    return programs_for(compat_asyncore, compat_asynchat)


@pytest.fixture(params=[False, True], ids=["select", "poll"])
def use_poll(request):
    return request.param


@pytest.fixture(params=["small", "large"])
def size(request, monkeypatch):
    if request.param == "large":
        # The default policy, whose size bound this map crosses; and no
        # periodic sweep: every change must reach pike's loop by a hint
        # (an event of the channel's own, an attribute assignment).
        monkeypatch.setattr(compat_asyncore, "_SWEEP_MODE", "auto")
        monkeypatch.setattr(compat_asyncore, "_SWEEP_INTERVAL", 3600.0)
    return request.param


class Harness:
    """A private map, its idle dispatchers, and a bounded loop over it."""

    def __init__(self, programs, use_poll, size):
        self.p = programs
        self.use_poll = use_poll
        self.map = {}
        self.spare = []  # the idle dispatchers' peers
        if size == "large":
            self.add_idle(IDLE_FOR_LARGE_MAP)
            assert len(self.map) > compat_asyncore._SMALL_MAP

    def add_idle(self, count):
        core = self.p.asyncore

        class Idle(core.dispatcher):
            def writable(self):
                return False

        for _ in range(count):
            ours, theirs = socket.socketpair()
            Idle(ours, map=self.map)
            self.spare.append(theirs)

    def run_until(self, condition, what):
        deadline = time.monotonic() + DEADLINE
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.p.asyncore.loop(timeout=0.05, use_poll=self.use_poll, map=self.map, count=1)

    def run(self, count):
        """``count`` iterations, whatever happens (bounded by their timeout)."""
        self.p.asyncore.loop(timeout=0.02, use_poll=self.use_poll, map=self.map, count=count)

    def close(self):
        self.p.asyncore.close_all(map=self.map, ignore_all=True)
        while self.spare:
            self.spare.pop().close()


@pytest.fixture
def harness(flavour, use_poll, size):
    gc.collect()
    before = open_fds()
    h = Harness(flavour, use_poll, size)
    try:
        yield h
    finally:
        h.close()
        for engine in list(compat_asyncore._engines.values()):
            engine.close()
        compat_asyncore._engines.clear()
    gc.collect()
    leaked = {fd for fd in open_fds() - before if os.path.exists(f"/proc/self/fd/{fd}")}
    assert not leaked, f"fds leaked: {sorted(leaked)}"


def message(size, seed):
    """``size`` bytes that differ from one message to another."""
    return (bytes(range(seed % 251, 256)) + bytes(range(256)) * (size // 256 + 2))[:size]


def echo(harness, certs, sizes):
    """Echo one message of each size over its own TLS connection."""
    p = harness.p
    server = p.EchoServer(certs.server_context(), harness.map)
    messages = [message(n, seed) for seed, n in enumerate(sizes)]
    clients = [
        p.EchoClient(certs.client_context(), server.address, data, harness.map)
        for data in messages
    ]
    harness.run_until(
        lambda: all(c.tally.count >= len(m) or c.failure for c, m in zip(clients, messages)),
        "the echoes",
    )
    for client, data in zip(clients, messages):
        assert client.failure is None
        assert client.handshake_seen
        assert "read" in client.handshake_wants  # retried after want-read
        assert client.unexpected == []  # no event that readable()/writable() declined
        assert client.tally.count == len(data)
        assert client.tally.digest == sha256_of(data)
    for client in clients:
        client.close()
    harness.run_until(
        lambda: len(server.handlers) == len(clients)
        and all(h.closed_by_peer for h in server.handlers),
        "the server to see every client go",
    )
    got = sorted((h.tally.count, h.tally.digest) for h in server.handlers)
    assert got == sorted((len(m), sha256_of(m)) for m in messages)
    assert all(h.failure is None and h.unexpected == [] for h in server.handlers)
    return server


def sha256_of(data):
    return hashlib.sha256(data).hexdigest()


def test_tls_echo(harness, certs):
    echo(harness, certs, [1, 5000, 70000])


def test_tls_echo_of_a_large_message(harness, certs):
    # 1 MiB: 64 records of 16 KiB each way, read RECV_SIZE at a time, so
    # most reads leave plaintext pending in the SSL object, which the
    # handlers drain themselves.
    server = echo(harness, certs, [1 << 20])
    (handler,) = server.handlers
    assert handler.reads >= (1 << 20) // RECV_SIZE


def test_pending_plaintext_is_not_an_event(harness, certs):
    """What the loop does not see: plaintext already inside the SSL object.

    The client sends one record (16 KiB); the server reads RECV_SIZE of it
    and, unlike a correct program, leaves the rest pending. The socket has
    nothing more to read, so no loop (pike's or the standard library's)
    calls handle_read again: the data waits for the program to read it.
    """
    p = harness.p

    class Lazy(p.EchoHandler):
        drain_pending = False

    server = p.EchoServer(certs.server_context(), harness.map, handler_class=Lazy)
    record = message(16384, 7)
    client = p.EchoClient(certs.client_context(), server.address, record, harness.map)
    harness.run_until(
        lambda: server.handlers and server.handlers[0].tally.count, "the first read"
    )
    (handler,) = server.handlers
    # Whatever the client's handshake still owes, let it settle (bounded).
    harness.run(5)
    assert handler.tally.count == RECV_SIZE
    assert handler.reads == 1
    assert handler.socket.pending() == len(record) - RECV_SIZE
    # The program's own remedy: read what is pending.
    handler.drain_pending = True
    handler.handle_read()
    assert handler.tally.count == len(record)
    harness.run_until(lambda: client.tally.count == len(record), "the echo")
    assert client.tally.digest == sha256_of(record)


def test_loop_honours_readable_and_writable(harness, certs):
    """A client that stops reading: the server's TLS writes block, and resume.

    Small socket buffers make the server's SSL writes meet want-write (and
    be retried with the same bytes); while the client's readable() says no,
    it gets no read event although its socket is readable, and the server
    waits for writability without spinning. Then the client reads again,
    by an attribute assignment from outside the loop, and every byte
    arrives.
    """
    p = harness.p
    server = p.EchoServer(certs.server_context(), harness.map, sndbuf=8192)
    data = message(1 << 20, 3)
    client = p.EchoClient(
        certs.client_context(), server.address, data, harness.map, rcvbuf=8192
    )
    client.hold = True
    harness.run_until(
        lambda: client.failure
        or (not client.handshaking and not client.out and not client.inflight
            and server.handlers and server.handlers[0].write_blocked),
        "the client to send all and the server's writes to block",
    )
    assert client.failure is None
    (handler,) = server.handlers
    harness.run_until(lambda: handler.tally.count == len(data), "the server to read all")
    harness.run(10)
    assert client.reads_after_handshake == 0
    assert handler.inflight or handler.out  # the echo waits, in order
    client.hold = False
    harness.run_until(lambda: client.tally.count == len(data) or client.failure, "the echo")
    assert client.failure is None
    assert client.tally.digest == sha256_of(data)
    assert handler.tally.digest == sha256_of(data)


def test_plaintext_client_fails_the_handshake_and_is_closed(harness, certs):
    p = harness.p
    server = p.EchoServer(certs.server_context(), harness.map)
    raw = socket.create_connection(server.address, timeout=5)
    try:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        harness.run_until(
            lambda: server.handlers and server.handlers[0].failure is not None,
            "the handshake to fail",
        )
        (handler,) = server.handlers
        assert isinstance(handler.failure, ssl.SSLError)
        assert handler not in harness.map.values()
        # The peer sees the end (an alert, then EOF, or a reset).
        raw.settimeout(5)
        try:
            while raw.recv(4096):
                pass
        except ConnectionResetError:
            pass
        # The loop goes on serving others.
        client = p.EchoClient(certs.client_context(), server.address, b"still here", harness.map)
        harness.run_until(lambda: client.tally.count == 10 or client.failure, "an echo")
        assert client.failure is None
        assert client.tally.digest == sha256_of(b"still here")
    finally:
        raw.close()


def test_peer_gone_during_the_handshake_is_closed(harness, certs):
    p = harness.p
    server = p.EchoServer(certs.server_context(), harness.map)
    raw = socket.create_connection(server.address, timeout=5)
    harness.run_until(lambda: server.handlers, "the accept")
    raw.close()
    (handler,) = server.handlers
    harness.run_until(lambda: handler not in harness.map.values(), "the close")
    # A handshake cut short is an error (EOF in violation of the protocol).
    assert isinstance(handler.failure, OSError)


def test_client_refuses_a_certificate_it_cannot_verify(harness, certs):
    p = harness.p
    server = p.EchoServer(certs.server_context(), harness.map)
    stranger = Certs()  # another CA: the server's certificate does not verify
    client = p.EchoClient(stranger.client_context(), server.address, b"x", harness.map)
    harness.run_until(lambda: client.failure is not None, "the verification failure")
    assert isinstance(client.failure, ssl.SSLCertVerificationError)
    harness.run_until(
        lambda: server.handlers and server.handlers[0] not in harness.map.values(),
        "the server to close its side",
    )


def lines_to_send():
    # Lines of many lengths, some longer than a record, none holding CRLF.
    return [message(n, n).replace(b"\r", b"r").replace(b"\n", b"n")
            for n in (1, 10, 100, 1000, 4095, 4096, 4097, 16383, 16384, 40000)] * 5


def test_starttls_line_exchange(harness, certs):
    p = harness.p
    server = p.StartTLSServer(certs.server_context(), harness.map)
    lines = lines_to_send()
    client = p.StartTLSClient(certs.client_context(), server.address, lines, harness.map)
    harness.run_until(
        lambda: client.said_bye or client.failure or client not in harness.map.values(),
        "the session to end",
    )
    assert client.failure is None
    assert client.handshake_seen and client.said_bye
    assert client.unexpected == []
    expected = sha256_of(b"".join(line + b"\n" for line in lines))
    assert client.echo_tally.digest == expected
    (handler,) = server.handlers
    assert handler.failure is None
    assert handler.plain_lines == [b"STARTTLS"]
    assert handler.handshake_wants and handler.unexpected == []
    assert handler.tls_tally.digest == expected
    assert handler.tls_tally.count == sum(len(line) + 1 for line in lines)
    harness.run_until(
        lambda: client not in harness.map.values() and handler not in harness.map.values(),
        "both ends to close",
    )


def test_starttls_with_bytes_pipelined_behind_it_is_refused(harness, certs):
    p = harness.p
    server = p.StartTLSServer(certs.server_context(), harness.map)
    client = p.StartTLSClient(
        certs.client_context(), server.address, [], harness.map,
        first=b"STARTTLS\r\nINJECTED\r\n",
    )
    harness.run_until(lambda: client not in harness.map.values(), "the server to end it")
    (handler,) = server.handlers
    assert handler.refused == b"INJECTED\r\n"
    assert not client.tls and not handler.tls
    assert client.replies == [b"554 pipelined after STARTTLS"]
