"""TLS on Transport: the handshake, plaintext I/O, the end of a session and
its failures, over every poller x implementation."""

import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

import pike
from pike.tls import DEFAULT_HANDSHAKE_TIMEOUT, TLSHandshakeTimeout

from tls_support import (  # noqa: F401 (certs and poller are fixtures)
    Peer, TLSListener, certs, close_everything, digest, poller, run_until, tls_client,
)


def _echo_once(poller, certs, payload, **client_options):
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address, **client_options)
    client.write(payload)
    run_until(poller, lambda: len(client.received) >= len(payload), what="the echo")
    return server, client


# -- the handshake and plaintext I/O ----------------------------------------


def test_handshake_reports_what_was_agreed(poller, certs):
    server = TLSListener(certs.server_context(alpn=["pike/1", "h2"]))
    client = tls_client(certs.client_context(alpn=["pike/1"]), server.address)
    run_until(poller, lambda: server.peers and "handshake" in server.peers[0].events
              and "handshake" in client.events, what="both handshakes")
    peer = server.peers[0]
    assert client.events == ["connect", "handshake"]
    assert client.tls.alpn_protocol == peer.tls.alpn_protocol == "pike/1"
    assert client.tls.server_name == "localhost"
    assert peer.tls.server_name == "localhost"
    assert client.tls.cipher == peer.tls.cipher and client.tls.cipher[0]
    assert client.tls.version in ("TLSv1.2", "TLSv1.3")
    cert = client.tls.peer_certificate()
    assert ("DNS", "localhost") in cert["subjectAltName"]
    assert peer.tls.peer_certificate() is None  # no client certificate asked
    client.close()


def test_data_written_before_the_handshake_arrives_intact(poller, certs):
    payload = os.urandom(300_000)
    server, client = _echo_once(poller, certs, payload)
    assert digest(client.received) == digest(payload)
    assert digest(server.peers[0].received) == digest(payload)
    client.close()


def test_stream_checksum_with_small_water_marks(poller, certs):
    """Megabytes each way, in pieces, with flow control: nothing lost."""
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address)
    client.set_write_buffer_limits(high=32 * 1024)
    chunks = [os.urandom(size) for size in (1, 100, 16384, 16385, 70000, 500_000)] * 4
    sent = b"".join(chunks)
    for chunk in chunks:
        client.write(chunk)
    assert client.is_writing_paused()  # the plaintext waiting counts
    run_until(poller, lambda: len(client.received) >= len(sent), timeout=30, what="the echo")
    assert digest(client.received) == digest(sent)
    assert "pause" in client.events and "resume" in client.events
    assert client.get_write_buffer_size() == 0
    client.close()


def test_send_takes_data_in_order(poller, certs):
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address)
    run_until(poller, lambda: "handshake" in client.events, what="the handshake")
    payload = os.urandom(200_000)
    offset = 0
    deadline = time.monotonic() + 20
    while offset < len(payload):
        assert time.monotonic() < deadline
        offset += client.send(payload[offset:])
        poller.poll(0.01)
    run_until(poller, lambda: len(client.received) >= len(payload), what="the echo")
    assert bytes(client.received) == payload
    client.close()


def test_starttls_on_a_connected_pair(poller, certs):
    """STARTTLS: plaintext first, then both ends switch; order is kept."""
    a, b = socket.socketpair()
    client, server = Peer(sock=a), Peer(sock=b)
    client.write(b"plain hello\n")
    run_until(poller, lambda: server.received == b"plain hello\n", what="the plaintext")
    server.start_tls(certs.server_context(), server_side=True)
    client.start_tls(certs.client_context(), server_hostname="localhost")
    client.write(b"secret")
    server.echo = True
    run_until(poller, lambda: client.received == b"secret", what="the echo")
    assert server.received == b"plain hello\nsecret"
    client.close()
    run_until(poller, lambda: server.closed, what="the server's close")
    assert server.events == ["handshake", "read_eof", "close"]
    assert not server.tls.ragged_eof


def test_start_tls_twice_or_on_a_listener_is_refused(poller, certs):
    server = TLSListener(certs.server_context())
    with pytest.raises(RuntimeError):
        server.start_tls(certs.server_context(), server_side=True)
    client = tls_client(certs.client_context(), server.address)
    with pytest.raises(RuntimeError):
        client.start_tls(certs.client_context())
    with pytest.raises(TypeError):
        Peer().start_tls(object())
    udp = Peer()
    udp.create_socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(ValueError):
        udp.start_tls(certs.client_context())
    udp.close()
    client.close()


