"""The command line: ``python -m pike {info,bench,echo}``."""

import argparse
import sys


def _info(args):
    import pike
    from pike import _impl

    print(f"pike {pike.__version__}")
    print(f"python {sys.version.split()[0]} ({sys.implementation.name})")
    print(f"implementation: {pike.IMPLEMENTATION} (PIKE_IMPL={_impl.REQUESTED})")
    print(f"implementations available: {', '.join(_impl.available_implementations())}")
    pollers = pike.available_pollers()
    print(f"pollers available: {', '.join(pollers)}")
    default = pike.make_poller()
    print(f"default poller: {default.name}")
    default.close()
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # bench and echo have parsers of their own; argparse here would eat
    # their options.
    if argv and argv[0] == "bench":
        from pike.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "echo":
        from pike.server.cli import main as echo_main

        return echo_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pike", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    info = commands.add_parser("info", help="version, implementation, pollers")
    info.set_defaults(run=_info)
    commands.add_parser(  # listed for --help; main() hands it over above
        "bench",
        help="side-by-side echo benchmark (python -m pike bench --help)",
        add_help=False,
    )
    commands.add_parser(
        "echo",
        help="run an echo server (python -m pike echo --help)",
        add_help=False,
    )
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
