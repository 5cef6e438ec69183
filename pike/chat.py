"""Chat: asynchat-style framing and producers on a :class:`~pike.transport.Transport`.

A :class:`Chat` splits its input into frames with a terminator and writes
its output from a first-in, first-out queue of *producers*, exactly as an
``asynchat.async_chat`` channel does. Subclass it and define
:meth:`~Chat.collect_incoming_data` and :meth:`~Chat.found_terminator`::

    class LineEcho(Chat):
        def __init__(self, alternate_poller=None, sock=None):
            super().__init__(alternate_poller, sock)
            self.lines = []
            self.set_terminator(b"\\r\\n")

        def collect_incoming_data(self, data):
            self.lines.append(data)

        def found_terminator(self):
            line = b"".join(self.lines)
            self.lines.clear()
            self.push(line + b"\\r\\n")

Input is framed by a :class:`pike.framing.Framer`, which does no I/O and
never searches the same bytes twice. Output goes through the Transport's
buffered write path: producers are asked for data only while the write
buffer is under its high water mark, so a producer of gigabytes never sits
in memory at once, and what several producers (or several :meth:`Chat.push`
calls made while a read is being framed) hand over leaves in one gather
write.

Differences from ``asynchat`` that a caller can see, all deliberate:

* A frame that ends in a ``bytes`` terminator is limited to
  :attr:`Chat.max_frame_size` bytes (1 MiB by default): a peer that never
  sends the terminator gets :meth:`Chat.handle_frame_too_large`, which by
  default logs an error and closes the connection.
* At the peer's EOF the few bytes held back as a possible start of the
  terminator are handed to :meth:`Chat.collect_incoming_data` before
  :meth:`~pike.transport.Transport.handle_close` runs: no received byte is
  lost.
* :meth:`Chat.push` copies a ``bytearray`` or ``memoryview`` at once (the
  caller may reuse it); a ``str`` raises TypeError, as does a ``str``
  terminator.
* Once the connection is closed no further frame is delivered from input
  that was already buffered, and the producer FIFO is emptied.
"""

from __future__ import annotations

import collections
import logging

from .framing import DEFAULT_MAX_FRAME_SIZE, END, FrameTooLarge, Framer
from .transport import Transport

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    import socket
    from typing import Deque, Protocol, Union

    from .poller import Poller

    BytesLike = Union[bytes, bytearray, memoryview]

    class Producer(Protocol):
        """What push_with_producer takes: more() gives bytes, b"" at the end."""

        def more(self) -> bytes: ...

__all__ = ["Chat", "simple_producer", "FrameTooLarge"]

logger = logging.getLogger("pike")

_BYTES_LIKE = (bytes, bytearray, memoryview)


