"""``python -m pike echo``: an echo server on pike's listener and workers.

::

    python -m pike echo [--host H] [--port P] [--unix PATH] [--workers N]
                        [--poller NAME] [--max-connections N] [--grace S] [-v]
                        [--tls-cert FILE [--tls-key FILE]]

It prints one line saying where it listens (``listening on tcp
127.0.0.1:40123`` or ``listening on unix /path``), serves until SIGINT
(Ctrl-C) or SIGTERM, then stops gracefully: it stops accepting, lets the
connections finish echoing what they received (``--grace`` seconds at most),
closes them, removes a Unix socket's file and exits with status 0.

:func:`main` takes the arguments that follow ``echo``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from typing import Any, Sequence

from .._cli import ArgumentParser, non_negative_float, port_number, positive_int

__all__ = ["main"]

DESCRIPTION = """\
Run an echo server on pike's event-driven listener. It prints one line
saying where it listens, serves until SIGINT (Ctrl-C) or SIGTERM, then
stops gracefully: it stops accepting, gives the connections --grace seconds
to finish echoing, closes them and exits with status 0.
"""


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m pike echo",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; ::1 for IPv6)")
    parser.add_argument("--port", type=port_number, default=0,
                        help="TCP port (default 0: any free port, printed)")
    parser.add_argument("--unix", metavar="PATH",
                        help="listen on this Unix socket path instead of TCP")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="worker processes (default 1: serve in this process)")
    parser.add_argument("--poller", metavar="NAME",
                        help="epoll, kqueue, poll or select (default: the best here)")
    parser.add_argument("--max-connections", type=positive_int, metavar="N",
                        help="most connections per process (default: no cap)")
    parser.add_argument("--grace", type=non_negative_float, default=5.0, metavar="SECONDS",
                        help="time connections get to finish on a stop (default 5)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log worker starts and exits")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="serve TLS with this PEM certificate chain")
    parser.add_argument("--tls-key", metavar="FILE",
                        help="the certificate's private key (default: in --tls-cert)")
    return parser


def _echo_factory(args: argparse.Namespace) -> Any:
    """EchoConnection, made to start TLS when --tls-cert was given."""
    from .echo import EchoConnection

    if args.tls_context is None:
        return EchoConnection
    from pike.tls import with_tls

    return with_tls(EchoConnection, args.tls_context)


def _describe(address: Any, family: int) -> str:
    if family == getattr(socket, "AF_UNIX", None):
        return f"unix {address}"
    host, port = address[0], address[1]
    if family == socket.AF_INET6:
        return f"tcp [{host}]:{port}"
    return f"tcp {host}:{port}"


def _serve_here(args: argparse.Namespace, address: Any) -> int:
    import pike
    from pike.poller import make_poller

    from .listener import Listener

    poller = make_poller(args.poller)
    try:
        listener = Listener(
            _echo_factory(args), address, poller=poller, max_connections=args.max_connections
        )
    except BaseException:
        poller.close()
        raise

    def on_signal(signum: int, frame: object) -> None:
        # Python runs this between bytecodes of the main thread, perhaps in
        # the middle of a dispatch: hand the work to the loop instead.
        poller.call_soon_threadsafe(listener.shutdown, args.grace)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        listener.add_done_callback(lambda _: poller.stop())
        print(
            f"listening on {_describe(listener.address, listener.family)}{args.tls_note} "
            f"(poller {poller.name}, implementation {pike.IMPLEMENTATION}, 1 process)",
            flush=True,
        )
        while not listener.closed:
            poller.loop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        listener.close()
        for channel in poller.channels():
            channel.close()
        poller.close()
    return 0


def _serve_workers(args: argparse.Namespace, address: Any) -> int:
    from .workers import WorkerPool

    pool = WorkerPool(
        _echo_factory(args),
        address,
        workers=args.workers,
        poller_name=args.poller,
        max_connections=args.max_connections,
        grace=args.grace,
    )
    # Signals first: a Ctrl-C between the fork and run() must not be lost.
    stop = lambda signum, frame: pool.stop(signum)  # noqa: E731
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        pool.start()
        mode = "SO_REUSEPORT" if pool.reuse_port else "one shared socket"
        print(
            f"listening on {_describe(pool.address, pool.family)}{args.tls_note} "
            f"({args.workers} worker processes, {mode}; pids "
            f"{' '.join(map(str, pool.pids))})",
            flush=True,
        )
        return pool.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the echo server; ``argv`` are the arguments after ``echo``.

    Returns the exit status: 0 after a graceful stop, 1 when it cannot
    listen; an argument error exits with status 2 and one line on stderr.
    """
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(process)d %(message)s",
        stream=sys.stderr,
    )
    if args.poller is not None:
        import pike

        if args.poller.lower() not in pike.available_pollers():
            parser.error(
                f"unknown or unavailable poller {args.poller!r}; this "
                f"platform has: {', '.join(pike.available_pollers())}"
            )
    args.tls_context, args.tls_note = None, ""
    if args.tls_key and not args.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    if args.tls_cert:
        from pike.tls import server_context

        try:
            args.tls_context = server_context(args.tls_cert, args.tls_key)
        except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError)
            parser.error(f"cannot use the TLS certificate: {exc}")
        args.tls_note = " with TLS"
    address = args.unix if args.unix else (args.host, args.port)
    try:
        if args.workers == 1:
            status = _serve_here(args, address)
        else:
            status = _serve_workers(args, address)
    except OSError as exc:
        print(f"{parser.prog}: error: cannot listen on {address!r}: {exc}", file=sys.stderr)
        return 1
    print("stopped", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
