"""Chat over real sockets, on every poller x implementation (the ``poller`` fixture)."""

import contextlib
import hashlib
import logging
import socket
import struct

import pytest

from pike.chat import Chat, FrameTooLarge, simple_producer
from pike.testing import (
    PeerReader,
    connected_pair,
    run_until,
    tcp_listener,
    transport_and_peer,
)

AF_UNIX = getattr(socket, "AF_UNIX", None)
FAMILIES = [socket.AF_INET] + ([AF_UNIX] if AF_UNIX is not None else [])


class RecordingChat(Chat):
    """Collects frames; records ``("data", piece)``, ``"end"`` and ``"close"``."""

    terminator_at_start = None

    def __init__(self, alternate_poller=None, sock=None):
        self.events = []
        self.frames = []
        self.current = []
        self.closes = 0
        self.frame_hooks = {}  # frame -> callable run when it arrives
        super().__init__(alternate_poller, sock)
        self.set_terminator(self.terminator_at_start)

    def collect_incoming_data(self, data):
        assert type(data) is bytes and data
        self.events.append(("data", data))
        self.current.append(data)

    def found_terminator(self):
        self.events.append("end")
        frame = b"".join(self.current)
        self.current.clear()
        self.frames.append(frame)
        self.handle_frame(frame)

    def handle_frame(self, frame):
        hook = self.frame_hooks.get(frame)
        if hook is not None:
            hook()

    def handle_close(self):
        self.closes += 1
        self.events.append("close")
        self.close()

    def collected(self):
        """All content received, frame ends left out."""
        return b"".join(e[1] for e in self.events if type(e) is tuple)


class LineEcho(RecordingChat):
    terminator_at_start = b"\r\n"

    def handle_frame(self, frame):
        if frame in self.frame_hooks:
            super().handle_frame(frame)
        else:
            self.push(frame + b"\r\n")


class HeaderBody(RecordingChat):
    """``LEN n\\r\\n`` then an n-byte body, answered with ``<body>;``."""

    terminator_at_start = b"\r\n"
    in_body = False

    def handle_frame(self, frame):
        if self.in_body:
            self.push(b"<" + frame + b">;")
            self.set_terminator(b"\r\n")
        else:
            word, count = frame.split()
            assert word == b"LEN"
            if int(count) == 0:  # a count of 0 would mean "no terminator"
                self.push(b"<>;")
                return
            self.set_terminator(int(count))
        self.in_body = not self.in_body


