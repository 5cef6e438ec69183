"""pike.compat.asynchat: the 3.11 asynchat contract, on pike's asyncore.

CPython's own test_asynchat / test_smtpd run against this module through
scripts/run_cpython_asynchat.py; these tests pin the details that suite does
not reach (framing under every split, callbacks that change the framing,
the ac_in_buffer view, output queue behaviour) on real socket pairs.
"""

import gc
import random
import socket
import sys
import time

import pytest

import pike.chat

from pike.compat import asynchat, asyncore


# -- helpers --------------------------------------------------------------------


class FakeSock:
    """Just enough socket for a dispatcher: recv() from a list, send() records."""

    def __init__(self, chunks=(), send_limit=None):
        self.chunks = list(chunks)
        self.sent = []
        self.send_limit = send_limit
        self._fd = socket.socket()  # a real fd for the map key

    def fileno(self):
        return self._fd.fileno()

    def setblocking(self, flag):
        pass

    def getpeername(self):
        return ("127.0.0.1", 1)

    def recv(self, size):
        if not self.chunks:
            raise BlockingIOError()
        data = self.chunks.pop(0)
        assert len(data) <= size
        return data

    def send(self, data):
        data = bytes(data)
        if self.send_limit is not None:
            data = data[: self.send_limit]
        self.sent.append(data)
        return len(data)

    def close(self):
        self._fd.close()


class Recorder(asynchat.async_chat):
    """Records ("data", bytes) / ("end", terminator) events."""

    def __init__(self, sock=None, map=None, terminator=b"\r\n"):
        asynchat.async_chat.__init__(self, sock, map)
        self.events = []
        self.set_terminator(terminator)

    def collect_incoming_data(self, data):
        assert data, "empty data must never be delivered"
        self.events.append(("data", bytes(data)))

    def found_terminator(self):
        self.events.append(("end", self.get_terminator()))


def frames(events):
    """Join the data events between ends: what the application sees."""
    out, cur = [], b""
    for kind, value in events:
        if kind == "data":
            cur += value
        else:
            out.append(cur)
            cur = b""
    return out, cur


def feed(chat, chunks):
    chat.socket.chunks.extend(chunks)
    while chat.socket.chunks:
        chat.handle_read()


@pytest.fixture
def cmap():
    m = {}
    yield m
    asyncore.close_all(map=m)


def make(cmap, cls=Recorder, chunks=(), **kw):
    sock = FakeSock(chunks)
    return cls(sock, map=cmap, **kw)


# -- the module's API ---------------------------------------------------------------


def test_public_api():
    for name in ("async_chat", "simple_producer", "find_prefix_at_end", "fifo"):
        assert hasattr(asynchat, name)
    assert issubclass(asynchat.async_chat, asyncore.dispatcher)
    assert asynchat.async_chat.ac_in_buffer_size == 65536
    assert asynchat.async_chat.ac_out_buffer_size == 65536
    for name in ("collect_incoming_data", "_collect_incoming_data", "_get_data",
                 "found_terminator", "set_terminator", "get_terminator",
                 "handle_read", "handle_write", "handle_close", "push",
                 "push_with_producer", "readable", "writable", "close_when_done",
                 "initiate_send", "discard_buffers"):
        assert callable(getattr(asynchat.async_chat, name)), name


def test_find_prefix_at_end():
    f = asynchat.find_prefix_at_end
    assert f("qwerty\r", "\r\n") == 1
    assert f("qwertydkjf", "\r\n") == 0
    assert f(b"abcSTO", b"STOP") == 3
    assert f(b"abcSTOP", b"STOP") == 0  # whole needle is not a proper prefix
    assert f(b"", b"STOP") == 0


def test_simple_producer_and_fifo():
    p = asynchat.simple_producer(b"abcdefg", buffer_size=3)
    assert [p.more() for _ in range(4)] == [b"abc", b"def", b"g", b""]
    q = asynchat.fifo([1])
    q.push(2)
    assert len(q) == 2 and not q.is_empty() and q.first() == 1
    assert q.pop() == (1, 1) and q.pop() == (1, 2) and q.pop() == (0, None)
    assert q.is_empty()


def test_not_implemented_and_negative_terminator(cmap):
    c = asynchat.async_chat(map=cmap)
    with pytest.raises(NotImplementedError):
        c.collect_incoming_data(b"x")
    with pytest.raises(NotImplementedError):
        c.found_terminator()
    with pytest.raises(ValueError):
        c.set_terminator(-1)
    c.set_terminator(0)
    assert c.get_terminator() == 0
    c.use_encoding = 1
    c.set_terminator("\n")
    assert c.get_terminator() == b"\n"


def test_collect_and_get_data(cmap):
    c = asynchat.async_chat(map=cmap)
    c._collect_incoming_data(b"ab")
    c._collect_incoming_data(b"cd")
    assert c._get_data() == b"abcd"
    assert c._get_data() == b"" and c.incoming == []


# -- input framing ----------------------------------------------------------------


STREAM = b"hello\r\nworld\r\n\r\nno end yet \r"


