"""A drop-in ``asynchat`` for code that outlived the standard library's.

This module has the public API of Python 3.11's ``asynchat`` (removed from
the standard library in 3.12): :class:`async_chat`, :class:`simple_producer`
and :func:`find_prefix_at_end`, plus :class:`fifo`, the small queue class
that older releases had (3.11 no longer does; it is here for code written
against them). :func:`pike.compat.install` makes ``import asynchat`` find it.

:class:`async_chat` is a :class:`pike.compat.asyncore.dispatcher`, so its
channels live in asyncore's map and are driven by ``asyncore.loop()`` --
with pike's epoll fast path where that loop takes it. Everything a caller
can see follows the 3.11 module:

* input framing by ``get_terminator()`` -- a ``bytes`` terminator, an
  ``int`` count of bytes, or a false value (``None``, ``b""``, ``0``) for
  "everything is data" -- asked afresh before every piece, so that
  ``found_terminator()`` may change it and the rest of the input is framed
  with the new one; a count goes down as data arrives and is 0 once reached;
* ``collect_incoming_data()`` gets data as soon as it is known not to be
  part of a terminator (only a possible terminator prefix at the end of the
  input is held back), never an empty piece;
* ``push()`` takes bytes-like objects only, splits them into
  ``ac_out_buffer_size`` pieces and tries to send at once; producers are
  asked for ``more()`` only when their turn comes; ``close_when_done()``
  queues the close; ``initiate_send()`` makes one ``send()`` per call;
* ``readable()`` is always true, ``writable()`` is true while output is
  queued or the socket is not connected yet.

Input is framed by :class:`pike.framing.Framer`, the framing core that
:class:`pike.chat.Chat` uses too (without a frame-size limit here, as the
original has none). The one difference a caller may see is how the input
buffer is kept: the original cuts the consumed part off the front of its
buffer after every frame, which copies the rest of the buffer each time
(quadratic in the number of frames one ``recv()`` brings); the framer keeps
a read position instead, and ``ac_in_buffer`` is a property that shows (and
replaces) exactly the unconsumed part, so one read of many short lines costs
linear time. (Inside ``collect_incoming_data()`` it already excludes the
piece being delivered and the terminator after it.)

No buffer here grows without the application: the input buffer holds at
most ``ac_in_buffer_size`` bytes plus a terminator prefix, and frame
content goes to ``collect_incoming_data()`` as it arrives (where to keep
it, and how much, is the application's choice, as with the original).
:class:`pike.chat.Chat` is the native class with a frame-size limit.

Written from the documented behaviour of the 3.11 module and its
test-suite; no code is taken from it.
"""

from __future__ import annotations

from collections import deque

from pike import chat as _chat
from pike.compat import asyncore
from pike.framing import END as _END
from pike.framing import Framer as _Framer
from pike.framing import prefix_at_end as find_prefix_at_end

from typing import TYPE_CHECKING as _TYPE_CHECKING

# The module's public names stay those of the standard library's: the
# __future__ import above binds one more (the compiler flag stays set).
del annotations

if _TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any


# Tells asyncore's loop that a channel's writable() answer may have changed.
_touch = asyncore._touch

__all__ = ["async_chat", "simple_producer", "fifo", "find_prefix_at_end"]

_BYTES_LIKE = (bytes, bytearray, memoryview)

# A consumed read longer than this is let go at once (the framer would keep
# it until the next read); a shorter one is not worth the reset.
_KEEP_AT_MOST = 4096


class simple_producer(_chat.simple_producer):  # noqa: N801 - the asynchat name
    """Hands out ``data`` in pieces of at most ``buffer_size`` bytes.

    :class:`pike.chat.simple_producer`, taking ``str`` as well: asynchat
    code with ``use_encoding`` set may produce text, which
    :meth:`async_chat.initiate_send` encodes.
    """

    __slots__ = ()

    def __init__(self, data, buffer_size=512):
        if isinstance(data, str):
            super().__init__(b"", buffer_size)
            self.data = data
        else:
            super().__init__(data, buffer_size)


