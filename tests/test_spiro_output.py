"""pike.spiro: what session code prints is printed by the client."""

import io
import pickle
import socket
import sys
import time

import pytest

from pike import spiro
from pike.spiro import protocol

from spiro_support import KEY, raw_connect, recv_frame, serving, wait_until


@pytest.fixture
def server():
    with serving(idle_timeout=10.0) as srv:
        yield srv


@pytest.fixture
def session(server):
    with spiro.connect(server.address, KEY) as s:
        s.stdout, s.stderr = io.StringIO(), io.StringIO()
        yield s


def test_print_goes_to_the_client(session, capsys):
    session.do("print('hello', 42)")
    assert session.stdout.getvalue() == "hello 42\n"
    session.do("import sys; print('oops', file=sys.stderr); sys.stdout.write('raw')")
    assert session.stderr.getvalue() == "oops\n"
    assert session.stdout.getvalue() == "hello 42\nraw"
    assert session.eval("print('from eval') or 5") == 5
    assert session.stdout.getvalue().endswith("from eval\n")
    assert capsys.readouterr().out == ""          # nothing printed on the server side


def test_output_comes_before_the_reply_and_around_callbacks(session):
    seen = []

    def note(text):
        seen.append(("callback", session.stdout.getvalue()))
        return text.upper()

    session.do("def shout(fn):\n    print('before')\n    r = fn('x')\n    print('after', r)")
    session.eval("shout")(note)
    assert seen == [("callback", "before\n")]
    assert session.stdout.getvalue() == "before\nafter X\n"


def test_large_output_is_cut_into_frames():
    with spiro.SpiroServer(authkey=KEY, max_frame_size=4096).start() as srv:
        with spiro.connect(srv.address, KEY) as s:
            s.stdout = io.StringIO()
            s.do("for i in range(2000): print(i)")
            s.do("print('é' * 10000)")
            expected = "".join(f"{i}\n" for i in range(2000)) + "é" * 10000 + "\n"
            assert s.stdout.getvalue() == expected


def test_sessions_get_their_own_output(server):
    with spiro.connect(server.address, KEY) as a, spiro.connect(server.address, KEY) as b:
        a.stdout, b.stdout = io.StringIO(), io.StringIO()
        a.do("print('to a')")
        b.do("print('to b')")
        assert (a.stdout.getvalue(), b.stdout.getvalue()) == ("to a\n", "to b\n")


def test_other_threads_print_on_the_server(session, capsys):
    session.do("import threading\n"
               "t = threading.Thread(target=print, args=('from a thread',))\n"
               "t.start(); t.join()")
    print("from the test")
    assert capsys.readouterr().out == "from a thread\nfrom the test\n"
    assert session.stdout.getvalue() == ""


def test_a_displaced_router_is_put_back(session):
    import contextlib

    elsewhere = io.StringIO()
    with contextlib.redirect_stdout(elsewhere):      # swaps sys.stdout for a while
        session.do("print('still mine')")
        print("the test's own")
    assert session.stdout.getvalue() == "still mine\n"
    assert elsewhere.getvalue() == "the test's own\n"


def test_streams_are_put_back_on_close():
    before = sys.stdout, sys.stderr
    srv = spiro.SpiroServer(authkey=KEY)
    other = spiro.SpiroServer(authkey=KEY)
    assert sys.stdout is not before[0]
    srv.close()
    assert sys.stdout is not before[0]       # the other server still captures
    other.close()
    assert (sys.stdout, sys.stderr) == before


def test_capture_can_be_turned_off(capfd):
    before = sys.stdout
    with spiro.SpiroServer(authkey=KEY, capture_output=False).start() as srv:
        assert sys.stdout is before
        with spiro.connect(srv.address, KEY) as s:
            s.stdout = io.StringIO()
            s.do("print('stays on the server', flush=True)")
            assert s.stdout.getvalue() == ""
    assert "stays on the server" in capfd.readouterr().out


def test_writing_bytes_is_a_type_error_in_the_session(session):
    with pytest.raises(TypeError, match="must be str"):
        session.do("import sys; sys.stdout.write(b'bytes')")
    assert session.eval("1") == 1


def test_output_for_a_client_that_cannot_print_is_dropped(session):
    session.stdout = io.StringIO()
    session.stdout.close()
    session.do("print('lost')")
    assert session.eval("2") == 2


def test_a_client_that_does_not_read_stops_its_session(server):
    # 20 MB of printing to a client that reads nothing: the server holds a
    # bounded amount of it, and all of it arrives once the client reads
    lines, width = 2000, 10_000
    sock = raw_connect(server.address)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        code = f"for i in range({lines}): print('x' * {width})"
        sock.sendall(protocol.frame(pickle.dumps(("req", 1, "do", (code,)))))
        assert wait_until(lambda: server.sessions)
        (session,) = server.sessions.values()
        connection = session.connection
        assert wait_until(connection.is_writing_paused)
        low, high = connection.get_write_buffer_limits()
        bound = high + 2 * (1 << 16) * 4 + (256 << 10)   # + a frame or two + the window
        for _ in range(20):                                # the worker is held back
            assert connection.get_write_buffer_size() <= bound
            time.sleep(0.02)
        printed = 0
        sock.settimeout(30)
        while True:
            message = pickle.loads(recv_frame(sock))
            if message[0] == "out":
                printed += len(message[2])
            else:
                assert message[0] == "ok" and message[1:] == (1, None), message[:2]
                break
        assert printed == lines * (width + 1)
