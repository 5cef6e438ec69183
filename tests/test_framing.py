"""The Framer alone: no sockets, bytes in, events out."""

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pike.framing import DEFAULT_MAX_FRAME_SIZE, END, FrameTooLarge, Framer

# -- a reference model -------------------------------------------------------


class Failed(Exception):
    pass


def reference_frames(stream, first, script, limit=None):
    """Frame the whole ``stream`` at once, the obvious way.

    ``first`` is the initial terminator; after each frame end the next item
    of ``script`` becomes the terminator (once the script runs out a bytes
    terminator stays and a count stays at 0, as in asynchat). Returns
    ``(frames, tail, failed)``: the content of each complete frame, the
    content after the last frame end, and whether a frame went over
    ``limit`` (then ``tail`` is the content delivered of that frame, cut at
    the limit).
    """
    frames = []
    script = list(script)
    term = first
    pos = 0
    while True:
        if isinstance(term, bytes) and term:
            index = stream.find(term, pos)
            content = stream[pos:] if index < 0 else stream[pos:index]
            if limit is not None and len(content) > limit:
                return frames, content[:limit], True
            if index < 0:
                return frames, content, False
            frames.append(content)
            pos = index + len(term)
        elif isinstance(term, int) and term > 0:
            if len(stream) - pos < term:
                return frames, stream[pos:], False
            frames.append(stream[pos : pos + term])
            pos += term
        else:
            return frames, stream[pos:], False
        if script:
            term = script.pop(0)
        elif isinstance(term, int):
            term = 0


def run_framer(pieces, first, script, limit=None, eof=True):
    """Feed ``pieces`` one by one, draining after each, like Chat does.

    On each END the next terminator of ``script`` is set (from inside the
    event loop, as found_terminator would). Returns the same triple as
    :func:`reference_frames`, plus the framer.
    """
    framer = Framer(first, max_frame_size=limit)
    script = list(script)
    frames = []
    current = []

    def drain():
        while True:
            event = framer.next_event()
            if event is None:
                return
            if event is END:
                frames.append(b"".join(current))
                current.clear()
                if script:
                    framer.set_terminator(script.pop(0))
            else:
                assert type(event) is bytes and event, event
                current.append(event)

    try:
        for piece in pieces:
            framer.feed(piece)
            drain()
            check_held_back(framer)
        if eof:
            framer.feed_eof()
            drain()
            assert framer.buffered == 0
    except FrameTooLarge:
        assert framer.failed
        return frames, b"".join(current), True, framer
    return frames, b"".join(current), False, framer


def check_held_back(framer):
    """After draining, only a proper prefix of a bytes terminator is kept."""
    term = framer.get_terminator()
    if isinstance(term, bytes) and term:
        assert framer.buffered <= len(term) - 1
        pending = framer.pending()
        assert term.startswith(pending)
    else:
        assert framer.buffered == 0


def split(data, cuts):
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    pieces = []
    start = 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    pieces.append(data[start:])
    return pieces


# -- strategies ----------------------------------------------------------------

ALPHABET = b"ab\r\n"

streams = st.binary(max_size=300).map(lambda b: bytes(ALPHABET[x % 4] for x in b))
byte_terms = st.one_of(
    st.sampled_from([b"\r\n", b"aab", b"aaa", b"abab", b"\n", b"a", b"ab\r\nab"]),
    st.binary(min_size=1, max_size=8).map(lambda b: bytes(ALPHABET[x % 4] for x in b)),
)
terminators = st.one_of(byte_terms, st.integers(min_value=0, max_value=40), st.none())
cut_lists = st.lists(st.integers(min_value=0, max_value=300), max_size=40)


# -- properties ----------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(stream=streams, term=byte_terms, cuts=cut_lists)
def test_any_split_same_frames_bytes_terminator(stream, term, cuts):
    expected = reference_frames(stream, term, [])
    assert run_framer(split(stream, cuts), term, [])[:3] == expected


@settings(max_examples=300, deadline=None)
@given(stream=streams, count=st.integers(min_value=0, max_value=60), cuts=cut_lists)
def test_any_split_same_frames_count(stream, count, cuts):
    expected = reference_frames(stream, count, [])
    frames, tail, failed, framer = run_framer(split(stream, cuts), count, [])
    assert (frames, tail, failed) == expected
    if count and len(stream) >= count:
        assert framer.get_terminator() == 0
    else:
        assert framer.get_terminator() == max(count - len(stream), 0)


@settings(max_examples=100, deadline=None)
@given(stream=streams, cuts=cut_lists)
def test_any_split_none_terminator(stream, cuts):
    frames, tail, failed, _ = run_framer(split(stream, cuts), None, [])
    assert (frames, tail, failed) == ([], stream, False)


@settings(max_examples=500, deadline=None)
@given(
    stream=streams,
    first=terminators,
    script=st.lists(terminators, max_size=12),
    cuts=cut_lists,
)
def test_any_split_with_terminator_changes(stream, first, script, cuts):
    """Terminators changed in found_terminator frame the buffered rest."""
    expected = reference_frames(stream, first, script)
    assert run_framer(split(stream, cuts), first, script)[:3] == expected
    # One byte at a time and all at once agree too.
    assert run_framer([bytes([b]) for b in stream], first, script)[:3] == expected
    assert run_framer([stream], first, script)[:3] == expected