class fifo:  # noqa: N801 - the name older asynchat releases had
    """A first-in first-out queue (older ``asynchat`` releases had it)."""

    def __init__(self, list=None):  # noqa: A002 - the historical name
        self.list = deque(list) if list else deque()

    def __len__(self):
        return len(self.list)

    def is_empty(self):
        return not self.list

    def first(self):
        return self.list[0]

    def push(self, data):
        self.list.append(data)

    def pop(self):
        """``(1, item)`` for the oldest item, or ``(0, None)`` when empty."""
        if self.list:
            return (1, self.list.popleft())
        return (0, None)


class async_chat(asyncore.dispatcher):  # noqa: N801 - the asynchat name
    """An asyncore channel that frames its input and queues its output.

    Subclass it and define :meth:`collect_incoming_data` and
    :meth:`found_terminator`; call :meth:`set_terminator` to say where a
    frame ends and :meth:`push` / :meth:`push_with_producer` to send.
    """

    # readable() / writable() below change only through this class's
    # methods, which tell the loop (asyncore._touch): not asked every
    # iteration.
    _pike_library = True

    # Largest recv() and largest send(), in bytes.
    ac_in_buffer_size = 65536
    ac_out_buffer_size = 65536

    # Set use_encoding to let str terminators and producer output be
    # encoded with `encoding` (the original's knob; off by default).
    use_encoding = 0
    encoding = "latin-1"

    # The input buffer lives in a Framer, made at the first input (idle
    # channels need none); _framed_with is the terminator it was last given.
    _framer = None
    _framed_with = None
    terminator = None

    def __init__(self, sock=None, map=None):
        self.ac_in_buffer = b""
        # Pieces of the current frame, for _collect_incoming_data/_get_data.
        self.incoming = []
        # Output: bytes-like pieces, producers, and None for "close here".
        # producer_fifo is made on first use (see the property): an empty
        # deque costs some 600 bytes, which idle connections need not pay.
        self._fifo = None
        asyncore.dispatcher.__init__(self, sock, map)

    # -- the input buffer ------------------------------------------------

    @property
    def ac_in_buffer(self):
        """The input received and not yet framed."""
        framer = self._framer
        return b"" if framer is None else framer.pending()

    @ac_in_buffer.setter
    def ac_in_buffer(self, data):
        framer = self._framer
        if framer is None:
            if not data:
                return
            framer = self._new_framer()
        framer.reset()
        framer.feed(data)

    def _new_framer(self):
        framer = self._framer = _Framer(None, None)
        self._framed_with = None
        return framer

    @property
    def producer_fifo(self):
        """The output queue: bytes-like pieces, producers, None for "close"."""
        fifo = self._fifo
        if fifo is None:
            fifo = self._fifo = deque()
        return fifo

    @producer_fifo.setter
    def producer_fifo(self, fifo):
        self._fifo = fifo

    # -- what the application defines --------------------------------------

    def collect_incoming_data(self, data: Any) -> None:
        raise NotImplementedError("must be implemented in subclass")

    def _collect_incoming_data(self, data):
        self.incoming.append(data)

    def _get_data(self):
        data = b"".join(self.incoming)
        del self.incoming[:]
        return data

    def found_terminator(self) -> None:
        raise NotImplementedError("must be implemented in subclass")

    # -- the terminator ---------------------------------------------------

    def set_terminator(self, term: Any) -> None:
        """Set the input delimiter: bytes, an int count (>= 0), or None."""
        if isinstance(term, str) and self.use_encoding:
            term = bytes(term, self.encoding)
        elif isinstance(term, int) and term < 0:
            raise ValueError("the number of received bytes must be positive")
        self.terminator = term

    def get_terminator(self) -> Any:
        return self.terminator

    # -- events -------------------------------------------------------------

    def handle_read(self) -> None:
        try:
            data = self.recv(self.ac_in_buffer_size)
        except BlockingIOError:
            return
        except OSError:
            self.handle_error()
            return

        if isinstance(data, str) and self.use_encoding:
            data = bytes(data, self.encoding)
        framer = self._framer
        if framer is None:
            framer = self._new_framer()
        framer.feed(data)
        next_event = framer.next_event

        # Every callback below may change the terminator, replace or clear
        # ac_in_buffer (discard_buffers), or close the channel: the
        # terminator is asked afresh before every piece, as the original
        # asks it, and handed to the framer when it changed.
        while True:
            terminator = self.get_terminator()
            if terminator is not self._framed_with:
                # (bool is an int to asynchat; the framer wants a real one.)
                framer.set_terminator(
                    int(terminator) if isinstance(terminator, bool) else terminator
                )
                self._framed_with = terminator
            piece = next_event()
            if piece is None:
                break
            if piece is not _END:
                # Right after a piece the framer holds its frame's end or
                # nothing (it frames no new input before it is asked again):
                # taken now, the end is the original's, whatever the
                # callback does to the terminator or to ac_in_buffer.
                end = terminator and next_event() is _END
                self.collect_incoming_data(piece)
                if terminator and isinstance(terminator, int):
                    # The count goes down as the original does it: from
                    # the attribute as the callback left it, and 0 once
                    # reached.
                    left = framer.get_terminator()
                    self.terminator = self.terminator - len(piece) if left else 0  # type: ignore[operator]
                    if self.terminator == left:
                        self._framed_with = self.terminator
                if not end:
                    continue
            self.found_terminator()
        if len(data) > _KEEP_AT_MOST and not framer.buffered:
            framer.reset()  # let a big input go once it is all consumed

    def handle_write(self) -> None:
        self.initiate_send()

    def handle_close(self) -> None:
        self.close()

    # -- output -------------------------------------------------------------

    def push(self, data: Any) -> None:
        """Queue bytes-like ``data`` for sending and try to send now."""
        if not isinstance(data, _BYTES_LIKE):
            raise TypeError("data argument must be byte-ish (%r)" % type(data))
        size = self.ac_out_buffer_size
        fifo = self.producer_fifo
        if len(data) > size:
            for start in range(0, len(data), size):
                fifo.append(data[start:start + size])
        else:
            fifo.append(data)
        self.initiate_send()
        _touch(self)

    def push_with_producer(self, producer: Any) -> None:
        """Queue a producer (an object with ``more()``) and try to send."""
        self.producer_fifo.append(producer)
        self.initiate_send()
        _touch(self)

    def readable(self) -> bool:
        """Always true: input is framed as it comes."""
        return 1  # type: ignore[return-value] # (1, as asynchat itself returns)

    def writable(self) -> bool:
        """True while output is queued, or until the socket is connected."""
        return self._fifo or (not self.connected)

    def close_when_done(self) -> None:
        """Close the channel once everything queued so far has been sent."""
        self.producer_fifo.append(None)
        _touch(self)

    def initiate_send(self) -> None:
        """Send from the head of the output queue: at most one ``send()``."""
        fifo = self._fifo
        while fifo and self.connected:
            first = fifo[0]
            if not first:
                # An empty piece, an exhausted producer's leftover, or None.
                del fifo[0]
                if first is None:
                    self.handle_close()
                    return
                continue

            size = self.ac_out_buffer_size
            try:
                data = first[:size]
            except TypeError:
                # A producer: ask it for more.
                data = first.more()
                if data:
                    fifo.appendleft(data)
                else:
                    del fifo[0]
                continue

            if isinstance(data, str) and self.use_encoding:
                data = bytes(data, self.encoding)

            try:
                sent = self.send(data)
            except OSError:
                self.handle_error()
                return

            if sent:
                if sent < len(data) or size < len(first):
                    fifo[0] = first[sent:]
                else:
                    del fifo[0]
            # One send per call; the loop calls again when writable.
            return

    def discard_buffers(self) -> None:
        """Drop the unframed input, the collected pieces and all queued output."""
        self.ac_in_buffer = b""
        del self.incoming[:]
        if self._fifo:
            self._fifo.clear()
        _touch(self)
