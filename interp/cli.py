"""One command-line style for the argparse entry points (``interp.merge``, ``interp.shards``, ...).

``--help`` prints the module's docstring (what the command does) and its options. A user error (a
missing folder, a bad number, a wrong option) ends the command with one line on stderr,
``NAME: error: ...``, and exit code 2; no usage block, no traceback. A failure that is not the
user's (a shard that crashed) is one line too, with exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn

USAGE_ERROR = 2
FAILURE = 1


class UsageError(ValueError):
    """A user error: the command ends with its message on one line and exit code 2."""


def fail(name: str, message: str, code: int = USAGE_ERROR) -> NoReturn:
    """End the command: ``NAME: error: MESSAGE`` on stderr (one line), exit ``code``."""
    message = " ".join(str(message).split())  # one line, whatever the message held
    print(f"{name}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _prog(name: str) -> str:
    """How the command was called: its console script (``interp-merge``) or ``python -m NAME``."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if script == name.replace(".", "-") else f"python -m {name}"


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help is the command's docstring and whose errors are one line."""

    def __init__(self, name: str, doc: str, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=_prog(name), description=doc.strip(), **kwargs)
        self.name = name

    def error(self, message: str) -> NoReturn:  # argparse's own errors: bad option, missing argument
        fail(self.name, f"{message} (see --help)")


def positive_int(text: str) -> int:
    """An argparse ``type``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


@contextmanager
def user_errors(name: str, *errors: type[BaseException]) -> Iterator[None]:
    """Turn ``UsageError`` and the given exception types into one line on stderr and exit code 2."""
    try:
        yield
    except (UsageError, *errors) as err:
        fail(name, str(err))
