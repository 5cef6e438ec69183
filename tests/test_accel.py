"""The C accelerator (``pike._pike_accel``) and how pike chooses it.

* Each scanner of ``csrc/pike_accel.c`` is compared, property by property,
  with a plain-Python reference of its contract (``csrc/pike_accel.h``).
* ``pike_send`` / ``pike_recv`` are driven on real socketpairs: bytes moved,
  EOF, would-block, bad fds, and a closed peer (EPIPE, never SIGPIPE).
* The C ``Transport.send`` of ``pike/_c_path.py`` is held to the pure one.
* ``PIKE_IMPL`` is exercised at import time in subprocesses, each bounded by
  a timeout; a missing accelerator is simulated with a ``sys.meta_path``
  finder that refuses to import it.

Tests that need the compiled module skip when it is not importable; the
ones about choosing the implementation run either way.
"""

import array
import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pike
from pike import _impl
from pike.transport import Transport

try:
    from pike._pike_accel import ffi, lib
except ImportError:  # pragma: no cover - depends on the build
    ffi = lib = None

requires_accel = pytest.mark.skipif(
    lib is None, reason="the C accelerator (pike._pike_accel) is not built"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pike.__file__)))
SUBPROCESS_TIMEOUT = 60

# Bounded and without a deadline: the machine is shared, and a slow example
# says nothing about correctness.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Bytes from a tiny alphabet find each other often; arbitrary bytes rarely.
_tiny = st.lists(st.sampled_from(b"ab"), max_size=40).map(bytes)
_crlf = st.lists(st.sampled_from([b"x", b"\r", b"\n", b"\r\n"]), max_size=30).map(
    b"".join
)
hays = st.one_of(_tiny, _crlf, st.binary(max_size=80))
needles = st.one_of(
    st.lists(st.sampled_from(b"ab"), min_size=1, max_size=5).map(bytes),
    st.sampled_from([b"\r\n", b"\n", b"\r\n\r\n", b"\r"]),
    st.binary(min_size=1, max_size=6),
)


# -- plain-Python references of the contracts ---------------------------------


def ref_find_all(hay, start, needle, limit):
    """Ends of the non-overlapping occurrences of needle in hay[start:]."""
    ends = []
    if not needle:
        return ends
    while len(ends) < limit:
        index = hay.find(needle, start)
        if index < 0:
            break
        start = index + len(needle)
        ends.append(start)
    return ends


def ref_prefix_at_end(hay, needle):
    """Length of the longest proper prefix of needle that hay ends with."""
    best = 0
    for size in range(1, len(needle)):
        if size <= len(hay) and hay[len(hay) - size :] == needle[:size]:
            best = size
    return best


def ref_scan_lengths(buf, start, header_size, little_endian, max_frame, limit):
    """End offsets of complete length-prefixed frames, or -1 (bad input)."""
    if header_size not in (1, 2, 4, 8):
        return -1
    order = "little" if little_endian else "big"
    ends = []
    while len(ends) < limit and len(buf) - start >= header_size:
        size = int.from_bytes(buf[start : start + header_size], order)
        if size > max_frame:
            return -1
        body = start + header_size
        if len(buf) - body < size:
            break  # the last frame is not complete yet
        start = body + size
        ends.append(start)
    return ends


# -- calling the C functions ---------------------------------------------------


def c_find(hay, start, needle):
    return lib.pike_find(hay, len(hay), start, needle, len(needle))


def c_find_all(hay, start, needle, limit):
    ends = ffi.new("long[]", max(limit, 1))
    count = lib.pike_find_all(hay, len(hay), start, needle, len(needle), ends, limit)
    assert 0 <= count <= max(limit, 0)
    return list(ends[0:count])


def c_prefix_at_end(hay, needle):
    return lib.pike_prefix_at_end(hay, len(hay), needle, len(needle))


def c_scan_lengths(buf, start, header_size, little_endian, max_frame, limit):
    ends = ffi.new("long[]", max(limit, 1))
    count = lib.pike_scan_lengths(
        buf, len(buf), start, header_size, int(little_endian), max_frame, ends, limit
    )
    if count < 0:
        assert count == -1
        return -1
    assert count <= max(limit, 0)
    return list(ends[0:count])