@settings(max_examples=400, deadline=None)
@given(
    stream=streams,
    first=terminators,
    script=st.lists(terminators, max_size=12),
    cuts=cut_lists,
    limit=st.integers(min_value=0, max_value=30),
)
def test_limit_is_split_independent(stream, first, script, cuts, limit):
    """The content delivered before FrameTooLarge does not depend on the split."""
    expected = reference_frames(stream, first, script, limit)
    assert run_framer(split(stream, cuts), first, script, limit)[:3] == expected


@settings(max_examples=200, deadline=None)
@given(stream=streams, term=byte_terms, cuts=cut_lists)
def test_without_eof_only_a_terminator_prefix_is_held(stream, term, cuts):
    frames, tail, failed, framer = run_framer(split(stream, cuts), term, [], eof=False)
    exp_frames, exp_tail, _ = reference_frames(stream, term, [])
    assert frames == exp_frames
    assert tail + framer.pending() == exp_tail
    assert len(framer.pending()) < len(term)


# -- the linear scan -------------------------------------------------------------


def feed_bytewise(framer, data):
    content = []
    ends = 0
    max_buffered = 0
    for i in range(len(data)):
        framer.feed(data[i : i + 1])
        while True:
            event = framer.next_event()
            if event is None:
                break
            if event is END:
                ends += 1
            else:
                content.append(event)
        max_buffered = max(max_buffered, framer.buffered)
    return b"".join(content), ends, max_buffered


@pytest.mark.parametrize(
    "content_byte", [b"x", b"a"], ids=["benign", "every-byte-a-prefix"]
)
def test_long_terminator_one_byte_at_a_time_is_linear(content_byte):
    """A 64 KiB frame with a 16-byte terminator, fed one byte at a time."""
    term = b"a" * 15 + b"b"
    size = 64 * 1024
    content = content_byte * size
    framer = Framer(term, max_frame_size=None)
    got, ends, max_buffered = feed_bytewise(framer, content + term)
    assert got == content and ends == 1
    assert framer.buffered == 0
    # Never more than a possible terminator prefix is kept...
    assert max_buffered <= len(term) - 1
    # ...and so no byte is searched more than len(term) times; a rescan
    # of the whole frame per byte would be size**2 / 2 (2**31) bytes.
    total = size + len(term)
    assert framer.bytes_examined <= total * len(term)
    if content_byte == b"x":
        # Nothing held back but the terminator's own start: every byte of
        # the frame is searched once, the terminator's at most len(term) times.
        assert framer.bytes_examined <= total + len(term) ** 2


def test_no_search_without_new_input():
    framer = Framer(b"\r\n")
    framer.feed(b"abc\r")
    assert framer.next_event() == b"abc"
    examined = framer.bytes_examined
    for _ in range(100):
        assert framer.next_event() is None
    assert framer.bytes_examined == examined
    assert framer.pending() == b"\r"


def test_many_frames_in_one_chunk_are_linear():
    line = b"x" * 30 + b"\r\n"
    framer = Framer(b"\r\n")
    framer.feed(line * 10000)
    ends = sum(1 for event in framer.events() if event is END)
    assert ends == 10000
    assert framer.bytes_examined == len(line) * 10000


# -- the memory limit -------------------------------------------------------------


def test_frame_too_large():
    framer = Framer(b"\r\n", max_frame_size=10)
    framer.feed(b"0123456789")  # exactly the limit: fine
    assert list(framer.events()) == [b"0123456789"]
    assert framer.frame_size == 10
    framer.feed(b"\r")  # may still be the terminator
    assert list(framer.events()) == []
    framer.feed(b"X")
    with pytest.raises(FrameTooLarge) as info:
        framer.next_event()
    exc = info.value
    assert isinstance(exc, ValueError)
    assert exc.limit == 10 and exc.terminator == b"\r\n"
    assert "10" in str(exc) and "terminator" in str(exc)
    # The state after it: failed, the input kept, every call raises again.
    assert framer.failed
    assert framer.pending() == b"\rX"
    with pytest.raises(FrameTooLarge):
        framer.next_event()
    with pytest.raises(FrameTooLarge):
        framer.feed(b"more")
    # reset() recovers, keeping the terminator and the limit.
    framer.reset()
    assert not framer.failed and framer.buffered == 0 and framer.frame_size == 0
    assert framer.get_terminator() == b"\r\n" and framer.max_frame_size == 10
    framer.feed(b"ok\r\n")
    assert list(framer.events()) == [b"ok", END]


def test_frame_with_its_terminator_in_the_same_chunk_is_still_limited():
    framer = Framer(b"\n", max_frame_size=4)
    framer.feed(b"abcdefgh\nabc\n")
    events = []
    with pytest.raises(FrameTooLarge):
        for event in framer.events():
            events.append(event)
    assert events == [b"abcd"]


