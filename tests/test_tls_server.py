"""TLS in pike.server (Listener, TCPServer, the echo command) and Chat."""

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import pike
from pike.chat import Chat, simple_producer
from pike.server import Listener
from pike.server.echo import EchoConnection
from pike.server.socketserver import StreamRequestHandler, TCPServer

from tls_support import (  # noqa: F401 (certs and poller are fixtures)
    Peer, certs, digest, poller, run_until, tls_client,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def pem_files(certs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pem")
    cert, key, ca = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    certs.server_cert.cert_chain_pems[0].write_to_path(str(cert))
    for extra in certs.server_cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    certs.server_cert.private_key_pem.write_to_path(str(key))
    certs.ca.cert_pem.write_to_path(str(ca))
    return str(cert), str(key), str(ca)


def test_listener_with_an_ssl_context(poller, certs):
    listener = Listener(EchoConnection, ("127.0.0.1", 0), poller=poller,
                        ssl_context=certs.server_context())
    clients = [tls_client(certs.client_context(), listener.address) for _ in range(5)]
    payloads = [os.urandom(50_000 * (i + 1)) for i in range(5)]
    for client, payload in zip(clients, payloads):
        client.write(payload)
    run_until(poller, lambda: all(len(c.received) >= len(p) for c, p in zip(clients, payloads)),
              timeout=30, what="every echo")
    for client, payload in zip(clients, payloads):
        assert digest(client.received) == digest(payload)
    assert all(c.tls is not None and c.tls.handshake_done for c in listener.connections)
    listener.shutdown(2.0)
    run_until(poller, lambda: listener.closed, what="the graceful shutdown")
    run_until(poller, lambda: all(c.closed for c in clients), what="the clients' ends")
    assert all(not c.tls.ragged_eof for c in clients)


def test_listener_rejects_a_non_context(poller):
    with pytest.raises(TypeError):
        Listener(EchoConnection, ("127.0.0.1", 0), poller=poller, ssl_context="cert.pem")


def test_listener_handshake_timeout_setting(poller, certs):
    listener = Listener(EchoConnection, ("127.0.0.1", 0), poller=poller,
                        ssl_context=certs.server_context(), ssl_handshake_timeout=0.2)
    silent = socket.create_connection(listener.address)
    try:
        run_until(poller, lambda: listener.accepted_total == 1 and not listener.connections,
                  what="the timeout")
    finally:
        silent.close()
    listener.close()


class LineHandler(StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(b"got " + line)


def test_tcpserver_with_an_ssl_context(certs):
    server = TCPServer(("127.0.0.1", 0), LineHandler, ssl_context=certs.server_context())
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        raw = socket.create_connection(server.server_address, timeout=TIMEOUT)
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"hello\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                reply += chunk
        assert reply == b"got hello\n"
    finally:
        thread.join(TIMEOUT)
        server.server_close()
    assert not thread.is_alive()


def test_tcpserver_rejects_a_non_context():
    with pytest.raises(TypeError):
        TCPServer(("127.0.0.1", 0), LineHandler, ssl_context=object())


# -- Chat over TLS ------------------------------------------------------------


class LineEcho(Chat):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = []
        self.set_terminator(b"\n")

    def collect_incoming_data(self, data):
        self.buffer.append(data)

    def found_terminator(self):
        line = b"".join(self.buffer)
        self.buffer = []
        self.push(line.upper() + b"\n")


class LineClient(Chat):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = []
        self.lines = []
        self.closed_seen = False
        self.set_terminator(b"\n")

    def collect_incoming_data(self, data):
        self.buffer.append(data)

    def found_terminator(self):
        self.lines.append(b"".join(self.buffer))
        self.buffer = []

    def handle_close(self):
        self.closed_seen = True
        self.close()


def test_chat_over_tls(poller, certs):
    listener = Listener(LineEcho, ("127.0.0.1", 0), poller=poller,
                        ssl_context=certs.server_context())
    client = LineClient()
    client.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    client.start_tls(certs.client_context(), server_hostname="localhost")
    client.connect(listener.address)
    lines = [b"line %d " % i + b"x" * (i * 37) for i in range(300)]
    for line in lines:
        client.push(line + b"\n")
    client.push_with_producer(simple_producer(b"from a producer\n", buffer_size=5))
    run_until(poller, lambda: len(client.lines) == len(lines) + 1, what="every line")
    assert client.lines[:-1] == [line.upper() for line in lines]
    assert client.lines[-1] == b"FROM A PRODUCER"
    client.close_when_done()
    run_until(poller, lambda: client.closed and not listener.connections, what="the close")
    listener.close()


# -- the echo command ---------------------------------------------------------


def _echo_process(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "pike.server.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )


def test_echo_command_serves_tls(pem_files, certs):
    cert, key, _ = pem_files
    proc = _echo_process("--tls-cert", cert, "--tls-key", key)
    try:
        line = proc.stdout.readline()
        match = re.match(r"listening on tcp (\S+):(\d+) with TLS", line)
        assert match, line + proc.stderr.read() if not line else line
        address = (match.group(1), int(match.group(2)))
        raw = socket.create_connection(address, timeout=TIMEOUT)
        with certs.client_context().wrap_socket(raw, server_hostname="localhost") as conn:
            payload = os.urandom(200_000)
            conn.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = conn.recv(65536)
                assert chunk
                got += chunk
            assert got == payload
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("options, message", [
    (["--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
    (["--tls-cert", "/nonexistent/cert.pem"], "cannot use the TLS certificate"),
])
def test_echo_command_tls_errors(options, message):
    proc = _echo_process(*options)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
    assert proc.returncode == 2
    assert message in err


def test_plaintext_client_of_a_tls_listener_is_closed(poller, certs, caplog):
    listener = Listener(EchoConnection, ("127.0.0.1", 0), poller=poller,
                        ssl_context=certs.server_context())
    raw = socket.create_connection(listener.address)
    try:
        raw.sendall(b"hello, plain\n")
        run_until(poller, lambda: listener.accepted_total == 1 and not listener.connections,
                  what="the clean close")
    finally:
        raw.close()
    good = tls_client(certs.client_context(), listener.address, peer_class=Peer)
    good.write(b"fine")
    run_until(poller, lambda: good.received == b"fine", what="the echo")
    good.close()
    listener.close()
    assert isinstance(ssl.SSLError("x"), OSError)  # (what the CLI relies on)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_chat_close_when_done_before_the_handshake(poller, certs, version):
    """Pushed and close_when_done() before TLS is up: all of it arrives,
    then the close. (The server answers nothing, and with TLS 1.2 no
    record at all follows the handshake to wake the client: the layer's
    write notification must.)"""
    listener = Listener(Peer, ("127.0.0.1", 0), poller=poller,
                        ssl_context=certs.server_context())
    context = certs.client_context()
    context.maximum_version = getattr(ssl.TLSVersion, version)
    client = LineClient()
    client.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    client.start_tls(context, server_hostname="localhost")
    client.connect(listener.address)
    client.push(b"only line\n")
    client.close_when_done()
    run_until(poller, lambda: client.closed, what="the client's close")
    run_until(poller, lambda: listener.accepted_total == 1 and not listener.connections,
              what="the server's close")
    listener.close()
