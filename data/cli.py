"""What the ``python -m data.*`` commands share: one-line argument errors and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from data.lock import LockError
from data.records import DataError


class ArgumentError(Exception):
    """A bad command-line argument, reported as one line."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line instead of usage + message
        raise ArgumentError(message)


def run(
    prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None
) -> int:
    """Call ``main(argv)``; a bad argument, a DataError or a held lock prints ``<prog>: error: ...`` and returns 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main(argv)
    except (ArgumentError, DataError, LockError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
