"""Framing without I/O: bytes in, data pieces and frame ends out.

:class:`Framer` is the input half of :class:`pike.chat.Chat`, kept free of
sockets so that it can be tested (and replaced) on its own. It follows the
``receive_data`` / ``next_event`` style of h11: :meth:`Framer.feed` only
buffers, and :meth:`Framer.next_event` hands out one event at a time, framed
with the terminator in force *at that moment*::

    framer = Framer(b"\\r\\n")
    framer.feed(b"HELLO\\r\\nWOR")
    while True:
        event = framer.next_event()
        if event is None:      # everything buffered has been framed
            break
        if event is END:       # the terminator was reached
            ...
        else:                  # a non-empty bytes object: frame content
            ...

Because the next event is computed only when it is asked for, the consumer
may call :meth:`Framer.set_terminator` between two events (typically on
:data:`END`), and the input still buffered is framed with the new
terminator. That is exactly what an ``asynchat`` application does from
``found_terminator()``.

The terminator is one of:

``bytes`` (non-empty)
    A frame ends where the terminator occurs. The terminator itself is
    consumed and never delivered as data.
``int`` (``>= 0``)
    A frame ends after that many more bytes. The count goes down as content
    is delivered (:meth:`Framer.get_terminator` returns what is left); it is
    0 once reached, and then everything is data until a new terminator is
    set.
``None`` (or ``b""``, or ``0``)
    There are no frame ends: everything is data.

Content is delivered as soon as it is known not to be part of a terminator:
only a trailing piece of the input that might be the start of a terminator
split across two reads (at most ``len(terminator) - 1`` bytes) is held back.
So the framer's own buffer stays small and memory grows only where the
application collects the pieces.

Nothing is searched twice, beyond that held-back piece: the search resumes
where the previous one ended, so a long terminator arriving one byte at a
time costs time linear in the input. :attr:`Framer.bytes_examined` counts
the bytes searched, for tests that want to check it.

A peer must not be able to grow memory without bound by never sending the
terminator: :attr:`Framer.max_frame_size` limits the content of one frame
that ends in a ``bytes`` terminator. The content is delivered up to the
limit, and asking for the next event then raises :exc:`FrameTooLarge`
(whatever way the input was split). The framer stays in that error state
(every :meth:`~Framer.feed` and :meth:`~Framer.next_event` raises) until
:meth:`Framer.reset`. ``int`` counts and ``None`` are chosen by the
application, not the peer, and are not limited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: no typing cost at import
    from typing import Any, Iterator, Optional, Tuple, Union

    #: What :meth:`Framer.set_terminator` accepts.
    Terminator = Union[bytes, bytearray, memoryview, int, None]
    #: What :meth:`Framer.next_event` returns: content, END, or None.
    Event = Union[bytes, "_End"]

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "END",
    "FrameTooLarge",
    "Framer",
    "prefix_at_end",
]

#: Default :attr:`Framer.max_frame_size`, 1 MiB.
DEFAULT_MAX_FRAME_SIZE = 1 << 20

# Terminator kinds.
_ALL = 0  # None, b"" or a count of 0: everything is data
_BYTES = 1
_COUNT = 2


class _End:
    """The type of :data:`END` (a singleton)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"

    def __reduce__(self) -> str:
        return "END"


#: The event that says the terminator was reached and the frame is complete.
END = _End()


class FrameTooLarge(ValueError):
    """A frame grew beyond :attr:`Framer.max_frame_size` without its terminator.

    ``limit`` is the limit in force and ``terminator`` the terminator that
    was awaited.
    """

    def __init__(self, limit: Optional[int], terminator: Any) -> None:
        self.limit = limit
        self.terminator = terminator
        super().__init__(
            f"frame too large: more than {limit} bytes arrived without the "
            f"terminator {terminator!r} (max_frame_size={limit})"
        )


