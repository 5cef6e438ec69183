"""Argument parsing shared by pike's command lines.

An argument error is a message for a person at a terminal: one line on
stderr and exit status 2, never a traceback and never the whole usage.
``--help`` still prints the usage.
"""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

__all__ = ["ArgumentParser", "port_number", "positive_int", "non_negative_float"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a one-line error (``prog: error: ...``)."""

    def error(self, message: str) -> NoReturn:
        # argparse prints the usage first; here the hint to --help stands in
        # for it so that the error stays one line.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def port_number(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {value}")
    return value


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number of at least 0 (seconds, for instance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, not {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
