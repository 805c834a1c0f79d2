"""The one exception type that the command line turns into a single line and a non-zero exit."""


class UserError(ValueError):
    """Bad input from the user: a path, a flag, a file. The message says what to do about it."""
