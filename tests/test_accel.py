"""The C accelerator (``pike._pike_accel``) and how pike chooses it.

* ``send_now`` and ``send_rest`` are driven on real socketpairs and held to
  ``socket.socket.send`` (``send_rest`` to the pure one beneath ``write``)
  case by case (bytes moved, buffer types,
  would-block, closed sockets, non-sockets, a closed peer: EPIPE, never
  SIGPIPE).
* ``epoll_collect`` is driven on a real epoll set: records, EOF, the
  receive budget under a flood; the poller built on it is tested in
  tests/test_handle_data.py and the suites that run over every poller x
  implementation.
* ``Transport.send`` and ``write`` on the C primitives are held to the pure
  ones.
* ``PIKE_IMPL`` is exercised at import time in subprocesses, each bounded by
  a timeout; a missing accelerator is simulated with a ``sys.meta_path``
  finder that refuses to import it.

Tests that need the compiled module skip when it is not importable; the
ones about choosing the implementation run either way.
"""

import array
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import pike
from pike import _impl, transport
from pike.transport import Transport

try:
    from pike import _pike_accel as accel
except ImportError:  # pragma: no cover - depends on the build
    accel = None

requires_accel = pytest.mark.skipif(
    accel is None, reason="the C accelerator (pike._pike_accel) is not built"
)
requires_collect = pytest.mark.skipif(
    not hasattr(accel, "epoll_collect"), reason="epoll_collect is Linux only"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pike.__file__)))
SUBPROCESS_TIMEOUT = 60

# -- send and send_now -----------------------------------------------------------


@pytest.fixture
def socketpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _receive_exactly(sock, size):
    received = b""
    deadline = time.monotonic() + 10
    while len(received) < size:
        assert time.monotonic() < deadline, "the bytes did not arrive"
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            continue
        assert chunk
        received += chunk
    return received


@requires_accel
@pytest.mark.parametrize("name", ["send_now", "send_rest"])
@pytest.mark.parametrize("size", [1, 100, 4096, 60000])
def test_send_moves_bytes(socketpair, name, size):
    a, b = socketpair
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    # (send_rest counts what the kernel did not take: nothing here.)
    assert getattr(accel, name)(a, data) == (0 if name == "send_rest" else len(data))
    assert _receive_exactly(b, size) == data


@requires_accel
@pytest.mark.parametrize(
    "data",
    [bytearray(b"mutable"), memoryview(b"a view"), memoryview(b"0123456789")[2:7],
     array.array("i", [1, 2, 3]), memoryview(array.array("i", [4, 5])).cast("B")],
    ids=["bytearray", "memoryview", "sliced-view", "array", "cast-view"],
)
def test_send_takes_any_contiguous_buffer_and_counts_bytes(socketpair, data):
    a, b = socketpair
    expected = bytes(data)
    assert accel.send_now(a, data) == len(expected)  # bytes, not items
    assert _receive_exactly(b, len(expected)) == expected


@requires_accel
@pytest.mark.parametrize("name", ["send_now", "send_rest"])
def test_partial_send_when_the_buffer_fills(socketpair, name):
    a, b = socketpair
    data = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than the buffers hold
    n = getattr(accel, name)(a, data)
    assert 0 < n < len(data)  # sent (send_now) or left (send_rest): some of each
    sent = n if name == "send_now" else len(data) - n
    assert _receive_exactly(b, 1024)[:1024] == data[:1024]
    assert sent >= 1024


def _fill(sock):
    chunk = b"f" * 65536
    for _ in range(10000):
        try:
            if socket.socket.send(sock, chunk) == 0:
                return
        except BlockingIOError:
            return
    raise AssertionError("the socket never filled")


@requires_accel
def test_would_block_is_zero_sent_or_all_left(socketpair):
    a, b = socketpair
    _fill(a)
    with pytest.raises(BlockingIOError):
        socket.socket.send(a, b"more")  # where the socket's own send raises
    assert accel.send_now(a, b"more") == 0
    assert accel.send_rest(a, b"more") == 4  # all of it unsent