def test_a_transport_without_tls_runs_its_own_methods(poller, certs):
    """The hot path without TLS is untouched: nothing on the instance."""
    a, b = socket.socketpair()
    plain, tls = Peer(sock=a), Peer(sock=b)
    swapped = {"recv", "send", "write", "writelines", "handle_read_event"}
    assert not swapped & set(vars(plain)) and plain._plain_read_event
    tls.start_tls(certs.server_context(), server_side=True)
    assert swapped <= set(vars(tls)) and not tls._plain_read_event
    plain.close()
    tls.abort()


def test_default_handshake_timeout_is_asyncios():
    assert DEFAULT_HANDSHAKE_TIMEOUT == 60.0


# -- the end of a session -----------------------------------------------------


def test_close_notify_is_the_peers_eof(poller, certs):
    server, client = _echo_once(poller, certs, b"x" * 1000)
    client.write(os.urandom(400_000))  # still queued when close() runs
    client.close()
    peer = server.peers[0]
    run_until(poller, lambda: peer.closed, what="the server's close")
    assert len(peer.received) == 401_000  # close() sent the queued records first
    assert peer.events[-2:] == ["read_eof", "close"]
    assert not peer.tls.ragged_eof
    run_until(poller, lambda: len(poller.channels()) == 1, what="the lingering close")


def test_data_queued_before_the_peers_close_notify_is_sent(poller, certs):
    """The EOF contract under TLS: the reply queued when close_notify comes
    still goes out, then handle_close."""
    reply = os.urandom(3_000_000)

    class Replier(Peer):
        def handle_read(self):
            data = self.recv(65536)
            self.received += data
            if data and self.received == b"ask":
                self.write(reply)

    server = TLSListener(certs.server_context(), peer_class=Replier)
    client = tls_client(certs.client_context(), server.address)
    client.half_close = True
    client.handle_eof = lambda: client.events.append("eof")
    client.write(b"ask")
    client.write_eof()  # close_notify, then our side shuts
    run_until(poller, lambda: len(client.received) >= len(reply), timeout=30, what="the reply")
    assert digest(client.received) == digest(reply)
    peer = server.peers[0]
    run_until(poller, lambda: peer.closed and client.closed, what="both closes")
    assert peer.events == ["handshake", "read_eof", "close"]
    flow = [e for e in client.events if e not in ("pause", "resume")]
    assert flow == ["connect", "handshake", "read_eof", "eof", "close"]


def test_close_when_done_sends_everything(poller, certs):
    server = TLSListener(certs.server_context())
    server_peers = server.peers
    client = tls_client(certs.client_context(), server.address)
    payload = os.urandom(1_000_000)
    client.write(payload)
    client.close_when_done()  # before the handshake even finished
    with pytest.raises(RuntimeError):
        client.write(b"late")
    run_until(poller, lambda: server_peers and server_peers[0].closed, what="the server's close")
    assert digest(server_peers[0].received) == digest(payload)
    assert not server_peers[0].tls.ragged_eof


def test_peer_closing_without_close_notify(poller, certs):
    """A bare TCP EOF after the data: delivered, then EOF; flagged ragged."""
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address)
    client.write(b"ping")
    run_until(poller, lambda: client.received == b"ping", what="the echo")
    peer = server.peers[0]
    peer.socket.shutdown(socket.SHUT_WR)  # TCP FIN, no close_notify
    run_until(poller, lambda: client.closed, what="the client's close")
    assert client.tls.ragged_eof
    assert client.events[-2:] == ["read_eof", "close"]
    assert client.tls.error is None


def test_abort_sends_no_close_notify(poller, certs):
    server, client = _echo_once(poller, certs, b"hello")
    client.abort()
    peer = server.peers[0]
    run_until(poller, lambda: peer.closed, what="the server's close")
    assert peer.tls.ragged_eof
    assert peer.received == b"hello"


