"""Echo servers for the benchmark, one entry point per kind.

``python -m pike.bench.servers KIND [--port 0] [--ready-fd FD]
[--max-seconds S] [--impl auto|c|python] [--file PATH]``

Each server listens on 127.0.0.1 (port 0 picks a free one), echoes every
byte of every connection, and when it is ready prints one JSON line (to
stdout, or to ``--ready-fd``)::

    {"kind": "pike-epoll", "port": 40123, "pid": 1234, "implementation": "python", ...}

It stops on SIGTERM (or SIGINT), and in any case after ``--max-seconds``
(SIGALRM), so a server orphaned by a killed runner cannot live on.

With ``--file PATH`` a server sends that file to every connection and then
shuts its side down, instead of echoing: the stream mode's file row (see
:mod:`pike.bench.fileserve`; pike kinds and asyncio).

Kinds:

* ``pike-epoll``, ``pike-kqueue``, ``pike-poll``, ``pike-select``: a
  listening :class:`pike.Transport` whose ``handle_accepted`` makes an echo
  Transport; pike's implementation comes from ``PIKE_IMPL``.
* ``asyncio``: an ``asyncio.Protocol`` echo served by ``create_server`` on
  the standard event loop.
* ``uvloop``: the same Protocol on uvloop's loop (when it is installed).
* ``asyncore``: the standard library's ``asyncore`` (Python < 3.12, or
  wherever a module of that name can be imported), with
  ``dispatcher_with_send`` for buffered echoing, looping over ``poll()``
  where the platform has it (``select()`` cannot watch fds past 1023, which
  the scalability mode needs).
* ``py-floor``: not a framework but a yardstick: the cheapest correct echo
  loop Python code can run (``select.epoll``, ``recv``, ``send`` and a dict
  of sockets, nothing else; Linux). Any Python-level callback framework
  pays at least this per request; its distance to ``c-ref`` is the price
  of the interpreter itself.
* ``compat-asyncore``, ``compat-asynchat``: unchanged legacy-style servers
  on :mod:`pike.compat` (see :mod:`pike.bench.compat_servers`).
* ``c-ref``: the C epoll reference server ``echo_ref``, compiled from the
  project's own source by :mod:`pike.bench.native`. It is not served by this
  module: the runner starts the executable itself (it prints its port
  instead of a JSON line).

Every connection has TCP_NODELAY set (pike, asyncio and uvloop do it on
their own; the asyncore server does it by hand), so the comparison is of the
loops, not of Nagle. Every server listens with a backlog of
``socket.SOMAXCONN`` and accepts several connections per readiness event, so
that opening thousands of idle connections (``--mode scale``) is quick; the
backlog does not change the cost of a request. Every server raises its
``RLIMIT_NOFILE`` soft limit to the hard limit at start.
"""

import argparse
import errno
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import warnings

from pike.bench.compat_servers import COMPAT_KINDS, accept_batch, serve_compat

HOST = "127.0.0.1"
RECV_SIZE = 65536

PIKE_POLLERS = ("epoll", "kqueue", "poll", "select")
PY_FLOOR = "py-floor"
OTHER_KINDS = ("asyncio", "uvloop", "asyncore", PY_FLOOR) + COMPAT_KINDS
#: The C reference server: started by the runner, not by this module.
C_REF = "c-ref"
NATIVE_KINDS = (C_REF,)
#: Kinds this module serves itself.
PYTHON_KINDS = tuple(f"pike-{name}" for name in PIKE_POLLERS) + OTHER_KINDS
ALL_KINDS = PYTHON_KINDS + NATIVE_KINDS

#: Highest fd + 1 that a ``select()`` loop can watch.
SELECT_FD_LIMIT = 1024
#: Kinds whose loop is ``select()``: they cannot hold fds past 1023.
SELECT_KINDS = ("pike-select",)

#: Connections accepted per readiness event of a listener, at most.
ACCEPTS_PER_EVENT = 64

#: Default lifetime bound of a server process, in seconds.
DEFAULT_MAX_SECONDS = 900