def prefix_at_end(haystack: Any, needle: Any, start: int = 0) -> int:
    """Length of the longest proper prefix of ``needle`` that ends ``haystack[start:]``.

    The part of the input that may be the start of a terminator split across
    two reads: ``prefix_at_end(b"qwerty\\r", b"\\r\\n") == 1``. Works on
    ``bytes`` and on ``str`` (both arguments of one type) and makes no slice
    of ``haystack``. (asynchat's ``find_prefix_at_end`` is this function.)
    """
    size = len(needle) - 1
    if size <= 0 or len(haystack) <= start:
        return 0
    # Most input does not end in a character of the needle: one C-level
    # look-up settles it.
    if needle.find(haystack[-1:], 0, size) < 0:
        return 0
    for length in range(min(size, len(haystack) - start), 0, -1):
        if haystack.endswith(needle[:length]):
            return length
    return 0


def _as_terminator(term: Any) -> Tuple[int, Any]:
    """Check ``term``; return ``(kind, normalised value)``."""
    if term is None:
        return _ALL, None
    if isinstance(term, (bytes, bytearray, memoryview)):
        term = bytes(term)
        return (_BYTES if term else _ALL), term
    if isinstance(term, int) and not isinstance(term, bool):
        if term < 0:
            raise ValueError(f"a byte count terminator must be >= 0, not {term}")
        return (_COUNT if term else _ALL), int(term)
    if isinstance(term, str):
        raise TypeError(
            f"the terminator must be bytes, not str ({term!r}): encode it first"
        )
    raise TypeError(
        f"the terminator must be bytes, an int or None, not {type(term).__name__}"
    )