# Each case: (make the sending socket and its peer, the data) -> what the
# socket's own send does; the C sends must do the same.
def _closed_socket():
    a, b = socket.socketpair()
    a.close()
    return a, b


def _closed_peer():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.close()
    return a, b


def _outcome(fn, sock, data):
    try:
        return ("returned", fn(sock, data))
    except OSError as exc:
        return (type(exc).__name__, exc.errno)
    except (TypeError, BufferError) as exc:
        return (type(exc).__name__, None)


@requires_accel
@pytest.mark.parametrize("name", ["send_now", "send_rest"])
@pytest.mark.parametrize(
    "case, data",
    [("closed socket", b"x"), ("closed peer", b"x"), ("closed peer", b"y" * 100000),
     ("not a socket", b"x"), ("not a buffer", "text"), ("empty", b"")],
)
def test_c_send_does_what_socket_send_does(name, case, data):
    made = []

    def make():
        if case == "closed socket":
            pair = _closed_socket()
        elif case in ("closed peer",):
            pair = _closed_peer()
        else:
            pair = socket.socketpair()
            pair[0].setblocking(False)
        made.extend(pair)
        return pair[0] if case != "not a socket" else object()

    # (send_rest against the pure one beneath write, which is socket.send
    # with the count turned into what is left.)
    pure = transport._socket_send_rest if name == "send_rest" else socket.socket.send
    try:
        expected = _outcome(pure, make(), data)
        got = _outcome(getattr(accel, name), make(), data)
    finally:
        for sock in made:
            sock.close()
    assert got == expected
    if case == "closed socket":
        assert got == ("OSError", errno.EBADF)  # fd -1: no send to a reused fd


@requires_accel
def test_send_wants_two_arguments():
    with socket.socket() as sock, pytest.raises(TypeError):
        accel.send_now(sock)
    with pytest.raises(TypeError):
        accel.send_rest()


# -- epoll_collect ---------------------------------------------------------------


@pytest.fixture
def epoll():
    ep = select.epoll()
    yield ep
    ep.close()


def _pairs(n):
    pairs = [socket.socketpair() for _ in range(n)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)
    return pairs


def _records(records):
    """The records of one kind as a list ([] for None)."""
    return list(records or ())


@requires_collect
def test_collect_with_nothing_ready_is_none(epoll):
    assert accel.epoll_collect(epoll.fileno(), [0] * 8, select.EPOLLIN) is None


