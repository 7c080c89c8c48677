"""The one base of every error a user can fix. Every command catches it and prints its message as one line with
exit code 2, whatever the subclass; anything else is a bug (exit 3)."""


class UserError(Exception):
    """Bad input, named with what would fix it. Subclasses also derive from the built-in type that fits (ValueError,
    OSError, RuntimeError), which callers of the Python API may catch instead."""