# -- pike_find ------------------------------------------------------------------


@requires_accel
@PROPERTY
@given(hay=hays, needle=needles, data=st.data())
@example(hay=b"aaaaa", needle=b"aaa", data=None)
def test_find_matches_bytes_find(hay, needle, data):
    starts = range(len(hay) + 3)
    if data is not None:
        starts = [data.draw(st.integers(0, len(hay) + 3), label="start")]
    for start in starts:
        assert c_find(hay, start, needle) == hay.find(needle, start), start


@requires_accel
def test_find_edge_cases():
    assert c_find(b"", 0, b"a") == -1
    assert c_find(b"abc", 3, b"c") == -1  # start at the end
    assert c_find(b"abc", 10, b"c") == -1  # start past the end
    assert c_find(b"abc", 0, b"abcd") == -1  # needle longer than hay
    assert c_find(b"ab\r\n", 0, b"\r\n") == 2
    assert c_find(b"a\x00b", 0, b"\x00b") == 1  # NUL bytes are data
    # An empty needle never matches: a terminator is never empty.
    assert c_find(b"abc", 0, b"") == -1


# -- pike_find_all --------------------------------------------------------------


@requires_accel
@PROPERTY
@given(
    hay=hays,
    needle=needles,
    start=st.integers(0, 90),
    limit=st.integers(-2, 50),
)
@example(hay=b"aaaaa", needle=b"aaa", start=0, limit=10)
@example(hay=b"aaaaa", needle=b"aa", start=0, limit=10)
@example(hay=b"aaaaaa", needle=b"aa", start=1, limit=10)
@example(hay=b"a\r\nb\r\nc\r\n", needle=b"\r\n", start=0, limit=2)
def test_find_all_matches_python_loop(hay, needle, start, limit):
    assert c_find_all(hay, start, needle, limit) == ref_find_all(
        hay, start, needle, limit
    )


@requires_accel
@PROPERTY
@given(hay=hays, needle=needles)
def test_find_all_counts_like_bytes_count(hay, needle):
    # bytes.count counts non-overlapping occurrences too.
    assert len(c_find_all(hay, 0, needle, len(hay) + 1)) == hay.count(needle)


@requires_accel
def test_find_all_overlapping_patterns_do_not_overlap():
    assert c_find_all(b"aaaaa", 0, b"aaa", 10) == [3]
    assert c_find_all(b"aaaaaa", 0, b"aaa", 10) == [3, 6]
    assert c_find_all(b"aaaaa", 0, b"aa", 10) == [2, 4]
    assert c_find_all(b"abababa", 0, b"aba", 10) == [3, 7]


@requires_accel
def test_find_all_limit():
    hay = b"x\r\n" * 10
    assert c_find_all(hay, 0, b"\r\n", 3) == [3, 6, 9]
    assert c_find_all(hay, 9, b"\r\n", 3) == [12, 15, 18]  # resume after the last
    assert c_find_all(hay, 0, b"\r\n", 0) == []
    assert c_find_all(hay, 0, b"\r\n", -1) == []
    assert c_find_all(hay, 0, b"", 5) == []
    assert c_find_all(hay, len(hay) + 5, b"\r\n", 5) == []


# -- pike_prefix_at_end ----------------------------------------------------------


@requires_accel
@PROPERTY
@given(hay=hays, needle=st.one_of(needles, st.just(b""), st.binary(max_size=20)))
@example(hay=b"abc\r", needle=b"\r\n")
@example(hay=b"abc\r\n\r", needle=b"\r\n\r\n")
@example(hay=b"xaaa", needle=b"aaaa")
@example(hay=b"aaaa", needle=b"aaaa")  # the whole needle is not a *proper* prefix
def test_prefix_at_end_matches_definition(hay, needle):
    assert c_prefix_at_end(hay, needle) == ref_prefix_at_end(hay, needle)


