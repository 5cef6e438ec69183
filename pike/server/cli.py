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

import argparse
import logging
import signal
import socket
import sys

__all__ = ["main"]


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m pike echo",
        description="Run an echo server on pike's event-driven listener.",
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; ::1 for IPv6)")
    parser.add_argument("--port", type=int, default=0,
                        help="TCP port (default 0: any free port, printed)")
    parser.add_argument("--unix", metavar="PATH",
                        help="listen on this Unix socket path instead of TCP")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1: serve in this process)")
    parser.add_argument("--poller", metavar="NAME",
                        help="epoll, kqueue, poll or select (default: the best here)")
    parser.add_argument("--max-connections", type=int, metavar="N",
                        help="most connections per process (default: no cap)")
    parser.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                        help="time connections get to finish on a stop (default 5)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log worker starts and exits")
    parser.add_argument("--tls-cert", metavar="FILE",
                        help="serve TLS with this PEM certificate chain")
    parser.add_argument("--tls-key", metavar="FILE",
                        help="the certificate's private key (default: in --tls-cert)")
    return parser


def _echo_factory(args):
    """EchoConnection, made to start TLS when --tls-cert was given."""
    from .echo import EchoConnection

    if args.tls_context is None:
        return EchoConnection
    from pike.tls import with_tls

    return with_tls(EchoConnection, args.tls_context)


def _describe(address, family):
    if family == getattr(socket, "AF_UNIX", None):
        return f"unix {address}"
    host, port = address[0], address[1]
    if family == socket.AF_INET6:
        return f"tcp [{host}]:{port}"
    return f"tcp {host}:{port}"


def _serve_here(args, address):
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

    def on_signal(signum, frame):
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


def _serve_workers(args, address):
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


def main(argv=None):
    """Run the echo server; ``argv`` are the arguments after ``echo``."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(process)d %(message)s",
        stream=sys.stderr,
    )
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.poller is not None:
        import pike

        if args.poller.lower() not in pike.available_pollers():
            print(
                f"error: unknown or unavailable poller {args.poller!r}; this "
                f"platform has: {', '.join(pike.available_pollers())}",
                file=sys.stderr,
            )
            return 2
    args.tls_context, args.tls_note = None, ""
    if args.tls_key and not args.tls_cert:
        print("error: --tls-key needs --tls-cert", file=sys.stderr)
        return 2
    if args.tls_cert:
        from pike.tls import server_context

        try:
            args.tls_context = server_context(args.tls_cert, args.tls_key)
        except (OSError, ValueError) as exc:  # (ssl.SSLError is an OSError)
            print(f"error: cannot use the TLS certificate: {exc}", file=sys.stderr)
            return 2
        args.tls_note = " with TLS"
    address = args.unix if args.unix else (args.host, args.port)
    try:
        if args.workers == 1:
            status = _serve_here(args, address)
        else:
            status = _serve_workers(args, address)
    except OSError as exc:
        print(f"error: cannot listen on {address!r}: {exc}", file=sys.stderr)
        return 1
    print("stopped", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
