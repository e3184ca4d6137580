"""One entry discipline for every command (main.py and tools/): a problem with the user's
input ends in one line `error: ...` on stderr and exit code 2, never a traceback.

    @command
    def main(argv: list[str] | None = None) -> int | None:
        args = command_parser(__doc__).parse_args(argv)   # bad flags: one `error:` line, exit 2
        ...                                               # raise UserError("...") for anything else

A tool's `if __name__ == "__main__": sys.exit(main())` then exits 0, 2, or the code main returns.
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from .errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """argparse without abbreviations whose refusal of a flag is one line, `error: ...`
    pointing at --help, and exit code 2 (argparse prints its whole usage first)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def command_parser(description: str | None, **kwargs) -> argparse.ArgumentParser:
    """The argparse parser of a tool: its docstring as help, no flag abbreviations."""
    return OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a command's main(argv): a UserError becomes `error: ...` and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv) or 0
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapper


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def read_json(path: str, what: str = "file") -> object:
    """A JSON file a user passes (a record, a manifest): a missing, unreadable or
    truncated one is a UserError naming it."""
    import json

    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what} {path}: {exc}") from None
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); the {what} is damaged or truncated") from None