@pytest.mark.parametrize("seed", range(40))
def test_any_split_gives_same_frames(cmap, seed):
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(STREAM)), rnd.randint(0, 8)))
    chunks = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    c = make(cmap, chunks=chunks)
    feed(c, [])
    out, rest = frames(c.events)
    assert out == [b"hello", b"world", b""]
    # A possible terminator start stays in the buffer, not delivered.
    assert rest + c.ac_in_buffer == b"no end yet \r"
    assert c.ac_in_buffer == b"\r"


def test_numeric_terminator_counts_down(cmap):
    c = make(cmap, terminator=5)
    feed(c, [b"ab"])
    assert c.get_terminator() == 3
    feed(c, [b"cdefg"])
    assert c.get_terminator() == 0
    # Count reached: 0 means "everything is data" until a new terminator.
    assert frames(c.events) == ([b"abcde"], b"fg")


def test_none_terminator_everything_is_data(cmap):
    c = make(cmap, terminator=None)
    feed(c, [b"a\r\nb", b"c"])
    assert c.events == [("data", b"a\r\nb"), ("data", b"c")]


class CountChanger(Recorder):
    """Changes a count terminator from inside collect_incoming_data."""

    def collect_incoming_data(self, data):
        Recorder.collect_incoming_data(self, data)
        if self.get_terminator() == 10:
            self.set_terminator(4)  # the original then counts 4 - len(data)


def test_count_changed_in_collect_counts_from_the_new_value(cmap):
    c = make(cmap, cls=CountChanger, terminator=10)
    feed(c, [b"ab"])
    assert c.get_terminator() == 2  # 4 - 2, as the original computes it
    feed(c, [b"cdEF"])
    assert frames(c.events) == ([b"abcd"], b"EF")
    assert c.get_terminator() == 0


def test_bool_and_fresh_terminator_objects(cmap):
    c = make(cmap, terminator=True)  # an int to asynchat: a count of 1
    feed(c, [b"xy"])
    assert frames(c.events) == ([b"x"], b"y")

    class Fresh(Recorder):
        def get_terminator(self):
            return bytes(bytearray(b"\r\n"))  # a new object on every call

    c = make(cmap, cls=Fresh)
    feed(c, [b"a\r", b"\nb\r", b"\n"])
    assert frames(c.events) == ([b"a", b"b"], b"")


def test_bad_terminator_reaches_handle_error(cmap):
    c = make(cmap)
    errors = []
    c.handle_error = lambda: errors.append(sys.exc_info()[0])
    c.terminator = "\r\n"  # str without use_encoding: cannot frame bytes
    c.socket.chunks.append(b"a\r\n")
    asyncore.read(c)  # what the loop does: the error goes to handle_error
    assert errors == [TypeError]
    assert c.events == []


def test_consumed_input_is_released(cmap):
    c = make(cmap, terminator=b"\n")
    feed(c, [b"x" * 60000 + b"\n"])
    assert c.ac_in_buffer == b""
    # The framer keeps no reference to the 60 KB read once it is consumed.
    held = [o for o in gc.get_referents(c._framer) if isinstance(o, bytes) and len(o) > 1000]
    assert held == []


def test_str_producer_with_use_encoding(cmap):
    c = make(cmap)
    c.use_encoding = 1
    p = asynchat.simple_producer("h\xe9llo", buffer_size=2)
    assert isinstance(p, pike.chat.simple_producer)  # the one producer class
    c.push_with_producer(p)
    while c.writable() and c.producer_fifo:
        c.initiate_send()
    assert b"".join(c.socket.sent) == "h\xe9llo".encode("latin-1")
    q = asynchat.simple_producer(b"abcdef", buffer_size=4)
    assert q.more() == b"abcd" and q.data == b"ef"  # what is left, as asynchat's


class Replacer(Recorder):
    """Replaces the unframed input from inside collect_incoming_data."""

    def collect_incoming_data(self, data):
        Recorder.collect_incoming_data(self, data)
        if data == b"old":
            self.ac_in_buffer = b"new\r\n"


def test_input_replaced_in_collect(cmap):
    c = make(cmap, cls=Replacer)
    feed(c, [b"old\r\nlost"])
    # The frame whose piece was delivered still ends, as with the original;
    # the replaced input is framed afresh, with nothing of the old left.
    assert frames(c.events) == ([b"old", b"new"], b"")
    assert c.ac_in_buffer == b""