@requires_collect
def test_collect_receives_for_fds_with_a_size_and_reports_the_rest(epoll):
    pairs = _pairs(3)
    try:
        sizes = [0] * 64
        (r0, w0), (r1, w1), (r2, w2) = pairs
        for r in (r0, r1, r2):
            epoll.register(r.fileno(), select.EPOLLIN)
        sizes[r0.fileno()] = 4          # receives at most 4 bytes
        sizes[r1.fileno()] = 65536      # receives all
        w0.send(b"abcdefgh")
        w1.send(b"hello")
        w2.send(b"not received")        # size 0: the channel reads itself
        data, other = accel.epoll_collect(epoll.fileno(), sizes, select.EPOLLIN)
        got = dict(_records(data))
        assert got == {r0.fileno(): b"abcd", r1.fileno(): b"hello"}
        assert _records(other) == [(r2.fileno(), select.EPOLLIN, accel.NOT_RECEIVED)]
        assert r2.recv(100) == b"not received"
        w1.close()  # EOF
        data, other = accel.epoll_collect(epoll.fileno(), sizes, select.EPOLLIN)
        assert dict(_records(data)) == {r0.fileno(): b"efgh"}
        eof = [record for record in _records(other) if record[0] == r1.fileno()]
        assert len(eof) == 1 and eof[0][2] == 0  # result 0: EOF
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@requires_collect
def test_collect_reports_a_readable_and_writable_fd_in_both_lists(epoll):
    # The bytes go to data_records; the write bit, without the read bits,
    # to other_records, marked NOT_RECEIVED so the dispatch treats it as
    # a plain event. Many such fds at once: the lists are cut to size.
    pairs = _pairs(5)
    try:
        sizes = [0] * 1024
        for r, w in pairs:
            epoll.register(r.fileno(), select.EPOLLIN | select.EPOLLOUT)
            sizes[r.fileno()] = 100
            w.send(b"ping %d" % r.fileno())
        data, other = accel.epoll_collect(
            epoll.fileno(), sizes, select.EPOLLIN | select.EPOLLPRI | select.EPOLLHUP
        )
        assert dict(_records(data)) == {r.fileno(): b"ping %d" % r.fileno() for r, _ in pairs}
        assert sorted(_records(other)) == sorted(
            (r.fileno(), select.EPOLLOUT, accel.NOT_RECEIVED) for r, _ in pairs
        )
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@requires_collect
def test_collect_reports_a_failed_receive_as_minus_errno(epoll):
    # A TCP peer that closes with SO_LINGER 0 resets the connection: the
    # receive fails with ECONNRESET, reported in other_records.
    import struct

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=10)
    server, _ = listener.accept()
    try:
        client.setblocking(False)
        epoll.register(client.fileno(), select.EPOLLIN)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        sizes = [0] * (client.fileno() + 1)
        sizes[client.fileno()] = 100
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the reset never arrived"
            records = accel.epoll_collect(epoll.fileno(), sizes, select.EPOLLIN)
            if records is not None:
                break
        data, other = records
        assert data is None
        assert [(fd, result) for fd, _, result in _records(other)] == [
            (client.fileno(), -errno.ECONNRESET)
        ]
    finally:
        listener.close()
        client.close()
        server.close()


@requires_collect
def test_collect_reads_take_at_most_the_budget_under_a_flood(epoll):
    # 12 channels with 256 KiB waiting each and a 256 KiB read size: one
    # collect reads at most RECEIVE_BUDGET bytes, lets no read below
    # MIN_RECEIVE happen, and loses nothing: what it did not read is read
    # by later collects, in order, per channel.
    pairs = _pairs(12)
    payload = {}
    try:
        sizes = [0] * 1024
        for i, (r, w) in enumerate(pairs):
            r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            epoll.register(r.fileno(), select.EPOLLIN)
            sizes[r.fileno()] = 256 * 1024
            data = bytes([i]) * (256 * 1024)
            sent = 0
            while sent < len(data):
                sent += w.send(data[sent:])
            payload[r.fileno()] = data
        received = {fd: b"" for fd in payload}
        deadline = time.monotonic() + 20
        while any(len(received[fd]) < len(payload[fd]) for fd in payload):
            assert time.monotonic() < deadline
            data, other = accel.epoll_collect(epoll.fileno(), sizes, select.EPOLLIN)
            reads = _records(data)
            assert sum(len(chunk) for _, chunk in reads) <= accel.RECEIVE_BUDGET
            for fd, chunk in reads:
                received[fd] += chunk
            for fd, bits, result in _records(other):
                assert result == accel.NOT_RECEIVED  # over budget: not read
        assert received == payload
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@requires_collect
def test_collect_reads_of_every_size_in_turn_lose_nothing(epoll):
    # A large read marks its fd as streaming, and the next read goes straight
    # into a bytes object of the full read size; a short one is copied out
    # of it and a small one clears the mark. Every path, in turn, on one
    # fd, then EOF on a marked fd: each chunk arrives whole, in order.
    r, w = socket.socketpair()
    try:
        for s in (r, w):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        r.setblocking(False)
        epoll.register(r.fileno(), select.EPOLLIN)
        size = 65536
        sizes = [0] * (r.fileno() + 1)
        sizes[r.fileno()] = size
        chunk_sizes = [size, size, 40000, 100, size, 1, size, size, 33000]
        for i, n in enumerate(chunk_sizes):
            chunk = bytes((i * 7 + k) % 251 for k in range(n))
            w.sendall(chunk)
            got = b""
            deadline = time.monotonic() + 10
            while len(got) < n:
                assert time.monotonic() < deadline
                records = accel.epoll_collect(epoll.fileno(), sizes, select.EPOLLIN)
                if records is None:
                    continue
                data, other = records
                assert other is None
                [(fd, piece)] = data
                assert fd == r.fileno() and type(piece) is bytes
                got += piece
            assert got == chunk, f"chunk {i} ({n} bytes) differs"
        w.close()
        data, other = accel.epoll_collect(epoll.fileno(), sizes, select.EPOLLIN)
        assert data is None and [(fd, result) for fd, _, result in other] == [(r.fileno(), 0)]
    finally:
        r.close()
        w.close()


