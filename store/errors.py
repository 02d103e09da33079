"""The one exception type strata raises for bad input or a failed operation.

The command line prints its message as a single line and exits non-zero, so
messages name the file, line or parameter at fault.
"""


class StrataError(Exception):
    """A user-facing error: the message is shown as-is, on one line."""
