"""Servers lose nothing when a client half-closes (the ``nc -N`` pattern).

A client sends a large request, shuts down its sending side at once and
reads until EOF. pike's echo connection (what ``python -m pike echo``
serves) and a Chat line echo must send back every byte before they close:
checked by length and SHA-256, over Unix sockets (where the kernel's small
buffers exposed the truncation) and TCP, on every poller x implementation.
"""

import hashlib
import os
import socket
import tempfile
import threading

import pytest

from pike.chat import Chat
from pike.server.echo import EchoConnection
from pike.server.listener import Listener
from pike.testing import run_until

FAMILIES = ["unix", "tcp"]


class LineEcho(Chat):
    """Echoes each CRLF-terminated line, through Chat's producer FIFO."""

    def __init__(self, alternate_poller=None, sock=None):
        super().__init__(alternate_poller, sock)
        self.set_terminator(b"\r\n")
        self._pieces = []

    def collect_incoming_data(self, data):
        self._pieces.append(data)

    def found_terminator(self):
        line = b"".join(self._pieces)
        self._pieces.clear()
        self.push(line + b"\r\n")


def _address(family, stack_dir):
    if family == "unix":
        return os.path.join(stack_dir, "echo.sock")
    return ("127.0.0.1", 0)


def _half_closing_client(address, payload, result):
    """Send ``payload``, shut down writing, read until EOF (in a thread)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    got = bytearray()
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.connect(address)
            sender = threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)))
            sender.start()
            # Read only once the request is out (or stuck): the server then
            # sees the EOF with its answer still queued, the losing case.
            sender.join(0.5)
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
            sender.join(20)
    except OSError as exc:
        result["error"] = exc
    result["data"] = bytes(got)


def _lines(size):
    line = b"x" * 1000 + b"\r\n"
    count = size // len(line)
    return b"".join(b"%06d" % i + line for i in range(count))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "factory, payload",
    [(EchoConnection, os.urandom(4 << 20)), (EchoConnection, os.urandom(150_000)), (LineEcho, _lines(2 << 20)), (LineEcho, _lines(150_000))],
    ids=["echo-4MiB", "echo-150kB", "chat-2MiB", "chat-150kB"],
)
def test_every_byte_comes_back_after_a_half_close(poller, family, factory, payload):
    with tempfile.TemporaryDirectory(prefix="pike-eof-") as directory:
        listener = Listener(factory, _address(family, directory), poller=poller)
        try:
            result = {}
            client = threading.Thread(
                target=_half_closing_client, args=(listener.address, payload, result)
            )
            client.start()
            try:
                run_until(poller, lambda: not client.is_alive(), timeout=40, what="the client")
            finally:
                client.join(5)
            assert "error" not in result, result.get("error")
            got = result["data"]
            assert len(got) == len(payload), f"{len(payload) - len(got)} bytes lost"
            assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
            run_until(poller, lambda: not listener.connections, what="the server side to close")
        finally:
            listener.close()