class Switcher(Recorder):
    """Header line, then a counted body, then lines again (HTTP-like)."""

    def found_terminator(self):
        Recorder.found_terminator(self)
        if self.get_terminator() == b"\r\n" and frames(self.events)[0][-1] == b"LEN 4":
            self.set_terminator(4)
        elif self.get_terminator() == 0:
            self.set_terminator(b"\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 100])
def test_terminator_changed_in_found_terminator(cmap, size):
    data = b"LEN 4\r\nab\r\nnext\r\n"
    c = make(cmap, cls=Switcher)
    feed(c, [data[i:i + size] for i in range(0, len(data), size)])
    assert frames(c.events) == ([b"LEN 4", b"ab\r\n", b"next"], b"")


class Discarder(Recorder):
    def found_terminator(self):
        Recorder.found_terminator(self)
        self.seen_rest = self.ac_in_buffer
        self.discard_buffers()


def test_ac_in_buffer_view_and_discard_in_callback(cmap):
    c = make(cmap, cls=Discarder)
    feed(c, [b"one\r\ntwo\r\nthree"])
    # During found_terminator the buffer shows exactly the unconsumed input,
    # and discard_buffers() there drops it, as with the original.
    assert c.seen_rest == b"two\r\nthree"
    assert frames(c.events) == ([b"one"], b"")
    assert c.ac_in_buffer == b""


def test_ac_in_buffer_assignment(cmap):
    c = make(cmap)
    c.ac_in_buffer = b"pre"
    feed(c, [b"fix\r\n"])
    assert frames(c.events) == ([b"prefix"], b"")


def test_many_lines_in_one_read_is_linear(cmap):
    # 64 KiB of 2-byte lines in one recv: the original copied the rest of
    # the buffer per line; this must stay fast.
    c = make(cmap, terminator=b"\n")
    c.ac_in_buffer_size = 1 << 20
    count = 200_000
    started = time.perf_counter()
    feed(c, [b"x\n" * count])
    elapsed = time.perf_counter() - started
    assert len([e for e in c.events if e[0] == "end"]) == count
    assert elapsed < 5.0


def test_blocking_io_error_is_ignored(cmap):
    c = make(cmap)
    errors = []
    c.handle_error = lambda: errors.append(1)
    c.handle_read()  # FakeSock raises BlockingIOError when empty
    assert errors == []


# -- output ---------------------------------------------------------------------------


def test_push_types_and_split(cmap):
    c = make(cmap)
    with pytest.raises(TypeError):
        c.push("text")
    with pytest.raises(TypeError):
        c.push(10)
    c.ac_out_buffer_size = 4
    c.push(b"abcdefghij")
    c.push(bytearray(b"kl"))
    c.push(memoryview(b"mn"))
    while c.writable():
        c.handle_write()
    assert c.socket.sent == [b"abcd", b"efgh", b"ij", b"kl", b"mn"]


def test_partial_send_keeps_the_rest_in_order(cmap):
    c = make(cmap)
    c.socket.send_limit = 3
    c.push(b"0123456789")
    c.push_with_producer(asynchat.simple_producer(b"abcdefgh", buffer_size=5))
    for _ in range(50):
        if not c.producer_fifo:
            break
        c.initiate_send()
    assert b"".join(c.socket.sent) == b"0123456789abcdefgh"


def test_close_when_done_and_writable(cmap):
    c = make(cmap)
    closed = []
    c.handle_close = lambda: closed.append(True)
    assert not c.writable()
    c.socket.send_limit = 0
    c.push(b"bye")
    c.close_when_done()
    assert c.writable()
    c.socket.send_limit = None
    c.initiate_send()
    assert closed == []
    c.initiate_send()
    assert closed == [True]
    assert b"".join(c.socket.sent) == b"bye"


def test_discard_buffers_drops_output(cmap):
    c = make(cmap)
    c.socket.send_limit = 0
    c.push(b"x")
    c.incoming.append(b"y")
    c.discard_buffers()
    assert not c.producer_fifo and c.incoming == [] and c.ac_in_buffer == b""


# -- on real sockets, through asyncore.loop ------------------------------------------


class Echo(asynchat.async_chat):
    def __init__(self, sock, map):
        asynchat.async_chat.__init__(self, sock, map)
        self.set_terminator(b"\n")
        self.buf = []

    def collect_incoming_data(self, data):
        self._collect_incoming_data(data)

    def found_terminator(self):
        line = self._get_data()
        if line == b"QUIT":
            self.push(b"bye\n")
            self.close_when_done()
        else:
            self.push(line.upper() + b"\n")


@pytest.mark.parametrize("use_poll", [False, True])
def test_line_echo_over_socketpair(cmap, use_poll):
    a, b = socket.socketpair()
    try:
        server = Echo(a, cmap)
        b.settimeout(5)
        payload = b"".join(b"line %d\n" % i for i in range(2000)) + b"QUIT\n"
        b.sendall(payload)
        got = b""
        deadline = time.monotonic() + 10
        while not got.endswith(b"bye\n") and time.monotonic() < deadline:
            asyncore.loop(timeout=0.05, use_poll=use_poll, map=cmap, count=1)
            b.setblocking(False)
            try:
                chunk = b.recv(1 << 16)
                if chunk:
                    got += chunk
            except BlockingIOError:
                pass
        expected = b"".join(b"LINE %d\n" % i for i in range(2000)) + b"bye\n"
        assert got == expected
        # close_when_done closed the server side after the last bytes.
        for _ in range(20):
            if server.socket is None or server._fileno is None:
                break
            asyncore.loop(timeout=0.01, use_poll=use_poll, map=cmap, count=1)
        assert not server.connected and not cmap
    finally:
        b.close()