def test_reset_mid_stream(poller, certs):
    """A reset: the server closes, a second connection is unharmed."""
    server = TLSListener(certs.server_context())
    doomed = tls_client(certs.client_context(), server.address)
    healthy = tls_client(certs.client_context(), server.address)
    doomed.write(os.urandom(100_000))
    run_until(poller, lambda: len(server.peers) == 2 and len(doomed.received) > 1000,
              what="the traffic")
    doomed.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    doomed.abort()  # RST
    run_until(poller, lambda: any(p.closed for p in server.peers), what="the server's close")
    payload = os.urandom(50_000)
    healthy.write(payload)
    run_until(poller, lambda: len(healthy.received) >= len(payload), what="the healthy echo")
    assert bytes(healthy.received) == payload
    healthy.close()


# -- failures -----------------------------------------------------------------


def _healthy_echo(poller, certs, server):
    """A TLS connection made and checked after a failure: the loop is fine."""
    client = tls_client(certs.client_context(), server.address)
    client.write(b"still fine")
    run_until(poller, lambda: client.received == b"still fine", what="the healthy echo")
    client.close()


def test_handshake_timeout(poller, certs):
    server = TLSListener(certs.server_context(), handshake_timeout=0.2)
    silent = socket.create_connection(server.address)
    try:
        run_until(poller, lambda: server.peers and server.peers[0].closed, what="the timeout")
        peer = server.peers[0]
        assert isinstance(peer.failure, TLSHandshakeTimeout)
        assert peer.events == ["tls_failed"]
        silent.settimeout(5)
        assert silent.recv(100) == b""  # closed on us
    finally:
        silent.close()
    _healthy_echo(poller, certs, server)


@pytest.mark.parametrize("junk", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 8])
def test_plaintext_or_garbage_to_a_tls_server(poller, certs, caplog, junk):
    server = TLSListener(certs.server_context())
    raw = socket.create_connection(server.address)
    try:
        with caplog.at_level(logging.WARNING, logger="pike"):
            raw.sendall(junk)
            run_until(poller, lambda: server.peers and server.peers[0].closed,
                      what="the clean close")
        peer = server.peers[0]
        assert isinstance(peer.failure, ssl.SSLError)
        assert peer.events == ["tls_failed"]
        failures = [r for r in caplog.records if "TLS failed" in r.getMessage()]
        assert len(failures) == 1
        raw.settimeout(5)
        try:
            rest = raw.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert b"HTTP" not in rest
    finally:
        raw.close()
    _healthy_echo(poller, certs, server)


def test_failed_certificate_verification(poller, certs):
    server = TLSListener(certs.server_context())
    stranger = ssl.create_default_context()  # does not trust the test CA
    client = tls_client(stranger, server.address)
    run_until(poller, lambda: client.closed, what="the client's failure")
    assert isinstance(client.failure, ssl.SSLCertVerificationError)
    assert client.tls.error is client.failure
    assert client.events == ["connect", "tls_failed"]
    run_until(poller, lambda: server.peers and server.peers[0].closed, what="the server's failure")
    assert isinstance(server.peers[0].failure, ssl.SSLError)
    _healthy_echo(poller, certs, server)


def test_wrong_host_name(poller, certs):
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address, server_hostname="elsewhere.test")
    run_until(poller, lambda: client.closed, what="the client's failure")
    assert isinstance(client.failure, ssl.SSLCertVerificationError)
    assert "elsewhere.test" in str(client.failure)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_renegotiation_attempt(poller, certs, tmp_path):
    """A TLS 1.2 client asks to renegotiate ('R' in s_client). The ssl
    module's contexts refuse (OP_NO_RENEGOTIATION), which ends the session
    cleanly; were it allowed, it would go on. Either way no data is lost or
    garbled and the loop goes on."""
    ctx = certs.server_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server = TLSListener(ctx)
    ca = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca))
    host, port = server.address
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-tls1_2", "-CAfile", str(ca),
         "-no_ign_eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        run_until(poller, lambda: server.peers and "handshake" in server.peers[0].events,
                  what="the handshake")
        peer = server.peers[0]
        # s_client reads a command only as a line of its own: one at a time.
        for line, expected in ((b"before\n", b"before\n"), (b"R\n", None),
                               (b"after\n", b"before\nafter\n")):
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except BrokenPipeError:
                break  # the server refused, and s_client is gone
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not peer.closed and (
                expected is None or len(peer.received) < len(expected)
            ):
                poller.poll(0.02)
        # Whichever way the server took it, no plaintext is lost or garbled,
        # and the command itself never arrives as data.
        assert peer.received == b"before\nafter\n" or (
            peer.closed and peer.received == b"before\n"
            and isinstance(peer.failure, ssl.SSLError)
        )
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        run_until(poller, lambda: peer.closed, what="the close")
    finally:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()
    _healthy_echo(poller, certs, server)


