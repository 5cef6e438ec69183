"""The command line: python -m pike {info,bench,echo,spiro}."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ._cli import ArgumentParser

DESCRIPTION = "pike, a callback-style networking core: its command line."

# Subcommands with parsers of their own: everything after the name is
# handed to their main(argv), since argparse here would eat their options.
_HANDED_OVER = {
    "bench": ("pike.bench.cli", "side-by-side echo benchmark"),
    "echo": ("pike.server.cli", "run an echo server"),
    "spiro": ("pike.spiro.cli", "remote interpreter sessions"),
}


def _info(args: argparse.Namespace) -> int:
    import pike
    from pike import _impl

    print(f"pike {pike.__version__}")
    print(f"python {sys.version.split()[0]} ({sys.implementation.name})")
    print(f"implementation: {pike.IMPLEMENTATION} (PIKE_IMPL={_impl.REQUESTED})")
    print(f"implementations available: {', '.join(_impl.available_implementations())}")
    problem = _impl.accelerator_problem()
    if problem is not None:
        # Why C is not in use and how to fix it: a failed build is otherwise
        # silent, since pip shows a build's warnings only with -v.
        print(f"C accelerator not in use: {problem}")
    pollers = pike.available_pollers()
    print(f"pollers available: {', '.join(pollers)}")
    default = pike.make_poller()
    print(f"default poller: {default.name}")
    default.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = ArgumentParser(prog="python -m pike", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"pike {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    info = commands.add_parser(
        "info", help="version, implementation (and why C is not in use), pollers",
        description="Print pike's version, the implementation in use (and why "
        "the C accelerator is not, when it is not) and the pollers available.",
    )
    info.set_defaults(run=_info)
    for name, (_, summary) in _HANDED_OVER.items():
        commands.add_parser(
            name, help=f"{summary} (python -m pike {name} --help)", add_help=False
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m pike``; ``argv`` are the arguments after it.

    Returns the exit status; an argument error exits with status 2 and one
    line on stderr.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _HANDED_OVER:
        module = importlib.import_module(_HANDED_OVER[argv[0]][0])
        status: int = module.main(argv[1:])
        return status
    args = _parser().parse_args(argv)
    status = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