class Framer:
    """Split a byte stream into frames; see the module documentation.

    :param terminator: the initial terminator (see :meth:`set_terminator`).
    :param max_frame_size: the longest frame content, in bytes, before a
        ``bytes`` terminator; None for no limit.

    ``max_frame_size`` is a plain attribute and may be changed at any time;
    the new limit applies to the frame being collected.
    """

    __slots__ = (
        "max_frame_size",
        "bytes_examined",
        "_term",
        "_kind",
        "_buf",
        "_pos",
        "_held",
        "_end_pending",
        "_frame",
        "_eof",
        "_failed",
    )

    max_frame_size: Optional[int]
    bytes_examined: int
    _term: Any  # bytes, a count or None, as _kind says

    def __init__(
        self,
        terminator: Terminator = None,
        max_frame_size: Optional[int] = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.max_frame_size = max_frame_size
        #: Bytes searched for ``bytes`` terminators so far (a diagnostic:
        #: it stays linear in the input however the input is split).
        self.bytes_examined = 0
        self._kind, self._term = _as_terminator(terminator)
        self._buf = b""  # input; self._buf[self._pos:] is not framed yet
        self._pos = 0
        self._held = False  # buf[pos:] was searched: only a terminator prefix
        self._end_pending = False  # the next event is END
        self._frame = 0  # content bytes of the current frame delivered
        self._eof = False
        self._failed = False

    # -- the terminator ----------------------------------------------------

    def set_terminator(self, term: Terminator) -> None:
        """Set how the input still to come (and still buffered) is framed.

        ``term`` is non-empty ``bytes`` (a bytearray or memoryview is copied),
        an ``int`` count of bytes (``>= 0``), or None; ``b""`` and ``0`` are
        the same as None. A str raises TypeError and a negative count
        ValueError. Setting a terminator starts a new frame for the
        :attr:`max_frame_size` limit. An :data:`END` already due (its
        data piece was delivered) still comes next.
        """
        self._kind, self._term = _as_terminator(term)
        self._held = False
        self._frame = 0

    def get_terminator(self) -> Union[bytes, int, None]:
        """The terminator in force; for a count, the bytes still to come."""
        return self._term

    terminator = property(get_terminator, set_terminator)

    # -- input -------------------------------------------------------------

    def feed(self, data: Any) -> None:
        """Buffer ``data`` (any bytes-like object); no event is computed yet.

        Drain the events with :meth:`next_event` (or :meth:`events`) after
        each call: input that is never framed stays buffered. Raises
        :exc:`FrameTooLarge` after a frame went over the limit (until
        :meth:`reset`), and RuntimeError after :meth:`feed_eof`.
        """
        if self._failed:
            raise self._error()
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            self._buf = data
        else:
            self._buf = buf[pos:] + data
        self._pos = 0
        self._held = False

    def feed_eof(self) -> None:
        """Say that no more input will come.

        A piece held back as a possible start of the terminator is then
        delivered as data by the next event. Further :meth:`feed` calls raise
        RuntimeError (until :meth:`reset`).
        """
        self._eof = True
        self._held = False

    @property
    def eof(self) -> bool:
        """True after :meth:`feed_eof`."""
        return self._eof

    def pending(self) -> bytes:
        """The buffered input that no event has delivered yet, as bytes."""
        return self._buf[self._pos :]

    @property
    def buffered(self) -> int:
        """How many bytes of input are buffered and not yet delivered.

        Right after all events were drained this is at most
        ``len(terminator) - 1``.
        """
        return len(self._buf) - self._pos

    @property
    def frame_size(self) -> int:
        """Content bytes of the current frame delivered so far."""
        return self._frame

    @property
    def failed(self) -> bool:
        """True after :exc:`FrameTooLarge` was raised (until :meth:`reset`)."""
        return self._failed

    def reset(self) -> None:
        """Discard buffered input, a pending :data:`END`, the EOF mark and
        the error state; keep the terminator and the limit."""
        self._buf = b""
        self._pos = 0
        self._held = False
        self._end_pending = False
        self._frame = 0
        self._eof = False
        self._failed = False

    # -- events ------------------------------------------------------------

    def next_event(self) -> Optional[Event]:
        """Frame the next piece of buffered input with the current terminator.

        Returns a non-empty ``bytes`` object (frame content), :data:`END`
        (the terminator was reached; a count terminator is now 0), or None
        when more input is needed.

        :raises FrameTooLarge: when the frame would grow beyond
            :attr:`max_frame_size`; the content up to the limit was
            delivered by the previous events.
        """
        if self._end_pending:
            self._end_pending = False
            return END
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if pos >= size:
            return None
        if self._failed:
            raise self._error()
        kind = self._kind

        if kind == _BYTES:
            if self._held:
                return None  # searched already: only a terminator prefix left
            term = self._term
            tlen = len(term)
            index = buf.find(term, pos)
            if index >= 0:
                self.bytes_examined += index + tlen - pos
                count = index - pos
                limit = self.max_frame_size
                if limit is not None and self._frame + count > limit:
                    return self._over_limit(buf, pos)
                self._pos = index + tlen
                self._frame = 0
                if count:
                    self._end_pending = True
                    return buf[pos:index]
                return END
            self.bytes_examined += size - pos
            end = size
            if tlen > 1 and not self._eof:
                end -= prefix_at_end(buf, term, pos)
            count = end - pos
            limit = self.max_frame_size
            if limit is not None and self._frame + count > limit:
                return self._over_limit(buf, pos)
            self._held = True
            if not count:
                return None
            self._frame += count
            self._pos = end
            if pos == 0 and end == size:
                return buf
            return buf[pos:end]

        if kind == _COUNT:
            want = self._term
            if size - pos < want:
                self._term = want - (size - pos)
                self._pos = size
                return buf if pos == 0 else buf[pos:]
            self._term = 0
            self._kind = _ALL
            self._pos = pos + want
            self._end_pending = True
            if pos == 0 and want == size:
                return buf
            return buf[pos : pos + want]

        # No terminator: everything is data.
        self._pos = size
        return buf if pos == 0 else buf[pos:]

    def events(self) -> Iterator[Event]:
        """Iterate over :meth:`next_event` until it returns None.

        The iteration is lazy: a terminator set between two events applies
        to the next one.
        """
        next_event = self.next_event
        while True:
            event = next_event()
            if event is None:
                return
            yield event

    # -- helpers -------------------------------------------------------------

    def _over_limit(self, buf: bytes, pos: int) -> bytes:
        """Deliver the content up to the limit, then fail."""
        # Only a limit that is set can be exceeded: max_frame_size is an int.
        allowed = (self.max_frame_size or 0) - self._frame
        if allowed > 0:
            self._frame += allowed
            self._pos = pos + allowed
            self._held = False
            return buf[pos : pos + allowed]
        self._failed = True
        raise self._error()

    def _error(self) -> FrameTooLarge:
        return FrameTooLarge(self.max_frame_size, self._term)

    def __repr__(self) -> str:
        state = " failed" if self._failed else (" eof" if self._eof else "")
        return (
            f"<Framer terminator={self._term!r} buffered={self.buffered} "
            f"max_frame_size={self.max_frame_size!r}{state}>"
        )
