"""The one exception type for problems a user can cause (bad file, bad option, offline, ...).

The CLI turns a StreamtagError into a single line on stderr and its exit code; anything else is a bug
and keeps its traceback.
"""


class StreamtagError(Exception):
    """A user-facing error: the message names the problem and the fix; exit_code is the process exit code."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
