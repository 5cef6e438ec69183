"""The command line: ``python -m pike {info,bench,echo,spiro}``."""

import argparse
import importlib
import sys

# Subcommands with parsers of their own: everything after the name is
# handed to their main(argv), since argparse here would eat their options.
_HANDED_OVER = {
    "bench": ("pike.bench.cli", "side-by-side echo benchmark"),
    "echo": ("pike.server.cli", "run an echo server"),
    "spiro": ("pike.spiro.cli", "remote interpreter sessions"),
}


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
    if argv and argv[0] in _HANDED_OVER:
        module = importlib.import_module(_HANDED_OVER[argv[0]][0])
        return module.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pike", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    info = commands.add_parser("info", help="version, implementation, pollers")
    info.set_defaults(run=_info)
    for name, (_, summary) in _HANDED_OVER.items():
        commands.add_parser(
            name, help=f"{summary} (python -m pike {name} --help)", add_help=False
        )
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