class GeneratorProducer:
    """Produces ``total`` bytes lazily from a generator, in ``chunk`` pieces.

    Records, at each ``more()`` call, the chat's write buffer size and how far
    the producer ran ahead of what the peer has read.
    """

    def __init__(self, total, chunk=65536, chat=None, reader=None):
        self.total = total
        self.chunk = chunk
        self.chat = chat
        self.reader = reader
        self.produced = 0
        self.calls = 0
        self.buffer_sizes = []
        self.ahead = []
        self.digest = hashlib.sha256()
        self._gen = self._generate()

    def _generate(self):
        index = 0
        while self.produced < self.total:
            size = min(self.chunk, self.total - self.produced)
            piece = (index.to_bytes(4, "big") * (size // 4 + 1))[:size]
            index += 1
            yield piece

    def more(self):
        self.calls += 1
        if self.chat is not None:
            self.buffer_sizes.append(self.chat.get_write_buffer_size())
        if self.reader is not None:
            self.ahead.append(self.produced - len(self.reader.data))
        piece = next(self._gen, b"")
        self.produced += len(piece)
        self.digest.update(piece)
        return piece


def small_buffers(chat, peer):
    """Keep the kernel from buffering megabytes, so flow control shows."""
    chat.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)


@contextlib.contextmanager
def chat_and_peer(poller, factory, family=socket.AF_INET):
    chat, peer = transport_and_peer(poller, family, factory)
    try:
        yield chat, peer
    finally:
        chat.close()
        peer.close()


def read_exactly(poller, reader, size, timeout=10):
    run_until(
        poller,
        lambda: reader.pump() and (len(reader.data) >= size or reader.eof),
        timeout,
        what=f"{size} bytes at the peer",
    )
    return bytes(reader.data)


# -- input and framing ----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: socket.AddressFamily(f).name)
def test_line_echo(poller, family):
    with chat_and_peer(poller, LineEcho, family) as (chat, peer):
        reader = PeerReader(peer)
        lines = [b"hello", b"", b"a" * 5000, b"x\ry", b"last one"]
        stream = b"".join(line + b"\r\n" for line in lines)
        # Awkward splits: through the middle of a terminator, byte by byte.
        for piece in (stream[:6], stream[6:7], stream[7:100], stream[100:]):
            peer.sendall(piece)
            poller.poll(0.01)
        got = read_exactly(poller, reader, len(stream))
        assert got == stream
        assert chat.frames == lines
        assert not chat.closed and chat.closes == 0


def test_line_echo_between_two_chats(poller):
    class LineClient(RecordingChat):
        terminator_at_start = b"\r\n"

    client, server = connected_pair(
        poller, client_factory=LineClient, server_factory=LineEcho
    )
    try:
        server.set_terminator(b"\n")
        for i in range(100):
            client.push(b"line %d\n" % i)
        run_until(poller, lambda: len(client.frames) == 100, what="100 echoed lines")
        assert client.frames == [b"line %d" % i for i in range(100)]
    finally:
        client.close()
        server.close()


def test_push_before_connect(poller):
    listener = tcp_listener(poller, factory=LineEcho)
    client = RecordingChat(alternate_poller=poller)
    try:
        client.set_terminator(b"\r\n")
        client.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        client.connect(listener.address)
        client.push(b"early\r\n")
        client.push_with_producer(simple_producer(b"producer\r\n", 3))
        client.close_when_done()
        run_until(
            poller,
            lambda: listener.accepted and len(listener.accepted[0].frames) == 2,
            what="both lines at the server",
        )
        assert listener.accepted[0].frames == [b"early", b"producer"]
        run_until(poller, lambda: client.closed, what="the client to close")
        assert client.closes == 0  # close_when_done closes; handle_close is not called
    finally:
        client.close()
        for chat in listener.accepted:
            chat.close()
        listener.close()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "byte-by-byte"])
def test_terminator_switching(poller, bytewise):
    """A header line, then an int-counted body; the rest of a read is framed anew."""
    with chat_and_peer(poller, HeaderBody) as (chat, peer):
        reader = PeerReader(peer)
        bodies = [b"hello", b"", b"\r\n\r\n", b"LEN 3\r\n", b"z" * 70000]
        stream = b"".join(b"LEN %d\r\n" % len(b) + b for b in bodies)
        if bytewise:
            head, tail = stream[:200], stream[200:]
            for i in range(len(head)):
                peer.sendall(head[i : i + 1])
                poller.poll(0)
            peer.sendall(tail)
        else:
            peer.sendall(stream)
        expected = b"".join(b"<" + b + b">;" for b in bodies)
        assert read_exactly(poller, reader, len(expected)) == expected
        assert chat.get_terminator() == b"\r\n"


def test_in_buffer_size_bounds_each_read(poller):
    class Small(RecordingChat):
        ac_in_buffer_size = 7

    with chat_and_peer(poller, Small) as (chat, peer):
        peer.sendall(b"0123456789" * 10)
        run_until(poller, lambda: len(chat.collected()) == 100)
        assert all(len(e[1]) <= 7 for e in chat.events if type(e) is tuple)


def test_eof_mid_frame(poller):
    """The partial frame is still collected (held-back bytes too), then handle_close."""
    with chat_and_peer(poller, LineEcho) as (chat, peer):
        peer.sendall(b"line1\r\npartial data\r")
        run_until(poller, lambda: chat.collected().endswith(b"partial data"))
        peer.shutdown(socket.SHUT_WR)
        run_until(poller, lambda: chat.closed, what="the chat to close")
        assert chat.frames == [b"line1"]
        assert chat.collected() == b"line1partial data\r"
        assert chat.events[-1] == "close" and chat.closes == 1
        assert chat.current == [b"partial data", b"\r"]


def test_eof_mid_counted_body(poller):
    with chat_and_peer(poller, HeaderBody) as (chat, peer):
        peer.sendall(b"LEN 100\r\nonly forty" * 1)
        peer.close()
        run_until(poller, lambda: chat.closed, what="the chat to close")
        assert chat.collected() == b"LEN 100only forty"
        assert chat.get_terminator() == 90
        assert chat.events[-1] == "close" and chat.closes == 1


