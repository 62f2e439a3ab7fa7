"""What the commands share: the usage error, their two voices on stderr, the
options every command reads alike, and how a probe's ranking is printed."""

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


def print_ranking(args, result, say) -> None:
    """A probe's table to stdout, or its JSON with ``--json -`` (the table
    then goes to stderr); ``--json FILE`` writes the JSON there too."""
    table = result.table()
    if args.json == "-":
        print(result.to_json())
        say(table)
        return
    print(table)
    if args.json is not None:
        with open(args.json, "w") as f:
            f.write(result.to_json() + "\n")
        say(f"ranking written to {args.json}")
