"""Helpers for the TLS tests: certificates made at run time, peers, a loop.

Certificates come from ``trustme`` (a throwaway CA); nothing touches the
network beyond loopback and Unix socket pairs.
"""

import hashlib
import os
import socket
import ssl
import time

import pytest

import pike

trustme = pytest.importorskip("trustme")


class Certs:
    """A CA, a server certificate for "localhost" and the matching contexts."""

    def __init__(self):
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert("localhost", "127.0.0.1", "::1")

    def server_context(self, alpn=None):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def client_context(self, alpn=None):
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        self.ca.configure_trust(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture(scope="module")
def certs():
    """One throwaway CA and server certificate per test module."""
    return Certs()


@pytest.fixture
def poller(poller):
    """The shared fixture's poller (import this into a TLS test module),
    emptied first: closing a TLS transport may leave a lingering
    close_notify channel, closed here too."""
    yield poller
    close_everything(poller)


def run_until(poller, condition, timeout=10.0, what="the condition"):
    """Run ``poller`` until ``condition()`` is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        poller.poll(0.02)


def open_fds():
    """The fds open in this process (Linux and macOS)."""
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            return {int(name) for name in os.listdir(path)}
    return set()


def close_everything(poller):
    """Close every channel, and those closing them made (TLS lingerers)."""
    for _ in range(10):
        channels = poller.channels()
        if not channels:
            return
        for channel in channels:
            channel.close()
    raise AssertionError(f"channels keep appearing: {poller.channels()}")


def digest(data):
    return hashlib.sha256(data).hexdigest()


class Peer(pike.Transport):
    """Records its callbacks and every plaintext byte it receives.

    ``echo``: write back what arrives. ``on_handshake``: called after the
    handshake with the peer itself.
    """

    echo = False

    def __init__(self, *args, **kwargs):
        self.events = []
        self.received = bytearray()
        self.failure = None
        self.on_handshake = None
        super().__init__(*args, **kwargs)

    def handle_connect(self):
        self.events.append("connect")

    def handle_tls_handshake(self):
        self.events.append("handshake")
        if self.on_handshake is not None:
            self.on_handshake(self)

    def handle_tls_failed(self, exc):
        self.events.append("tls_failed")
        self.failure = exc
        super().handle_tls_failed(exc)

    def handle_read(self):
        data = self.recv(65536)
        if data:
            self.received += data
            if self.echo:
                self.write(data)

    def handle_read_eof(self):
        self.events.append("read_eof")

    def handle_close(self):
        self.events.append("close")
        self.close()

    def handle_pause_writing(self):
        self.events.append("pause")

    def handle_resume_writing(self):
        self.events.append("resume")


class TLSListener(pike.Transport):
    """Accepts connections and wraps each in a server-side Peer with TLS."""

    def __init__(self, context, family=socket.AF_INET, peer_class=Peer, **tls_options):
        super().__init__()
        self.context = context
        self.peer_class = peer_class
        self.tls_options = tls_options
        self.peers = []
        self.create_socket(family, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0) if family == socket.AF_INET else ("::1", 0))
        self.listen(16)
        self.address = self.socket.getsockname()

    def handle_accepted(self, sock, addr):
        peer = self.peer_class(sock=sock)
        peer.echo = True
        self.peers.append(peer)
        peer.start_tls(self.context, server_side=True, **self.tls_options)


def tls_client(context, address, server_hostname="localhost", peer_class=Peer, **options):
    """A client Peer that starts TLS before it connects."""
    client = peer_class()
    client.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    client.start_tls(context, server_hostname=server_hostname, **options)
    client.connect(address)
    return client
