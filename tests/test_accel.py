"""The C accelerator (``pike._pike_accel``) and how pike chooses it.

* ``pike_send`` is driven on real socketpairs: bytes moved, would-block,
  bad fds, and a closed peer (EPIPE, never SIGPIPE); the batched epoll wait
  is tested through the poller (tests/test_handle_data.py and the suites
  that run over every poller x implementation).
* ``Transport.send`` on the C primitive of ``pike/_c_path.py`` is held to
  the pure one.
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

# -- pike_send ----------------------------------------------------------------


@pytest.fixture
def socketpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@requires_accel
@pytest.mark.parametrize("size", [1, 100, 4096, 60000])
def test_send_moves_bytes(socketpair, size):
    a, b = socketpair
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert lib.pike_send(a.fileno(), data, len(data)) == len(data)
    received = b""
    while len(received) < size:
        chunk = b.recv(65536)
        assert chunk
        received += chunk
    assert received == data


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
def test_would_block_is_minus_eagain(socketpair):
    a, b = socketpair
    chunk = b"f" * 65536
    for _ in range(10000):
        n = lib.pike_send(a.fileno(), chunk, len(chunk))
        if n < 0:
            break
        assert n > 0
    assert n == -errno.EAGAIN


@requires_accel
def test_bad_fd_is_minus_ebadf():
    assert lib.pike_send(-1, b"x", 1) == -errno.EBADF


@requires_accel
def test_not_a_socket_is_minus_enotsock():
    r, w = os.pipe()
    try:
        assert lib.pike_send(w, b"x", 1) == -errno.ENOTSOCK
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
        chunk = b"x" * 65536
        while True:
            n = lib.pike_send(a.fileno(), chunk, len(chunk))
            if n < 0:
                break
        print(n)
        """
    )
    assert _ok(result) == [str(-errno.EAGAIN)]


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
from pike import transport
# The send primitive beneath Transport: the socket's own, or the C one.
print(pike.IMPLEMENTATION, getattr(transport._send_now, "__module__", "socket"),
      "pike._pike_accel" in sys.modules)
"""


@requires_accel
@pytest.mark.parametrize("value", ["c", "auto", None, ""])
def test_pike_impl_c_or_auto_runs_c(value):
    assert _ok(run_python(REPORT, pike_impl=value)) == ["c", "pike._c_path", "True"]


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

    from pike import _c_path, transport

    _impl.select_implementation("python")
    assert transport._send_now is socket.socket.send
    assert pike.IMPLEMENTATION == _impl.IMPLEMENTATION == "python"
    epoll = hasattr(select_module, "epoll")
    if epoll:
        poller = pike.make_poller("epoll")
        assert type(poller).__name__ == "EpollPoller"
        poller.close()

    _impl.select_implementation("c")
    assert transport._send_now is _c_path.send_now
    assert pike.IMPLEMENTATION == _impl.IMPLEMENTATION == "c"
    if epoll:
        poller = pike.make_poller("epoll")
        assert type(poller).__name__ == "BatchedEpollPoller"
        assert isinstance(poller, pike.poller.EpollPoller)
        poller.close()
    _impl.select_implementation("c")  # twice is harmless

    _impl.select_implementation("python")
    assert transport._send_now is socket.socket.send
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
