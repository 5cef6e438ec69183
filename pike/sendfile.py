"""Part of a file in a Transport's write queue, sent without a copy.

:meth:`pike.transport.Transport.sendfile` puts a :class:`FileSegment` in
the write queue, behind what was written before it and ahead of what is
written after: the queue sends it with ``os.sendfile`` (the kernel copies
from the page cache to the socket, no Python bytes in between) and falls
back to reads and sends where that is refused (``EINVAL``, ``ENOTSOCK``,
``ESPIPE``, ``EOPNOTSUPP``: a file object with no fd, a file system
without it, a platform without ``os.sendfile``). The segment's bytes count
in the transport's write buffer size, so the water marks and "everything
is sent" mean what they say.

Under TLS the segment does not enter the queue: the bytes must be
encrypted, so :class:`pike.tls.TLSLayer` reads it piece by piece
(:meth:`FileSegment.take`) as its records drain, and counts what was sent.

The :class:`SendfileRequest` that ``sendfile`` returns reports completion:
``add_done_callback(fn)`` is called with the request once the segment was
sent, or once the transport closed before that (``error`` then says why).
"""

from __future__ import annotations

import errno
import io
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    import socket
    from typing import Any, BinaryIO, Callable

__all__ = ["FileSegment", "SendfileRequest"]

# Bytes per os.sendfile call (or per read in the fallback): one call moves a
# lot, and a write event in between lets other channels run.
_CHUNK = 1 << 20
# The errnos that say "not with sendfile here": fall back to read + send.
_NO_SENDFILE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EINVAL", "ENOTSOCK", "ESPIPE", "EOPNOTSUPP", "ENOSYS", "ENOTSUP")
    if hasattr(errno, name)
)
_HAS_SENDFILE = hasattr(os, "sendfile")


class SendfileRequest:
    """One ``Transport.sendfile`` call: how far it got, and when it ended.

    ``count`` is what was asked for; ``sent`` what the socket took so far
    (less than ``count`` when the file was shorter); ``done`` turns true
    once it ended, ``error`` is None for success or the reason it was
    abandoned (the transport closed or broke first).
    """

    __slots__ = ("count", "sent", "done", "error", "_callbacks")

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent = 0
        self.done = False
        self.error: BaseException | None = None
        self._callbacks: list[Callable[[SendfileRequest], Any]] = []

    def add_done_callback(self, fn: Callable[[SendfileRequest], Any]) -> None:
        """Call ``fn(request)`` when the request ends (at once if it has)."""
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def _finish(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def __repr__(self) -> str:
        state = "done" if self.done else "pending"
        if self.error is not None:
            state = f"failed: {self.error!r}"
        return f"<SendfileRequest {self.sent}/{self.count} {state}>"


class FileSegment:
    """``count`` bytes of ``file`` from ``offset``, waiting in a write queue."""

    __slots__ = ("file", "fd", "offset", "remaining", "request", "_use_sendfile")

    def __init__(self, file: BinaryIO, offset: int, count: int, request: SendfileRequest) -> None:
        self.file = file
        self.fd = _fd_of(file)
        self.offset = offset
        self.remaining = count
        self.request = request
        self._use_sendfile = _HAS_SENDFILE and self.fd is not None

    def __len__(self) -> int:
        return self.remaining

    def send_to(self, sock: socket.socket) -> int:
        """Send what the socket takes now (at most one chunk); the bytes sent.

        0 when it would block. At the file's end the segment is over even
        if bytes were left (``remaining`` becomes 0). Other errors raise.
        """
        size = min(self.remaining, _CHUNK)
        sent = -1
        if self._use_sendfile:
            try:
                sent = os.sendfile(sock.fileno(), self.fd, self.offset, size)  # type: ignore[arg-type]
            except (BlockingIOError, InterruptedError):
                return 0
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE_ERRNOS:
                    raise
                self._use_sendfile = False  # and read + send below
        if sent < 0:
            data = self._read(size)
            if not data:
                sent = 0
            else:
                try:
                    sent = sock.send(data)
                except (BlockingIOError, InterruptedError):
                    return 0
        if sent == 0:
            # The file ended before ``count`` bytes: the request is over.
            self.remaining = 0
            return 0
        self.offset += sent
        self.remaining -= sent
        self.request.sent += sent
        return sent

    def take(self, size: int) -> bytes:
        """Read the next ``size`` bytes at most, and move past them.

        For a layer that must change the bytes before they are sent (TLS
        encrypts them): it sends what it makes of them itself. The file's
        position is not used (except by an object without an fd). b'' once
        the file ended, which ends the segment (``remaining`` becomes 0).
        ``request.sent`` is the layer's to count.
        """
        size = min(self.remaining, size)
        data = self._read(size) if size > 0 else b""
        if not data:
            self.remaining = 0
            return b""
        self.offset += len(data)
        self.remaining -= len(data)
        return data

    def _read(self, size: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, size, self.offset)
        self.file.seek(self.offset)
        return self.file.read(size)


def _fd_of(file: Any) -> int | None:
    try:
        return int(file.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def file_span(file: Any, offset: int, count: int | None) -> int:
    """How many bytes ``sendfile(file, offset, count)`` covers.

    ``count`` None means to the end of the file. Raises ValueError for a
    negative offset or count, an fd that is not a regular file (a pipe or a
    device: write() it instead), or a file object that cannot seek.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0 or None, not {count}")
    fd = _fd_of(file)
    if fd is not None:
        info = os.fstat(fd)
        if not _is_regular(info.st_mode):
            raise ValueError("sendfile needs a regular file; write() a pipe or a device")
        return max(info.st_size - offset, 0) if count is None else count
    if count is not None:
        return count
    try:
        end = file.seek(0, io.SEEK_END)
    except (AttributeError, OSError, ValueError) as exc:
        raise ValueError(f"sendfile needs a seekable file, not {file!r}") from exc
    return max(end - offset, 0)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
