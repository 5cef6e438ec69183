"""Echo servers for the benchmark, one entry point per kind.

``python -m pike.bench.servers KIND [--port 0] [--ready-fd FD]
[--max-seconds S] [--impl auto|c|python]``

Each server listens on 127.0.0.1 (port 0 picks a free one), echoes every
byte of every connection, and when it is ready prints one JSON line (to
stdout, or to ``--ready-fd``)::

    {"kind": "pike-epoll", "port": 40123, "pid": 1234, "implementation": "python", ...}

It stops on SIGTERM (or SIGINT), and in any case after ``--max-seconds``
(SIGALRM), so a server orphaned by a killed runner cannot live on.

Kinds:

* ``pike-epoll``, ``pike-kqueue``, ``pike-poll``, ``pike-select``: a
  listening :class:`pike.Transport` whose ``handle_accepted`` makes an echo
  Transport; pike's implementation comes from ``PIKE_IMPL``.
* ``asyncio``: an ``asyncio.Protocol`` echo served by ``create_server`` on
  the standard event loop.
* ``uvloop``: the same Protocol on uvloop's loop (when it is installed).
* ``asyncore``: the standard library's ``asyncore`` (Python < 3.12, or
  wherever a module of that name can be imported), with
  ``dispatcher_with_send`` for buffered echoing.

Every connection has TCP_NODELAY set (pike, asyncio and uvloop do it on
their own; the asyncore server does it by hand), so the comparison is of the
loops, not of Nagle.
"""

import argparse
import importlib.util
import json
import os
import signal
import socket
import sys
import warnings

HOST = "127.0.0.1"
RECV_SIZE = 65536

PIKE_POLLERS = ("epoll", "kqueue", "poll", "select")
OTHER_KINDS = ("asyncio", "uvloop", "asyncore")
ALL_KINDS = tuple(f"pike-{name}" for name in PIKE_POLLERS) + OTHER_KINDS

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


def available_kinds():
    """The server kinds this machine can run, pike's first."""
    import pike

    kinds = [f"pike-{name}" for name in pike.available_pollers()]
    kinds.append("asyncio")
    if _module_available("uvloop"):
        kinds.append("uvloop")
    if _asyncore_available():
        kinds.append("asyncore")
    return kinds


def is_pike_kind(kind):
    return kind.startswith("pike-")


def _nodelay(sock):
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _announce(info, ready_fd):
    line = (json.dumps(info, sort_keys=True) + "\n").encode()
    if ready_fd is None:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    else:
        os.write(ready_fd, line)
        os.close(ready_fd)


def _exit_on_signals():
    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


# -- pike ---------------------------------------------------------------------


def serve_pike(poller_name, port, ready_fd, expect_impl=None):
    import pike
    from pike import Transport

    if expect_impl not in (None, "auto") and pike.IMPLEMENTATION != expect_impl:
        raise SystemExit(
            f"asked for pike implementation {expect_impl!r} but "
            f"{pike.IMPLEMENTATION!r} runs (set PIKE_IMPL={expect_impl})"
        )

    class Echo(Transport):
        def handle_read(self):
            data = self.recv(RECV_SIZE)
            if data:
                self.write(data)

    class Listener(Transport):
        def handle_accepted(self, sock, addr):
            Echo(sock=sock)  # a Transport sets TCP_NODELAY itself

    poller = pike.make_poller(poller_name)
    pike.set_poller(poller)
    listener = Listener()
    listener.create_socket()
    listener.set_reuse_addr()
    listener.bind((HOST, port))
    listener.listen()
    _exit_on_signals()
    _announce(
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
        loop.create_server(EchoProtocol, HOST, port, reuse_address=True)
    )
    info["port"] = server.sockets[0].getsockname()[1]
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, loop.stop)
    _announce(info, ready_fd)
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
        def handle_accepted(self, sock, addr):
            _nodelay(sock)
            EchoHandler(sock)

    server = EchoServer()
    server.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    server.set_reuse_addr()
    server.bind((HOST, port))
    server.listen(socket.SOMAXCONN)
    _exit_on_signals()
    _announce(
        {
            "kind": "asyncore",
            "port": server.socket.getsockname()[1],
            "pid": os.getpid(),
            "asyncore_file": getattr(asyncore, "__file__", None),
        },
        ready_fd,
    )
    try:
        asyncore.loop(timeout=30.0)
    finally:
        asyncore.close_all()


# -- entry point ----------------------------------------------------------------


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
    else:
        raise SystemExit(f"unknown server kind {kind!r}; kinds: {', '.join(ALL_KINDS)}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pike.bench.servers",
        description="Run one echo server on 127.0.0.1 for the benchmark.",
    )
    parser.add_argument("kind", choices=ALL_KINDS)
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
    args = parser.parse_args(argv)
    if args.max_seconds > 0 and hasattr(signal, "alarm"):
        signal.alarm(args.max_seconds)  # SIGALRM's default action ends us
    serve(args.kind, args.port, args.ready_fd, args.impl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
