"""The one exception type users see.

Anything the user can fix (a bad path, a bad recipe key, a mismatched split) raises `CapaugError`; the CLI
prints its message as a single line and exits with code 2. Everything else is a bug and keeps its traceback.
"""


class CapaugError(Exception):
    """A problem with the user's input or run folder, explained in one line."""