def test_peer_never_sends_the_terminator(poller, caplog):
    """The frame limit: a clear error, a clean close, handle_close once."""

    class Limited(LineEcho):
        max_frame_size = 64 * 1024

    with chat_and_peer(poller, Limited) as (chat, peer):
        fd = chat.fileno()
        sock = chat.socket
        peer.setblocking(False)
        sent = [0]

        def flood():
            try:
                sent[0] += peer.send(b"x" * 65536)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # reset once the chat closed with unread data
                pass
            return chat.closed

        with caplog.at_level(logging.ERROR, logger="pike"):
            run_until(poller, flood, what="the chat to give up")
        assert chat.closes == 1 and chat.events[-1] == "close"
        assert chat.fileno() == -1 and sock.fileno() == -1
        assert fd not in {c.fileno() for c in poller.channels()}
        assert chat.frames == []
        # Content up to the limit was delivered, nothing beyond it.
        assert chat.collected() == b"x" * (64 * 1024)
        assert any(
            "frame too large" in r.getMessage() and r.levelno == logging.ERROR
            for r in caplog.records
        )
        assert not chat.producer_fifo and chat.framer.buffered == 0
        # The peer sees the end of the connection, not a hang.
        peer.setblocking(True)
        peer.settimeout(5)
        try:
            while peer.recv(65536):
                pass
        except ConnectionResetError:
            pass
        # Nothing is left on the poller and no callback comes late.
        poller.poll(0.05)
        assert chat.closes == 1


def test_frame_too_large_hook_can_reply(poller):
    class Polite(LineEcho):
        max_frame_size = 1000

        def handle_frame_too_large(self, exc):
            assert isinstance(exc, FrameTooLarge)
            self.push(b"ERR line too long\r\n")
            self.close_when_done()

    with chat_and_peer(poller, Polite) as (chat, peer):
        reader = PeerReader(peer)
        peer.sendall(b"ok\r\n" + b"y" * 5000)
        run_until(poller, reader.pump_until_eof, what="the reply and EOF")
        assert bytes(reader.data) == b"ok\r\nERR line too long\r\n"
        assert chat.closed and chat.closes == 0  # closed by close_when_done


# -- output and producers ---------------------------------------------------------


def test_large_producer_through_a_slow_reader(poller):
    """8 MiB from a lazy producer arrive intact; it is never drained ahead."""
    total = 8 << 20
    with chat_and_peer(poller, RecordingChat) as (chat, peer):
        small_buffers(chat, peer)
        reader = PeerReader(peer, bufsize=32768)
        producer = GeneratorProducer(total, chat=chat, reader=reader)
        chat.push(b"HEAD")
        chat.push_with_producer(producer)
        chat.push(b"TAIL")
        peer.setblocking(False)

        def slow_read():
            try:
                chunk = peer.recv(32768)  # one small read per poll
            except (BlockingIOError, InterruptedError):
                return False
            reader.data += chunk
            return len(reader.data) >= total + 8

        run_until(poller, slow_read, timeout=60, step=0.01, what="8 MiB at the peer")
        data = bytes(reader.data)
        assert data[:4] == b"HEAD" and data[-4:] == b"TAIL"
        assert hashlib.sha256(data[4:-4]).digest() == producer.digest.digest()
        assert producer.produced == total
        high = chat.get_write_buffer_limits()[1]
        # more() is only asked while the write buffer is at most the high
        # water mark, so the producer stays close to the reader.
        assert max(producer.buffer_sizes) <= high
        assert max(producer.ahead) <= 1 << 20, max(producer.ahead)
        assert not chat.producer_fifo and chat.get_write_buffer_size() == 0