# -- the wire ---------------------------------------------------------------


class Relay(pike.Transport):
    """One half of a snooping relay: forwards to ``other`` and records."""

    def __init__(self, sock, wire):
        super().__init__(sock=sock)
        self.other = None
        self.wire = wire

    def handle_read(self):
        data = self.recv(65536)
        if data:
            self.wire.append(data)
            self.other.write(data)

    def handle_close(self):
        self.close()
        self.other.close_when_done()


def test_no_plaintext_reaches_the_wire_after_start_tls(poller, certs):
    """Client -> relay -> server over socket pairs; the relay keeps every
    byte it forwards. After start_tls nothing readable goes by."""
    c_end, r1 = socket.socketpair()
    r2, s_end = socket.socketpair()
    wire = []
    left, right = Relay(r1, wire), Relay(r2, wire)
    left.other, right.other = right, left
    client, server = Peer(sock=c_end), Peer(sock=s_end)
    client.write(b"STARTTLS\n")
    run_until(poller, lambda: server.received == b"STARTTLS\n", what="the plaintext")
    secret = b"TOP-SECRET-" * 1000
    client.start_tls(certs.client_context(), server_hostname="localhost")
    client.write(secret)  # before the handshake: waits, encrypted later
    server.start_tls(certs.server_context(), server_side=True)
    server.echo = True
    run_until(poller, lambda: len(client.received) >= len(secret), what="the echo")
    client.write(secret)
    run_until(poller, lambda: len(client.received) >= 2 * len(secret), what="the second echo")
    client.close()
    run_until(poller, lambda: server.closed, what="the close")
    seen = b"".join(wire)
    assert seen.startswith(b"STARTTLS\n")
    assert b"TOP-SECRET" not in seen
    assert len(seen) > 4 * len(secret)  # the secret did cross, encrypted


# -- both implementations behave the same ----------------------------------


def _exchange(poller, certs):
    """One scripted exchange; what the client saw, in order."""
    a, b = socket.socketpair()
    client, server = Peer(sock=a), Peer(sock=b)
    server.echo = True
    server.start_tls(certs.server_context(), server_side=True)
    client.start_tls(certs.client_context(), server_hostname="localhost")
    pieces = [bytes([i]) * (i * 997) for i in range(1, 40)]
    for piece in pieces:
        client.write(piece)
    total = sum(map(len, pieces))
    run_until(poller, lambda: len(client.received) >= total, what="the echo")
    client.write_eof()
    run_until(poller, lambda: server.closed and client.closed, what="both closes")
    return client.events, server.events, bytes(client.received), bytes(server.received)


def test_c_and_python_behave_the_same(poller_name, certs):
    from pike import _impl

    if "c" not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    results = {}
    previous_impl = _impl.IMPLEMENTATION
    for name in ("python", "c"):
        _impl.select_implementation(name)
        p = pike.make_poller(poller_name)
        previous = pike.set_poller(p)
        try:
            results[name] = _exchange(p, certs)
        finally:
            pike.set_poller(previous)
            close_everything(p)
            p.close()
    _impl.select_implementation(previous_impl)
    assert results["python"] == results["c"]
    events = results["c"][0]
    assert "handshake" in events and events[-2:] == ["read_eof", "close"]


# -- flow control and buffers -----------------------------------------------


def test_paused_reading_keeps_decrypted_data_until_resumed(poller, certs):
    """Plaintext already decrypted when reading pauses is delivered after
    resume_reading, though the socket itself has nothing more to say."""

    class Slow(Peer):
        def handle_read(self):
            data = self.recv(1000)
            if data:
                self.received += data
                self.pause_reading()
                self.poller.call_later(0.001, self.resume_reading)

    server = TLSListener(certs.server_context(), peer_class=Slow)
    client = tls_client(certs.client_context(), server.address)
    payload = os.urandom(60_000)  # several records, read 1000 bytes at a time
    client.write(payload)
    run_until(poller, lambda: server.peers and len(server.peers[0].received) >= len(payload),
              what="every byte")
    assert bytes(server.peers[0].received) == payload
    client.close()


