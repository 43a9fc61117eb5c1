"""What the CLI scripts share: logging set-up and turning typed errors into one line + exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

# Each becomes one line on stderr and exit code 2: bad input, a bad or unwritable checkpoint, a run
# folder or cache another process is writing, a run that cannot go on (out of memory, diverged), a
# deployment file that cannot run. Named by module, not imported: an error of a module the command
# never imported was never raised, and importing them all would import the training code and the
# network classes, which predict.py on an exported ONNX file runs without.
USER_ERRORS = (
    ("engine.config", "ConfigError"),
    ("engine.checkpoint", "CheckpointError"),
    ("data.records", "DataError"),
    ("data.lock", "LockError"),
    ("engine.reliability", "TrainingError"),
    ("engine.onnx_inferer", "DeploymentError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """The classes of :data:`USER_ERRORS` loaded so far, and FileNotFoundError."""
    loaded = [
        getattr(sys.modules[module], name)
        for module, name in USER_ERRORS
        if module in sys.modules and hasattr(sys.modules[module], name)
    ]
    return (FileNotFoundError, *loaded)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a user error prints ``error: <message>`` on stderr and returns 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return main(argv) or 0
    except Exception as error:
        if not isinstance(error, user_errors()):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