def test_queued_producers_leave_in_one_write(poller):
    class Counting(LineEcho):
        def __init__(self, *args, **kwargs):
            self.write_calls = []
            super().__init__(*args, **kwargs)

        def write(self, data):
            self.write_calls.append(1)
            super().write(data)

        def writelines(self, buffers):
            buffers = list(buffers)
            self.write_calls.append(len(buffers))
            super().writelines(buffers)

    with chat_and_peer(poller, Counting) as (chat, peer):
        reader = PeerReader(peer)
        stream = b"".join(b"%03d\r\n" % i for i in range(200))
        peer.sendall(stream)
        assert read_exactly(poller, reader, len(stream)) == stream
        # 200 replies, but only as many write calls as reads (normally 1).
        assert len(chat.write_calls) <= 5, chat.write_calls
        assert sum(chat.write_calls) == 200

        # Several producers queued at once go out in one gather write too.
        chat.write_calls.clear()

        def push_producers():
            for i in range(5):
                chat.push_with_producer(simple_producer(b"p%d;" % i, 2))

        chat.frame_hooks[b"P"] = push_producers
        peer.sendall(b"P\r\n")
        got = read_exactly(poller, reader, len(stream) + 15)
        assert got[len(stream) :] == b"p0;p1;p2;p3;p4;"
        assert chat.write_calls == [10]  # five producers, two pieces each


def test_close_when_done_after_pending_producers(poller):
    with chat_and_peer(poller, RecordingChat) as (chat, peer):
        small_buffers(chat, peer)
        big = bytes(range(256)) * 8192  # 2 MiB
        producer = GeneratorProducer(3 << 20, chat=chat)
        chat.push(b"first;")
        chat.push_with_producer(simple_producer(big, 65536))
        chat.push_with_producer(producer)
        chat.close_when_done()
        chat.push(b"never sent")
        assert not chat.closed  # far more than the kernel takes at once
        reader = PeerReader(peer)
        run_until(poller, reader.pump_until_eof, timeout=30, what="all data, then EOF")
        data = bytes(reader.data)
        assert data[:6] == b"first;"
        assert data[6 : 6 + len(big)] == big
        rest = data[6 + len(big) :]
        assert len(rest) == 3 << 20
        assert hashlib.sha256(rest).digest() == producer.digest.digest()
        assert chat.closed and chat.closes == 0 and chat.fileno() == -1
        assert not chat.producer_fifo


def test_close_when_done_with_nothing_pending(poller):
    with chat_and_peer(poller, RecordingChat) as (chat, peer):
        chat.close_when_done()
        assert chat.closed and chat.closes == 0  # as Transport.close_when_done
        assert peer.recv(10) == b""


def test_none_in_the_fifo_means_close(poller):
    with chat_and_peer(poller, LineEcho) as (chat, peer):

        def pushes():
            chat.push(b"abc")
            chat.push_with_producer(None)
            chat.push(b"def")

        chat.frame_hooks[b"GO"] = pushes
        peer.sendall(b"GO\r\n")
        reader = PeerReader(peer)
        run_until(poller, reader.pump_until_eof)
        assert bytes(reader.data) == b"abc"
        assert chat.closed and chat.closes == 0


def test_peer_reset_while_producing(poller):
    """A reset in the middle of a large producer: one handle_close, no error."""

    class NoErrors(RecordingChat):
        def handle_error(self):
            self.events.append("error")
            self.close()

    with chat_and_peer(poller, NoErrors) as (chat, peer):
        small_buffers(chat, peer)
        producer = GeneratorProducer(16 << 20, chat=chat)
        chat.push_with_producer(producer)
        chat.close_when_done()
        assert not chat.closed
        peer.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        peer.close()
        run_until(poller, lambda: chat.closed, what="the chat to notice the reset")
        assert chat.closes == 1 and "error" not in chat.events
        assert producer.produced < (16 << 20)
        assert not chat.producer_fifo and chat.fileno() == -1


def test_discard_buffers_output(poller):
    with chat_and_peer(poller, RecordingChat) as (chat, peer):
        small_buffers(chat, peer)
        producer = GeneratorProducer(4 << 20, chat=chat)
        chat.push_with_producer(producer)
        chat.push(b"queued behind")
        assert chat.producer_fifo and chat.get_write_buffer_size() > 0
        chat.discard_buffers()
        assert not chat.producer_fifo and chat.get_write_buffer_size() == 0
        chat.push(b"after")
        reader = PeerReader(peer)
        run_until(poller, lambda: reader.pump() and reader.data.endswith(b"after"))
        assert len(reader.data) < (4 << 20)
        assert b"queued behind" not in reader.data
        assert producer.produced < (4 << 20)


