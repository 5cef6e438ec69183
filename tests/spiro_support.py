"""Helpers shared by the pike.spiro tests: raw sockets that speak the wire
protocol by hand, and the command line run in a subprocess."""

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time

from pike.spiro import protocol

KEY = b"test key, not secret"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return data
        data += chunk
    return data


def recv_frame(sock):
    (size,) = struct.unpack(">I", recv_exact(sock, 4))
    return recv_exact(sock, size)


def open_raw(address, source=None):
    """A plain socket to a server that has read the server's hello: (sock, hello)."""
    sock = socket.create_connection(address, timeout=5, source_address=source)
    hello = recv_frame(sock)
    assert hello.startswith(protocol.MAGIC)
    return sock, hello


def authenticate_raw(sock, hello, key=KEY):
    """Finish the handshake that ``hello`` began, by hand."""
    server_nonce = hello[len(protocol.MAGIC):]
    client_nonce = os.urandom(32)
    proof = protocol.mac(key, b"client", server_nonce, client_nonce)
    sock.sendall(protocol.frame(protocol.MAGIC + proof + client_nonce))
    reply = recv_frame(sock)
    assert reply == b"OK" + protocol.mac(key, b"server", server_nonce, client_nonce)


def raw_connect(address, authenticate=True, key=KEY, source=None):
    """A plain socket to a server, past the handshake when asked."""
    sock, hello = open_raw(address, source)
    if authenticate:
        authenticate_raw(sock, hello, key)
    return sock


def closed_by_peer(sock, timeout=5.0):
    """True when the peer closes ``sock`` within ``timeout`` (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def child_env(**extra):
    """The environment for a pike subprocess: this checkout, no key set."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PIKE_SPIRO_AUTHKEY", None)
    env.update(extra)
    return env


def spiro_cli(*args, env=None, **kwargs):
    """``python -m pike spiro ARGS`` in a subprocess (text mode)."""
    return subprocess.Popen([sys.executable, "-m", "pike", "spiro", *args],
                            env=env or child_env(), text=True, **kwargs)


def key_file(directory, key=KEY, mode=0o600):
    path = directory / "spiro.key"
    path.write_bytes(key + b"\n")
    path.chmod(mode)
    return path


def start_server(tmp_path, *args, preexec_fn=None):
    """A ``spiro serve`` subprocess on 127.0.0.1; returns (process, (host, port))."""
    server = spiro_cli("serve", "--port", "0", "--authkey-file", str(key_file(tmp_path)),
                       *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       preexec_fn=preexec_fn)
    line = server.stdout.readline()
    if not line.startswith("spiro: listening on"):
        stop(server)
        raise AssertionError(f"the server did not start: {line!r} {server.stderr.read()!r}")
    host, port = line.split()[-1].rsplit(":", 1)
    return server, (host, int(port))


def stop(process, timeout=10):
    """Terminate a subprocess and wait for it; returns its stderr text."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)
    err = process.stderr.read() if process.stderr else ""
    for stream in (process.stdout, process.stderr, process.stdin):
        if stream is not None:
            stream.close()
    return err


class FakeServer:
    """A SPIRO server played by hand in a thread, holding the key: it
    authenticates one client, reads one request, answers it with ``reply``
    (a frame body) and waits for the client to hang up."""

    def __init__(self, reply, key=KEY):
        self.reply = reply
        self.key = key
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.request = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.listener.settimeout(20)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(20)
            nonce = os.urandom(32)
            conn.sendall(protocol.frame(protocol.MAGIC + nonce))
            hello = recv_frame(conn)
            client_nonce = hello[len(protocol.MAGIC) + protocol.MAC_SIZE:]
            conn.sendall(protocol.frame(b"OK" + protocol.mac(self.key, b"server", nonce,
                                                             client_nonce)))
            self.request = recv_frame(conn)
            conn.sendall(protocol.frame(self.reply))
            closed_by_peer(conn, timeout=20)

    def close(self):
        self.listener.close()
        self.thread.join(30)


@contextlib.contextmanager
def serving(**kwargs):
    """A started SpiroServer on 127.0.0.1 with the test key; on exit it is
    closed and every thread it started must be gone."""
    from pike import spiro

    threads_before = threading.active_count()
    kwargs.setdefault("authkey", KEY)
    srv = spiro.SpiroServer(**kwargs).start()
    try:
        yield srv
    finally:
        srv.close()
    assert wait_until(lambda: threading.active_count() <= threads_before), threading.enumerate()