@requires_accel
@PROPERTY
@given(
    head=st.binary(max_size=30),
    needle=st.binary(min_size=2, max_size=16),
    cut=st.integers(1, 15),
)
def test_prefix_at_end_finds_a_split_terminator(head, needle, cut):
    cut = min(cut, len(needle) - 1)
    hay = head + needle[:cut]
    assert c_prefix_at_end(hay, needle) >= cut


@requires_accel
def test_prefix_at_end_edge_cases():
    assert c_prefix_at_end(b"", b"\r\n") == 0
    assert c_prefix_at_end(b"abc", b"") == 0
    assert c_prefix_at_end(b"abc", b"c") == 0  # a 1-byte needle has no proper prefix
    assert c_prefix_at_end(b"ab\r\n\r", b"\r\n\r\n") == 3
    assert c_prefix_at_end(b"\r", b"\r\n\r\n") == 1


# -- pike_scan_lengths -----------------------------------------------------------


def _header(size, header_size, little_endian):
    return size.to_bytes(header_size, "little" if little_endian else "big")


@st.composite
def frame_streams(draw):
    """A stream of length-prefixed frames, perhaps with an incomplete tail."""
    header_size = draw(st.sampled_from([1, 2, 4, 8]))
    little_endian = draw(st.booleans())
    largest = min(2 ** (8 * header_size) - 1, 300)
    payloads = draw(st.lists(st.binary(max_size=largest), max_size=12))
    buf = b"".join(
        _header(len(p), header_size, little_endian) + p for p in payloads
    )
    tail = draw(
        st.sampled_from(["none", "partial-header", "partial-body", "junk"])
    )
    if tail == "partial-header" and header_size > 1:
        buf += _header(5, header_size, little_endian)[: header_size - 1]
    elif tail == "partial-body":
        buf += _header(50, header_size, little_endian) + b"z" * draw(
            st.integers(0, 49)
        )
    elif tail == "junk":
        buf += draw(st.binary(max_size=20))
    return buf, header_size, little_endian


@requires_accel
@PROPERTY
@given(
    stream=frame_streams(),
    max_frame=st.one_of(st.just(2**64 - 1), st.integers(0, 400)),
    limit=st.integers(-1, 20),
    start_shift=st.integers(0, 3),
)
def test_scan_lengths_matches_reference(stream, max_frame, limit, start_shift):
    buf, header_size, little_endian = stream
    start = min(start_shift, len(buf))
    args = (buf, start, header_size, little_endian, max_frame, limit)
    assert c_scan_lengths(*args) == ref_scan_lengths(*args)


@requires_accel
@PROPERTY
@given(
    buf=st.binary(max_size=120),
    header_size=st.sampled_from([1, 2, 4, 8]),
    little_endian=st.booleans(),
    max_frame=st.one_of(st.just(2**64 - 1), st.integers(0, 2**32)),
    limit=st.integers(0, 20),
)
def test_scan_lengths_on_arbitrary_bytes(buf, header_size, little_endian, max_frame, limit):
    args = (buf, 0, header_size, little_endian, max_frame, limit)
    assert c_scan_lengths(*args) == ref_scan_lengths(*args)


@requires_accel
@pytest.mark.parametrize("header_size", [1, 2, 4, 8])
@pytest.mark.parametrize("little_endian", [False, True])
def test_scan_lengths_each_header(header_size, little_endian):
    frames = [b"", b"a", b"hello", b"x" * 200]
    buf = b"".join(_header(len(f), header_size, little_endian) + f for f in frames)
    ends = c_scan_lengths(buf, 0, header_size, little_endian, 2**64 - 1, 10)
    expected, offset = [], 0
    for frame in frames:
        offset += header_size + len(frame)
        expected.append(offset)
    assert ends == expected
    # The other byte order reads other lengths (except for 1-byte headers).
    if header_size > 1:
        other = c_scan_lengths(buf, 0, header_size, not little_endian, 2**64 - 1, 10)
        assert other != expected