def test_discard_buffers_input(poller):
    with chat_and_peer(poller, LineEcho) as (chat, peer):
        peer.sendall(b"abc\r")
        run_until(poller, lambda: chat.collected() == b"abc")
        assert chat.ac_in_buffer == b"\r"
        chat.discard_buffers()
        assert chat.ac_in_buffer == b""
        peer.sendall(b"\nxyz\r\n")
        run_until(poller, lambda: chat.frames)
        # The held-back b"\r" was dropped: b"\n" is content now.
        assert chat.frames == [b"abc\nxyz"]


def test_producer_returning_str_is_an_error(poller):
    class StrProducer:
        def more(self):
            return "text"

    class Quiet(RecordingChat):
        def handle_error(self):
            self.events.append("error")
            self.close()

    with chat_and_peer(poller, Quiet) as (chat, peer):
        with pytest.raises(TypeError, match="str"):
            chat.push_with_producer(StrProducer())


# -- the API --------------------------------------------------------------------


def test_push_str_is_a_type_error(poller):
    with chat_and_peer(poller, LineEcho) as (chat, peer):
        with pytest.raises(TypeError):
            chat.push("text")
        with pytest.raises(TypeError):
            chat.push(12)
        with pytest.raises(TypeError):
            chat.set_terminator("\r\n")
        with pytest.raises(ValueError):
            chat.set_terminator(-5)
        buf = bytearray(b"mutable")

        def pushes():  # inside a read: held in the FIFO until it ends
            chat.push(buf)
            chat.push(memoryview(b"view"))
            chat.push_with_producer(b"raw")
            buf[:] = b"CHANGED"
            assert len(chat.producer_fifo) == 3

        chat.frame_hooks[b"GO"] = pushes
        peer.sendall(b"GO\r\n")
        reader = PeerReader(peer)
        assert read_exactly(poller, reader, 14) == b"mutableviewraw"
        # Outside a read, with nothing queued, a push goes straight out.
        buf[:] = b"direct!"
        chat.push(buf)
        buf[:] = b"CHANGED"
        assert read_exactly(poller, reader, 21)[14:] == b"direct!"


def test_abstract_methods_and_defaults(poller):
    chat = Chat(alternate_poller=poller)
    with pytest.raises(NotImplementedError):
        chat.collect_incoming_data(b"x")
    with pytest.raises(NotImplementedError):
        chat.found_terminator()
    assert chat.get_terminator() is None
    assert chat.ac_in_buffer_size == 65536 and chat.ac_out_buffer_size == 65536
    assert chat.max_frame_size == 1 << 20
    chat.set_terminator(b"\n")
    assert chat.terminator == b"\n"
    chat.terminator = 12
    assert chat.get_terminator() == 12
    chat.push(b"not connected: stays queued")
    assert len(chat.producer_fifo) == 1
    chat.close()
    assert not chat.producer_fifo


def test_simple_producer():
    p = simple_producer(b"abcdefghij", buffer_size=4)
    assert [p.more() for _ in range(5)] == [b"abcd", b"efgh", b"ij", b"", b""]
    p = simple_producer(b"small")
    assert p.more() == b"small" and p.more() == b""
    source = bytearray(b"copy me")
    p = simple_producer(source)
    source[:] = b"xxxxxxx"
    assert p.more() == b"copy me"
    with pytest.raises(TypeError):
        simple_producer("text")
    big = bytes(range(256)) * 40
    p = simple_producer(big, 512)
    assert b"".join(iter(p.more, b"")) == big


def test_handle_close_may_answer_and_close_when_done(poller):
    """close_when_done closes (as Transport's does): a handle_close that
    pushes a last answer and calls it runs once, and the answer leaves."""

    class Lingering(RecordingChat):
        def handle_close(self):
            self.closes += 1
            if self.closed:
                return
            self.push(b"bye\r\n")
            self.close_when_done()

    with chat_and_peer(poller, Lingering) as (chat, peer):
        peer.shutdown(socket.SHUT_WR)
        reader = PeerReader(peer)
        run_until(poller, reader.pump_until_eof, what="the answer, then EOF")
        assert bytes(reader.data) == b"bye\r\n"
        assert chat.closed and chat.closes == 1
