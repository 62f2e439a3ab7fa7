"""What the commands share: the usage error, their two voices on stderr, and
the options every command reads alike."""

from __future__ import annotations

import sys


class UsageError(ValueError):
    """A command line that cannot be run as given (exit status 2)."""


def progress(quiet):
    """A function printing progress messages to stderr, silent with
    ``--quiet``."""

    def say(message):
        if not quiet:
            print(message, file=sys.stderr)

    return say


def note(message):
    """Print a note (a model skipped, weights substituted) to stderr, even
    with ``--quiet``."""
    print(f"note: {message}", file=sys.stderr)


def none_or(text: str):
    """None for the word 'none' (any case), else the text."""
    return None if text.lower() == "none" else text


def preprocessing(args):
    """The ``preprocessing`` parameter of ``--size``: the weights' own
    without it."""
    if args.size is None:
        return "auto"
    return {"resize_size": args.size, "crop_size": args.size}