@requires_accel
def test_scan_lengths_incomplete_frames_wait():
    buf = _header(3, 4, False) + b"abc" + _header(10, 4, False) + b"12345"
    assert c_scan_lengths(buf, 0, 4, False, 100, 10) == [7]
    assert c_scan_lengths(buf[:2], 0, 4, False, 100, 10) == []  # half a header
    assert c_scan_lengths(buf, 7, 4, False, 100, 10) == []


@requires_accel
def test_scan_lengths_rejects_oversized_frames_and_bad_headers():
    good = _header(3, 2, False) + b"abc"
    too_big = _header(1000, 2, False)  # rejected even before its body arrives
    assert c_scan_lengths(good + too_big, 0, 2, False, 999, 10) == -1
    assert c_scan_lengths(good + too_big, 0, 2, False, 1000, 10) == [5]
    # max_frame is inclusive, and a frame after the limit is not examined.
    assert c_scan_lengths(good + too_big, 0, 2, False, 999, 1) == [5]
    for bad in (0, 3, 5, 16, -1):
        assert c_scan_lengths(good, 0, bad, False, 100, 10) == -1


@requires_accel
def test_scan_lengths_limit():
    buf = (_header(1, 1, False) + b"x") * 10
    assert c_scan_lengths(buf, 0, 1, False, 10, 4) == [2, 4, 6, 8]
    assert c_scan_lengths(buf, 8, 1, False, 10, 4) == [10, 12, 14, 16]
    assert c_scan_lengths(buf, 0, 1, False, 10, 0) == []


# -- pike_send / pike_recv ------------------------------------------------------


@pytest.fixture
def socketpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _recv_c(sock, size):
    buf = ffi.new("char[]", max(size, 1))
    n = lib.pike_recv(sock.fileno(), buf, size)
    return n, (ffi.unpack(buf, n) if n > 0 else b"")


@requires_accel
@pytest.mark.parametrize("size", [1, 100, 4096, 60000])
def test_send_and_recv_move_bytes(socketpair, size):
    a, b = socketpair
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert lib.pike_send(a.fileno(), data, len(data)) == len(data)
    received = b""
    while len(received) < size:
        n, chunk = _recv_c(b, 65536)
        assert n == len(chunk) > 0
        received += chunk
    assert received == data
    # And back: pike_recv reads what a Python send wrote.
    b.send(b"pong")
    assert _recv_c(a, 2) == (2, b"po")  # no more than asked
    assert _recv_c(a, 10) == (2, b"ng")


@requires_accel
def test_send_of_a_buffer_view(socketpair):
    a, b = socketpair
    data = bytearray(b"mutable") + bytes(array.array("i", [1, 2]))
    view = ffi.from_buffer(data)
    assert lib.pike_send(a.fileno(), view, len(view)) == len(data)
    assert b.recv(100) == bytes(data)


@requires_accel
def test_partial_send_when_the_buffer_fills(socketpair):
    a, b = socketpair
    data = b"q" * (8 * 1024 * 1024)
    n = lib.pike_send(a.fileno(), data, len(data))
    assert 0 < n < len(data)


@requires_accel
def test_recv_eof_returns_zero(socketpair):
    a, b = socketpair
    a.send(b"last")
    a.shutdown(socket.SHUT_WR)
    assert _recv_c(b, 100) == (4, b"last")
    assert _recv_c(b, 100) == (0, b"")
    a.close()
    assert _recv_c(b, 100) == (0, b"")


@requires_accel
def test_would_block_is_minus_eagain(socketpair):
    a, b = socketpair
    assert _recv_c(b, 100)[0] == -errno.EAGAIN
    chunk = b"f" * 65536
    for _ in range(10000):
        n = lib.pike_send(a.fileno(), chunk, len(chunk))
        if n < 0:
            break
        assert n > 0
    assert n == -errno.EAGAIN


@requires_accel
def test_bad_fd_is_minus_ebadf():
    buf = ffi.new("char[]", 16)
    assert lib.pike_send(-1, b"x", 1) == -errno.EBADF
    assert lib.pike_recv(-1, buf, 16) == -errno.EBADF


