# Copyright 2026 The transformers-mixedae authors. Licensed under the Apache License, Version 2.0.
"""One-line errors for console scripts and example scripts.

`run_cli(main, program="run_mim.py")` runs `main()` and returns its result. An error the user can fix (a wrong
argument, a missing or unwritable path, an output folder that holds an earlier result) is printed as one line,
`"{program}: error: {message}"`, on stderr, without a traceback, and the process exits:

* 2 for argument and usage errors: `ValueError` and its subclasses (`OutputDirectoryError`, configuration errors);
* 1 for the others: `FileNotFoundError`, `NotADirectoryError`, `IsADirectoryError`, `PermissionError`, and any
  exception class marked with the class attribute `user_error = True`;
* 130 on Ctrl-C (`KeyboardInterrupt`), with the line `"{program}: interrupted"`.

An exception class may set `exit_status` to choose its status (e.g. a `ValueError` about the content of an input
file rather than the command line). Any other exception is a bug: it propagates with its traceback. Setting the
environment variable `TRANSFORMERS_MIXEDAE_TRACEBACK=1` shows the traceback of user errors too.

Under `accelerate launch`, the launcher turns a non-zero exit of the training process into its own
`subprocess.CalledProcessError` traceback, which buries the one-line message, and into status 1; `accelerate launch
-q ...` (`--quiet`) keeps only the line, still with status 1. A single process run with `python` keeps its status.
"""

import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

USAGE_ERROR_STATUS = 2
USER_ERROR_STATUS = 1
INTERRUPTED_STATUS = 130
TRACEBACK_ENVIRONMENT_VARIABLE = "TRANSFORMERS_MIXEDAE_TRACEBACK"

# Problems with the paths a user gave, not with the code.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def user_error_status(error: BaseException) -> int | None:
    """The exit status for `error` if the user can fix it, or None if it is a bug (see the module docstring)."""
    status = getattr(type(error), "exit_status", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return status
    if isinstance(error, ValueError):
        return USAGE_ERROR_STATUS
    if isinstance(error, _PATH_ERRORS) or getattr(type(error), "user_error", False) is True:
        return USER_ERROR_STATUS
    return None


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (its lines joined by spaces), or its class name if it has none."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, KeyError) and message.startswith(("'", '"')):  # KeyError quotes its message
        message = message[1:-1]
    return message or type(error).__name__


def run_cli(main: Callable[[], T], *, program: str) -> T:
    """Run `main()` as a command-line program named `program`; see the module docstring for errors and exit codes."""
    try:
        return main()
    except KeyboardInterrupt:
        sys.stderr.write(f"{program}: interrupted\n")
        sys.stderr.flush()
        raise SystemExit(INTERRUPTED_STATUS) from None
    except Exception as error:
        status = user_error_status(error)
        if status is None or os.environ.get(TRACEBACK_ENVIRONMENT_VARIABLE, "") not in ("", "0"):
            raise
        sys.stderr.write(f"{program}: error: {one_line(error)}\n")
        sys.stderr.flush()
        raise SystemExit(status) from None


__all__ = ["run_cli", "user_error_status", "one_line"]