def test_discard_write_buffer(poller, certs):
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address)
    client.write(b"never sent")
    client.discard_write_buffer()  # before the handshake: just dropped
    assert client.get_write_buffer_size() == 0
    client.write(b"sent")
    run_until(poller, lambda: client.received == b"sent", what="the echo")
    assert server.peers[0].received == b"sent"
    client.set_write_buffer_limits(high=1024)
    client.write(os.urandom(8 * 1024 * 1024))  # more than the kernel takes at once
    assert client.get_write_buffer_size() > 0
    client.discard_write_buffer()  # records dropped: the session cannot go on
    assert client.closed
    run_until(poller, lambda: server.peers[0].closed, what="the server's end")


def test_close_on_a_closed_poller_leaks_nothing(poller_name, implementation, certs):
    from tls_support import open_fds

    before = open_fds()
    p = pike.make_poller(poller_name)
    a, b = socket.socketpair()
    client, server = Peer(p, sock=a), Peer(p, sock=b)
    server.start_tls(certs.server_context(), server_side=True)
    client.start_tls(certs.client_context(), server_hostname="localhost")
    run_until(p, lambda: "handshake" in client.events, what="the handshake")
    client.write(os.urandom(1_000_000))
    p.close()
    client.close()  # would linger, but the poller is gone: closed at once
    server.close()
    assert open_fds() - before == set()


def test_close_waits_a_bounded_time_for_a_silent_peer(poller, certs):
    """close() lingers for the peer's answer at most close_timeout."""
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address, close_timeout=0.2)
    run_until(poller, lambda: server.peers and "handshake" in server.peers[0].events
              and "handshake" in client.events, what="the handshakes")
    peer = server.peers[0]
    peer.pause_reading()  # hears nothing, answers nothing
    client.close()
    lingering = [c for c in poller.channels() if c not in (server, peer)]
    assert len(lingering) == 1 and not lingering[0].closed
    run_until(poller, lambda: lingering[0].closed, what="the deadline")
    assert set(poller.channels()) == {server, peer}


def test_write_eof_before_the_handshake(poller, certs):
    """write() then write_eof() while TLS is not up yet: the data, then
    close_notify; the client still reads the whole echo after it."""
    server = TLSListener(certs.server_context())
    client = tls_client(certs.client_context(), server.address)
    client.half_close = True
    client.handle_eof = lambda: client.events.append("eof")
    payload = os.urandom(100_000)
    client.write(payload)
    client.write_eof()
    client.write_eof()  # (a second call changes nothing)
    with pytest.raises(RuntimeError):
        client.write(b"late")
    run_until(poller, lambda: client.closed, what="the end of the exchange")
    peer = server.peers[0]
    assert bytes(peer.received) == payload and bytes(client.received) == payload
    assert peer.events == ["handshake", "read_eof", "close"]
    flow = [e for e in client.events if e not in ("pause", "resume")]
    assert flow == ["connect", "handshake", "read_eof", "eof", "close"]


class DataPeer(pike.Transport):
    """Delivers through handle_data; echoes when asked."""

    def __init__(self, *args, **kwargs):
        self.chunks = []
        self.echo = False
        super().__init__(*args, **kwargs)

    def handle_data(self, data):
        self.chunks.append(data)
        if self.echo:
            self.write(data)

    @property
    def received(self):
        return b"".join(self.chunks)


def test_handle_data_before_and_after_starttls(poller, certs):
    """The poller receives for a handle_data transport until start_tls;
    from then on the layer decrypts and handle_data gets plaintext."""
    a, b = socket.socketpair()
    client, server = DataPeer(sock=a), DataPeer(sock=b)
    assert server._receive_size > 0
    client.write(b"plain hello\n")
    run_until(poller, lambda: server.received == b"plain hello\n", what="the plaintext")
    server.start_tls(certs.server_context(), server_side=True)
    client.start_tls(certs.client_context(), server_hostname="localhost")
    assert server._receive_size == client._receive_size == 0
    payload = os.urandom(1024 * 1024)
    server.echo = True
    client.write(payload)
    run_until(poller, lambda: len(client.received) >= len(payload), what="the echo")
    assert digest(client.received) == digest(payload)
    assert digest(server.received) == digest(b"plain hello\n" + payload)
    client.close()
    run_until(poller, lambda: server.closed, what="the server's close")
