"""Unit tests of pike.write_queue.WriteQueue, with a fake socket."""

import array
import socket
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pike import write_queue
from pike.write_queue import WriteQueue


class FakeSocket:
    """Takes at most ``limits[i]`` bytes on call i (0 = would block).

    Once the limits run out it takes everything. ``calls`` records
    ``("send", nbytes_offered)`` or ``("sendmsg", n_buffers, nbytes_offered)``.
    """

    def __init__(self, limits=(), error=None):
        self.limits = list(limits)
        self.error = error
        self.sent = bytearray()
        self.calls = []

    def _take(self, data):
        if self.error is not None:
            raise self.error
        limit = self.limits.pop(0) if self.limits else len(data)
        if limit == 0:
            raise BlockingIOError(11, "would block")
        taken = bytes(data[:limit])
        self.sent += taken
        return len(taken)

    def send(self, data):
        data = memoryview(data).cast("B")
        self.calls.append(("send", len(data)))
        return self._take(data)

    def sendmsg(self, buffers):
        buffers = [memoryview(b).cast("B") for b in buffers]
        joined = b"".join(bytes(b) for b in buffers)
        self.calls.append(("sendmsg", len(buffers), len(joined)))
        return self._take(joined)


def drain(queue, sock, max_calls=10_000):
    for _ in range(max_calls):
        if not queue:
            return
        queue.send_to(sock)
    raise AssertionError("the queue did not drain")


def test_empty_queue():
    q = WriteQueue()
    sock = FakeSocket()
    assert not q and len(q) == 0 and q.size == 0
    assert q.send_to(sock) == 0
    assert sock.calls == []


def test_empty_data_is_ignored():
    q = WriteQueue()
    q.append(b"")
    q.append(bytearray())
    q.append(b"abc", 3)
    q.append(b"abc", 10)
    assert not q and q.size == 0


def test_single_buffer_uses_send():
    q = WriteQueue()
    q.append(b"hello")
    sock = FakeSocket()
    assert q.send_to(sock) == 5
    assert sock.calls == [("send", 5)]
    assert sock.sent == b"hello" and not q


def test_partial_sends_keep_order_and_size():
    q = WriteQueue()
    q.append(b"abcdefgh")
    sock = FakeSocket([3, 2, 100])
    assert q.send_to(sock) == 3
    assert q.size == 5
    assert q.send_to(sock) == 2
    assert q.size == 3
    assert q.send_to(sock) == 3
    assert sock.sent == b"abcdefgh" and not q
    # The partly sent head is resent from its offset, not from the start.
    assert [c[1] for c in sock.calls] == [8, 5, 3]


def test_would_block_returns_zero_and_keeps_everything():
    q = WriteQueue()
    q.append(b"abc")
    q.append(b"def")
    sock = FakeSocket([0])
    assert q.send_to(sock) == 0
    assert q.size == 6
    drain(q, sock)
    assert sock.sent == b"abcdef"


def test_interrupted_returns_zero():
    q = WriteQueue()
    q.append(b"abc")
    sock = FakeSocket(error=InterruptedError(4, "interrupted"))
    assert q.send_to(sock) == 0
    assert q.size == 3


def test_other_errors_propagate_and_keep_data():
    q = WriteQueue()
    q.append(b"abc")
    q.append(b"def")
    sock = FakeSocket(error=ConnectionResetError(104, "reset"))
    with pytest.raises(ConnectionResetError):
        q.send_to(sock)
    assert q.size == 6
    sock.error = None
    drain(q, sock)
    assert sock.sent == b"abcdef"


def test_append_with_start_offset():
    q = WriteQueue()
    q.append(b"hello", 2)
    assert q.size == 3
    q.append(b"world", 1)
    q.append(bytearray(b"!!xyz"), 2)
    assert q.size == 3 + 4 + 3
    sock = FakeSocket()
    drain(q, sock)
    assert sock.sent == b"lloorldxyz"


def test_gather_several_buffers_in_one_sendmsg():
    q = WriteQueue()
    for part in (b"ab", b"cd", b"ef"):
        q.append(part)
    sock = FakeSocket()
    assert q.send_to(sock) == 6
    assert sock.calls == [("sendmsg", 3, 6)]
    assert sock.sent == b"abcdef"


def test_gather_partial_across_buffer_boundaries():
    q = WriteQueue()
    for part in (b"abc", b"def", b"ghi"):
        q.append(part)
    sock = FakeSocket([4, 1, 2, 100])
    assert q.send_to(sock) == 4  # "abcd": the second buffer is now partly sent
    assert q.size == 5
    assert q.send_to(sock) == 1  # "e"
    assert q.send_to(sock) == 2  # "f" ends a buffer, "g" starts the next
    assert q.size == 2
    assert q.send_to(sock) == 2
    assert sock.sent == b"abcdefghi" and not q
    # Offsets mean the iovecs offered shrink; buffers fully sent are gone.
    assert sock.calls[0] == ("sendmsg", 3, 9)
    assert sock.calls[1] == ("sendmsg", 2, 5)
    assert sock.calls[2] == ("sendmsg", 2, 4)
    assert sock.calls[3] == ("send", 2)


