"""What the CLI scripts share: logging set-up and turning typed errors into one line + exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from data.lock import LockError
from data.records import DataError
from engine.checkpoint import CheckpointError
from engine.config import ConfigError
from engine.reliability import TrainingError

# Each becomes one line on stderr and exit code 2: bad input, a bad or unwritable checkpoint, a run
# folder or cache another process is writing, a run that cannot go on (out of memory, diverged).
USER_ERRORS = (ConfigError, CheckpointError, DataError, FileNotFoundError, LockError, TrainingError)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a user error prints ``error: <message>`` on stderr and returns 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main(argv) or 0
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
