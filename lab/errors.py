"""One error type for bad user input: its message names the file, line or key and what was expected."""


class LabError(Exception):
    """User-facing error. The CLI prints the message (no traceback) and exits with code 2."""
