"""Real connections for checks: families, loopback pairs, a peer reader.

Only loopback addresses (127.0.0.1, ::1) and Unix sockets in a private
temporary directory are used: network traffic never leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile

from .registry import DEFAULT_TIMEOUT, CheckSkipped

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only
    pass


AF_INET = socket.AF_INET
AF_INET6 = getattr(socket, "AF_INET6", None)
AF_UNIX = getattr(socket, "AF_UNIX", None)
SOCK_STREAM = socket.SOCK_STREAM
SOCK_DGRAM = socket.SOCK_DGRAM

_LOOPBACK: dict = {AF_INET: "127.0.0.1"}
if AF_INET6 is not None:
    _LOOPBACK[AF_INET6] = "::1"


def has_family(family: int | None) -> bool:
    """True when stream sockets of ``family`` work on the loopback here.

    ``AF_INET6`` needs ``::1`` to be bindable; ``AF_UNIX`` needs the
    platform to have Unix sockets.
    """
    if family is None:
        return False
    if family == AF_UNIX:
        return True
    host = _LOOPBACK.get(family)
    if host is None:
        return False
    try:
        with socket.socket(family, SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


def _require_family(family):
    if not has_family(family):
        raise CheckSkipped(f"address family {family!r} is not available here")


def _family_name(family):
    try:
        return socket.AddressFamily(family).name
    except ValueError:
        return str(family)


def _unix_path():
    """A fresh path for a Unix socket, and the private directory it lives in."""
    base = None
    for candidate in (tempfile.gettempdir(), "/tmp"):
        if len(candidate) < 60 and os.path.isdir(candidate):
            base = candidate
            break
    directory = tempfile.mkdtemp(prefix="pike-", dir=base)
    return os.path.join(directory, "s"), directory


def _listening_socket(family, backlog=16):
    """A plain listening socket on the loopback: ``(sock, address, cleanup)``."""
    _require_family(family)
    if family == AF_UNIX:
        path, directory = _unix_path()
        sock = socket.socket(AF_UNIX, SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return sock, path, lambda: shutil.rmtree(directory, ignore_errors=True)
    sock = socket.socket(family, SOCK_STREAM)
    try:
        sock.bind((_LOOPBACK[family], 0))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock, sock.getsockname(), lambda: None


def socket_pair(family: int = AF_INET, timeout: float = DEFAULT_TIMEOUT) -> tuple[socket.socket, socket.socket]:
    """Two connected plain stream sockets of ``family`` (blocking, with a timeout).

    TCP pairs go over the loopback address; ``AF_UNIX`` uses
    :func:`socket.socketpair`.

    :raises CheckSkipped: when ``family`` is not available.
    """
    if family == AF_UNIX:
        a, b = socket.socketpair(AF_UNIX, SOCK_STREAM)
    else:
        lsock, address, cleanup = _listening_socket(family, 1)
        try:
            a = socket.socket(family, SOCK_STREAM)
            try:
                a.settimeout(timeout)
                a.connect(address)
                lsock.settimeout(timeout)
                b, _ = lsock.accept()
            except BaseException:
                a.close()
                raise
        finally:
            lsock.close()
            cleanup()
    a.settimeout(timeout)
    b.settimeout(timeout)
    return a, b


def _closed_port():
    """A loopback TCP port that nothing listens on (it was just freed)."""
    with socket.socket(AF_INET, SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _reset(sock):
    """Close ``sock`` so that the peer gets a TCP reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class PeerReader:
    """Reads a plain peer socket without blocking, from inside a wait.

    Meant as a :func:`run_until` predicate::

        reader = PeerReader(peer)
        run_until(poller, lambda: reader.pump() and len(reader.data) == n)

    ``data`` holds all bytes read so far and ``eof`` turns true once the
    other side shut down its sending direction.
    """

    def __init__(self, sock, bufsize=262144):
        self.sock = sock
        self.bufsize = bufsize
        self.data = bytearray()
        self.eof = False

    def pump(self) -> bool:
        """Read everything available now; always return True.

        The constant result lets it lead an ``and`` chain in a predicate;
        :meth:`pump_until_eof` is the predicate for "until EOF".
        """
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            while not self.eof:
                try:
                    chunk = self.sock.recv(self.bufsize)
                except (BlockingIOError, InterruptedError):
                    break
                if not chunk:
                    self.eof = True
                    break
                self.data += chunk
        finally:
            self.sock.settimeout(timeout)
        return True

    def pump_until_eof(self) -> bool:
        """Read everything available now; return True once EOF was seen."""
        self.pump()
        return self.eof