def test_limit_is_per_frame():
    framer = Framer(b"\n", max_frame_size=8)
    data = b"12345678\n" * 1000
    framer.feed(data)
    assert sum(1 for e in framer.events() if e is END) == 1000


def test_limit_applies_to_bytes_terminators_only():
    framer = Framer(100, max_frame_size=8)
    framer.feed(b"x" * 100)
    assert b"".join(e for e in framer.events() if e is not END) == b"x" * 100
    framer.set_terminator(None)
    framer.feed(b"y" * 100)
    assert list(framer.events()) == [b"y" * 100]


def test_limit_none_is_unlimited_and_default_is_one_mib():
    assert Framer().max_frame_size == DEFAULT_MAX_FRAME_SIZE == 1 << 20
    framer = Framer(b"\n", max_frame_size=None)
    framer.feed(b"z" * (3 << 20))
    assert len(b"".join(framer.events())) == 3 << 20


def test_limit_change_takes_effect():
    framer = Framer(b"\n", max_frame_size=100)
    framer.feed(b"a" * 50)
    list(framer.events())
    framer.max_frame_size = 60
    framer.feed(b"a" * 20)
    with pytest.raises(FrameTooLarge):
        list(framer.events())


def test_set_terminator_starts_a_new_frame_for_the_limit():
    framer = Framer(b"\n", max_frame_size=5)
    framer.feed(b"abcde")
    list(framer.events())
    framer.set_terminator(b"\n")
    framer.feed(b"fghij\n")
    assert list(framer.events()) == [b"fghij", END]


def test_limit_at_eof():
    framer = Framer(b"ab", max_frame_size=3)
    framer.feed(b"xyza")
    assert list(framer.events()) == [b"xyz"]
    framer.feed_eof()
    with pytest.raises(FrameTooLarge):
        list(framer.events())


# -- the API ----------------------------------------------------------------------


def test_terminator_validation():
    framer = Framer()
    assert framer.get_terminator() is None
    with pytest.raises(TypeError):
        framer.set_terminator("\r\n")
    with pytest.raises(ValueError):
        framer.set_terminator(-1)
    with pytest.raises(TypeError):
        framer.set_terminator(True)
    with pytest.raises(TypeError):
        framer.set_terminator(1.5)
    framer.set_terminator(bytearray(b"\n"))
    assert framer.get_terminator() == b"\n" and type(framer.get_terminator()) is bytes
    framer.terminator = 5
    assert framer.terminator == 5


@pytest.mark.parametrize("term", [None, b"", 0])
def test_empty_terminators_collect_everything(term):
    framer = Framer(term)
    framer.feed(b"abc\r\n")
    assert list(framer.events()) == [b"abc\r\n"]
    assert framer.get_terminator() == term


def test_count_goes_down_and_ends_at_zero():
    framer = Framer(10)
    framer.feed(b"abcd")
    assert list(framer.events()) == [b"abcd"]
    assert framer.get_terminator() == 6
    framer.feed(b"efghijKL")
    assert list(framer.events()) == [b"efghij", END, b"KL"]
    assert framer.get_terminator() == 0


def test_header_then_counted_body():
    framer = Framer(b"\r\n")
    out = []
    header = []
    framer.feed(b"LEN 5\r\nhelloLEN 3\r\nabc")
    in_body = False
    for event in framer.events():
        if event is END:
            if not in_body:
                framer.set_terminator(int(b"".join(header).split()[1]))
                header.clear()
            else:
                out.append(b"|")
                framer.set_terminator(b"\r\n")
            in_body = not in_body
        else:
            (out if in_body else header).append(event)
    assert b"".join(out) == b"hello|abc|"


def test_end_due_survives_set_terminator_from_collect():
    # As in asynchat: the terminator found is consumed even if the
    # terminator changes while its data piece is being collected.
    framer = Framer(b"\n")
    framer.feed(b"abc\ndef")
    assert framer.next_event() == b"abc"
    framer.set_terminator(None)
    assert framer.next_event() is END
    assert framer.next_event() == b"def"


def test_eof_delivers_the_held_back_prefix_and_refuses_more():
    framer = Framer(b"\r\n")
    framer.feed(b"abc\r")
    assert list(framer.events()) == [b"abc"]
    framer.feed_eof()
    assert framer.eof
    assert list(framer.events()) == [b"\r"]
    with pytest.raises(RuntimeError):
        framer.feed(b"x")
    framer.reset()
    framer.feed(b"x\r\n")
    assert list(framer.events()) == [b"x", END]


def test_feed_accepts_bytes_like_and_ignores_empty():
    framer = Framer(b"\n")
    framer.feed(b"")
    framer.feed(bytearray(b"ab"))
    framer.feed(memoryview(b"c\n"))
    assert list(framer.events()) == [b"abc", END]


def test_whole_chunk_is_not_copied():
    framer = Framer(None)
    data = b"q" * 1000
    framer.feed(data)
    assert framer.next_event() is data


def test_end_is_a_singleton():
    assert repr(END) == "END"
    assert pickle.loads(pickle.dumps(END)) is END
    assert "buffered=0" in repr(Framer(b"\n"))