@requires_collect
def test_collect_refuses_bad_arguments(epoll):
    with pytest.raises(TypeError):
        accel.epoll_collect(epoll.fileno(), (0, 0), select.EPOLLIN)
    with pytest.raises(TypeError):
        accel.epoll_collect(epoll.fileno(), [0])
    r, w = socket.socketpair()
    try:
        epoll.register(r.fileno(), select.EPOLLIN)
        w.send(b"x")
        sizes = [0] * (r.fileno() + 1)
        sizes[r.fileno()] = "many"
        with pytest.raises(TypeError):
            accel.epoll_collect(epoll.fileno(), sizes, select.EPOLLIN)
        assert r.recv(1) == b"x"  # nothing was read
    finally:
        r.close()
        w.close()
    with pytest.raises(OSError) as caught:
        accel.epoll_collect(-1, [], select.EPOLLIN)
    assert caught.value.errno == errno.EBADF


# -- subprocesses ------------------------------------------------------------------

# A finder that makes the accelerator look unbuilt, whatever is on disk.
HIDE_ACCELERATOR = """
import sys

class _HideAccelerator:
    def find_spec(self, name, path=None, target=None):
        if name == "pike._pike_accel":
            raise ModuleNotFoundError("hidden by the test", name=name)
        return None

sys.meta_path.insert(0, _HideAccelerator())
"""