@requires_accel
def test_not_a_socket_is_minus_enotsock():
    r, w = os.pipe()
    try:
        buf = ffi.new("char[]", 16)
        assert lib.pike_send(w, b"x", 1) == -errno.ENOTSOCK
        assert lib.pike_recv(r, buf, 16) == -errno.ENOTSOCK
    finally:
        os.close(r)
        os.close(w)


@requires_accel
def test_send_to_closed_peer_is_minus_epipe(socketpair):
    a, b = socketpair
    b.close()
    assert lib.pike_send(a.fileno(), b"x", 1) == -errno.EPIPE


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
        from pike._pike_accel import ffi, lib
        a, b = socket.socketpair()
        assert a.getblocking() and b.getblocking()
        buf = ffi.new("char[]", 16)
        print(lib.pike_recv(b.fileno(), buf, 16))
        chunk = b"x" * 65536
        while True:
            n = lib.pike_send(a.fileno(), chunk, len(chunk))
            if n < 0:
                break
        print(n)
        """
    )
    assert _ok(result) == [str(-errno.EAGAIN)] * 2


@requires_accel
def test_send_to_closed_peer_raises_no_sigpipe():
    # CPython ignores SIGPIPE; restore the default action, which would kill
    # the process if pike_send let the kernel raise the signal.
    result = run_python(
        """
        import signal, socket
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        from pike._pike_accel import lib
        a, b = socket.socketpair()
        b.close()
        print(lib.pike_send(a.fileno(), b"x", 1))
        print(lib.pike_send(a.fileno(), b"y" * 100000, 100000))
        """
    )
    assert result.returncode != -signal.SIGPIPE, "killed by SIGPIPE"
    assert _ok(result) == [str(-errno.EPIPE)] * 2


REPORT = """
import sys
import pike
from pike.transport import Transport
print(pike.IMPLEMENTATION, Transport.send.__module__,
      "pike._pike_accel" in sys.modules)
"""


@requires_accel
@pytest.mark.parametrize("value", ["c", "auto", None, ""])
def test_pike_impl_c_or_auto_runs_c(value):
    assert _ok(run_python(REPORT, pike_impl=value)) == ["c", "pike._c_path", "True"]


def test_pike_impl_python_never_loads_the_accelerator():
    result = run_python(REPORT, pike_impl="python")
    assert _ok(result) == ["python", "pike.transport", "False"]


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
    assert _ok(result) == ["python", "pike.transport", "False"]


def test_select_c_without_the_accelerator_raises_and_changes_nothing():
    code = """
    import pike
    from pike import _impl
    from pike.transport import Transport
    try:
        _impl.select_implementation("c")
    except ImportError as exc:
        print("ImportError")
    print(pike.IMPLEMENTATION, _impl.IMPLEMENTATION, Transport.send.__module__)
    print(_impl.available_implementations())
    """
    result = run_python(code, pike_impl="auto", hide_accelerator=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ImportError",
        "python python pike.transport",
        "['python']",
    ]


# -- select_implementation, in this process ------------------------------------------


@pytest.fixture
def restore_implementation():
    previous = _impl.IMPLEMENTATION
    yield
    _impl.select_implementation(previous)


@requires_accel
def test_select_implementation_switches_send_and_back(restore_implementation):
    from pike import _c_path

    class Sub(Transport):
        pass

    _impl.select_implementation("python")
    pure_send = Transport.send
    assert pure_send.__module__ == "pike.transport"
    assert pike.IMPLEMENTATION == _impl.IMPLEMENTATION == "python"

    _impl.select_implementation("c")
    assert Transport.send is _c_path.send
    assert Sub.send is _c_path.send  # subclasses inherit it
    assert pike.IMPLEMENTATION == _impl.IMPLEMENTATION == "c"
    _impl.select_implementation("c")  # twice: the pure one is still remembered

    _impl.select_implementation("python")
    assert Transport.send is pure_send
    assert Sub.send is pure_send
    assert pike.IMPLEMENTATION == "python"

    with pytest.raises(ValueError):
        _impl.select_implementation("bogus")
    assert Transport.send is pure_send and pike.IMPLEMENTATION == "python"


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


# -- the C Transport.write against the pure one ---------------------------------------


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