def _module_available(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _asyncore_available():
    if not _module_available("asyncore"):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import asyncore  # noqa: F401
        except ImportError:
            return False
    return True


def available_kinds(native=True):
    """The server kinds this machine can run, pike's first, ``c-ref`` last.

    ``c-ref`` is listed when ``echo_ref`` can be built here (this compiles
    it on first use; see :func:`c_ref_unavailable`); ``native=False``
    leaves it out without trying.
    """
    import pike

    kinds = [f"pike-{name}" for name in pike.available_pollers()]
    kinds.append("asyncio")
    if _module_available("uvloop"):
        kinds.append("uvloop")
    if _asyncore_available():
        kinds.append("asyncore")
    if hasattr(select, "epoll"):
        kinds.append(PY_FLOOR)
    kinds.extend(COMPAT_KINDS)
    if native and c_ref_unavailable() is None:
        kinds.append(C_REF)
    return kinds


def c_ref_executable():
    """Path of the built ``echo_ref``, or None (see :func:`c_ref_unavailable`)."""
    from pike.bench import native

    return native.build("echo_ref")


def c_ref_unavailable():
    """None when ``c-ref`` can run here, else why it cannot (one line)."""
    from pike.bench import native

    if native.build("echo_ref") is not None:
        return None
    reason = native.last_error("echo_ref") or "echo_ref could not be built"
    return reason.strip().splitlines()[0]


def is_pike_kind(kind):
    return kind.startswith("pike-")


def is_native_kind(kind):
    return kind in NATIVE_KINDS


def max_fds(kind):
    """Most fds a server of ``kind`` can watch, or None when no fixed limit."""
    return SELECT_FD_LIMIT if kind in SELECT_KINDS else None


def raise_nofile_limit():
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit.

    Returns the soft limit now in force (None where there is no such limit).
    """
    try:
        import resource
    except ImportError:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    if hard == resource.RLIM_INFINITY:
        # An unlimited hard limit is not a valid soft limit everywhere.
        target = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    else:
        target = hard
    if soft != target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass
    return soft


def _nodelay(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def announce(info, ready_fd):
    line = (json.dumps(info, sort_keys=True) + "\n").encode()
    if ready_fd is None:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    else:
        os.write(ready_fd, line)
        os.close(ready_fd)


def exit_on_signals():
    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# -- pike ---------------------------------------------------------------------


def check_impl(expect_impl):
    """Exit unless pike runs ``expect_impl`` (None or "auto": whatever runs)."""
    import pike

    if expect_impl not in (None, "auto") and pike.IMPLEMENTATION != expect_impl:
        raise SystemExit(
            f"asked for pike implementation {expect_impl!r} but "
            f"{pike.IMPLEMENTATION!r} runs (set PIKE_IMPL={expect_impl})"
        )


def pike_listener(poller_name, listener_class, port):
    """``(poller, listener)``: a new default poller, and a listening transport on it."""
    import pike

    poller = pike.make_poller(poller_name)
    pike.set_poller(poller)
    listener = listener_class()
    listener.create_socket()
    listener.set_reuse_addr()
    listener.bind((HOST, port))
    listener.listen()
    return poller, listener


def serve_pike(poller_name, port, ready_fd, expect_impl=None):
    import pike
    from pike import Transport

    check_impl(expect_impl)

    class Echo(Transport):
        def handle_data(self, data):
            self.write(data)

    class Listener(Transport):
        def handle_accepted(self, sock, addr):
            Echo(sock=sock)  # a Transport sets TCP_NODELAY itself

    poller, listener = pike_listener(poller_name, Listener, port)
    exit_on_signals()
    announce(
        {
            "kind": f"pike-{poller.name}",
            "port": listener.socket.getsockname()[1],
            "pid": os.getpid(),
            "implementation": pike.IMPLEMENTATION,
            "poller": poller.name,
            "pike_version": pike.__version__,
        },
        ready_fd,
    )
    try:
        poller.loop()
    finally:
        listener.close()


# -- asyncio and uvloop ---------------------------------------------------------


def serve_asyncio(port, ready_fd, use_uvloop=False):
    import asyncio

    class EchoProtocol(asyncio.Protocol):
        transport = None

        def connection_made(self, transport):
            self.transport = transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                _nodelay(sock)

        def data_received(self, data):
            self.transport.write(data)

    info = {"pid": os.getpid()}
    if use_uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
        info.update(kind="uvloop", uvloop_version=uvloop.__version__)
    else:
        loop = asyncio.new_event_loop()
        info.update(kind="asyncio", loop=type(loop).__name__)
        selector = getattr(loop, "_selector", None)
        if selector is not None:
            info["selector"] = type(selector).__name__
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            EchoProtocol, HOST, port, reuse_address=True, backlog=socket.SOMAXCONN
        )
    )
    info["port"] = server.sockets[0].getsockname()[1]
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    announce(info, ready_fd)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


# -- asyncore -------------------------------------------------------------------


def serve_asyncore(port, ready_fd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import asyncore

    class EchoHandler(asyncore.dispatcher_with_send):
        def handle_read(self):
            data = self.recv(RECV_SIZE)
            if data:
                self.send(data)

    class EchoServer(asyncore.dispatcher):
        handle_accept = accept_batch

        def handle_accepted(self, sock, addr):
            _nodelay(sock)
            EchoHandler(sock)

    server = EchoServer()
    server.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    server.set_reuse_addr()
    server.bind((HOST, port))
    server.listen(socket.SOMAXCONN)
    use_poll = hasattr(select, "poll")
    exit_on_signals()
    announce(
        {
            "kind": "asyncore",
            "port": server.socket.getsockname()[1],
            "pid": os.getpid(),
            "asyncore_file": getattr(asyncore, "__file__", None),
            "asyncore_loop": "poll" if use_poll else "select",
        },
        ready_fd,
    )
    try:
        asyncore.loop(timeout=30.0, use_poll=use_poll)
    finally:
        asyncore.close_all()


# -- the floor of a Python echo loop ------------------------------------------


def serve_python_floor(port, ready_fd):
    """Echo with ``select.epoll`` and socket calls only (see ``py-floor``)."""
    ep = select.epoll()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    listener.listen(socket.SOMAXCONN)
    listener.setblocking(False)
    listen_fd = listener.fileno()
    ep.register(listen_fd, select.EPOLLIN)
    conns = {}  # fd -> socket
    unsent = {}  # fd -> bytes the kernel did not take yet (EPOLLOUT armed)

    def close(fd):
        ep.unregister(fd)
        conns.pop(fd).close()
        unsent.pop(fd, None)

    def accept_some():
        for _ in range(ACCEPTS_PER_EVENT):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    return
                raise
            sock.setblocking(False)
            _nodelay(sock)
            conns[sock.fileno()] = sock
            ep.register(sock.fileno(), select.EPOLLIN)

    def send_unsent(fd, sock):
        try:
            n = sock.send(unsent[fd])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(fd)
            return
        rest = unsent[fd][n:]
        if rest:
            unsent[fd] = rest
        else:
            del unsent[fd]
            ep.modify(fd, select.EPOLLIN)

    exit_on_signals()
    announce(
        {"kind": PY_FLOOR, "port": listener.getsockname()[1], "pid": os.getpid()},
        ready_fd,
    )
    try:
        while True:
            for fd, _bits in ep.poll():
                sock = conns.get(fd)
                if sock is None:
                    if fd == listen_fd:
                        accept_some()
                    continue  # closed earlier in this batch
                if fd in unsent:
                    send_unsent(fd, sock)
                    continue
                try:
                    data = sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    close(fd)
                    continue
                try:
                    n = sock.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    close(fd)
                    continue
                if n < len(data):
                    unsent[fd] = data[n:]
                    ep.modify(fd, select.EPOLLOUT)
    finally:
        for sock in conns.values():
            sock.close()
        listener.close()
        ep.close()


# -- entry point ----------------------------------------------------------------


def serve_file(kind, port, ready_fd, impl, path):
    """Serve the file at ``path`` to every connection (the stream mode's file row)."""
    from pike.bench import fileserve

    why = fileserve.skip_reason(kind)
    if why is not None:
        raise SystemExit(f"{kind} cannot serve files: {why}")
    exit_on_signals()
    if is_pike_kind(kind):
        check_impl(impl)
        fileserve.serve_pike(kind[len("pike-"):], port, path,
                             lambda info: announce(info, ready_fd))
    else:
        fileserve.serve_asyncio(port, path, lambda info: announce(info, ready_fd))


def serve(kind, port=0, ready_fd=None, impl=None):
    """Run the server ``kind`` until a signal (or SIGALRM) stops it."""
    if is_pike_kind(kind):
        poller_name = kind[len("pike-") :]
        if poller_name not in PIKE_POLLERS:
            raise SystemExit(f"unknown pike poller in {kind!r}")
        serve_pike(poller_name, port, ready_fd, impl)
    elif kind == "asyncio":
        serve_asyncio(port, ready_fd)
    elif kind == "uvloop":
        serve_asyncio(port, ready_fd, use_uvloop=True)
    elif kind == "asyncore":
        serve_asyncore(port, ready_fd)
    elif kind == PY_FLOOR:
        serve_python_floor(port, ready_fd)
    elif kind in COMPAT_KINDS:
        exit_on_signals()
        serve_compat(kind, port, lambda info: announce(info, ready_fd))
    elif kind == C_REF:
        raise SystemExit("c-ref is the native echo_ref executable: the runner starts it")
    else:
        raise SystemExit(f"unknown server kind {kind!r}; kinds: {', '.join(ALL_KINDS)}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pike.bench.servers",
        description="Run one echo server on 127.0.0.1 for the benchmark.",
    )
    parser.add_argument("kind", choices=PYTHON_KINDS)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--ready-fd",
        type=int,
        default=None,
        help="write the ready line to this fd instead of stdout",
    )
    parser.add_argument(
        "--max-seconds",
        type=int,
        default=DEFAULT_MAX_SECONDS,
        help="exit after this many seconds whatever happens (0: no limit)",
    )
    parser.add_argument(
        "--impl",
        choices=("auto", "c", "python"),
        default=None,
        help="pike kinds: fail unless this implementation runs (PIKE_IMPL selects it)",
    )
    parser.add_argument(
        "--file", metavar="PATH",
        help="serve this file to every connection instead of echoing (pike kinds, asyncio)",
    )
    args = parser.parse_args(argv)
    if args.max_seconds > 0 and hasattr(signal, "alarm"):
        signal.alarm(args.max_seconds)  # SIGALRM's default action ends us
    raise_nofile_limit()  # the scalability mode opens thousands of connections
    if args.file is not None:
        serve_file(args.kind, args.port, args.ready_fd, args.impl, args.file)
    else:
        serve(args.kind, args.port, args.ready_fd, args.impl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
