"""The one error type the CLI turns into a single line and a non-zero exit."""

from __future__ import annotations

import math
import sys


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, a bad flag, a mismatched checkpoint.

    The message says what is wrong and where (a path, a flag), in one line.
    """


def require_finite(name: str, value: float, above: float | None = None,
                   at_least: float | None = None) -> float:
    """`value` if it is a finite number (and > `above`, >= `at_least`); else a UserError
    naming `name`. The one check behind every float flag: inf or nan would run, and
    produce nan drawings or dreams that end at once, instead of failing."""
    bound = ("" if above is None else f" > {above:g}") + (
        "" if at_least is None else f" >= {at_least:g}")
    ok = math.isfinite(value) and (above is None or value > above) and (
        at_least is None or value >= at_least)
    if not ok:
        raise UserError(f"{name} must be a finite number{bound}, got {value}")
    return value


def warn(text: str) -> None:
    """One line on stderr for input that is accepted but has no effect (a flag ignored)."""
    print(f"worldmodels: warning: {text}", file=sys.stderr)
