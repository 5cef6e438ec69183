"""The buffered write path of a Transport: queued buffers, sent in order.

Immutable ``bytes`` are queued as they are (no copy); anything mutable
(bytearray, memoryview, array...) is copied once, because the caller may
change it before it is sent. A partially sent head buffer is tracked by an
offset instead of being sliced. Several queued buffers leave in one
``sendmsg()`` gather write.
"""

from __future__ import annotations

import collections
import os
import socket

from .sendfile import FileSegment
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any, Deque, List, Union

    # What the queue holds: bytes, or a view of the head's unsent part.
    _Chunk = Union[bytes, memoryview]


def _iov_max() -> int:
    """The kernel refuses more iovecs than this in one call (1024 on Linux)."""
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        value = -1
    return value if value > 0 else 1024


_IOV_MAX = _iov_max()
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")


class WriteQueue:
    """Buffers waiting for the kernel, oldest first."""

    __slots__ = ("_buffers", "_offset", "size")

    def __init__(self) -> None:
        # bytes, and FileSegments (Transport.sendfile) in their place in line
        self._buffers: Deque[Any] = collections.deque()
        self._offset = 0  # bytes of _buffers[0] already sent
        self.size = 0  # bytes still queued

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: Any, start: int = 0) -> None:
        """Queue ``data[start:]`` (``start`` counts bytes). Empty data is ignored."""
        if type(data) is not bytes:
            # A byte view: an array of ints has len() in items, not bytes.
            data = memoryview(data).cast("B")[start:].tobytes()
            start = 0
        length = len(data) - start
        if length <= 0:
            return
        if not self._buffers:
            self._offset = start
        elif start:
            data = data[start:]
        self._buffers.append(data)
        self.size += length

    def append_file(self, segment: FileSegment) -> None:
        """Queue part of a file (see :mod:`pike.sendfile`) behind the rest."""
        if not self._buffers:
            self._offset = 0
        self._buffers.append(segment)
        self.size += segment.remaining

    def clear(self) -> None:
        """Drop everything queued; a file segment's request ends with an error."""
        segments = [b for b in self._buffers if type(b) is FileSegment]
        self._buffers.clear()
        self._offset = 0
        self.size = 0
        for segment in segments:
            segment.request._finish(BrokenPipeError("the write queue was dropped"))

    def send_to(self, sock: socket.socket) -> int:
        """Send as much as the socket takes now; return the bytes sent.

        Returns 0 when the socket would block; other OSErrors propagate.
        """
        buffers = self._buffers
        if not buffers:
            return 0
        if type(buffers[0]) is FileSegment:
            return self._send_file(sock)
        try:
            if len(buffers) == 1 or type(buffers[1]) is FileSegment or not _HAS_SENDMSG:
                head: _Chunk = buffers[0]
                if self._offset:
                    head = memoryview(head)[self._offset :]
                sent = sock.send(head)
            else:
                sent = sock.sendmsg(self._iovecs())
        except (BlockingIOError, InterruptedError):
            return 0
        self._consume(sent)
        return sent

    def _send_file(self, sock: socket.socket) -> int:
        segment = self._buffers[0]
        before = segment.remaining
        sent = segment.send_to(sock)
        self.size -= before - segment.remaining  # (all of it at the file's end)
        if not segment.remaining:
            self._buffers.popleft()
            segment.request._finish()
        return sent

    def _iovecs(self) -> List[_Chunk]:
        buffers = self._buffers
        count = min(len(buffers), _IOV_MAX)
        iovecs: List[_Chunk] = []
        for i in range(count):
            if type(buffers[i]) is FileSegment:
                break  # a file goes by itself, after the bytes before it
            iovecs.append(buffers[i])
        if self._offset:
            iovecs[0] = memoryview(iovecs[0])[self._offset :]
        return iovecs

    def _consume(self, sent: int) -> None:
        self.size -= sent
        buffers = self._buffers
        offset = self._offset + sent
        while buffers and offset >= len(buffers[0]):
            offset -= len(buffers.popleft())
        self._offset = offset if buffers else 0