def run_python(code, pike_impl=None, hide_accelerator=False):
    """Run ``code`` in a fresh interpreter that imports pike from this tree."""
    env = dict(os.environ)
    env.pop("PIKE_IMPL", None)
    if pike_impl is not None:
        env["PIKE_IMPL"] = pike_impl
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, env.get("PYTHONPATH")) if p
    )
    source = textwrap.dedent(code)
    if hide_accelerator:
        source = HIDE_ACCELERATOR + source
    return subprocess.run(
        [sys.executable, "-c", source],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


def _ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@requires_accel
def test_blocking_socket_cannot_hang():
    # MSG_DONTWAIT: a socket left blocking by mistake still returns -EAGAIN.
    # In a subprocess, because a hang here would be in C, beyond the reach
    # of pytest-timeout's signal.
    result = run_python(
        """
        import socket
        from pike import _pike_accel
        a, b = socket.socketpair()
        assert a.getblocking() and b.getblocking()
        chunk = b"x" * 65536
        while True:
            n = _pike_accel.send_now(a, chunk)
            if n == 0:
                break
        print(n)
        """
    )
    assert _ok(result) == ["0"]


@requires_accel
def test_send_to_closed_peer_raises_no_sigpipe():
    # CPython ignores SIGPIPE; restore the default action, which would kill
    # the process if the C send let the kernel raise the signal.
    result = run_python(
        """
        import signal, socket
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        from pike import _pike_accel
        a, b = socket.socketpair()
        b.close()
        for data in (b"x", b"y" * 100000):
            try:
                _pike_accel.send_now(a, data)
            except BrokenPipeError as exc:
                print(exc.errno)
        """
    )
    assert result.returncode != -signal.SIGPIPE, "killed by SIGPIPE"
    assert _ok(result) == [str(errno.EPIPE)] * 2


REPORT = """
import sys
import pike
from pike import transport
# The send primitive beneath Transport: the socket's own, or the C one.
print(pike.IMPLEMENTATION, getattr(transport._send_now, "__module__", "socket"),
      "pike._pike_accel" in sys.modules)
"""


@requires_accel
@pytest.mark.parametrize("value", ["c", "auto", None, ""])
def test_pike_impl_c_or_auto_runs_c(value):
    assert _ok(run_python(REPORT, pike_impl=value)) == ["c", "pike._pike_accel", "True"]


def test_pike_impl_python_never_loads_the_accelerator():
    result = run_python(REPORT, pike_impl="python")
    assert _ok(result) == ["python", "socket", "False"]


def test_pike_impl_bogus_is_a_value_error():
    result = run_python("import pike", pike_impl="bogus")
    assert result.returncode != 0
    assert "ValueError" in result.stderr
    assert "PIKE_IMPL" in result.stderr and "'bogus'" in result.stderr


def test_pike_impl_c_without_the_accelerator_fails_loudly():
    code = """
    try:
        import pike
    except ImportError as exc:
        print("ImportError:", exc)
    else:
        print("imported", pike.IMPLEMENTATION)
    """
    result = run_python(code, pike_impl="c", hide_accelerator=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("ImportError:"), out
    assert "PIKE_IMPL=c" in out and "pike._pike_accel" in out and "not built" in out


@pytest.mark.parametrize("value", ["auto", "python"])
def test_without_the_accelerator_auto_and_python_run_python(value):
    result = run_python(REPORT, pike_impl=value, hide_accelerator=True)
    assert _ok(result) == ["python", "socket", "False"]


def test_select_c_without_the_accelerator_raises_and_changes_nothing():
    code = """
    import pike
    from pike import _impl
    from pike.transport import Transport
    try:
        _impl.select_implementation("c")
    except ImportError as exc:
        print("ImportError")
    from pike import transport
    print(pike.IMPLEMENTATION, _impl.IMPLEMENTATION,
          getattr(transport._send_now, "__module__", "socket"))
    print(_impl.available_implementations())
    """
    result = run_python(code, pike_impl="auto", hide_accelerator=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ImportError",
        "python python socket",
        "['python']",
    ]


# -- select_implementation, in this process ------------------------------------------


@pytest.fixture
def restore_implementation():
    previous = _impl.IMPLEMENTATION
    yield
    _impl.select_implementation(previous)


@requires_accel
def test_select_implementation_switches_the_primitives_and_back(restore_implementation):
    import select as select_module

    from pike import _c_path

    _impl.select_implementation("python")
    assert transport._send_now is socket.socket.send
    assert transport._send_rest is transport._socket_send_rest
    assert pike.IMPLEMENTATION == _impl.IMPLEMENTATION == "python"
    epoll = hasattr(select_module, "epoll")
    if epoll:
        poller = pike.make_poller("epoll")
        assert type(poller).__name__ == "EpollPoller"
        poller.close()

    _impl.select_implementation("c")
    assert transport._send_now is _c_path._pike_accel.send_now
    assert transport._send_rest is _c_path._pike_accel.send_rest
    assert pike.IMPLEMENTATION == _impl.IMPLEMENTATION == "c"
    if epoll:
        poller = pike.make_poller("epoll")
        assert type(poller).__name__ == "BatchedEpollPoller"
        assert isinstance(poller, pike.poller.EpollPoller)
        poller.close()
    _impl.select_implementation("c")  # twice is harmless

    _impl.select_implementation("python")
    assert transport._send_now is socket.socket.send
    assert transport._send_rest is transport._socket_send_rest
    assert pike.IMPLEMENTATION == "python"

    with pytest.raises(ValueError):
        _impl.select_implementation("bogus")
    assert transport._send_now is socket.socket.send and pike.IMPLEMENTATION == "python"


# Buffers of each kind Transport's writers take; len() of an array or a cast
# memoryview counts items, not bytes.
BUFFERS = [
    b"bytes",
    bytearray(b"bytearray"),
    memoryview(b"memoryview"),
    array.array("i", [1, 2, 3]),
    memoryview(b"abcdefgh").cast("I"),
]
BUFFER_IDS = ["bytes", "bytearray", "memoryview", "array", "cast-memoryview"]


# -- the C Transport.send against the pure one ----------------------------------------


@pytest.fixture(params=["python", "c"])
def impl(request, restore_implementation):
    if request.param not in _impl.available_implementations():
        pytest.skip("the C accelerator is not built")
    _impl.select_implementation(request.param)
    return request.param


@pytest.fixture
def transport_pair(impl):
    poller = pike.make_poller("poll")
    a, b = socket.socketpair()
    b.setblocking(False)

    class Closing(Transport):
        closes = 0

        def handle_close(self):
            self.closes += 1
            self.close()

    transport = Closing(poller, a)
    yield transport, b
    transport.close()
    b.close()
    poller.close()


@pytest.mark.parametrize("data", BUFFERS, ids=BUFFER_IDS)
def test_transport_send_counts_bytes(transport_pair, data):
    # len() of an array or a cast memoryview counts items, not bytes.
    transport, peer = transport_pair
    expected = bytes(memoryview(data))
    assert transport.send(data) == len(expected)
    assert peer.recv(100) == expected


def test_transport_send_would_block_arms_a_write(transport_pair):
    transport, peer = transport_pair
    chunk = b"w" * 65536
    for _ in range(10000):
        if transport.send(chunk) == 0:
            break
    assert transport._write_armed


def test_transport_send_waits_behind_queued_data(transport_pair):
    transport, peer = transport_pair
    transport._queue = pike.transport.WriteQueue()
    transport._queue.append(b"queued")
    assert transport.send(b"later") == 0
    assert transport._write_armed
    with pytest.raises(BlockingIOError):  # nothing jumped the queue
        peer.recv(100)


def test_transport_send_to_closed_peer_closes(transport_pair):
    transport, peer = transport_pair
    peer.close()
    assert transport.send(b"x") == 0
    assert transport.closes == 1 and transport.closed


def test_transport_send_after_close_raises_ebadf(transport_pair):
    transport, peer = transport_pair
    transport.close()
    with pytest.raises(OSError) as info:
        transport.send(b"x")
    assert info.value.errno == errno.EBADF


# -- Transport.write under each implementation -----------------------------------------


@pytest.mark.parametrize("data", BUFFERS, ids=BUFFER_IDS)
def test_transport_write_sends_every_byte(transport_pair, data):
    transport, peer = transport_pair
    expected = bytes(memoryview(data))
    transport.write(data)
    assert transport.get_write_buffer_size() == 0
    assert peer.recv(100) == expected


def test_transport_write_queues_what_the_kernel_did_not_take(transport_pair):
    transport, peer = transport_pair
    data = bytes(range(256)) * 16384  # 4 MiB: more than a socketpair holds
    transport.write(bytearray(data))
    queued = transport.get_write_buffer_size()
    assert 0 < queued < len(data)
    assert transport._write_armed
    transport.write(b"tail")  # goes behind the queue, never around it
    assert transport.get_write_buffer_size() == queued + 4
    received = bytearray()
    deadline = time.monotonic() + 10
    while len(received) < len(data) + 4 and time.monotonic() < deadline:
        try:
            received += peer.recv(1 << 20)
        except BlockingIOError:
            transport.poller.poll(0.01)
    assert bytes(received) == data + b"tail"
    assert transport.get_write_buffer_size() == 0


def test_transport_write_to_closed_peer_closes(transport_pair):
    transport, peer = transport_pair
    peer.close()
    transport.write(b"x")
    assert transport.closes == 1 and transport.closed


def test_transport_write_raises_other_errors_unchanged(impl):
    # A datagram larger than UDP allows: EMSGSIZE is the caller's mistake,
    # not a lost connection, so both implementations raise it.
    poller = pike.make_poller("poll")
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        sender.connect(receiver.getsockname())
        transport = Transport(poller, sender)
        with pytest.raises(OSError) as info:
            transport.write(b"x" * 70000)
        assert info.value.errno == errno.EMSGSIZE
        assert not transport.closed
        transport.close()
    finally:
        sender.close()
        receiver.close()
        poller.close()
