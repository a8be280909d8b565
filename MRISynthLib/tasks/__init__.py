"""Volume-level entry points shared by the command line, the Slicer logic and the console."""


class Cancelled(Exception):
    """Raised when a caller's cancel callback asks a long task to stop."""