class simple_producer:  # noqa: N801 - the asynchat name
    """A producer of ``data`` in pieces of at most ``buffer_size`` bytes.

    :meth:`more` returns the next piece, and ``b""`` once all was produced;
    :attr:`data` is what is left. ``data`` is any bytes-like object; a
    mutable one is copied. (The one producer class: ``asynchat``'s drop-in
    in :mod:`pike.compat.asynchat` is this class, also taking ``str``.)
    """

    __slots__ = ("_data", "buffer_size", "_offset")

    def __init__(self, data: BytesLike, buffer_size: int = 512) -> None:
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError(
                f"data must be a bytes-like object, not {type(data).__name__}"
            )
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be positive, not {buffer_size}")
        self._data = bytes(data)
        self.buffer_size = buffer_size
        self._offset = 0

    @property
    def data(self) -> bytes:
        """What has not been produced yet."""
        start = self._offset
        return self._data[start:] if start else self._data

    @data.setter
    def data(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def more(self) -> bytes:
        """The next piece of the data, or an empty one at the end."""
        start = self._offset
        data = self._data
        if start == 0 and len(data) <= self.buffer_size:
            self._offset = len(data)
            return data
        end = start + self.buffer_size
        self._offset = min(end, len(data))
        return data[start:end]


class Chat(Transport):
    """A Transport with asynchat's terminators and producer FIFO.

    ``Chat(alternate_poller=None, sock=None)``, as :class:`Transport`.
    The terminator starts as None (all input is data).

    Subclasses define :meth:`collect_incoming_data` and
    :meth:`found_terminator`. Input arrives through :meth:`handle_data`,
    received by the transport (by the poller, in batches, where it can). A
    subclass that overrides :meth:`handle_read`, :meth:`handle_data`,
    :meth:`handle_write` or :meth:`handle_resume_writing` must call the
    base method, which frames input and feeds the producers to the socket.
    """

    #: The most bytes one read receives (see :attr:`read_size`).
    ac_in_buffer_size = 65536
    #: The most bytes gathered from the producer FIFO for one write call.
    ac_out_buffer_size = 65536
    #: The longest frame content, in bytes, before a ``bytes`` terminator;
    #: None for no limit. Read at every read, so it may be set
    #: on the class or on an instance at any time.
    max_frame_size = DEFAULT_MAX_FRAME_SIZE

    # Set while framing a read (pushes are gathered, then sent together) and
    # while the FIFO is being drained (no re-entry).
    _busy = False

    def __init__(self, alternate_poller: Poller | None = None, sock: socket.socket | None = None) -> None:
        self._framer = Framer(None, self.max_frame_size)
        #: The producer FIFO, a deque of producers (objects with ``more()``),
        #: bytes pushed by :meth:`push`, and None for :meth:`close_when_done`.
        self.producer_fifo: Deque[Producer | bytes | None] = collections.deque()
        super().__init__(alternate_poller, sock)

    # -- input ---------------------------------------------------------------

    def set_terminator(self, term: bytes | int | None) -> None:
        """Set the end of the next frame: ``bytes``, an ``int`` count, or None.

        With ``bytes`` :meth:`found_terminator` is called where the
        terminator occurs in the input (it is not passed to
        :meth:`collect_incoming_data`); with an ``int`` after that many
        bytes; with None never. May be called from any callback: input
        already received and not yet framed is framed with the new
        terminator. A str raises TypeError, a negative count ValueError.
        """
        self._framer.set_terminator(term)

    def get_terminator(self) -> bytes | int | None:
        """The current terminator; for a count, the bytes still expected."""
        return self._framer.get_terminator()

    terminator = property(get_terminator, set_terminator)

    @property
    def framer(self) -> Framer:
        """The :class:`~pike.framing.Framer` that frames this connection's input."""
        return self._framer

    @property
    def ac_in_buffer(self) -> bytes:
        """Received input not yet handed to the callbacks (bytes).

        Normally empty, or a few bytes that may start the terminator.
        Assigning replaces it; it is framed at the next read.
        """
        return self._framer.pending()

    @ac_in_buffer.setter
    def ac_in_buffer(self, data: bytes) -> None:
        framer = self._framer
        framer.reset()
        framer.feed(data)

    def collect_incoming_data(self, data: bytes) -> None:
        """Called with each piece of frame content (non-empty bytes).

        Must be overridden; the default raises NotImplementedError.
        """
        raise NotImplementedError("must be implemented in subclass")

    def found_terminator(self) -> None:
        """Called when the terminator was reached. Must be overridden.

        The content before the terminator went to
        :meth:`collect_incoming_data` first. The default raises
        NotImplementedError.
        """
        raise NotImplementedError("must be implemented in subclass")

    @property
    def read_size(self) -> int:  # type: ignore[override]
        """Bytes per read: :attr:`ac_in_buffer_size` (read when the
        connection is made, and by every :meth:`handle_read`)."""
        return self.ac_in_buffer_size

    def handle_data(self, data: bytes) -> None:
        """Frame what was received (the transport receives for Chat)."""
        if self.closed:
            return
        framer = self._framer
        framer.max_frame_size = self.max_frame_size
        framer.feed(data)
        # Replies pushed while this input is framed leave together.
        self._busy = True
        try:
            self._deliver()
        finally:
            self._busy = False
            if self.producer_fifo and not self.closed:
                self.initiate_send()

    def _deliver(self) -> None:
        next_event = self._framer.next_event
        while not self.closed:
            try:
                event = next_event()
            except FrameTooLarge as exc:
                self._framer.reset()
                self.pause_reading()  # the rest of the stream cannot be framed
                self.handle_frame_too_large(exc)
                return
            if event is None:
                return
            if event is END:
                self.found_terminator()
            else:
                self.collect_incoming_data(event)  # type: ignore[arg-type] # (not END: bytes)

    def handle_frame_too_large(self, exc: FrameTooLarge) -> None:
        """A frame went over :attr:`max_frame_size` (``exc`` is a FrameTooLarge).

        Reading has been paused and the buffered input dropped. The default
        logs an error and calls :meth:`handle_close`, then closes the
        connection if that did not. An override may push a reply and call
        :meth:`close_when_done` instead.
        """
        logger.error("pike: %r: %s; closing the connection", self, exc)
        self.handle_close()
        if not self.closed:
            self.close()

    def handle_read_eof(self) -> None:
        # The peer sent EOF: what was held back as a possible start of the
        # terminator is content after all. (Transport.recv calls this before
        # handle_close / handle_eof.)
        framer = self._framer
        if framer.buffered and not self.closed:
            framer.feed_eof()
            self._deliver()

    # -- output --------------------------------------------------------------

    def push(self, data: BytesLike) -> None:
        """Queue ``data`` (bytes, bytearray or memoryview) for sending.

        A ``str`` (or any other type) raises TypeError. The data leaves
        after everything pushed before it; mutable buffers are copied.
        """
        if type(data) is not bytes:
            if not isinstance(data, _BYTES_LIKE):
                raise TypeError(
                    f"data argument must be a bytes-like object, not "
                    f"{type(data).__name__}"
                )
            data = bytes(data)
        if not data:
            return
        fifo = self.producer_fifo
        if not fifo and not self._busy and self.connected:
            self.write(data)  # nothing queued before it: straight to the socket
            return
        fifo.append(data)
        if not self._busy:
            self.initiate_send()

    def push_with_producer(self, producer: Producer | BytesLike) -> None:
        """Queue ``producer``: an object whose ``more()`` returns the next bytes,
        and ``b""`` when it has no more.

        Its data leaves after everything pushed before it. ``more()`` is
        called only when the write buffer has room, and never again after
        it returned ``b""``.
        """
        if isinstance(producer, _BYTES_LIKE):
            self.push(producer)
            return
        self.producer_fifo.append(producer)
        if not self._busy:
            self.initiate_send()

    def close_when_done(self) -> None:
        """Close once everything in the producer FIFO and the write buffer
        has been sent.

        Puts None on the producer FIFO; when it comes up, the connection
        closes as :meth:`Transport.close_when_done
        <pike.transport.Transport.close_when_done>` closes it: with
        :meth:`close` once the write buffer is empty (one meaning for one
        name; :meth:`handle_close` is for ends the connection did not ask
        for, so a ``handle_close`` may itself push a last answer and call
        this). Data pushed afterwards is never sent.
        """
        self.producer_fifo.append(None)
        if not self._busy:
            self.initiate_send()

    def discard_buffers(self) -> None:
        """Drop buffered input, the producer FIFO and unsent output.

        For emergencies: output that was partly sent is cut off.
        """
        self._framer.reset()
        self.producer_fifo.clear()
        self.discard_write_buffer()

    def initiate_send(self) -> None:
        """Move data from the producer FIFO to the write buffer.

        Called by :meth:`push` and friends, and again whenever the socket
        took data; producers are only asked for more while the write buffer
        is at most its high water mark. Does nothing until connected.
        """
        if self._busy or self.closed or not self.connected:
            return
        fifo = self.producer_fifo
        if not fifo:
            return
        self._busy = True
        try:
            high_water = self.get_write_buffer_limits()[1]
            batch_size = self.ac_out_buffer_size
            while fifo and not self.closed:
                if self.get_write_buffer_size() > high_water:
                    return  # resumed from handle_write / handle_resume_writing
                batch = []
                size = 0
                while fifo and size < batch_size:
                    first = fifo[0]
                    if first is None:
                        break
                    if type(first) is bytes:
                        fifo.popleft()
                        batch.append(first)
                        size += len(first)
                        continue
                    data = first.more()  # type: ignore[union-attr] # (not bytes: above)
                    if not data:
                        if fifo and fifo[0] is first:
                            fifo.popleft()
                        continue
                    if type(data) is not bytes:
                        if not isinstance(data, _BYTES_LIKE):
                            raise TypeError(
                                f"producer {first!r} returned "
                                f"{type(data).__name__}, not bytes"
                            )
                        data = bytes(data)
                    batch.append(data)
                    size += len(data)
                if self.closed:
                    return  # closed by a producer
                if batch:
                    if len(batch) == 1:
                        self.write(batch[0])
                    else:
                        self.writelines(batch)
                    continue
                # The FIFO is empty, or None (close_when_done) is at its head:
                # Transport closes once its write buffer drained. The None
                # stays, so what is pushed after it is never sent.
                if fifo:
                    Transport.close_when_done(self)
                return
        finally:
            self._busy = False

    def handle_write(self) -> None:
        """The socket took data: refill the write buffer from the producers."""
        self.initiate_send()

    def handle_resume_writing(self) -> None:
        """The write buffer drained to the low water mark: produce again."""
        self.initiate_send()

    def handle_connect_event(self) -> None:
        """Decide a pending connect; once connected, start sending the FIFO."""
        super().handle_connect_event()
        if self.connected and self.producer_fifo:
            self.initiate_send()

    def close(self) -> None:
        """Close the connection, and drop the producer FIFO and buffered input."""
        super().close()
        self.producer_fifo.clear()
        self._framer.reset()