def test_without_sendmsg_sends_head_only():
    q = WriteQueue()
    for part in (b"ab", b"cd"):
        q.append(part)
    sock = FakeSocket()
    with mock.patch.object(write_queue, "_HAS_SENDMSG", False):
        assert q.send_to(sock) == 2
        assert q.send_to(sock) == 2
    assert sock.calls == [("send", 2), ("send", 2)]
    assert sock.sent == b"abcd"


def test_iov_max_caps_the_gather():
    q = WriteQueue()
    parts = [bytes([65 + i]) * 3 for i in range(10)]
    for part in parts:
        q.append(part)
    sock = FakeSocket()
    with mock.patch.object(write_queue, "_IOV_MAX", 4):
        assert q.send_to(sock) == 12
        assert sock.calls == [("sendmsg", 4, 12)]
        drain(q, sock)
    assert all(call[0] == "send" or call[1] <= 4 for call in sock.calls)
    assert sock.sent == b"".join(parts)


def test_iov_max_is_sane():
    assert write_queue._IOV_MAX >= 16


def test_mutable_buffers_are_copied():
    q = WriteQueue()
    ba = bytearray(b"original")
    backing = bytearray(b"viewed!!")
    view = memoryview(backing)
    arr = array.array("B", b"arr")
    q.append(ba)
    q.append(view)
    q.append(arr)
    q.append(bytearray(b"xxtail"), 2)
    ba[:] = b"CHANGED!"
    backing[:] = b"CHANGED!"
    arr[0] = ord("Z")
    ba.extend(b"more")  # would fail (BufferError) if the queue held a view of it
    sock = FakeSocket([5])
    drain(q, sock)
    assert sock.sent == b"originalviewed!!arrtail"


def test_multibyte_items_count_bytes():
    q = WriteQueue()
    data = array.array("H", [1, 2, 3])
    q.append(data)
    assert q.size == 6
    sock = FakeSocket()
    drain(q, sock)
    assert sock.sent == data.tobytes()


def test_clear():
    q = WriteQueue()
    q.append(b"abc", 1)
    q.append(b"def")
    q.clear()
    assert not q and q.size == 0
    q.append(b"xyz")
    sock = FakeSocket()
    drain(q, sock)
    assert sock.sent == b"xyz"


def test_real_socket_more_buffers_than_iov_max():
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.settimeout(5)
        q = WriteQueue()
        parts = [b"%05d" % i for i in range(write_queue._IOV_MAX + 500)]
        for part in parts:
            q.append(part)
        expected = b"".join(parts)
        got = bytearray()
        for _ in range(10_000):
            q.send_to(a)  # no EMSGSIZE / EINVAL from too many iovecs
            if not q:
                break
            got += b.recv(65536)
        else:
            raise AssertionError("the queue did not drain into a real socket")
        while len(got) < len(expected):
            got += b.recv(65536)
        assert got == expected
    finally:
        a.close()
        b.close()


_append_ops = st.tuples(
    st.just("append"),
    st.sampled_from(["bytes", "bytearray", "memoryview", "array"]),
    st.binary(max_size=40),
    st.integers(min_value=0, max_value=45),
)
_send_ops = st.tuples(st.just("send"), st.integers(min_value=0, max_value=64))


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.one_of(_append_ops, _send_ops), max_size=60),
    gather=st.booleans(),
    iov_max=st.sampled_from([1, 2, 3, 1024]),
)
def test_any_appends_and_partial_sends_deliver_the_concatenation(ops, gather, iov_max):
    q = WriteQueue()
    sock = FakeSocket()
    expected = bytearray()
    with mock.patch.object(write_queue, "_HAS_SENDMSG", gather), mock.patch.object(
        write_queue, "_IOV_MAX", iov_max
    ):
        for op in ops:
            if op[0] == "append":
                _, kind, data, start = op
                if kind == "bytes":
                    buf = data
                elif kind == "bytearray":
                    buf = bytearray(data)
                elif kind == "memoryview":
                    buf = memoryview(bytearray(data))
                else:
                    buf = array.array("B", data)
                q.append(buf, start)
                expected += data[start:]
                # Scribble over the caller's mutable buffer after the append.
                if kind in ("bytearray", "memoryview", "array") and data:
                    for i in range(len(data)):
                        buf[i] = 0xEE
            else:
                sock.limits = [op[1]]
                before = len(sock.sent)
                size_before = q.size
                sent = q.send_to(sock)
                assert sent == len(sock.sent) - before
                assert q.size == size_before - sent
            assert q.size == len(expected) - len(sock.sent)
            assert bool(q) == (q.size > 0)
        sock.limits = []
        drain(q, sock)
    assert bytes(sock.sent) == bytes(expected)
    assert q.size == 0
