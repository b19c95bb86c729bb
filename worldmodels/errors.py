"""The one error type the CLI turns into a single line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, a bad flag, a mismatched checkpoint.

    The message says what is wrong and where (a path, a flag), in one line.
    """
