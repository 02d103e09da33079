"""The one exception type strata raises for bad input or a failed operation.

The command line prints its message as a single line and exits non-zero, so
messages name the file, line or parameter at fault.
"""


class StrataError(Exception):
    """A user-facing error: the message is shown as-is, on one line."""


def first_line(e: BaseException) -> str:
    """The first line of another library's error, for a one-line message that cites it."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
