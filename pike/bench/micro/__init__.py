"""pike's microbenchmarks (pytest-benchmark): ``python -m pike bench --mode micro``.

The suites are the ``bench_*.py`` modules here, each timing one piece
(dispatch, framing, raw I/O, the write queue) on both implementations.
They are collected only when this folder is named to pytest, never by the
test suite: ``python -m pytest pike/bench/micro`` from a checkout, or
``python -m pike bench --mode micro`` anywhere (see :func:`main`).
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pike bench --mode micro",
        description=(
            "Run pike's microbenchmarks with pytest-benchmark (needs the bench extra). "
            "Arguments not listed here go to pytest, e.g. -k framing or "
            "--benchmark-columns=median,ops."
        ),
    )
    parser.add_argument(
        "--check", action="store_true",
        help="run each benchmark once (--benchmark-disable): a quick check that they all work",
    )
    return parser


def pytest_command(extra=(), check=False):
    """The command that runs the microbenchmarks with ``extra`` pytest arguments."""
    # -p no:cacheprovider: an installed copy must not write a cache next to itself.
    cmd = [sys.executable, "-m", "pytest", HERE, "-p", "no:cacheprovider"]
    if check:
        cmd.append("--benchmark-disable")
    return cmd + list(extra)


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        parser.exit(2, "pike bench --mode micro: pytest-benchmark is not installed "
                       "(pip install 'pike[bench]')\n")
    return subprocess.call(pytest_command(extra, args.check))
