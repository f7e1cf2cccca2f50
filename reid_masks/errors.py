"""User-facing errors: raised for bad input, printed as one line by the CLIs (no traceback)."""


class UserError(Exception):
    """A problem with the user's input (a path, an option, a file's content).

    The message names the offending file or option and what was expected.
    """
