"""The one exception type the CLI turns into a one-line message."""


class MwcError(Exception):
    """A user-facing error: its message names the input and what to do about it."""
